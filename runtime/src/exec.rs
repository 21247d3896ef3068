//! Running another command inside a live container: what `kubectl exec`
//! reaches. Only runtimes with processes offer it; a Wasm sandbox has one
//! guest and nothing to exec beside it.

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// How to start a command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// Give the command a stdin to write to.
    pub stdin: bool,
    /// Give it a terminal (`kubectl exec -t`): stdout and stderr are then
    /// one stream, the terminal's, and it can be resized.
    pub tty: bool,
}

/// Sets a command's terminal size: columns, rows.
pub type Resize = Box<dyn Fn(u16, u16) + Send + Sync>;

/// One command started in a container: its streams and its ending.
pub struct ExecSession {
    /// Present when stdin was asked for; dropping it closes the command's.
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// With a terminal, what the terminal shows.
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    /// With a terminal, only what the runtime itself says (errors).
    pub stderr: Pin<Box<dyn AsyncRead + Send>>,
    /// Resolves to the exit code; dropping it ends the command.
    pub exit: Pin<Box<dyn Future<Output = Result<i32, String>> + Send>>,
    /// Present with a terminal.
    pub resize: Option<Resize>,
}

#[async_trait::async_trait]
pub trait Exec: Send + Sync {
    /// Starts `argv` in the container, with its environment, user and
    /// working directory. `Err` says why it could not start.
    async fn exec(&self, argv: &[String], opts: ExecOptions) -> Result<ExecSession, String>;
}
