//! `kubectl attach` on the node (kubelet's `/attach/{ns}/{pod}/{container}`):
//! the container's output from now on, stdout and stderr on their channels
//! of the exec WebSocket protocol (see `exec.rs`), until the container
//! ends. Shoal starts containers without an open stdin, so an attach that
//! asks to write to it is refused before the upgrade.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tracing::debug;

use super::exec::{close, frame, ERROR, STDERR, STDOUT};
use super::logs::{parse_record, read_from, ContainerLog};

/// Streams `log` from its current end until the container ends or the
/// client goes away. With `tty` the client reads one stream, so stderr
/// goes to stdout's channel.
pub async fn session(socket: WebSocket, log: Arc<ContainerLog>, tty: bool) {
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
    // The client sends nothing we use (no stdin); its going away ends us.
    let client_gone = async {
        while let Some(Ok(m)) = incoming.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    };
    tokio::select! {
        () = output => {}
        () = client_gone => debug!(log = %path.display(), "attach client went away"),
    }
}
