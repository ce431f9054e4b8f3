//! Reaching the coordinator group: whoever needs a view, a member table or a read lease
//! (replicas, routers, operators) asks the leader, and finds it from any coordinator.
//!
//! [`Coordinators`] knows the group's base URLs (the cluster file's `coordinator` lines,
//! plus members learned from authoritative answers) and the last leader it heard of. A
//! call goes to that leader first. A follower answers `421` with `{"leader": url}`: the
//! call moves there at once (only to a URL already known as a coordinator, so the
//! cluster token never goes anywhere else). A coordinator that is down, paused or cut off
//! (no answer in time, or `503` because it cannot confirm it still leads) is skipped for
//! the next one. The call gives up when every coordinator was tried within its budget.
use crate::client::{CallError, Client};
use bytes::Bytes;
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use std::fmt::Display;
use std::time::{Duration, Instant};

/// `/vs/{kind}/view`: the path of the view service's report of `kind` on a coordinator.
pub fn view_path(kind: impl Display) -> String {
    format!("/vs/{kind}/view")
}

/// `/vs/{kind}/ping`: the path a replica of `kind` pings the view service at.
pub fn ping_path(kind: impl Display) -> String {
    format!("/vs/{kind}/ping")
}

/// The coordinator group, as one caller sees it.
#[derive(Debug)]
pub struct Coordinators {
    client: Client,
    known: RwLock<Known>,
}

#[derive(Debug, Default)]
struct Known {
    /// Every coordinator base URL, without a trailing `/`.
    urls: Vec<String>,
    /// Index in `urls` of the last leader heard of.
    leader: Option<usize>,
}

impl Coordinators {
    /// `urls`: the coordinators' base URLs (`http://host:port`).
    pub fn new(client: Client, urls: Vec<String>) -> Coordinators {
        let urls = urls
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        Coordinators {
            client,
            known: RwLock::new(Known { urls, leader: None }),
        }
    }

    /// Every coordinator known.
    pub fn urls(&self) -> Vec<String> {
        self.known.read().urls.clone()
    }

    /// The last leader heard of.
    pub fn leader(&self) -> Option<String> {
        let k = self.known.read();
        k.leader.and_then(|i| k.urls.get(i).cloned())
    }

    /// Adds coordinators learned from an authoritative answer (the group's members).
    pub fn learn<'a>(&self, urls: impl IntoIterator<Item = &'a str>) {
        let mut k = self.known.write();
        for u in urls {
            let u = u.trim_end_matches('/');
            if !u.is_empty() && !k.urls.iter().any(|x| x == u) {
                k.urls.push(u.to_string());
            }
        }
    }

    fn set_leader(&self, url: &str) -> bool {
        let mut k = self.known.write();
        match k.urls.iter().position(|x| x == url.trim_end_matches('/')) {
            Some(i) => {
                k.leader = Some(i);
                true
            }
            None => false,
        }
    }

    /// The order to try coordinators in: the leader first, then the others.
    fn order(&self) -> Vec<String> {
        let k = self.known.read();
        let n = k.urls.len();
        let start = k.leader.unwrap_or(0);
        (0..n).map(|i| k.urls[(start + i) % n].clone()).collect()
    }

    /// Sends `make(client, base_url)` to the leader (found as described in the module
    /// docs) and returns the body of its 2xx answer. Each attempt may take `attempt`;
    /// the whole call at most `budget`. A non-2xx answer other than 421 and 503 is the
    /// leader's answer and is returned as is.
    pub async fn call(
        &self,
        make: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
        attempt: Duration,
        budget: Duration,
    ) -> Result<Bytes, CallError> {
        let deadline = Instant::now() + budget;
        let mut queue = self.order();
        // What each coordinator tried so far answered (a 503 or no answer).
        let mut tried: Vec<(String, CallError)> = Vec::new();
        let mut last = CallError::Unreachable("no coordinator is known".into());
        while let Some(base) = (!queue.is_empty()).then(|| queue.remove(0)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let req = make(self.client.raw(), &base).timeout(attempt.min(left));
            match self.client.send(req).await {
                Ok(body) => {
                    self.set_leader(&base);
                    return Ok(body);
                }
                Err(CallError::Status { status: 421, body }) => {
                    let hint = body.leader.clone();
                    last = CallError::Status { status: 421, body };
                    tried.push((base, last.clone()));
                    if let Some(leader) = hint {
                        let leader = leader.trim_end_matches('/').to_string();
                        // The leader was asked already: its own answer (a 503 "retry
                        // shortly", say) is the answer, not this follower's pointer to it.
                        if let Some((_, e)) = tried.iter().find(|(u, _)| *u == leader) {
                            if e.status() == Some(503) {
                                return Err(e.clone());
                            }
                        } else if self.set_leader(&leader) {
                            queue.retain(|u| *u != leader);
                            queue.insert(0, leader);
                        }
                    }
                }
                Err(e @ (CallError::Unreachable(_) | CallError::Status { status: 503, .. })) => {
                    tried.push((base, e.clone()));
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// `GET path` from the leader, decoded as JSON.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        attempt: Duration,
        budget: Duration,
    ) -> Result<T, CallError> {
        let body = self
            .call(|c, base| c.get(format!("{base}{path}")), attempt, budget)
            .await?;
        serde_json::from_slice(&body).map_err(|e| CallError::Decode(e.to_string()))
    }

    /// The leader's report of `kind` once it differs from version `known`, or after
    /// `wait` (a long poll; see the coordinator's `GET /vs/{kind}/view?version=`); at once
    /// when nothing is known yet.
    pub async fn watch_view(
        &self,
        kind: &str,
        known: Option<u64>,
        wait: Duration,
        attempt: Duration,
    ) -> Result<bookstore_replication_core::wire::KindReport, CallError> {
        let Some(known) = known else {
            return self.view(kind, attempt).await;
        };
        let path = format!(
            "{}?version={known}&wait_ms={}",
            view_path(kind),
            wait.as_millis()
        );
        let report: bookstore_replication_core::wire::KindReport = self
            .get_json(&path, wait + attempt, wait + attempt * 3)
            .await?;
        self.learn(report.coordinators.values().map(String::as_str));
        Ok(report)
    }

    /// The leader's report of `kind` (`GET /vs/{kind}/view`).
    pub async fn view(
        &self,
        kind: &str,
        attempt: Duration,
    ) -> Result<bookstore_replication_core::wire::KindReport, CallError> {
        let report: bookstore_replication_core::wire::KindReport = self
            .get_json(&view_path(kind), attempt, attempt * 3)
            .await?;
        self.learn(report.coordinators.values().map(String::as_str));
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_is_tried_first_and_hints_must_be_known() {
        let c = Coordinators::new(
            Client::new("t"),
            vec![
                "http://a:1/".into(),
                "http://b:2".into(),
                "http://c:3".into(),
            ],
        );
        assert_eq!(c.order()[0], "http://a:1");
        assert!(c.set_leader("http://c:3"));
        assert_eq!(c.order(), vec!["http://c:3", "http://a:1", "http://b:2"]);
        assert!(
            !c.set_leader("http://evil:4"),
            "an unknown URL is never followed"
        );
        c.learn(["http://d:4", "http://a:1"]);
        assert_eq!(c.urls().len(), 4);
        assert!(c.set_leader("http://d:4"));
    }

    #[test]
    fn view_service_paths() {
        assert_eq!(view_path("catalog"), "/vs/catalog/view");
        assert_eq!(ping_path("order"), "/vs/order/ping");
    }
}
