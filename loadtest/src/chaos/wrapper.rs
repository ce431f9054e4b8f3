//! The server wrapper: the chaos cluster runs every server as
//! `loadtest serve KIND --id N ...` (this same binary is `LocalOptions::program`), which
//! takes the group id of that server (so iptables can tell its packets apart, see
//! [`super::net`]) and then execs the real server, `infra serve KIND --id N ...`, in the
//! same process: the pid the supervisor knows stays the server's.
use std::os::unix::process::CommandExt;

/// The infra binary to exec.
pub const INFRA_ENV: &str = "BOOKSTORE_CHAOS_INFRA";
/// Base of the servers' group ids (set only when partitions are on).
pub const GID_BASE_ENV: &str = "BOOKSTORE_CHAOS_GID_BASE";

/// The group id offset of a server, distinct for every server of a chaos cluster (up to
/// 5 frontends and caches, 20 catalog replicas, 10 coordinators, 20 order replicas):
/// frontend id, cache 5+id, catalog 10+id, coordinator 30+id, order 40+id.
pub fn gid_offset(kind: &str, id: u32) -> u32 {
    match kind {
        "frontend" => id,
        "cache" => 5 + id,
        "catalog" => 10 + id,
        "coordinator" => 30 + id,
        _ => 40 + id,
    }
}

/// When this process was started as a chaos server wrapper, becomes the server (never
/// returns on success) or returns the exit code; `None` for any other command line.
pub fn maybe_exec() -> Option<std::process::ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("serve") {
        return None;
    }
    let infra = std::env::var_os(INFRA_ENV)?;
    let kind = args.get(2).cloned().unwrap_or_default();
    let id: u32 = args
        .iter()
        .position(|a| a == "--id")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if let Some(base) = std::env::var(GID_BASE_ENV)
        .ok()
        .and_then(|b| b.parse::<u32>().ok())
    {
        let gid = base + gid_offset(&kind, id);
        // SAFETY: plain credential calls on this single-threaded process before exec.
        unsafe {
            let g = gid as libc::gid_t;
            if libc::setgroups(1, &g) != 0 || libc::setgid(g) != 0 {
                eprintln!(
                    "chaos wrapper: cannot take group {gid}: {}",
                    std::io::Error::last_os_error()
                );
                return Some(std::process::ExitCode::from(2));
            }
            // A change of credentials clears the parent-death signal: set it again so
            // the server still dies with its supervisor.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        }
    }
    let err = std::process::Command::new(infra)
        .args(&args[1..])
        .env_remove(INFRA_ENV)
        .env_remove(GID_BASE_ENV)
        .exec();
    eprintln!("chaos wrapper: cannot exec the server: {err}");
    Some(std::process::ExitCode::from(2))
}
