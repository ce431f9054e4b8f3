//! The `loadtest` binary: help, argument checks, and a short run against the baseline.
use std::process::Command;

use crate::support::Baseline;

fn loadtest() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["baseline", "--help"],
        &["gen-books", "--help"],
        &["chaos", "--help"],
        &["server-cpu", "--help"],
    ] {
        let out = loadtest().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}

/// `server-cpu`'s defaults parse (its `--delay` of 0s once did not): without a running
/// cluster it fails on the missing `local-up.json`, not on its arguments.
#[test]
fn server_cpu_defaults_are_valid() {
    let out = loadtest()
        .args(["server-cpu", "--local-up-dir", "/nonexistent-output"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent-output/local-up.json"), "{err}");
}

#[test]
fn bad_arguments_are_refused() {
    // A run of 5 requests to a target that nothing answers, and one bad argument more.
    let run_with = |bad: &[&'static str]| -> Vec<&'static str> {
        let run = ["run", "--target", "http://127.0.0.1:1", "--requests", "5"];
        run.iter().chain(bad).copied().collect()
    };
    for args in [
        vec!["run", "--target", "http://127.0.0.1:1"],
        run_with(&["--duration", "1s"]),
        run_with(&["--workload", "nope"]),
        run_with(&["--clients", "0"]),
        run_with(&["--workload", "buy", "--compare-cache"]),
        vec![
            "gen-books",
            "--count",
            "0",
            "--out",
            "/tmp/never-written.csv",
        ],
        vec![
            "gen-books",
            "--count",
            "10",
            "--out",
            "/nonexistent-dir/b.csv",
        ],
    ] {
        let out = loadtest().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_against_the_baseline_and_writes_results() {
    let _machine = crate::MACHINE.read().await;
    let baseline = Baseline::start();
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["run", "--target", &baseline.url])
        .args([
            "--workload",
            "lookup",
            "--clients",
            "1,2",
            "--requests",
            "50",
        ])
        .args(["--run-id", "cli", "--out"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    baseline.stop().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("p99 (ms)") && stdout.contains("throughput (req/s)"),
        "{stdout}"
    );
    let rows = loadtest::report::read_csv(&dir.path().join("cli/results.csv")).unwrap();
    assert_eq!(rows.iter().map(|r| r.count).collect::<Vec<_>>(), [50, 50]);
    let report = loadtest::report::read_json(&dir.path().join("cli/results.json")).unwrap();
    assert_eq!(report.run_id, "cli");
}

#[test]
fn gen_books_writes_a_file_the_catalog_loads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("books.csv");
    let out = loadtest()
        .args(["gen-books", "--count", "250000", "--seed", "3", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("200000/250000 books written"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("topic-0000 has 1000 books"));
    let books = bookstore_common::config::load_books(&file).unwrap();
    assert_eq!(books.len(), 250_000);
    assert_eq!(books.last().unwrap().item_number, 250_000);
    assert_eq!(
        books.iter().filter(|b| b.topic == "topic-0123").count(),
        1000
    );
}
