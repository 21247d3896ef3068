//! `kubectl attach` on the node (kubelet's `/attach/{ns}/{pod}/{container}`):
//! the container's output from now on, stdout and stderr on their channels
//! of the exec WebSocket protocol (see `exec.rs`), until the container
//! ends; and, for a Wasm container started with `stdin: true`, what the
//! client types, into the guest's stdin. With `stdinOnce` the guest sees
//! the end of its input when the first attached client is done with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use shoal_runtime::backend::GuestStdin;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tracing::debug;

use super::exec::{close, frame, CLOSE, ERROR, STDERR, STDIN, STDOUT};
use super::logs::{parse_record, read_from, ContainerLog};

/// Bytes written ahead of a guest that is not reading.
const STDIN_BUFFER: usize = 64 << 10;

/// (namespace, pod, container)
type Key = (String, String, String);

/// The stdin of each running container that has one.
#[derive(Default)]
pub struct Stdins {
    open: Mutex<HashMap<Key, Arc<Stdin>>>,
}

/// The node's end of one container's stdin.
pub struct Stdin {
    writer: tokio::sync::Mutex<Option<DuplexStream>>,
    /// `stdinOnce`: closed when the first attached client is done.
    once: bool,
}

impl Stdin {
    async fn write(&self, bytes: &[u8]) -> bool {
        let mut w = self.writer.lock().await;
        match w.as_mut() {
            Some(pipe) => pipe.write_all(bytes).await.is_ok(),
            None => false,
        }
    }

    /// The guest reads to the end of its input.
    async fn close(&self) {
        if let Some(mut pipe) = self.writer.lock().await.take() {
            let _ = pipe.shutdown().await;
        }
    }
}

fn key(ns: &str, pod: &str, container: &str) -> Key {
    (ns.to_string(), pod.to_string(), container.to_string())
}

impl Stdins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Stdin>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh stdin for a container starting now (each start gets its
    /// own, as kubelet reopens it): the guest's end to hand the runtime.
    pub fn open(&self, ns: &str, pod: &str, container: &str, once: bool) -> GuestStdin {
        let (ours, guests) = tokio::io::duplex(STDIN_BUFFER);
        let stdin = Arc::new(Stdin {
            writer: tokio::sync::Mutex::new(Some(ours)),
            once,
        });
        self.lock().insert(key(ns, pod, container), stdin);
        GuestStdin::new(guests)
    }

    pub fn closed(&self, ns: &str, pod: &str, container: &str) {
        self.lock().remove(&key(ns, pod, container));
    }

    pub fn get(&self, ns: &str, pod: &str, container: &str) -> Option<Arc<Stdin>> {
        self.lock().get(&key(ns, pod, container)).cloned()
    }
}

/// Streams `log` from its current end until the container ends or the
/// client goes away, and with `stdin` passes the client's input on. With
/// `tty` the client reads one stream, so stderr goes to stdout's channel.
pub async fn session(
    socket: WebSocket,
    log: Arc<ContainerLog>,
    stdin: Option<Arc<Stdin>>,
    tty: bool,
) {
    let (mut sink, mut incoming) = socket.split();
    let path = log.path().to_path_buf();
    let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut carry = String::new();
    let output = async {
        loop {
            let notified = log.changed.notified();
            let finished = log.is_finished();
            carry.push_str(&read_from(&path, &mut offset));
            while let Some(nl) = carry.find('\n') {
                let line: String = carry.drain(..=nl).collect();
                let Some(r) = parse_record(line.trim_end_matches('\n')) else {
                    continue;
                };
                let channel = if r.stream == "stderr" && !tty {
                    STDERR
                } else {
                    STDOUT
                };
                let mut bytes = r.text.as_bytes().to_vec();
                if r.full {
                    bytes.push(b'\n');
                }
                if sink.send(frame(channel, &bytes)).await.is_err() {
                    return;
                }
            }
            if finished {
                let ok = json!({"metadata": {}, "status": "Success"});
                let _ = sink
                    .send(frame(ERROR, &serde_json::to_vec(&ok).unwrap_or_default()))
                    .await;
                let _ = sink.send(close()).await;
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    };
    // Input until the client goes away; its going away ends the session.
    let input = async {
        while let Some(Ok(m)) = incoming.next().await {
            let data = match m {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            match (data.first(), &stdin) {
                (Some(&STDIN), Some(s)) if !s.write(&data[1..]).await => {
                    debug!(log = %path.display(), "attach: the guest's stdin is closed");
                }
                // v5: the client's input ended.
                (Some(&CLOSE), Some(s)) if data.get(1) == Some(&STDIN) && s.once => s.close().await,
                _ => {}
            }
        }
    };
    tokio::select! {
        () = output => {}
        () = input => debug!(log = %path.display(), "attach client went away"),
    }
    if let Some(s) = stdin.filter(|s| s.once) {
        s.close().await;
    }
}
