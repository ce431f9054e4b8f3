//! Background tasks with an owner. A server's loops (following views, renewing leases,
//! filling caches) run in its [`Tasks`]; at a graceful stop it cancels them and waits
//! until every one has ended, so nothing of a stopped server runs on.
use std::future::Future;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The background tasks of one server (cheap to clone: clones share the tasks).
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Runs `task` until it ends or [`Tasks::stop`] cancels it.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Runs `task` to its own end: [`Tasks::stop`] waits for it but does not cancel it
    /// (for a task that must finish what it holds, and ends on its own once told to).
    pub fn spawn_uncancelled(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    /// Awaits `server` (a server's serve future) and then [`Tasks::stop`]s: how a
    /// server's `run` ends, so that no loop outlives the server it works for.
    pub async fn stop_after<T>(&self, server: impl Future<Output = T>) -> T {
        let out = server.await;
        self.stop().await;
        out
    }

    /// Cancels every task and returns once all have ended. Tasks spawned later are
    /// cancelled at once.
    pub async fn stop(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Tasks that have not ended.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_stop_ends_loops_that_never_end_on_their_own() {
        let tasks = Tasks::new();
        for _ in 0..3 {
            tasks.spawn(async {
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
        }
        tasks.spawn(async {});
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(tasks.len(), 3);
        tokio::time::timeout(Duration::from_secs(5), tasks.stop())
            .await
            .expect("the stop returns");
        assert!(tasks.is_empty());
        // Spawned after the stop: cancelled at once.
        tasks.spawn(std::future::pending());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(tasks.is_empty());
    }
}
