//! Helpers shared by the test files that run real processes (and the baseline server).
use std::path::PathBuf;

/// `infra` next to this test's target directory (target/<profile>/infra).
pub fn infra_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/infra
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let infra = profile_dir.join("infra");
    assert!(
        infra.is_file(),
        "{} is missing: these tests run the real servers; build them first with \
         `cargo build -p infra` (cargo test --workspace builds it too)",
        infra.display()
    );
    infra
}

/// The baseline server (one worker) on a free loopback port, until `stop`.
pub struct Baseline {
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Baseline {
    /// Starts it (inside a tokio runtime).
    pub fn start() -> Baseline {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(loadtest::baseline::serve(listener, 1, async {
            let _ = stopped.await;
        }));
        Baseline {
            url: format!("http://{addr}"),
            stop,
            server,
        }
    }

    /// Stops it and waits until it has stopped, cleanly.
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        self.server.await.unwrap().unwrap();
    }
}
