//! Calls to a replicated service (catalog or order): writes go to the primary, found by
//! following `421 {"primary": N}` answers and by trying the next replica when one does
//! not answer; reads can go to any replica that is caught up.
use crate::client::{CallError, Client};
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The replicas of one kind, by id.
#[derive(Debug)]
pub struct Router {
    client: Client,
    urls: Vec<String>,
    primary: AtomicUsize,
    next_read: AtomicUsize,
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
            urls,
            primary: AtomicUsize::new(0),
            next_read: AtomicUsize::new(0),
            switches: AtomicU64::new(0),
            patience: Duration::from_secs(3),
        }
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The replica believed to be primary.
    pub fn primary(&self) -> usize {
        self.primary.load(Ordering::Relaxed)
    }

    /// Tells the router who the primary is (from a view).
    pub fn set_primary(&self, id: u32) {
        if (id as usize) < self.urls.len()
            && self.primary.swap(id as usize, Ordering::Relaxed) != id as usize
        {
            self.switches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many times the replica this router sends writes to changed (failovers it
    /// followed, and wrong guesses it corrected).
    pub fn primary_switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// POST `path` (with query) to the primary, with `headers`; follows the primary.
    pub async fn write<T: DeserializeOwned>(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<T, CallError> {
        self.post(path, headers, None).await
    }

    /// POST a JSON body to the primary; follows the primary.
    pub async fn write_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        let body = serde_json::to_vec(body).map_err(|e| CallError::Decode(e.to_string()))?;
        self.post(path, &[("content-type", "application/json")], Some(body))
            .await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<T, CallError> {
        let deadline = Instant::now() + self.patience;
        let mut attempt = 0u32;
        loop {
            let target = self.primary();
            let url = format!("{}{path}", self.urls[target]);
            let mut req = self.client.raw().post(&url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let answer = self.client.send(req).await.and_then(|b| {
                serde_json::from_slice::<T>(&b).map_err(|e| CallError::Decode(e.to_string()))
            });
            match answer {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && Instant::now() < deadline => {
                    self.follow(target, &e);
                    attempt += 1;
                    if attempt.is_multiple_of(self.urls.len().max(1) as u32) {
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
                .filter(|p| *p < self.urls.len() && *p != target)
                .unwrap_or((target + 1) % self.urls.len()),
            _ => (target + 1) % self.urls.len(),
        };
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
        let n = self.urls.len();
        let mut attempt = 0usize;
        loop {
            let target = match pref {
                Read::Primary => self.primary(),
                Read::Any => self.next_read.fetch_add(1, Ordering::Relaxed) % n,
            };
            let url = format!("{}{path}", self.urls[target]);
            match self.client.get_bytes(&url).await {
                Ok(b) => return Ok(b),
                Err(e) if retryable(&e) && Instant::now() < deadline => {
                    if pref == Read::Primary {
                        self.follow(target, &e);
                    }
                    attempt += 1;
                    if attempt.is_multiple_of(n) {
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}
