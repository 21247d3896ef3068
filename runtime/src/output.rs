//! Where a container's stdout and stderr go. The node agent decides how
//! lines are stored (kubelet's CRI log files); the runtime only hands bytes
//! over as the guest writes them.

/// Which of the guest's streams some bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdStream {
    Stdout,
    Stderr,
}

impl StdStream {
    pub fn as_str(self) -> &'static str {
        match self {
            StdStream::Stdout => "stdout",
            StdStream::Stderr => "stderr",
        }
    }
}

/// Receives a container's output. Called from the guest's task, so it must
/// not block for long: append and return.
pub trait OutputSink: Send + Sync + 'static {
    fn write(&self, stream: StdStream, bytes: &[u8]);
}

/// Discards everything: for benchmarks and tests that do not read output.
pub struct Discard;

impl OutputSink for Discard {
    fn write(&self, _: StdStream, _: &[u8]) {}
}
