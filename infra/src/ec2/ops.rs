//! `infra ec2 test`, `collect` and `stop` on a deployed run: the seed scenarios and a short
//! load run against a frontend, every host's logs pulled here, every service stopped.
use super::reach::{self, on_all_hosts, run_and_echo};
use super::say;
use super::ssh::sh_quote;
use super::state::RunState;
use anyhow::Context;
use std::path::Path;

/// `test`: the seed scenarios against frontend 0, then a short load run if a `loadtest`
/// binary is at hand.
pub async fn test(
    out: &Path,
    st: &RunState,
    books_file: &Path,
    load_seconds: u64,
) -> anyhow::Result<bool> {
    let url = reach::public_frontends(st)?.remove(0);
    let books = bookstore_common::config::load_books(books_file)?;
    let log = st.dir(out).join("client_log");
    say(&format!("[test] running the seed scenarios against {url}"));
    let verdicts = crate::scenarios::run_all(&url, &books, &log, None).await?;
    print!("{}", crate::scenarios::table(&verdicts));
    println!("client log: {}", log.display());
    let ok = verdicts.iter().all(|v| v.passed || v.skipped);
    if load_seconds == 0 {
        say("[test] load run skipped (--load-seconds 0)");
        return Ok(ok);
    }
    Ok(load_run(out, st, &url, load_seconds).await? && ok)
}

/// A `load_seconds` lookup run with the `loadtest` binary next to this one; true if it
/// passed or there is no such binary (it says so).
async fn load_run(out: &Path, st: &RunState, url: &str, load_seconds: u64) -> anyhow::Result<bool> {
    let exe = std::env::current_exe()?;
    let loadtest = exe.with_file_name("loadtest");
    if !loadtest.is_file() {
        say(&format!(
            "[test] load run skipped: no loadtest binary next to {} (build it: cargo build --release -p loadtest)",
            exe.display()
        ));
        return Ok(true);
    }
    say(&format!(
        "[test] load run: {load_seconds} s of lookups from 4 clients against {url}"
    ));
    let status = tokio::process::Command::new(&loadtest)
        .args([
            "run",
            "--target",
            url,
            "--workload",
            "lookup",
            "--clients",
            "4",
            "--duration",
        ])
        .arg(format!("{load_seconds}s"))
        .arg("--out")
        .arg(st.dir(out).join("loadtest"))
        .args(["--run-id", "lookup", "--quiet"])
        .status()
        .await
        .with_context(|| loadtest.display().to_string())?;
    if !status.success() {
        say(&format!("[test] the load run failed: {status}"));
    }
    Ok(status.success())
}

/// `collect`: every host's logs (not the replicas' data) into `<run>/<instance>/`.
pub async fn collect(out: &Path, st: &RunState) -> anyhow::Result<()> {
    let jobs = reach::links(st)?.into_iter().map(|l| {
        let dest = st.dir(out).join(&l.instance_id);
        async move {
            l.target
                .pull_dir(&format!("{}/output", l.dir), &["data"], &dest)
                .await
                .with_context(|| l.instance_id.clone())?;
            let n = std::fs::read_dir(&dest).map(|d| d.count()).unwrap_or(0);
            say(&format!(
                "[collect] {}: {n} files into {}",
                l.instance_id,
                dest.display()
            ));
            Ok::<_, anyhow::Error>(())
        }
    });
    on_all_hosts("collect failed", jobs).await
}

/// `stop`: stops every host's services.
pub async fn stop(st: &RunState) -> anyhow::Result<()> {
    let jobs = reach::links(st)?.into_iter().map(|l| async move {
        let script = format!(
            "d={}\nif [ -x \"$d/bookstore.sh\" ]; then \"$d/bookstore.sh\" stop; fi\n",
            sh_quote(&l.dir)
        );
        run_and_echo("stop", &l, &script).await
    });
    on_all_hosts("stop failed", jobs).await
}
