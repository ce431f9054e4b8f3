//! `infra ec2 down`: terminate a run's instances, then delete its security group and the
//! key pair `up` made; what the state file lists and whatever carries the run's tag, so a
//! run killed at any point, or whose state file is lost, is still found. `--all-runs`
//! does that for every run in the region.
use super::api::Api;
use super::cli::{ApiArgs, DownArgs};
use super::state::{self, Phase, RunState};
use super::{check_run_id, say};
use std::path::Path;

/// `down`: see [`super::cli::Ec2Command::Down`].
pub async fn command(a: &DownArgs) -> anyhow::Result<()> {
    if a.all_runs {
        return down_all(&a.api, &a.sel.output_dir).await;
    }
    let run = match a.sel.run.clone() {
        Some(r) => r,
        None => match state::pick_run(
            &a.sel.output_dir,
            None,
            &[Phase::Creating, Phase::Up, Phase::Deployed],
        ) {
            Ok(s) => s.run_id,
            Err(_) => {
                println!(
                    "no run in {} is up: nothing to take down (`down --run ID` or `down --all-runs` look for resources by tag)",
                    state::runs_dir(&a.sel.output_dir).display()
                );
                return Ok(());
            }
        },
    };
    down(&a.api, &a.sel.output_dir, &run).await
}

/// `down --run RUN`: what the state file lists plus whatever carries the run's tag.
pub async fn down(api_args: &ApiArgs, out: &Path, run: &str) -> anyhow::Result<()> {
    check_run_id(run)?;
    let st = RunState::load(out, run).ok();
    if st.is_none() {
        say(&format!(
            "[down] no state file for run {run}; looking for its resources by tag"
        ));
    }
    let region = api_args
        .region
        .clone()
        .or_else(|| st.as_ref().map(|s| s.region.clone()));
    let endpoint = api_args
        .endpoint_url
        .clone()
        .or_else(|| st.as_ref().and_then(|s| s.endpoint_url.clone()));
    let api = Api::connect(region.as_deref(), endpoint.as_deref()).await?;
    let mut instances: Vec<String> = st
        .as_ref()
        .map(|s| s.instance_ids.clone())
        .unwrap_or_default();
    for (id, _) in api.tagged_instances(Some(run)).await? {
        if !instances.contains(&id) {
            instances.push(id);
        }
    }
    if instances.is_empty() {
        say(&format!("[down] run {run}: no instances"));
    } else {
        say(&format!(
            "[down] run {run}: terminating {}",
            instances.join(", ")
        ));
        api.terminate(&instances).await?;
        say("[down] instances terminated");
    }
    let known = st.as_ref().and_then(|s| s.security_group_id.clone());
    let groups = with_tagged(known, api.tagged_security_groups(Some(run)).await?);
    for g in &groups {
        api.delete_security_group(g).await?;
        say(&format!("[down] security group {g} deleted"));
    }
    let known = st
        .as_ref()
        .filter(|s| s.key_created)
        .and_then(|s| s.key_name.clone());
    let keys = with_tagged(known, api.tagged_key_pairs(Some(run)).await?);
    for k in &keys {
        api.delete_key_pair(k).await?;
        say(&format!("[down] key pair {k} deleted"));
    }
    if let Some(mut s) = st {
        s.phase = Phase::Down;
        s.save(out)?;
    }
    println!(
        "run {run} is down (nothing of it is left in region {})",
        api.region
    );
    Ok(())
}

/// The name the state file knows (if any), then the tagged ones it does not.
fn with_tagged(known: Option<String>, tagged: Vec<(String, String)>) -> Vec<String> {
    let mut names: Vec<String> = known.into_iter().collect();
    for (name, _) in tagged {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// `down --all-runs`: every tagged instance, group and key pair in the region.
pub async fn down_all(api_args: &ApiArgs, out: &Path) -> anyhow::Result<()> {
    let api = Api::connect(api_args.region.as_deref(), api_args.endpoint_url.as_deref()).await?;
    let instances = api.tagged_instances(None).await?;
    let groups = api.tagged_security_groups(None).await?;
    let keys = api.tagged_key_pairs(None).await?;
    let mut runs: Vec<String> = instances
        .iter()
        .chain(&groups)
        .chain(&keys)
        .map(|(_, r)| r.clone())
        .collect();
    runs.sort();
    runs.dedup();
    say(&format!(
        "[down] region {}: {} instances, {} security groups, {} key pairs of {} runs ({})",
        api.region,
        instances.len(),
        groups.len(),
        keys.len(),
        runs.len(),
        runs.join(", ")
    ));
    let ids: Vec<String> = instances.into_iter().map(|(i, _)| i).collect();
    if !ids.is_empty() {
        say(&format!("[down] terminating {}", ids.join(", ")));
        api.terminate(&ids).await?;
    }
    for (g, r) in &groups {
        api.delete_security_group(g).await?;
        say(&format!("[down] security group {g} (run {r}) deleted"));
    }
    for (k, r) in &keys {
        api.delete_key_pair(k).await?;
        say(&format!("[down] key pair {k} (run {r}) deleted"));
    }
    for mut s in state::list_runs(out) {
        if s.phase != Phase::Down
            && s.region == api.region
            && (runs.contains(&s.run_id) || s.endpoint_url == api.endpoint)
        {
            s.phase = Phase::Down;
            s.save(out)?;
        }
    }
    println!("every bookstore run in region {} is down", api.region);
    Ok(())
}
