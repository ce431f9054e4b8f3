//! Open files as a server full of connections meets them (its own process: the limit
//! is the process's): a server raises its soft `RLIMIT_NOFILE` to the hard limit at
//! start, and takes no more connections than leave room for its own files and calls.
use bookstore_common::server::{serve_with, Limits};
use rusty_fork::rusty_fork_test;
use std::time::Duration;

fn nofile() -> (u64, u64) {
    rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap()
}

fn set_nofile(soft: u64, hard: u64) {
    rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard).unwrap();
}

rusty_fork_test! {
    #[test]
    fn a_server_raises_its_open_file_limit_to_the_hard_limit() {
        runtime().block_on(raises_its_open_file_limit());
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn raises_its_open_file_limit() {
    let (_, hard) = nofile();
    let hard = hard.min(4096);
    // As systemd or a login shell would leave it: a low soft limit under a higher hard one.
    set_nofile(256, hard);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_with(
        listener,
        1,
        Limits::default(),
        |_cfg| {},
        async {
            let _ = stopped.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (soft, _) = nofile();
    let _ = stop.send(());
    let _ = server.await;
    assert_eq!(soft, hard, "the soft limit stayed at {soft}");
}
