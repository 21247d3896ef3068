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

/// Keeps everything in memory: what the runtime's own tests read back.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Capture(std::sync::Mutex<Vec<u8>>);

#[cfg(test)]
impl OutputSink for Capture {
    fn write(&self, _: StdStream, bytes: &[u8]) {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
impl Capture {
    pub(crate) fn text(&self) -> String {
        self.0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}
