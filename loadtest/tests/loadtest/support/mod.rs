//! Helpers shared by the test files that run real processes.
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
