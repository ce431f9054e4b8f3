//! Coalescing concurrent calls into one: [`Batcher`] takes single requests from any
//! number of tasks and hands them to one call function in batches.
//!
//! It adds no delay: a request that finds a free slot goes out at once, alone. Only while
//! `in_flight` batches are already on their way do requests wait, and then they all leave
//! together in the next batch. Under load a service therefore makes one call per batch
//! instead of one per request (fewer HTTP hops, wake-ups and context switches), and when
//! idle it behaves as if there were no batcher at all.
//!
//! The wire side of a batch (one answer per request, with its own status and
//! `Server-Timing`) is [`crate::types::BatchItem`]. [`register_metrics`] exports how many
//! batches went out and how many requests they carried
//! (`bookstore_batches_total{batcher}`, `bookstore_batched_requests_total{batcher}`).
use crate::metrics::{catch_up, Metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

type Job<I, O> = (I, oneshot::Sender<O>);

/// How many batches may be on their way at once, per batcher or for all of them, as a
/// server's flags give it (`crate::cli::BatchArgs`). Unset: each batcher's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InFlight {
    /// For every batcher.
    pub all: Option<usize>,
    /// For one batcher, by name (`buys`, `updates`, `invalidations`).
    pub by_name: Vec<(String, usize)>,
}

impl InFlight {
    /// The batcher `name`'s setting: its own, else the one for all, else `default`.
    pub fn for_batcher(&self, name: &str, default: usize) -> usize {
        self.by_name
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .or(self.all)
            .filter(|n| *n > 0)
            .unwrap_or(default)
    }
}

static IN_FLIGHT: std::sync::OnceLock<InFlight> = std::sync::OnceLock::new();

/// Sets this process's batch settings, once, before any batcher starts (a server's
/// launch does). Later calls change nothing.
pub fn set_in_flight(settings: InFlight) {
    let _ = IN_FLIGHT.set(settings);
}

/// How many batches of the batcher `name` may be on their way at once: `default`, unless
/// this process's settings ([`set_in_flight`]) say otherwise.
pub fn in_flight(name: &str, default: usize) -> usize {
    IN_FLIGHT
        .get()
        .map_or(default, |s| s.for_batcher(name, default))
}

/// How many batches a batcher sent and how many requests they carried.
#[derive(Debug, Default)]
pub struct BatchStats {
    batches: AtomicU64,
    requests: AtomicU64,
}

impl BatchStats {
    /// `(batches, requests)` so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }
}

/// A handle on a batching task; cheap to clone. The task ends when every handle is gone.
#[derive(Debug)]
pub struct Batcher<I, O> {
    tx: mpsc::UnboundedSender<Job<I, O>>,
    stats: Arc<BatchStats>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
        }
    }
}

/// Exports the counts `stats` of the batcher `name` on every scrape of `metrics`.
pub fn register_metrics(metrics: &Metrics, name: &'static str, stats: Arc<BatchStats>) {
    type Labels = [(&'static str, &'static str); 1];
    let batches: Family<Labels, Counter> = metrics.add(
        "batches",
        "Batch calls this server sent to another (one HTTP request each)",
    );
    let requests: Family<Labels, Counter> =
        metrics.add("batched_requests", "Requests those batch calls carried");
    metrics.on_scrape(move || {
        let (b, r) = stats.get();
        catch_up(&batches.get_or_create(&[("batcher", name)]), b);
        catch_up(&requests.get_or_create(&[("batcher", name)]), r);
    });
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the batching task on the current tokio runtime. `call` gets at most
    /// `max_batch` requests at once, at most `in_flight` calls run at the same time, and
    /// each call must answer with one output per input, in order (a missing output fails
    /// its request: [`Batcher::call`] returns `None`).
    pub fn new<F, Fut>(max_batch: usize, in_flight: usize, call: F) -> Batcher<I, O>
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        // Unbounded because its senders are: every request waits for its answer, so the
        // queue holds at most one request per caller in flight (HTTP connections bound
        // those), and the task takes everything queued at each turn.
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(BatchStats::default());
        tokio::spawn(run(
            rx,
            max_batch.max(1),
            in_flight.max(1),
            call,
            stats.clone(),
        ));
        Batcher { tx, stats }
    }

    /// This batcher's counts.
    pub fn stats(&self) -> Arc<BatchStats> {
        self.stats.clone()
    }

    /// Sends `input` with the next batch and waits for its output; `None` if the batch
    /// failed to produce one (or the task is gone).
    pub async fn call(&self, input: I) -> Option<O> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((input, reply)).ok()?;
        rx.await.ok()
    }
}

async fn run<I, O, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<Job<I, O>>,
    max_batch: usize,
    in_flight: usize,
    call: F,
    stats: Arc<BatchStats>,
) where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<O>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        // A slot first: while none is free, requests pile up and leave together.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        let (inputs, replies): (Vec<I>, Vec<oneshot::Sender<O>>) = jobs.into_iter().unzip();
        let answer = call(inputs);
        tokio::spawn(async move {
            let outputs = answer.await;
            drop(slot);
            for (reply, out) in replies.into_iter().zip(outputs) {
                let _ = reply.send(out);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn a_lone_request_goes_out_alone_and_at_once() {
        let b = Batcher::new(8, 1, |xs: Vec<u32>| async move {
            xs.iter().map(|x| x * 2).collect::<Vec<_>>()
        });
        let t = std::time::Instant::now();
        assert_eq!(b.call(21).await, Some(42));
        assert!(t.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn requests_waiting_for_a_slot_leave_together_and_in_order() {
        let sizes = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let s = sizes.clone();
        let b = Batcher::new(100, 1, move |xs: Vec<u32>| {
            s.lock().push(xs.len());
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                xs.iter().map(|x| x + 1).collect::<Vec<_>>()
            }
        });
        let calls = (0..50).map(|i| {
            let b = b.clone();
            async move { (i, b.call(i).await) }
        });
        for (i, out) in futures::future::join_all(calls).await {
            assert_eq!(out, Some(i + 1));
        }
        let sizes = sizes.lock().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 50);
        assert_eq!(b.stats().get(), (sizes.len() as u64, 50));
        assert!(sizes.len() <= 3, "50 concurrent requests took {sizes:?}");
    }

    #[tokio::test]
    async fn batches_are_capped_and_run_at_most_in_flight_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let biggest = Arc::new(AtomicUsize::new(0));
        let (r, m, big) = (running.clone(), most.clone(), biggest.clone());
        let b = Batcher::new(4, 2, move |xs: Vec<u32>| {
            let (r, m) = (r.clone(), m.clone());
            big.fetch_max(xs.len(), Ordering::SeqCst);
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                xs
            }
        });
        let calls = (0..40).map(|i| {
            let b = b.clone();
            async move { b.call(i).await }
        });
        let outs = futures::future::join_all(calls).await;
        assert_eq!(outs, (0..40).map(Some).collect::<Vec<_>>());
        assert_eq!(biggest.load(Ordering::SeqCst), 4);
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_short_answer_fails_only_the_requests_it_left_out() {
        let b = Batcher::new(10, 1, |xs: Vec<u32>| async move {
            if xs == [0] {
                // Holds the only slot while 1 and 2 queue up behind it.
                tokio::time::sleep(Duration::from_millis(30)).await;
                return xs;
            }
            xs.into_iter().take(1).collect::<Vec<_>>()
        });
        let first = {
            let b = b.clone();
            tokio::spawn(async move { b.call(0).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (one, two) = tokio::join!(b.call(1), b.call(2));
        assert_eq!(first.await.unwrap(), Some(0));
        assert_eq!(one, Some(1));
        assert_eq!(two, None);
    }
}
