//! What `infra ec2` runs on a deployed host, over ssh, with the tokens of the host's `env`
//! file (hidden commands): `ready` and `wait-member` poll the coordinator leader's views
//! with the cluster token, `admin` makes one admin call with the admin token. They run
//! there so that no token crosses the internet in clear HTTP, and so that they reach the
//! ports open to the group's members only.
use super::cli::{AdminArgs, ReadyArgs, Until, WaitMemberArgs};
use crate::admin::{self, AdminAnswer};
use crate::membership::{self, Standing};
use anyhow::bail;
use bookstore_common::client::Client;
use bookstore_common::config::{ClusterConfig, Kind};
use bookstore_common::coordinators::Coordinators;
use bookstore_replication::node::Status;
use std::time::{Duration, Instant};

/// The coordinators' base URLs, from a cluster file.
fn coordinator_urls(cluster: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let c = ClusterConfig::load(cluster)?;
    Ok(c.urls(Kind::Coordinator))
}

/// `infra ec2 ready`: waits until every catalog and order replica is in the view and
/// synced.
pub async fn ready(a: &ReadyArgs) -> anyhow::Result<()> {
    wait_ready(
        &coordinator_urls(&a.cluster)?,
        &a.cluster_token,
        &[(Kind::Catalog, a.catalogs), (Kind::Order, a.orders)],
        Duration::from_secs(a.seconds),
    )
    .await?;
    println!("every catalog and order replica is in the view and synced");
    Ok(())
}

/// `infra ec2 wait-member`: waits until one replica is a synced member, or out of the
/// view, printing what it sees as it changes.
pub async fn wait_member(a: &WaitMemberArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let say_line = |line: &str| {
        println!("[{:5.1} s] {line}", started.elapsed().as_secs_f64());
    };
    wait_member_with(
        &coordinator_urls(&a.cluster)?,
        &a.cluster_token,
        a.kind,
        a.id,
        a.until,
        Duration::from_secs(a.seconds),
        &say_line,
    )
    .await
}

/// `infra ec2 admin PATH`: one admin call to the coordinator leader; prints its outcome
/// as one JSON line ([`AdminAnswer`]) and succeeds whatever the coordinators answered.
pub async fn admin(a: &AdminArgs) -> anyhow::Result<()> {
    admin::check_path(&a.path)?;
    let client = Client::with_timeout(&a.cluster_token, Duration::from_secs(30));
    let group = Coordinators::new(client, coordinator_urls(&a.cluster)?);
    let answer: AdminAnswer = admin::post(&group, &a.admin_token, &a.path).await;
    println!("{}", serde_json::to_string(&answer)?);
    Ok(())
}

/// Polls the view service until replica `id` of `kind` is a synced member that acts in
/// the current view (`Until::Synced`, as `local add` waits), or is out of the view
/// (`Until::Gone`). `progress` hears every change of what it sees.
async fn wait_member_with(
    coordinators: &[String],
    cluster_token: &str,
    kind: Kind,
    id: u32,
    until: Until,
    limit: Duration,
    progress: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let client = Client::with_timeout(cluster_token, Duration::from_secs(2));
    let group = Coordinators::new(client.clone(), coordinators.to_vec());
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        let (done, seen) = match group.view(kind.name(), Duration::from_secs(2)).await {
            Err(e) => (false, format!("the coordinators do not answer: {e}")),
            Ok(doc) => {
                let summary = membership::summary(&doc);
                match (until, membership::standing(&doc, id)) {
                    (_, Standing::NoView) => (false, summary),
                    (Until::Gone, Standing::Out) => {
                        (true, format!("{kind} {id} is out of the view ({summary})"))
                    }
                    (Until::Gone, _) => (
                        false,
                        format!("{kind} {id} is still in the view ({summary})"),
                    ),
                    (Until::Synced, Standing::Member { epoch, role }) => {
                        let status = match doc.members.get(&id) {
                            Some(u) => client
                                .get_json::<Status>(&format!("{u}/replication/status"))
                                .await
                                .ok(),
                            None => None,
                        };
                        let acting = status
                            .as_ref()
                            .is_some_and(|s| membership::acts_as(s, epoch, role));
                        (
                            acting,
                            if acting {
                                format!("{kind} {id} is a synced {role} and serves ({summary})")
                            } else {
                                format!(
                                    "{kind} {id} is a synced {role} in the view; waiting until it acts in epoch {epoch} and serves reads"
                                )
                            },
                        )
                    }
                    (Until::Synced, Standing::CatchingUp) => (
                        false,
                        format!("{kind} {id} is a backup, catching up ({summary})"),
                    ),
                    (Until::Synced, Standing::Out) => (
                        false,
                        format!("{kind} {id} is not in the view yet ({summary})"),
                    ),
                }
            }
        };
        if seen != last {
            progress(&seen);
            last = seen;
        }
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{kind} {id} is not {} after {limit:?} (last seen: {last})",
                match until {
                    Until::Synced => "a synced member",
                    Until::Gone => "out of the view",
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the coordinator leader until every catalog and order replica is in the view
/// and synced (the same readiness as `local up`).
async fn wait_ready(
    coordinators: &[String],
    cluster_token: &str,
    replicas: &[(Kind, u32)],
    limit: Duration,
) -> anyhow::Result<()> {
    let client = Client::with_timeout(cluster_token, Duration::from_secs(2));
    let group = Coordinators::new(client, coordinators.to_vec());
    let deadline = Instant::now() + limit;
    for &(kind, n) in replicas {
        let mut last;
        loop {
            match group.view(kind.name(), Duration::from_secs(2)).await {
                Ok(v) => {
                    let backups = v.view.as_ref().map_or(0, |v| v.backups.len());
                    if v.view.is_some() && backups + 1 == n as usize && v.synced.len() == backups {
                        break;
                    }
                    last = serde_json::to_string(&v).unwrap_or_default();
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                bail!(
                    "the {kind} replicas did not all join the view within {limit:?} (last answer: {last})"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}
