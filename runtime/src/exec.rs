//! Running another command inside a live container: what `kubectl exec`
//! reaches. Only runtimes with processes offer it; a Wasm sandbox has one
//! guest and nothing to exec beside it.

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// One command started in a container: its streams and its ending.
pub struct ExecSession {
    /// Present when stdin was asked for; dropping it closes the command's.
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    pub stderr: Pin<Box<dyn AsyncRead + Send>>,
    /// Resolves to the exit code; dropping it ends the command.
    pub exit: Pin<Box<dyn Future<Output = Result<i32, String>> + Send>>,
}

#[async_trait::async_trait]
pub trait Exec: Send + Sync {
    /// Starts `argv` in the container, with its environment, user and
    /// working directory. `Err` says why it could not start.
    async fn exec(&self, argv: &[String], stdin: bool) -> Result<ExecSession, String>;
}
