//! Group commit: every write applied since the last flush waits on the next
//! one, so a burst of concurrent writes costs one fsync instead of one each.
//! Events are published to watchers only after their flush, so nobody ever
//! observes a write that a crash could take back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};
use tracing::error;

use super::events::{lock, Event, EventLog};
use super::StoreError;

#[derive(Default)]
struct Pending {
    events: Vec<Arc<Event>>,
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
}

pub struct Committer {
    pending: Mutex<Pending>,
    wake: Notify,
    closed: AtomicBool,
}

/// Resolves once the write it was handed for is durable and published.
pub struct Ticket(oneshot::Receiver<Result<(), String>>);

impl Ticket {
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => {
                error!(%msg, "store flush failed");
                Err(StoreError::Closed)
            }
            Err(_) => Err(StoreError::Closed),
        }
    }
}

impl Committer {
    pub fn new() -> Arc<Self> {
        Arc::new(Committer {
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// Queues an applied write. Callers hold the store's write lock, so
    /// events queue in revision order.
    pub fn enqueue(&self, event: Arc<Event>) -> Ticket {
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&self.pending);
            p.events.push(event);
            p.waiters.push(tx);
        }
        self.wake.notify_one();
        Ticket(rx)
    }

    /// Ends the flush loop once what is queued has been flushed.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The flush loop; `flush` makes everything applied so far durable.
    pub async fn run<F, Fut>(self: Arc<Self>, log: Arc<EventLog>, flush: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
        F: Send,
    {
        loop {
            self.wake.notified().await;
            loop {
                let batch = std::mem::take(&mut *lock(&self.pending));
                if batch.waiters.is_empty() {
                    if self.closed.load(Ordering::SeqCst) {
                        return;
                    }
                    break;
                }
                let result = flush().await;
                if result.is_ok() {
                    log.publish(batch.events);
                }
                for w in batch.waiters {
                    // A waiter that went away (client hung up) needs no answer.
                    let _ = w.send(result.clone());
                }
            }
        }
    }
}
