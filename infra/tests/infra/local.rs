//! `infra local up` and `infra local test` as a user runs them: real processes.
use infra::local::free_port_cluster;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{local_up, workspace, INFRA};

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Waits up to 5 s for every one of `pids` to be gone.
fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `infra local up` (see `local_up`) spawned with `stdout`, and its stderr to read.
fn spawn_up(out: &Path, stdout: Stdio) -> (Child, BufReader<ChildStderr>) {
    let mut child = local_up(out)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    (child, stderr)
}

/// The pid in the next line of `local up`'s `stderr` that names one ("... (pid N)"): the
/// next server it started.
fn next_pid(stderr: &mut impl BufRead) -> i32 {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "infra stopped early"
        );
        if let Some(p) = line.split("(pid ").nth(1) {
            return p.trim().trim_end_matches(')').parse().unwrap();
        }
    }
}

/// `infra local up` with `args`, run to its end from the workspace root: its exit code
/// and its stderr.
fn local_up_with(args: &[&OsStr]) -> (Option<i32>, String) {
    let r = Command::new(INFRA)
        .args(["local", "up"])
        .args(args)
        .current_dir(workspace())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr).into_owned();
    (r.status.code(), err)
}

#[test]
fn local_test_runs_the_seed_scenarios_and_passes() {
    let _machine = crate::MACHINE.blocking_read();
    let out = tempfile::tempdir().unwrap();
    let r = Command::new(INFRA)
        .args(["local", "test", "--output-dir"])
        .arg(out.path())
        .current_dir(workspace())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        stdout.contains("scenarios: 7 passed, 0 failed, 0 skipped"),
        "{stdout}"
    );
    let log = std::fs::read_to_string(out.path().join("client_log")).unwrap();
    assert!(log.contains("Get response 409"));
    let orders = std::fs::read_to_string(out.path().join("test-cluster/order0_log")).unwrap();
    assert_eq!(orders.matches("bought book 1").count(), 3);
}

#[test]
fn local_up_serves_and_stops_every_process_on_sigterm() {
    let _machine = crate::MACHINE.blocking_read();
    let out = tempfile::tempdir().unwrap();
    let (mut child, mut stderr) = spawn_up(out.path(), Stdio::piped());
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let pids: Vec<i32> = (0..6).map(|_| next_pid(&mut stderr)).collect();
    let mut stdout_lines = stdout.lines();
    let first = stdout_lines.next().unwrap().unwrap();
    assert!(
        first.starts_with("bookstore is up: http://127.0.0.1:"),
        "{first}"
    );
    let url = first.trim_start_matches("bookstore is up: ").to_string();
    let body = reqwest::blocking_get(&format!("{url}/lookup?item_number=2"));
    assert!(body.contains("RPCs for Dummies"), "{body}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success());
    wait_gone(&pids);
    assert!(pids.iter().all(|p| !alive(*p)), "orphans left: {pids:?}");
}

/// A SIGTERM that comes while `local up` is still starting the cluster is not lost and
/// does not kill it by the signal's default action: it stops every server it started
/// and exits 0. (The handler used to be installed only after "bookstore is up", and CI
/// once sent the signal in that gap.)
#[test]
fn a_sigterm_during_start_stops_every_server_and_exits_cleanly() {
    let _machine = crate::MACHINE.blocking_read();
    let out = tempfile::tempdir().unwrap();
    let (mut child, mut stderr) = spawn_up(out.path(), Stdio::null());
    let pid = next_pid(&mut stderr);
    // The first server has started; the cluster is not up yet.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // Drain stderr so that the child never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    wait_gone(&[pid]);
    assert!(!alive(pid), "server {pid} left running");
}

#[test]
fn local_up_names_the_server_whose_port_is_taken() {
    let out = tempfile::tempdir().unwrap();
    let cluster = free_port_cluster(2, 2).unwrap();
    let taken = cluster
        .server(bookstore_common::config::Kind::Catalog, 1)
        .unwrap()
        .addr();
    let _hold = std::net::TcpListener::bind(&taken).unwrap();
    let file = out.path().join("cluster.csv");
    std::fs::write(&file, cluster.to_text()).unwrap();
    let (code, err) = local_up_with(&[
        "--cluster".as_ref(),
        file.as_ref(),
        "--output-dir".as_ref(),
        out.path().as_ref(),
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains(&format!("catalog 1: {taken} is already in use")),
        "{err}"
    );
}

#[test]
fn bad_files_are_refused_with_the_line() {
    let out = tempfile::tempdir().unwrap();
    let books = out.path().join("books.csv");
    std::fs::write(
        &books,
        "item_number,title,topic,stock,cost\n1,A,t,3,10\n2,B,t,lots,10\n",
    )
    .unwrap();
    let (code, err) = local_up_with(&["--books".as_ref(), books.as_ref()]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("books.csv:3: stock must be a whole number"),
        "{err}"
    );
    let cluster = out.path().join("cluster.csv");
    std::fs::write(&cluster, "frontend,127.0.0.1:1\nshop,127.0.0.1:2\n").unwrap();
    let (_, err) = local_up_with(&["--cluster".as_ref(), cluster.as_ref()]);
    assert!(
        err.contains("cluster.csv:2: unknown kind \"shop\""),
        "{err}"
    );
}

mod reqwest {
    /// A minimal blocking GET (keeps the test free of an async runtime).
    pub fn blocking_get(url: &str) -> String {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async { ::reqwest::get(url).await.unwrap().text().await.unwrap() })
    }
}

#[test]
fn a_big_books_file_is_checked_by_its_head_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.csv");
    let mut text = String::from("item_number,title,topic,stock,cost\n");
    for n in 1..=40_000 {
        text.push_str(&format!("{n},A title long enough,topic,3,10\n"));
    }
    text.push_str("40001,B,t,lots,10\n");
    assert!(text.len() > 1 << 20);
    std::fs::write(&path, &text).unwrap();
    // The bad last line is left to the catalogs, which check every line.
    infra::local::check_books(&path).unwrap();
    // A bad head is refused with the exact line, as for a small file.
    std::fs::write(&path, text.replacen("1,A title", "1,A title,extra", 1)).unwrap();
    let err = format!("{:#}", infra::local::check_books(&path).unwrap_err());
    assert!(err.contains("big.csv:2: expected 5 fields, got 6"), "{err}");
    let small = dir.path().join("small.csv");
    std::fs::write(
        &small,
        "item_number,title,topic,stock,cost\n1,A,t,3,10\n2,B,t,x,1\n",
    )
    .unwrap();
    let err = format!("{:#}", infra::local::check_books(&small).unwrap_err());
    assert!(err.contains("small.csv:3: stock must be"), "{err}");
}
