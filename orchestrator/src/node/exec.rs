//! `kubectl exec` on the node (kubelet's `/exec/{ns}/{pod}/{container}`):
//! a WebSocket speaking Kubernetes' channel protocol (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`) in front of a command the container's runtime
//! starts. Each binary message starts with its stream: 0 stdin, 1 stdout,
//! 2 stderr, 3 the final `Status`, 4 terminal resizes (`tty=true`: the
//! command gets a terminal); v5 adds 255, "this stream is closed" (how a
//! client ends the command's stdin).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use shoal_runtime::exec::{Exec, ExecSession};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

pub(super) const STDIN: u8 = 0;
pub(super) const STDOUT: u8 = 1;
pub(super) const STDERR: u8 = 2;
pub(super) const ERROR: u8 = 3;
const RESIZE: u8 = 4;
pub(super) const CLOSE: u8 = 255;

/// (namespace, pod, container)
type Key = (String, String, String);

/// The running containers of this node and whether each can exec: `None`
/// for a Wasm guest, which has no processes to start beside it.
#[derive(Default)]
pub struct Execs {
    running: Mutex<HashMap<Key, Option<Arc<dyn Exec>>>>,
}

/// Why a command could not be started.
pub enum Refusal {
    NotRunning,
    NoProcesses,
}

impl Execs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Option<Arc<dyn Exec>>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn started(&self, ns: &str, pod: &str, container: &str, exec: Option<Arc<dyn Exec>>) {
        self.lock()
            .insert((ns.into(), pod.into(), container.into()), exec);
    }

    pub fn stopped(&self, ns: &str, pod: &str, container: &str) {
        self.lock()
            .remove(&(ns.to_string(), pod.to_string(), container.to_string()));
    }

    pub fn get(&self, ns: &str, pod: &str, container: &str) -> Result<Arc<dyn Exec>, Refusal> {
        match self
            .lock()
            .get(&(ns.to_string(), pod.to_string(), container.to_string()))
        {
            None => Err(Refusal::NotRunning),
            Some(None) => Err(Refusal::NoProcesses),
            Some(Some(e)) => Ok(e.clone()),
        }
    }
}

/// The `Status` the error stream carries at the end, as kubelet sends it:
/// clients turn `NonZeroExitCode` into their own exit code.
pub fn exit_status(argv: &[String], result: &Result<i32, String>) -> Value {
    match result {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {argv:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(why) => json!({
            "metadata": {}, "status": "Failure",
            "message": format!("error executing command {argv:?}: {why}"),
            "reason": "InternalError",
        }),
    }
}

pub(super) fn frame(stream: u8, data: &[u8]) -> Message {
    let mut b = Vec::with_capacity(data.len() + 1);
    b.push(stream);
    b.extend_from_slice(data);
    Message::Binary(Bytes::from(b))
}

/// Runs one session to its end: output and the exit status go out, input
/// comes in; a client that goes away ends the command.
pub async fn session(socket: WebSocket, argv: Vec<String>, started: Result<ExecSession, String>) {
    let (mut sink, mut incoming) = socket.split();
    let s = match started {
        Ok(s) => s,
        Err(why) => {
            let status = exit_status(&argv, &Err(why));
            let _ = sink
                .send(frame(
                    ERROR,
                    &serde_json::to_vec(&status).unwrap_or_default(),
                ))
                .await;
            let _ = sink.send(close()).await;
            return;
        }
    };
    let ExecSession {
        mut stdin,
        stdout,
        stderr,
        exit,
        resize,
    } = s;
    // With a terminal the client reads one stream: what the runtime itself
    // says goes there too.
    let stderr_to = if resize.is_some() { STDOUT } else { STDERR };
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.send(close()).await;
    });
    // Input until the client goes away; closing stdin only ends stdin.
    let input = async move {
        while let Some(Ok(m)) = incoming.next().await {
            let data = match m {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            match data.first() {
                Some(&STDIN) => {
                    if let Some(w) = stdin.as_mut() {
                        if w.write_all(&data[1..]).await.is_err() || w.flush().await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Some(&CLOSE) if data.get(1) == Some(&STDIN) => stdin = None,
                Some(&RESIZE) => {
                    if let (Some(resize), Some((columns, rows))) =
                        (&resize, terminal_size(&data[1..]))
                    {
                        resize(columns, rows);
                    }
                }
                _ => {}
            }
        }
    };
    let run = async {
        tokio::join!(
            pump(stdout, STDOUT, out_tx.clone()),
            pump(stderr, stderr_to, out_tx.clone())
        );
        let result = exit.await;
        debug!(?argv, ?result, "exec ended");
        let status = exit_status(&argv, &result);
        let _ = out_tx
            .send(frame(
                ERROR,
                &serde_json::to_vec(&status).unwrap_or_default(),
            ))
            .await;
    };
    tokio::select! {
        () = run => {}
        () = input => debug!(?argv, "exec client went away"),
    }
    drop(out_tx);
    let _ = writer.await;
}

/// A resize message: `{"Width": columns, "Height": rows}`.
fn terminal_size(data: &[u8]) -> Option<(u16, u16)> {
    let v: Value = serde_json::from_slice(data).ok()?;
    let get = |k: &str| v.get(k)?.as_u64().and_then(|n| u16::try_from(n).ok());
    Some((get("Width")?, get("Height")?))
}

pub(super) fn close() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1000,
        reason: "".into(),
    }))
}

async fn pump(
    mut r: std::pin::Pin<Box<dyn AsyncRead + Send>>,
    stream: u8,
    tx: mpsc::Sender<Message>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(frame(stream, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizes_read_as_kubectl_sends_them() {
        assert_eq!(
            terminal_size(br#"{"Width":91,"Height":13}"#),
            Some((91, 13))
        );
        assert_eq!(terminal_size(br#"{"Width":-1,"Height":13}"#), None);
        assert_eq!(terminal_size(b"junk"), None);
    }

    #[test]
    fn exit_codes_travel_as_kubelet_reports_them() {
        let argv = vec!["sh".to_string(), "-c".to_string(), "exit 3".to_string()];
        assert_eq!(exit_status(&argv, &Ok(0))["status"], "Success");
        let failed = exit_status(&argv, &Ok(3));
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        let broken = exit_status(&argv, &Err("no such container".into()));
        assert_eq!(broken["status"], "Failure");
        assert!(broken["message"]
            .as_str()
            .is_some_and(|m| m.contains("no such container")));
    }
}
