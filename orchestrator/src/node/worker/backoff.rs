//! Restart back-off, kubelet's shape with Wasm's numbers: the first restart
//! is immediate, then the delay starts in milliseconds and doubles up to a
//! cap; a container that ran long enough starts over.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// Running this long without a crash resets the delay.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

/// Per-container back-off state.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    /// Consecutive quick exits so far.
    failures: u32,
}

impl Backoff {
    /// Records an exit after running for `ran` and returns how long to wait
    /// before the next start.
    pub fn next_delay(&mut self, policy: &BackoffPolicy, ran: Duration) -> Duration {
        if ran >= policy.reset_after {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures == 1 {
            return Duration::ZERO;
        }
        let doublings = (self.failures - 2).min(40);
        policy
            .initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(policy.max)
            .min(policy.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let p = BackoffPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            reset_after: Duration::from_secs(1),
        };
        let mut b = Backoff::default();
        let quick = Duration::from_millis(1);
        let delays: Vec<u128> = (0..5)
            .map(|_| b.next_delay(&p, quick).as_millis())
            .collect();
        assert_eq!(delays, vec![0, 10, 20, 40, 50]);
        assert_eq!(b.next_delay(&p, Duration::from_secs(2)), Duration::ZERO);
        assert_eq!(b.next_delay(&p, quick), Duration::from_millis(10));
    }
}
