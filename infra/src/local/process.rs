//! Supervised child processes: logs appended to a file, SIGTERM from the kernel when the
//! supervisor dies, and stopping with SIGTERM then SIGKILL.
use anyhow::Context;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// A command for a supervised child: stdin closed, stdout and stderr appended to `log`,
/// killed when dropped, and (Linux) sent SIGTERM by the kernel if the supervisor dies.
pub(crate) fn supervised(program: &Path, log: &Path) -> anyhow::Result<Command> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| log.display().to_string())?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; it only sets a flag on the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    Ok(cmd)
}

/// SIGTERM to a child we own, without waiting.
pub(super) fn sigterm(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on a child we own.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
}

/// Waits for a child until `deadline`, then SIGKILLs it.
pub(super) async fn reap(mut child: Child, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    if tokio::time::timeout(left, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// SIGTERM, then SIGKILL if the child has not exited after 3 s.
pub(crate) async fn terminate(child: Child) {
    sigterm(&child);
    reap(child, Instant::now() + Duration::from_secs(3)).await;
}

pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
