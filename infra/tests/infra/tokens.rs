//! Tokens as a careless operator or a log reader meets them: a short token is refused,
//! `local up` never prints one, and no struct holding one prints it with `{:?}`.
use clap::Parser;
use infra::local::free_port_cluster;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{local_up, workspace, INFRA};
const CLUSTER: &str = "cluster-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef01";

/// Runs `infra ARGS` for at most `within`; its exit code (`None`: still running, killed).
fn run_for(args: &[&str], env: &[(&str, &str)], within: Duration) -> (Option<i32>, String) {
    let mut cmd = Command::new(INFRA);
    cmd.args(args)
        .current_dir(workspace())
        .env_remove("BOOKSTORE_CLUSTER_TOKEN")
        .env_remove("BOOKSTORE_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
            return (status.code(), err);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    (None, String::new())
}

#[test]
fn a_token_shorter_than_16_characters_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("cluster.csv");
    std::fs::write(&file, free_port_cluster(2, 2).unwrap().to_text()).unwrap();
    let f = file.to_str().unwrap();
    let o = out.path().to_str().unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case; 3] = [
        (
            &[
                "serve",
                "catalog",
                "--cluster",
                f,
                "--output-dir",
                o,
                "--cluster-token",
                "short-token",
            ],
            &[],
        ),
        (
            &[
                "serve",
                "frontend",
                "--cluster",
                f,
                "--output-dir",
                o,
                "--cluster-token",
                CLUSTER,
                "--admin-token",
                "short-admin",
            ],
            &[],
        ),
        (
            &["local", "up", "--cluster", f, "--output-dir", o],
            &[
                ("BOOKSTORE_CLUSTER_TOKEN", CLUSTER),
                ("BOOKSTORE_ADMIN_TOKEN", "short-admin"),
            ],
        ),
    ];
    for (args, env) in cases {
        let (code, err) = run_for(args, env, Duration::from_secs(3));
        assert_eq!(code, Some(2), "infra {args:?} ran with a short token");
        assert!(err.contains("at least 16 characters"), "{err}");
    }
}

#[test]
fn local_up_never_prints_a_token() {
    let _machine = crate::MACHINE.blocking_read();
    let out = tempfile::tempdir().unwrap();
    let mut child = local_up(out.path())
        .env("BOOKSTORE_CLUSTER_TOKEN", CLUSTER)
        .env("BOOKSTORE_ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.contains("Ctrl-C stops every server") {
            break;
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    assert!(printed.contains("bookstore is up"), "{printed}");
    assert!(
        !printed.contains(ADMIN) && !printed.contains(CLUSTER),
        "local up printed a token:\n{printed}"
    );
    assert!(printed.contains("local-up.json"), "{printed}");
}

#[derive(Parser, Debug)]
struct ServiceFlags {
    #[command(flatten)]
    common: bookstore_common::cli::ServiceArgs,
}

#[test]
fn structs_holding_tokens_do_not_print_them() {
    let flags = ServiceFlags::parse_from(["x", "--cluster-token", CLUSTER]);
    let up = infra::control::UpState {
        pid: 1,
        frontend: "http://127.0.0.1:8000".into(),
        control: "http://127.0.0.1:9000".into(),
        admin_token: ADMIN.into(),
    };
    let local = infra::local::LocalOptions {
        cluster_token: CLUSTER.into(),
        admin_token: ADMIN.into(),
        ..Default::default()
    };
    let node = bookstore_replication::node::NodeOptions::new(
        0,
        vec![],
        "catalog",
        vec!["http://127.0.0.1:8010".into()],
        "/tmp/x".into(),
        CLUSTER,
    );
    for shown in [
        format!("{flags:?}"),
        format!("{up:?}"),
        format!("{local:?}"),
        format!("{node:?}"),
    ] {
        assert!(
            !shown.contains(CLUSTER) && !shown.contains(ADMIN),
            "a token in {shown}"
        );
    }
}
