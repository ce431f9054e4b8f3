//! Calls to a replicated service (catalog or order): writes go to the primary, found by
//! following `421 {"primary": N}` answers and by trying the next replica when one does
//! not answer; reads can go to any replica that is caught up.
//!
//! The set of replicas can change at run time ([`Router::set_members`]): replicas added
//! by `infra local add` and retired by `infra local remove`. [`follow_views`] keeps a
//! router in step with the coordinators' view (who is primary, which replicas exist).
//! [`batcher`] sends concurrent writes to the primary as one batch call, and
//! [`batched_or_single`] resends alone a request the batch left with an unknown outcome.
use crate::batch::Batcher;
use crate::client::{CallError, Client};
use crate::coordinators::Coordinators;
use crate::types::{BatchAnswer, BatchItem, MAX_BATCH};
use bookstore_replication_core::wire::KindReport;
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The replicas of one kind, by id.
#[derive(Debug)]
pub struct Router {
    client: Client,
    /// Base URL by replica id; `None` for ids that were removed (ids are never reused).
    /// Base URL by replica id (`None`: retired); shared, so a call copies a pointer.
    urls: RwLock<Vec<Option<Arc<str>>>>,
    primary: AtomicUsize,
    next_read: AtomicUsize,
    /// A view was applied at least once (readiness: we know who is primary).
    knows_view: AtomicBool,
    /// How many times the believed primary changed (for `/metrics`).
    switches: AtomicU64,
    /// How long a call keeps trying replicas before it gives up.
    pub patience: Duration,
}

/// Whether a read must be served by the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    Primary,
    Any,
}

fn retryable(e: &CallError) -> bool {
    matches!(
        e,
        CallError::Unreachable(_)
            | CallError::Status { status: 503, .. }
            | CallError::Status { status: 421, .. }
    )
}

impl Router {
    pub fn new(client: Client, urls: Vec<String>) -> Router {
        Router {
            client,
            urls: RwLock::new(urls.into_iter().map(|u| Some(u.into())).collect()),
            primary: AtomicUsize::new(0),
            next_read: AtomicUsize::new(0),
            knows_view: AtomicBool::new(false),
            switches: AtomicU64::new(0),
            patience: Duration::from_secs(3),
        }
    }

    /// The current replicas: `(id, base URL)`.
    pub fn members(&self) -> Vec<(u32, String)> {
        self.urls
            .read()
            .iter()
            .enumerate()
            .filter_map(|(id, u)| u.as_ref().map(|u| (id as u32, u.to_string())))
            .collect()
    }

    /// Replaces the set of replicas (from the view service's member table). An empty
    /// table is ignored: a router always has somewhere to send.
    pub fn set_members(&self, members: &BTreeMap<u32, String>) {
        if members.is_empty() {
            return;
        }
        let len = *members.keys().next_back().expect("non-empty") as usize + 1;
        let mut urls = vec![None; len];
        for (id, url) in members {
            urls[*id as usize] = Some(Arc::from(url.as_str()));
        }
        let mut cur = self.urls.write();
        if *cur != urls {
            tracing::info!(members = ?members, "replica set changed");
            *cur = urls;
        }
    }

    /// The replica believed to be primary.
    pub fn primary(&self) -> usize {
        self.primary.load(Ordering::Relaxed)
    }

    /// Tells the router who the primary is (from a view).
    pub fn set_primary(&self, id: u32) {
        if self.is_member(id as usize) {
            if self.primary.swap(id as usize, Ordering::Relaxed) != id as usize {
                self.switches.fetch_add(1, Ordering::Relaxed);
            }
            self.knows_view.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a view (who is primary) has been learnt since start.
    pub fn knows_view(&self) -> bool {
        self.knows_view.load(Ordering::Relaxed)
    }

    /// How many times the replica this router sends writes to changed (failovers it
    /// followed, and wrong guesses it corrected).
    pub fn primary_switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    fn url(&self, id: usize) -> Option<Arc<str>> {
        self.urls.read().get(id).cloned().flatten()
    }

    fn is_member(&self, id: usize) -> bool {
        self.urls.read().get(id).is_some_and(|u| u.is_some())
    }

    /// The member after `id` (wrapping), or `id` itself if it is the only one.
    fn next_after(&self, id: usize) -> usize {
        let urls = self.urls.read();
        let n = urls.len().max(1);
        (1..=n)
            .map(|k| (id + k) % n)
            .find(|i| urls.get(*i).is_some_and(|u| u.is_some()))
            .unwrap_or(id)
    }

    fn count(&self) -> usize {
        self.urls.read().iter().filter(|u| u.is_some()).count()
    }

    /// POST `path` (with query) to the primary, with `headers`; follows the primary.
    pub async fn write<T: DeserializeOwned>(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<T, CallError> {
        self.post(path, headers, None).await.map(|(v, _)| v)
    }

    /// [`Router::write`], also returning the answer's `Server-Timing` header (to fold
    /// into the caller's with [`crate::timing::Timing::nest`]).
    pub async fn write_timed<T: DeserializeOwned>(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(T, Option<String>), CallError> {
        self.post(path, headers, None).await
    }

    /// POST a JSON body to the primary; follows the primary.
    pub async fn write_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        self.write_json_timed(path, body).await.map(|(v, _)| v)
    }

    /// [`Router::write_json`], also returning the answer's `Server-Timing` header.
    pub async fn write_json_timed<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(T, Option<String>), CallError> {
        let body = serde_json::to_vec(body).map_err(|e| CallError::Decode(e.to_string()))?;
        self.post(path, &[("content-type", "application/json")], Some(body))
            .await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<(T, Option<String>), CallError> {
        let deadline = Instant::now() + self.patience;
        let mut attempt = 0u32;
        loop {
            let mut target = self.primary();
            let base = match self.url(target) {
                Some(u) => u,
                None => {
                    // The primary we knew was removed: move on to a member.
                    let next = self.next_after(target);
                    self.follow_to(target, next);
                    target = next;
                    match self.url(target) {
                        Some(u) => u,
                        None => return Err(CallError::Unreachable("no replicas".into())),
                    }
                }
            };
            let url = format!("{base}{path}");
            let mut req = self.client.raw().post(&url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if attempt > 0 {
                req = req.header(crate::types::RESEND_HEADER, attempt.to_string());
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let answer = self.client.send_timed(req).await.and_then(|(b, timing)| {
                serde_json::from_slice::<T>(&b)
                    .map(|v| (v, timing))
                    .map_err(|e| CallError::Decode(e.to_string()))
            });
            match answer {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && Instant::now() < deadline => {
                    self.follow(target, &e);
                    attempt += 1;
                    if attempt.is_multiple_of(self.count().max(1) as u32) {
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn follow(&self, target: usize, e: &CallError) {
        let next = match e {
            CallError::Status { status: 421, body } => body
                .primary
                .map(|p| p as usize)
                .filter(|p| *p != target && self.is_member(*p))
                .unwrap_or_else(|| self.next_after(target)),
            _ => self.next_after(target),
        };
        self.follow_to(target, next);
    }

    fn follow_to(&self, target: usize, next: usize) {
        if next != target
            && self
                .primary
                .compare_exchange(target, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.switches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// GET `path` from the primary ([`Read::Primary`]) or from replicas in turn.
    pub async fn read(&self, path: &str, pref: Read) -> Result<bytes::Bytes, CallError> {
        let deadline = Instant::now() + self.patience;
        let mut attempt = 0usize;
        loop {
            let target = match pref {
                Read::Primary => self.primary(),
                Read::Any => {
                    let members = self.urls.read();
                    let n = members.len().max(1);
                    let start = self.next_read.fetch_add(1, Ordering::Relaxed);
                    (0..n)
                        .map(|k| (start + k) % n)
                        .find(|i| members.get(*i).is_some_and(|u| u.is_some()))
                        .unwrap_or(0)
                }
            };
            let result = match self.url(target) {
                Some(base) => self.client.get_bytes(&format!("{base}{path}")).await,
                None => Err(CallError::Unreachable(format!(
                    "replica {target} was removed"
                ))),
            };
            match result {
                Ok(b) => return Ok(b),
                Err(e) if retryable(&e) && Instant::now() < deadline => {
                    if pref == Read::Primary {
                        self.follow(target, &e);
                    }
                    attempt += 1;
                    if attempt.is_multiple_of(self.count().max(1)) {
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Router {
    /// Applies a coordinator's view report: the member table, then the primary.
    pub fn apply(&self, doc: &KindReport) {
        self.set_members(&doc.members);
        if let Some(v) = &doc.view {
            self.set_primary(v.primary);
        }
    }
}

/// A batch call's outcome for one request: the request's own answer (whatever its
/// status), or the failure of the whole call.
pub type Batched<T> = Result<BatchItem<T>, CallError>;

/// Starts a [`Batcher`] whose batches go to the primary as one `POST path` with the JSON
/// body `wrap(requests)` (following the primary as [`Router::write`] does), answered by a
/// [`BatchAnswer`] with one item per request.
pub fn batcher<I, B, T>(
    name: &str,
    in_flight: usize,
    router: &Arc<Router>,
    path: &'static str,
    wrap: fn(Vec<I>) -> B,
) -> Batcher<I, Batched<T>>
where
    I: Send + 'static,
    B: serde::Serialize + Send + Sync + 'static,
    T: DeserializeOwned + Send + 'static,
{
    let router = router.clone();
    Batcher::new(
        MAX_BATCH,
        crate::batch::in_flight(name, in_flight),
        move |requests: Vec<I>| {
            let router = router.clone();
            let n = requests.len();
            let body = wrap(requests);
            async move {
                let e = match router
                    .write_json_timed::<_, BatchAnswer<T>>(path, &body)
                    .await
                {
                    Ok((answer, _)) if answer.results.len() == n => {
                        return answer.results.into_iter().map(Ok).collect();
                    }
                    Ok((answer, _)) => CallError::Decode(format!(
                        "{} answers to a batch of {n}",
                        answer.results.len()
                    )),
                    Err(e) => e,
                };
                (0..n).map(|_| Err(e.clone())).collect()
            }
        },
    )
}

/// What one request sent through [`batcher`] gets: its answer and `Server-Timing`. A
/// request the batch answered with 421 or 503 (the replica stepped down, or the outcome is
/// unknown), or that a lost batch left without an answer, is sent again alone with
/// `single`, which follows the primary and retries.
pub async fn batched_or_single<T, F>(
    batched: Option<Batched<T>>,
    single: F,
) -> Result<(T, Option<String>), CallError>
where
    F: Future<Output = Result<(T, Option<String>), CallError>>,
{
    match batched {
        Some(Ok(item)) if !matches!(item.status, 421 | 503) => item.into_result(),
        Some(Err(e)) => Err(e),
        _ => single.await,
    }
}

/// Whether a request was sent again by a router ([`crate::types::RESEND_HEADER`]): an
/// earlier send may have been received, so no key in it is fresh.
pub fn is_resend(req: &actix_web::HttpRequest) -> bool {
    req.headers().contains_key(crate::types::RESEND_HEADER)
}

/// How long the coordinator leader holds a router's question when nothing changed.
const VIEW_WAIT: Duration = Duration::from_millis(1000);

/// Keeps the router in step with `kind`'s view, until the router is dropped: a long poll
/// of the coordinator leader, answered at once when the view or the members change, else
/// after a second. After a failure it asks again every `every`. No answer changes
/// nothing: the router keeps following 421 hints from the replicas.
pub fn follow_views(
    router: &Arc<Router>,
    coordinators: Arc<Coordinators>,
    kind: &'static str,
    every: Duration,
    tasks: &crate::tasks::Tasks,
) {
    let weak: Weak<Router> = Arc::downgrade(router);
    tasks.spawn(async move {
        let attempt = every.max(Duration::from_millis(100));
        let mut known: Option<u64> = None;
        loop {
            if weak.strong_count() == 0 {
                break;
            }
            match coordinators
                .watch_view(kind, known, VIEW_WAIT, attempt)
                .await
            {
                Ok(report) => {
                    let Some(router) = weak.upgrade() else { break };
                    router.apply(&report);
                    known = Some(report.version);
                }
                Err(_) => {
                    known = None;
                    tokio::time::sleep(every).await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ApiError;

    async fn single() -> Result<(u32, Option<String>), CallError> {
        Ok((99, None))
    }

    #[tokio::test]
    async fn only_unknown_outcomes_are_sent_again_alone() {
        let item = |r: Result<u32, ApiError>| Some(Ok(BatchItem::new(r, None)));
        // Answered in the batch: success or a definite failure.
        assert_eq!(batched_or_single(item(Ok(1)), single()).await.unwrap().0, 1);
        assert!(matches!(
            batched_or_single(item(Err(ApiError::OutOfStock)), single()).await,
            Err(CallError::Status { status: 409, .. })
        ));
        // The replica stepped down, or does not know: alone again, following the primary.
        let moved = item(Err(ApiError::NotPrimary { primary: None }));
        assert_eq!(batched_or_single(moved, single()).await.unwrap().0, 99);
        let unknown = item(Err(ApiError::Unavailable("retry".into())));
        assert_eq!(batched_or_single(unknown, single()).await.unwrap().0, 99);
        assert_eq!(batched_or_single(None, single()).await.unwrap().0, 99);
        // The whole batch failed after the router's own retries: no second round.
        let failed: Option<Batched<u32>> = Some(Err(CallError::Unreachable("down".into())));
        assert!(matches!(
            batched_or_single(failed, single()).await,
            Err(CallError::Unreachable(_))
        ));
    }
}
