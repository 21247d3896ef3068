//! CPU accounting for guests that share the node's executor threads.
//!
//! Guests are futures on a shared tokio runtime, not processes, so there is
//! no cgroup to read. What a container costs is the time the executor
//! spends polling its futures: measured around each poll with the monotonic
//! clock (tens of nanoseconds), since a per-thread CPU clock is a system
//! call per poll. The difference: a thread the kernel preempts mid-poll
//! counts as busy, so on an oversubscribed machine usage reads high.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A container's running total of CPU time, in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct CpuMeter(Arc<AtomicU64>);

impl CpuMeter {
    pub fn nanos(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn add(&self, d: Duration) {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// `f`, with the time spent polling it charged to this meter.
    pub fn meter<F: Future>(&self, f: F) -> Metered<F> {
        Metered {
            inner: f,
            meter: self.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A future whose polls are timed; see [`CpuMeter::meter`].
    pub struct Metered<F> {
        #[pin]
        inner: F,
        meter: CpuMeter,
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let started = Instant::now();
        let out = this.inner.poll(cx);
        this.meter.add(started.elapsed());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn polls_are_charged_and_waits_are_not() {
        let meter = CpuMeter::default();
        meter
            .meter(async {
                let spin = Instant::now();
                while spin.elapsed() < Duration::from_millis(20) {
                    std::hint::spin_loop();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            })
            .await;
        let charged = Duration::from_nanos(meter.nanos());
        assert!(charged >= Duration::from_millis(20), "{charged:?}");
        assert!(charged < Duration::from_millis(150), "{charged:?}");
    }
}
