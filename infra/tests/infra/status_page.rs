//! The `/status` page rendered by headless Chromium (Debian's `chromium` package) on a
//! local cluster of real processes: it shows catalog 0 as primary; after catalog 0 is
//! killed with SIGKILL it shows catalog 1 as primary and catalog 0 down.
//!
//! Without chromium the test prints why and skips, except under CI=true, where it fails
//! (.ci/run installs chromium). Set `BOOKSTORE_STATUS_SCREENSHOT=path.png` to also save a
//! screenshot of the page after the failover (that is how docs/status.png is made).
use crate::workspace;
use bookstore_common::config::Kind;
use infra::local::{free_port_cluster, LocalCluster, LocalOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Chromium's path, or None: then a failure under CI, a printed skip elsewhere.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let why = "chromium is not installed (apt-get install chromium; .ci/run does)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{why}");
        }
        eprintln!("SKIPPED: {why}");
    }
    found
}

/// Runs headless Chromium on `url` with `args` (it lets the page run for 3 s of virtual
/// time first, so the page has fetched and rendered `/status.json`); returns stdout.
fn chromium_run(chromium: &Path, profile: &Path, url: &str, args: &[&str]) -> String {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

/// The value of attribute `attr` on the element with `data-server="<server>"`.
fn attr(dom: &str, server: &str, attr: &str) -> Option<String> {
    let at = dom.find(&format!("data-server=\"{server}\""))?;
    let start = dom[..at].rfind('<')?;
    let tag = &dom[start..start + dom[start..].find('>')?];
    let from = tag.find(&format!("{attr}=\""))? + attr.len() + 2;
    Some(tag[from..from + tag[from..].find('"')?].to_string())
}

/// The stock the page shows for book `item`.
fn stock(dom: &str, item: u32) -> Option<u32> {
    let at = dom.find(&format!("data-book=\"{item}\""))?;
    let tag = &dom[at..at + dom[at..].find('>')?];
    let from = tag.find("data-stock=\"")? + "data-stock=\"".len();
    tag[from..from + tag[from..].find('"')?].parse().ok()
}

async fn buy(frontend: &str, item: u32) {
    let r = reqwest::Client::new()
        .post(format!("{frontend}/buy?item_number={item}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

/// What the page says about a server: (role, health).
fn shown(dom: &str, server: &str) -> (String, String) {
    (
        attr(dom, server, "data-role").unwrap_or_default(),
        attr(dom, server, "data-health").unwrap_or_default(),
    )
}

/// Asserts what the page says about each `(server, role, health)`.
fn assert_rows(dom: &str, rows: &[(&str, &str, &str)]) {
    for (server, role, health) in rows {
        let want = (role.to_string(), health.to_string());
        assert_eq!(shown(dom, server), want, "{server}: {dom}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_chromium_shows_the_failover_of_the_catalog_primary() {
    let _machine = crate::MACHINE.read().await;
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cluster = free_port_cluster(2, 2).unwrap();
    std::fs::write(dir.path().join("cluster.csv"), cluster.to_text()).unwrap();
    let mut options = LocalOptions::new(
        dir.path().join("cluster.csv"),
        workspace().join("data/books.csv"),
        dir.path().join("out"),
        "status-page-cluster-token".into(),
        "status-page-admin-token".into(),
    );
    options.program = Some(env!("CARGO_BIN_EXE_infra").into());
    let mut lc = LocalCluster::start(options, &|_| {}).await.unwrap();
    let initial = bookstore_common::config::load_books(&workspace().join("data/books.csv"))
        .unwrap()
        .into_iter()
        .find(|b| b.item_number == 1)
        .unwrap()
        .stock;
    let frontend = lc.frontend_url();
    buy(&frontend, 1).await;
    buy(&frontend, 1).await;
    let url = format!("{frontend}/status");
    let profile = dir.path().join("chromium-profile");
    let dump = |profile: PathBuf, url: String, chromium: PathBuf| {
        tokio::task::spawn_blocking(move || {
            chromium_run(&chromium, &profile, &url, &["--dump-dom"])
        })
    };

    let dom = dump(profile.clone(), url.clone(), chromium.clone())
        .await
        .unwrap();
    assert_rows(
        &dom,
        &[
            ("catalog-0", "primary", "up"),
            ("catalog-1", "backup", "up"),
        ],
    );
    assert_eq!(shown(&dom, "order-0").0, "primary", "{dom}");
    assert_eq!(shown(&dom, "frontend-0").0, "serving", "{dom}");
    // Every book of data/books.csv with its stock.
    assert_eq!(dom.matches("data-book=").count(), 7, "{dom}");
    assert!(dom.contains("RPCs for Dummies"), "{dom}");
    assert_eq!(stock(&dom, 1), Some(initial - 2), "{dom}");
    // No address of the cluster reaches the public page.
    for (_, _, e) in lc.cluster.all() {
        assert!(!dom.contains(&format!(":{}", e.port)), "{dom} shows {e}");
    }

    lc.kill9(Kind::Catalog, 0).await.unwrap();
    let t0 = Instant::now();
    buy(&frontend, 1).await;
    let dom = loop {
        let dom = dump(profile.clone(), url.clone(), chromium.clone())
            .await
            .unwrap();
        if shown(&dom, "catalog-1").0 == "primary" || t0.elapsed() > Duration::from_secs(30) {
            break dom;
        }
    };
    assert_rows(
        &dom,
        &[
            ("catalog-1", "primary", "up"),
            ("catalog-0", "down", "down"),
        ],
    );
    assert_eq!(shown(&dom, "order-0").0, "primary", "{dom}");
    assert!(
        dom.contains("data-kind=\"catalog\" data-primary=\"1\""),
        "{dom}"
    );
    // The books are read from the new primary, with the buy made after the kill.
    assert_eq!(dom.matches("data-book=").count(), 7, "{dom}");
    assert_eq!(stock(&dom, 1), Some(initial - 3), "{dom}");
    eprintln!(
        "the page showed the failover {:?} after the kill",
        t0.elapsed()
    );

    if let Some(path) = std::env::var_os("BOOKSTORE_STATUS_SCREENSHOT") {
        let shot = PathBuf::from(path);
        let arg = format!("--screenshot={}", shot.display());
        let (c, p, u) = (chromium.clone(), profile.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            chromium_run(
                &c,
                &p,
                &u,
                &[&arg, "--window-size=1280,860", "--hide-scrollbars"],
            )
        })
        .await
        .unwrap();
        assert!(shot.is_file(), "no screenshot at {}", shot.display());
    }
    lc.stop().await;
}
