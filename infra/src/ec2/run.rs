//! `infra ec2 run`: up, deploy, test, then always collect, stop and down, whatever
//! happened before (an error, failed tests, Ctrl-C or SIGTERM).
use super::cli::RunArgs;
use super::state::RunState;
use super::{check_run_id, deploy, down, new_run_id, ops, say, up};
use anyhow::anyhow;

/// `run`: up, deploy, test, collect, stop, down. Teardown runs whatever happened before:
/// an error, failed tests, Ctrl-C or SIGTERM. If this process is killed outright, the
/// state file lets `infra ec2 down` finish.
pub async fn run(a: RunArgs) -> anyhow::Result<bool> {
    let run = a.up.sel.run.clone().unwrap_or_else(new_run_id);
    check_run_id(&run)?;
    let out = a.up.sel.output_dir.clone();
    let work = async {
        let st = up::up(&a.up, &run).await?;
        let st = deploy::deploy(&out, st, &a.deploy, None, None).await?;
        let ok = ops::test(&out, &st, &a.deploy.books, a.load_seconds).await?;
        Ok::<bool, anyhow::Error>(ok)
    };
    let result = tokio::select! {
        r = work => r,
        _ = bookstore_common::server::termination() => Err(anyhow!("interrupted (Ctrl-C or SIGTERM)")),
    };
    match &result {
        Ok(true) => say("[run] tests passed; collecting logs and tearing down"),
        Ok(false) => say("[run] tests FAILED; collecting logs and tearing down"),
        Err(e) => say(&format!("[run] {e:#}\ninfra ec2: [run] tearing down (further Ctrl-C is ignored; if this process is killed, `infra ec2 down --run {run}` finishes)")),
    }
    let mut teardown_errors = Vec::new();
    match RunState::load(&out, &run) {
        Ok(st) => {
            if st.deployment.is_some() {
                if let Err(e) = ops::collect(&out, &st).await {
                    teardown_errors.push(format!("{e:#}"));
                }
                if let Err(e) = ops::stop(&st).await {
                    teardown_errors.push(format!("{e:#}"));
                }
            }
            if let Err(e) = down::down(&a.up.api, &out, &run).await {
                teardown_errors.push(format!(
                    "{e:#}\n  finish with: infra ec2 down --run {run} --output-dir {}",
                    out.display()
                ));
            }
        }
        Err(_) => say("[run] nothing was created; nothing to tear down"),
    }
    let teardown = if teardown_errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("teardown: {}", teardown_errors.join("\n")))
    };
    match (result, teardown) {
        (Ok(ok), Ok(())) => Ok(ok),
        (Ok(_), Err(t)) => Err(t),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(t)) => Err(anyhow!("{e:#}\n{t:#}")),
    }
}
