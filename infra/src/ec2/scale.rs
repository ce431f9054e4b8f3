//! `infra ec2 add KIND` and `remove KIND ID`: scale a deployed run's catalog or order
//! replicas out and in, with nothing else restarted. The admin calls (register, retire)
//! go to the coordinator leader from a coordinator's host, over ssh; the waits run there
//! too ([`super::reach`]).
use super::api::Api;
use super::cli::{ApiArgs, Until};
use super::reach::{self, bracket, install_script, link, run_and_echo};
use super::say;
use super::ssh::sh_quote;
use super::state::{Host, RunState, Service};
use crate::admin::AdminError;
use anyhow::{anyhow, bail, Context};
use bookstore_common::config::Kind;
use std::path::Path;
use std::time::{Duration, Instant};

/// The host `add` puts a new replica of `kind` on: the least loaded host without one of
/// that kind, else the least loaded (lowest index on a tie), as `up` places services.
pub fn pick_host(hosts: &[Host], kind: Kind) -> usize {
    let pick = |allow_same: bool| {
        (0..hosts.len())
            .filter(|&h| allow_same || !hosts[h].runs(kind))
            .min_by_key(|&h| (hosts[h].services.len(), h))
    };
    pick(false).or_else(|| pick(true)).unwrap_or(0)
}

/// The port of the next service: `base_port + ports_used`, and past every port in use
/// (a state file from before `ports_used` existed holds 0).
pub fn next_port(st: &RunState) -> anyhow::Result<u16> {
    let counted = u32::from(st.base_port) + u32::from(st.ports_used);
    let past_used = st
        .services()
        .map(|(_, s)| u32::from(s.port) + 1)
        .max()
        .unwrap_or(0);
    u16::try_from(counted.max(past_used))
        .map_err(|_| anyhow!("run {}: no service port left below 65536", st.run_id))
}

/// Opens `port` to the group's members if `up` did not (a state file from before
/// `ports_opened` always opens it; an existing rule is fine).
async fn open_port(st: &RunState, api_args: &ApiArgs, port: u16) -> anyhow::Result<()> {
    let opened = u32::from(st.base_port) + u32::from(st.ports_opened);
    if st.ports_opened > 0 && u32::from(port) < opened {
        return Ok(());
    }
    let group = st
        .security_group_id
        .clone()
        .with_context(|| format!("run {} has no security group", st.run_id))?;
    let region = api_args.region.clone().unwrap_or_else(|| st.region.clone());
    let endpoint = api_args
        .endpoint_url
        .clone()
        .or_else(|| st.endpoint_url.clone());
    let api = Api::connect(Some(&region), endpoint.as_deref()).await?;
    api.authorize_within(&group, port).await?;
    say(&format!(
        "[add] security group {group}: port {port} open to the group's members"
    ));
    Ok(())
}

/// `add`: see [`super::cli::Ec2Command::Add`]. Returns the new replica's id.
pub async fn add(
    out: &Path,
    mut st: RunState,
    api_args: &ApiArgs,
    kind: Kind,
    wait_seconds: u64,
) -> anyhow::Result<u32> {
    let run = st.run_id.clone();
    let h = pick_host(&st.hosts, kind);
    let port = next_port(&st)?;
    let l = link(&st, h)?;
    open_port(&st, api_args, port).await?;
    let url = format!("http://{}:{port}", bracket(&l.service_host));
    let answer = reach::admin(
        &st,
        &format!(
            "/admin/cluster/register?kind={kind}&url={}",
            bookstore_common::client::encode(&url)
        ),
    )
    .await
    .with_context(|| format!("register {kind} at {url} with the coordinators"))?;
    let id = answer["id"]
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .with_context(|| format!("register answered without an id: {answer}"))?;
    say(&format!(
        "[add] registered {kind} {id} at {url} ({})",
        l.instance_id
    ));
    // Recorded before anything starts, so `stop`, `collect` and `remove` know it.
    st.hosts[h].services.push(Service::new(kind, id, port));
    st.ports_used = port - st.base_port + 1;
    st.save(out)?;
    let undo = format!(
        "{kind} {id} is registered and in the state file; `infra ec2 remove --run {run} {kind} {id}` retires it"
    );
    install_script(out, &st, h)
        .await
        .map_err(|e| anyhow!("{e:#}\n{undo}"))?;
    let script = format!(
        "cd {} && ./bookstore.sh start-one {kind} {id} && ./bookstore.sh health 60 {kind} {id}\n",
        sh_quote(&l.dir)
    );
    run_and_echo("add", &l, &script)
        .await
        .map_err(|e| anyhow!("{e:#}\n{undo}"))?;
    let limit = Duration::from_secs(wait_seconds);
    reach::wait_member("add", &st, kind, id, Until::Synced, limit)
        .await
        .map_err(|e| anyhow!("{e:#}\n{undo}"))?;
    println!(
        "{kind} {id} runs on {} at {url} and is a synced replica",
        l.instance_id
    );
    Ok(id)
}

/// Retires replica `id` of `kind` with the coordinators, retrying for up to 30 s while a
/// view change in progress answers 503 "retry shortly". A replica retired already (by an
/// earlier `remove` that failed later) is fine.
async fn retire(st: &RunState, kind: Kind, id: u32) -> anyhow::Result<()> {
    let path = format!("/admin/cluster/unregister?kind={kind}&id={id}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match reach::admin(st, &path).await {
            Ok(_) => {
                say(&format!("[remove] {kind} {id} retired by the coordinators"));
                return Ok(());
            }
            Err(AdminError::Refused {
                status: 404,
                message,
            }) if message.contains("not a member") => {
                say(&format!(
                    "[remove] {kind} {id} was retired already (an earlier remove?)"
                ));
                return Ok(());
            }
            Err(e) if e.retry_shortly() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("retire {kind} {id}: {e}"),
        }
    }
}

/// `remove`: see [`super::cli::Ec2Command::Remove`].
pub async fn remove(
    out: &Path,
    mut st: RunState,
    kind: Kind,
    id: u32,
    wait_seconds: u64,
) -> anyhow::Result<()> {
    let h = st.host_of(kind, id).with_context(|| {
        let have: Vec<String> = st.ids(kind).iter().map(u32::to_string).collect();
        format!(
            "run {} has no {kind} {id} (its {kind} replicas: {})",
            st.run_id,
            have.join(", ")
        )
    })?;
    let l = link(&st, h)?;
    retire(&st, kind, id).await?;
    let limit = Duration::from_secs(wait_seconds);
    reach::wait_member("remove", &st, kind, id, Until::Gone, limit).await?;
    let script = format!(
        "cd {} && ./bookstore.sh stop-one {kind} {id}\n",
        sh_quote(&l.dir)
    );
    run_and_echo("remove", &l, &script).await?;
    st.hosts[h].services.retain(|s| !s.is(kind, id));
    st.save(out)?;
    install_script(out, &st, h).await?;
    println!(
        "{kind} {id} is retired and stopped (its data stays in {}/output on {})",
        l.dir, l.instance_id
    );
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ec2::state::Phase;

    pub(crate) fn host(id: &str, services: &[(Kind, u32, u16)]) -> Host {
        Host {
            instance_id: id.into(),
            public_ip: None,
            private_ip: "10.0.0.1".into(),
            services: services
                .iter()
                .map(|&(k, i, p)| Service::new(k, i, p))
                .collect(),
        }
    }

    #[test]
    fn a_run_state_does_not_print_its_tokens() {
        let mut st = state(Vec::new(), 0);
        st.cluster_token = "cluster-token-0123456789".into();
        st.admin_token = "admin-token-0123456789ab".into();
        let shown = format!("{st:?}");
        assert!(!shown.contains("cluster-token-0123456789"), "{shown}");
        assert!(!shown.contains("admin-token-0123456789ab"), "{shown}");
    }

    pub(crate) fn state(hosts: Vec<Host>, ports_used: u16) -> RunState {
        RunState {
            run_id: "r".into(),
            created_unix: 0,
            phase: Phase::Deployed,
            region: "us-east-1".into(),
            endpoint_url: None,
            allow_cidr: "203.0.113.7/32".into(),
            instance_type: "t3.micro".into(),
            image_id: None,
            image_name: None,
            key_name: None,
            key_created: false,
            ssh_key: None,
            ssh_user: "admin".into(),
            security_group_id: None,
            instance_ids: Vec::new(),
            hosts,
            base_port: 8000,
            ports_used,
            ports_opened: 7,
            cluster_token: "c".into(),
            admin_token: "a".into(),
            deployment: None,
        }
    }

    #[test]
    fn a_new_replica_goes_to_the_least_loaded_host_without_its_kind() {
        use Kind::*;
        let hosts = vec![
            host("a", &[(Frontend, 0, 8000), (Catalog, 0, 8002)]),
            host(
                "b",
                &[(Cache, 0, 8001), (Catalog, 1, 8003), (Order, 0, 8004)],
            ),
            host("c", &[(Order, 1, 8005)]),
        ];
        assert_eq!(pick_host(&hosts, Catalog), 2);
        // Every host has an order replica but a: a is also lighter than b.
        assert_eq!(
            pick_host(&hosts, Order),
            0,
            "a has none and is lighter than b"
        );
        let full = vec![
            host("a", &[(Catalog, 0, 8002), (Order, 0, 8004)]),
            host("b", &[(Catalog, 1, 8003)]),
        ];
        assert_eq!(pick_host(&full, Catalog), 1, "else the least loaded");
    }

    #[test]
    fn ports_are_never_reused() {
        let hosts = vec![host(
            "a",
            &[(Kind::Frontend, 0, 8000), (Kind::Catalog, 2, 8006)],
        )];
        assert_eq!(next_port(&state(hosts.clone(), 7)).unwrap(), 8007);
        // A removed service's port (8007) is not handed out again.
        assert_eq!(next_port(&state(hosts.clone(), 8)).unwrap(), 8008);
        // A state file from before `ports_used`: past the highest port in use.
        assert_eq!(next_port(&state(hosts, 0)).unwrap(), 8007);
        let mut st = state(vec![], 0);
        st.base_port = 65_535;
        st.ports_used = 1;
        assert!(next_port(&st).is_err());
    }
}
