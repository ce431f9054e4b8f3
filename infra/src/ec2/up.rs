//! `infra ec2 up`: a key pair, a security group and the instances of a new run, its
//! cluster file and its state file. The state file is written before each resource is
//! created and after, so `down` can always finish the job.
use super::api::Api;
use super::cli::UpArgs;
use super::layout::{self, Placed, Shape, REPLICAS};
use super::ssh;
use super::state::{Host, Phase, RunState};
use super::{check_run_id, say, NAME_PREFIX};
use anyhow::{anyhow, bail, Context};
use std::path::Path;

/// `up`: see [`super::cli::Ec2Command::Up`].
pub async fn up(a: &UpArgs, run: &str) -> anyhow::Result<RunState> {
    let placed = check(a, run)?;
    let out = &a.sel.output_dir;
    say(&format!("[up] run {run}: connecting to EC2"));
    let api = Api::connect(a.api.region.as_deref(), a.api.endpoint_url.as_deref()).await?;
    say(&format!(
        "[up] region {}; looking for the newest image named {:?} (owner {})",
        api.region, a.image_name, a.image_owner
    ));
    let (image_id, image_name) = api.find_image(&a.image_name, &a.image_owner).await?;
    say(&format!("[up] image {image_id} ({image_name})"));
    let mut st = new_state(a, run, &api, &image_id, image_name, placed.len())?;
    st.save(out)?;
    let key_name = key_pair(a, &api, &mut st).await?;
    security_group(a, &api, &mut st).await?;
    say(&format!(
        "[up] launching {} {} instances",
        a.hosts, a.instance_type
    ));
    let group = st.security_group_id.clone().unwrap_or_default();
    let ids = api
        .launch(a.hosts, &image_id, &a.instance_type, &key_name, &group, run)
        .await?;
    st.instance_ids = ids.clone();
    st.save(out)?;
    say(&format!(
        "[up] launched {}; waiting until they run",
        ids.join(", ")
    ));
    api.wait_running(&ids).await?;
    st.hosts = hosts(&api, &ids, &placed).await?;
    let addrs: Vec<String> = st.hosts.iter().map(|h| h.private_ip.clone()).collect();
    let cluster = layout::cluster(st.services(), &addrs);
    let cluster_file = st.dir(out).join("cluster.csv");
    std::fs::write(&cluster_file, cluster.to_text())
        .with_context(|| cluster_file.display().to_string())?;
    st.phase = Phase::Up;
    st.save(out)?;
    report(&st, out, &cluster_file);
    Ok(st)
}

/// The shape of the run and its services' places, checked before anything is created.
fn check(a: &UpArgs, run: &str) -> anyhow::Result<Vec<Placed>> {
    check_run_id(run)?;
    layout::check_cidr(&a.allow)?;
    let out = &a.sel.output_dir;
    if RunState::path(out, run).exists() {
        bail!(
            "run {run} exists already ({}); pick another --run",
            RunState::path(out, run).display()
        );
    }
    if let Some(k) = &a.ssh_key {
        if !k.exists() {
            bail!("--ssh-key {}: no such file", k.display());
        }
    }
    if a.base_port == 0 {
        bail!("--base-port 0: give a port from 1 on");
    }
    let shape = Shape {
        coordinators: a.coordinators,
        catalogs: REPLICAS,
        orders: REPLICAS,
    };
    layout::place(a.hosts as usize, a.base_port, &shape.services())
}

/// The state of a run about to be created: nothing exists yet.
fn new_state(
    a: &UpArgs,
    run: &str,
    api: &Api,
    image_id: &str,
    image_name: String,
    n_services: usize,
) -> anyhow::Result<RunState> {
    let n_services = u16::try_from(n_services).map_err(|_| anyhow!("too many services"))?;
    Ok(RunState {
        run_id: run.to_string(),
        created_unix: bookstore_common::clock::now_ms() / 1000,
        phase: Phase::Creating,
        region: api.region.clone(),
        endpoint_url: a.api.endpoint_url.clone().or_else(|| api.endpoint.clone()),
        allow_cidr: a.allow.clone(),
        instance_type: a.instance_type.clone(),
        image_id: Some(image_id.to_string()),
        image_name: Some(image_name),
        key_name: None,
        key_created: false,
        ssh_key: a.ssh_key.clone().map(|k| k.canonicalize().unwrap_or(k)),
        ssh_user: a.ssh_user.clone(),
        security_group_id: None,
        instance_ids: Vec::new(),
        hosts: Vec::new(),
        base_port: a.base_port,
        ports_used: n_services,
        ports_opened: n_services,
        cluster_token: token("BOOKSTORE_CLUSTER_TOKEN")?.into(),
        admin_token: token("BOOKSTORE_ADMIN_TOKEN")?.into(),
        deployment: None,
    })
}

/// The user's own key pair, or a new ed25519 key whose private half stays here and whose
/// public half is imported. Returns the key pair's name.
async fn key_pair(a: &UpArgs, api: &Api, st: &mut RunState) -> anyhow::Result<String> {
    let out = &a.sel.output_dir;
    if let Some(k) = &a.key_name {
        say(&format!("[up] using your key pair {k}"));
        st.key_name = Some(k.clone());
        return Ok(k.clone());
    }
    let name = format!("{NAME_PREFIX}{}", st.run_id);
    let key = st.dir(out).join("ssh_key");
    let public = ssh::keygen(&key, &name).await?;
    st.key_name = Some(name.clone());
    st.key_created = true;
    st.ssh_key = Some(key.canonicalize().unwrap_or(key));
    st.save(out)?;
    api.import_key(&name, &public, &st.run_id).await?;
    say(&format!(
        "[up] key pair {name} (private key {})",
        st.ssh_key
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    ));
    Ok(name)
}

/// The run's security group: ssh and the frontends' ports from the operator's CIDR, every
/// service port from the group's members.
async fn security_group(a: &UpArgs, api: &Api, st: &mut RunState) -> anyhow::Result<()> {
    let name = format!("{NAME_PREFIX}{}", st.run_id);
    let group = api.create_security_group(&name, &st.run_id).await?;
    st.security_group_id = Some(group.clone());
    st.save(&a.sel.output_dir)?;
    let last_port = a.base_port + st.ports_opened - 1;
    let frontends = (a.base_port, a.base_port + a.coordinators as u16 - 1);
    api.authorize(&group, &a.allow, frontends, (a.base_port, last_port))
        .await?;
    say(&format!(
        "[up] security group {group}: ssh (22) and the frontends ({}-{}) from {} only; ports {}-{last_port} from the group only",
        frontends.0, frontends.1, a.allow, a.base_port
    ));
    Ok(())
}

/// The launched instances as hosts, with the services placed on each.
async fn hosts(api: &Api, ids: &[String], placed: &[Placed]) -> anyhow::Result<Vec<Host>> {
    let described = api.describe(ids).await?;
    let mut hosts = Vec::new();
    for (h, inst) in described.iter().enumerate() {
        let id = inst.instance_id().unwrap_or_default().to_string();
        let private_ip = inst
            .private_ip_address()
            .with_context(|| format!("instance {id} has no private address"))?
            .to_string();
        hosts.push(Host {
            instance_id: id,
            public_ip: inst.public_ip_address().map(str::to_string),
            private_ip,
            services: placed
                .iter()
                .filter(|p| p.host == h)
                .map(|p| p.service)
                .collect(),
        });
    }
    Ok(hosts)
}

fn report(st: &RunState, out: &Path, cluster_file: &Path) {
    let run = &st.run_id;
    println!(
        "run {run} is up ({} instances, region {})",
        st.hosts.len(),
        st.region
    );
    for h in &st.hosts {
        println!(
            "  {}  public {}  private {}  runs {}",
            h.instance_id,
            h.public_ip.as_deref().unwrap_or("-"),
            h.private_ip,
            h.services
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("  cluster file: {}", cluster_file.display());
    println!("  state file:   {}", RunState::path(out, run).display());
    println!("  next: infra ec2 deploy --run {run}   (and `infra ec2 down --run {run}` when done)");
}

/// A token from `var`, else a random one; it goes into an environment file, so only
/// characters that need no quoting there.
fn token(var: &str) -> anyhow::Result<String> {
    let t = std::env::var(var).unwrap_or_else(|_| crate::local::random_token());
    if t.is_empty()
        || !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._~+/=-".contains(c))
    {
        bail!("{var} may hold only letters, digits and ._~+/=- (it goes into an environment file)");
    }
    bookstore_common::auth::check_token(var, &t)?;
    Ok(t)
}
