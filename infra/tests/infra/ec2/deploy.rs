//! `deploy`, `test`, `collect`, `stop`, scaling and the loss of a host, against a real
//! sshd on loopback.
use super::*;

#[test]
fn deploy_test_collect_stop_against_a_real_sshd() {
    let Some((moto, out, remote, servers)) = ssh_scene() else {
        return;
    };
    let run = "t-deploy";
    let base = free_port_range().to_string();
    let me = user();
    run_ok(ec2(
        out.path(),
        &up_args(&moto, run, &["--base-port", &base, "--ssh-user", &me]),
    ));
    let st = RunState::load(out.path(), run).unwrap();
    let key = st.ssh_key.clone().unwrap();
    // Host 0 gets an sshd of its own, so that the test can lose it alone.
    let (Some(mut sshd0), Some(sshd)) = (
        Sshd::start(&key.with_extension("pub")),
        Sshd::start(&key.with_extension("pub")),
    ) else {
        return;
    };

    // One instance mapped on the command line, the others through a file.
    let map_file = out.path().join("hosts.map");
    std::fs::write(
        &map_file,
        format!(
            "# moto's addresses are fake\n{}=127.0.0.1:{}\n{}=127.0.0.1:{}\n",
            st.instance_ids[1], sshd.port, st.instance_ids[2], sshd.port
        ),
    )
    .unwrap();
    let first = format!("{}=127.0.0.1:{}", st.instance_ids[0], sshd0.port);
    let started = Instant::now();
    let map_path = map_file.to_str().unwrap();
    let mut args = vec![
        "deploy",
        "--run",
        run,
        "--host-map",
        &first,
        "--host-map",
        map_path,
    ];
    args.extend(install_flags(INFRA, &remote));
    let stdout = run_ok(ec2(out.path(), &args));
    eprintln!("deploy took {:?}", started.elapsed());
    let url = format!("http://127.0.0.1:{base}");
    assert!(stdout.contains(&format!("is deployed: {url}")), "{stdout}");
    let st = RunState::load(out.path(), run).unwrap();
    assert_eq!(st.phase, Phase::Deployed);
    // Every service runs detached from the (finished) ssh sessions: 11 live pids.
    let pids = servers.pids();
    assert_eq!(pids.len(), 11, "{pids:?}");
    assert!(pids.iter().all(|&p| alive(p)));
    let env_mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(remote.join(&st.instance_ids[0]).join("env"))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(env_mode & 0o077, 0, "the tokens file is private");

    let stdout = run_ok(ec2(
        out.path(),
        &["test", "--run", run, "--load-seconds", "1"],
    ));
    assert!(
        stdout.contains("scenarios: 4 passed, 0 failed, 3 skipped"),
        "{stdout}"
    );
    assert!(out
        .path()
        .join("ec2")
        .join(run)
        .join("client_log")
        .is_file());
    // The load run uses a `loadtest` binary next to infra when there is one.
    if Path::new(INFRA).with_file_name("loadtest").is_file() {
        let results = out
            .path()
            .join("ec2")
            .join(run)
            .join("loadtest/lookup/results.csv");
        assert!(results.is_file(), "{} missing", results.display());
    }

    run_ok(ec2(out.path(), &["collect", "--run", run]));
    for h in &st.hosts {
        let dir = out.path().join("ec2").join(run).join(&h.instance_id);
        for s in &h.services {
            let log = dir.join(format!("{}{}.stderr.log", s.kind, s.id));
            assert!(log.is_file(), "{} missing", log.display());
        }
        assert!(
            !dir.join("data").exists(),
            "the replicas' data is not collected"
        );
    }
    let orders: String = st
        .hosts
        .iter()
        .map(|h| {
            std::fs::read_to_string(
                out.path()
                    .join("ec2")
                    .join(run)
                    .join(&h.instance_id)
                    .join("order0_log"),
            )
            .unwrap_or_default()
        })
        .collect();
    assert_eq!(orders.matches("bought book 1").count(), 3, "{orders}");

    scale_out_and_in(out.path(), run, &servers, &url, &base, &moto);
    lose_host_0(out.path(), run, &remote, &mut sshd0, &base);
    // Host 0 is back (its sshd with the same host key; its services stay dead).
    sshd0.resume();
    let pids = servers.pids();

    run_ok(ec2(out.path(), &["stop", "--run", run]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "servers still alive after stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    run_ok(ec2(out.path(), &["down", "--run", run]));
    assert_eq!(leftovers(&moto, run), (0, 0, 0));
    drop(servers);
}

/// The view document of `kind` from the coordinator leader (cluster token), found from
/// the coordinators of the run's deployed cluster file.
fn view_of(out: &Path, run: &str, token: &str, kind: &str) -> serde_json::Value {
    let file = out.join("ec2").join(run).join("deploy").join("cluster.csv");
    let cluster = bookstore_common::config::ClusterConfig::load(&file).unwrap();
    let client = bookstore_common::client::Client::with_timeout(token, Duration::from_secs(5));
    let group = bookstore_common::coordinators::Coordinators::new(
        client,
        cluster.urls(bookstore_common::config::Kind::Coordinator),
    );
    let t = Duration::from_secs(5);
    rt().block_on(group.get_json(&bookstore_common::coordinators::view_path(kind), t, t))
        .unwrap_or_else(|e| panic!("{kind} view: {e}"))
}

/// A replica's `/books` (cluster token): item number to stock, or why it did not answer.
/// A 503 is an answer to wait out, not a failure: a primary serves reads only under a
/// lease a coordinator answer renews, and right after a view change (or a coordinator
/// that misses a heartbeat on a loaded machine) it may hold none for a moment.
fn books_of(url: &str, token: &str) -> Result<Vec<(u64, u64)>, String> {
    let client = bookstore_common::client::Client::with_timeout(token, Duration::from_secs(5));
    let v: Versioned<Vec<Book>> = rt()
        .block_on(client.get_json(&format!("{url}/books")))
        .map_err(|e| format!("{url}/books: {e}"))?;
    Ok(v.result
        .iter()
        .map(|b| (b.item_number.into(), b.stock.into()))
        .collect())
}

fn buy_ok(url: &str, item: u32) {
    let status = rt().block_on(async {
        reqwest::Client::new()
            .post(format!("{url}/buy?item_number={item}"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert_eq!(status.ok(), Some(200), "buy of book {item} through {url}");
}

/// Stands in for an HTTP proxy: a command run with `http_proxy` pointing here sends
/// every plain-HTTP request it makes from this machine here instead. It records each
/// request's first line, whether it carried `token`, and answers 502.
struct Recorder {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Recorder {
    fn start(token: &str) -> Recorder {
        use std::io::{BufRead, Write};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (log, token) = (seen.clone(), token.to_string());
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let mut r = std::io::BufReader::new(conn);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let first = head.lines().next().unwrap_or_default().to_string();
                let carried = if head.contains(&token) {
                    " (carries the admin token)"
                } else {
                    ""
                };
                log.lock().unwrap().push(format!("{first}{carried}"));
                let _ = r.get_mut().write_all(
                    b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Recorder { url, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// `c` with every plain-HTTP request it makes sent here.
    fn proxy(&self, mut c: Command) -> Command {
        c.env("http_proxy", &self.url)
            .env("HTTP_PROXY", &self.url)
            .env_remove("no_proxy")
            .env_remove("NO_PROXY");
        c
    }

    /// Runs the admin command `ec2 args` through this proxy: it must succeed without
    /// sending plain HTTP from this machine. Its stdout and stderr.
    fn admin(&self, out: &Path, args: &[&str]) -> (String, String) {
        let what = args[0];
        let started = Instant::now();
        let o = self.proxy(ec2(out, args)).output().unwrap();
        let (stdout, stderr) = texts(&o);
        assert_eq!(
            self.seen(),
            Vec::<String>::new(),
            "{what} sent plain HTTP from this machine\n{stderr}"
        );
        assert!(o.status.success(), "{what} failed\n{stdout}\n{stderr}");
        eprintln!("{what} took {:?}\n{stderr}", started.elapsed());
        (stdout, stderr)
    }
}

/// `add catalog` then `remove catalog 0` on a deployed run; no other service restarts.
fn scale_out_and_in(
    out: &Path,
    run: &str,
    servers: &ServersUnder,
    url: &str,
    base: &str,
    moto: &Moto,
) {
    let st = RunState::load(out, run).unwrap();
    let token = st.cluster_token.clone();
    let before = servers.pids();
    // The admin calls travel over ssh: nothing of `add` and `remove` is plain HTTP from
    // this machine (which would cross the internet in clear text on EC2).
    let recorder = Recorder::start(&st.admin_token);
    let (stdout, stderr) = recorder.admin(
        out,
        &["add", "catalog", "--run", run, "--wait-seconds", "30"],
    );
    assert!(stdout.contains("catalog 2 runs on"), "{stdout}");
    assert!(
        stderr.contains("is a synced backup and serves"),
        "progress: {stderr}"
    );
    // Recorded in the state on a new port, the 12th; that port is open to the group.
    let st = RunState::load(out, run).unwrap();
    let port: u16 = base.parse::<u16>().unwrap() + 11;
    assert_eq!(st.ports_used, 12);
    let catalog2 = Service::new(Kind::Catalog, 2, port);
    let h = st
        .hosts
        .iter()
        .position(|h| h.services.contains(&catalog2))
        .unwrap_or_else(|| panic!("catalog 2 on port {port} in {:?}", st.hosts));
    let rules = rt().block_on(async {
        moto.client()
            .describe_security_groups()
            .group_ids(st.security_group_id.clone().unwrap())
            .send()
            .await
            .unwrap()
            .security_groups()[0]
            .ip_permissions()
            .iter()
            .map(|p| (p.from_port(), p.to_port()))
            .collect::<Vec<_>>()
    });
    assert!(
        rules.contains(&(Some(port.into()), Some(port.into()))),
        "{rules:?}"
    );
    let script = std::fs::read_to_string(
        out.join("remote")
            .join(&st.hosts[h].instance_id)
            .join("bookstore.sh"),
    )
    .unwrap();
    assert!(
        script.contains(&format!("catalog 2 127.0.0.1 {port}")),
        "{script}"
    );
    // Nothing else restarted: the 11 old services keep their pids, one more runs.
    let after = servers.pids();
    assert_eq!(after.len(), 12, "{after:?}");
    assert!(before.iter().all(|p| after.contains(p) && alive(*p)));

    let view = view_of(out, run, &token, "catalog");
    assert!(
        view["synced"].as_array().unwrap().iter().any(|x| *x == 2),
        "{view}"
    );
    let primary = view["view"]["primary"].as_u64().unwrap();
    let primary_url = view["members"][primary.to_string()]
        .as_str()
        .unwrap()
        .to_string();
    let new_url = format!("http://127.0.0.1:{port}");
    assert_eq!(view["members"]["2"], new_url.as_str(), "{view}");
    // (`test` sold books 1 and 2 out; 5, 6 and 7 are untouched.)
    buy_ok(url, 5);
    // The new backup holds what the primary holds (it applies a commit when it hears of
    // the next one or of a ping: give it a moment).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (p, n) = (books_of(&primary_url, &token), books_of(&new_url, &token));
        if p.is_ok() && p == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "primary {p:?}\nnew replica {n:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Scale in: catalog 0 (primary or not) leaves; the view no longer includes it.
    let (stdout, stderr) = recorder.admin(
        out,
        &[
            "remove",
            "catalog",
            "0",
            "--run",
            run,
            "--wait-seconds",
            "30",
        ],
    );
    assert!(
        stdout.contains("catalog 0 is retired and stopped"),
        "{stdout}"
    );
    assert!(
        stderr.contains("catalog 0 is out of the view"),
        "progress: {stderr}"
    );
    let view = view_of(out, run, &token, "catalog");
    let in_view = view["view"]["primary"] == 0
        || view["view"]["backups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| *x == 0);
    assert!(!in_view, "{view}");
    assert!(view["members"].get("0").is_none(), "{view}");
    let st = RunState::load(out, run).unwrap();
    assert!(st
        .hosts
        .iter()
        .all(|h| !h.services.iter().any(|s| s.is(Kind::Catalog, 0))));
    let left = servers.pids();
    assert_eq!(left.len(), 11, "{left:?}");
    let gone: Vec<&i32> = before.iter().filter(|p| !left.contains(p)).collect();
    assert_eq!(gone.len(), 1, "one service stopped: {gone:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(*gone[0]) {
        assert!(Instant::now() < deadline, "catalog 0 still runs");
        std::thread::sleep(Duration::from_millis(100));
    }
    buy_ok(url, 6);
    buy_ok(url, 7);
    // Removing it again names what is there.
    let err = run_err(ec2(out, &["remove", "catalog", "0", "--run", run]));
    assert!(
        err.contains("has no catalog 0 (its catalog replicas: 1, 2)"),
        "{err}"
    );
}

/// `POST /buy` of `item` through `frontend`, with one idempotency key, until it is
/// answered 200 (a retry of a buy that went through buys nothing more).
fn buy_within(frontend: &str, item: u32, limit: Duration) {
    let key = uuid::Uuid::new_v4().to_string();
    let deadline = Instant::now() + limit;
    loop {
        let status = rt().block_on(async {
            reqwest::Client::new()
                .post(format!("{frontend}/buy?item_number={item}"))
                .header("Idempotency-Key", &key)
                .timeout(Duration::from_secs(3))
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
        if status.as_ref().ok() == Some(&200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no buy of book {item} through {frontend} within {limit:?}: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Host 0 (coordinator 0, frontend 0, the cache, a catalog and an order) is lost: its
/// servers are killed and its sshd stops. Frontends 1 and 2, on the other coordinators'
/// hosts, keep serving buys, and `add order` still works: its admin call and its waits
/// run on the next coordinator host that ssh reaches.
fn lose_host_0(out: &Path, run: &str, remote: &Path, sshd0: &mut Sshd, base: &str) {
    let st = RunState::load(out, run).unwrap();
    let lost = st.hosts[0].instance_id.clone();
    assert!(
        st.hosts[0]
            .services
            .iter()
            .any(|s| s.kind == Kind::Coordinator)
            && st.hosts[0]
                .services
                .iter()
                .any(|s| s.kind == Kind::Frontend),
        "{:?}",
        st.hosts[0]
    );
    for p in pids_in(&remote.join(&lost)) {
        // SAFETY: SIGKILL to a server process this test's deploy started.
        unsafe {
            libc::kill(p, libc::SIGKILL);
        }
    }
    sshd0.pause();
    let started = Instant::now();
    let base: u16 = base.parse().unwrap();
    for f in [base + 1, base + 2] {
        buy_within(&format!("http://127.0.0.1:{f}"), 4, Duration::from_secs(20));
    }
    eprintln!(
        "host 0 lost: frontends 1 and 2 served buys after {:?}",
        started.elapsed()
    );
    let o = ec2(out, &["add", "order", "--run", run, "--wait-seconds", "30"])
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&o);
    assert!(o.status.success(), "add failed\n{stdout}\n{stderr}");
    eprintln!("add with host 0 lost:\n{stderr}");
    assert!(
        stderr.contains(&format!("{lost} (a coordinator's host) cannot be reached")),
        "{stderr}"
    );
    assert!(stdout.contains("order 2 runs on"), "{stdout}");
    let st = RunState::load(out, run).unwrap();
    let h = st
        .hosts
        .iter()
        .position(|h| h.services.iter().any(|s| s.is(Kind::Order, 2)))
        .unwrap();
    assert_ne!(h, 0, "the new replica goes to a live host");
    buy_within(
        &format!("http://127.0.0.1:{}", base + 2),
        3,
        Duration::from_secs(10),
    );
}

#[test]
fn run_does_everything_against_moto_and_sshd() {
    let Some((moto, out, remote, servers)) = ssh_scene() else {
        return;
    };
    let run = "t-run";
    // The run's key must be known to the sshd before `run` makes it: bring your own key.
    let key = out.path().join("my_key");
    keygen(&key);
    let c = moto.client();
    rt().block_on(async {
        c.import_key_pair()
            .key_name("my-key")
            .public_key_material(aws_sdk_ec2::primitives::Blob::new(
                std::fs::read(key.with_extension("pub")).unwrap(),
            ))
            .send()
            .await
            .unwrap();
    });
    let Some(sshd) = Sshd::start(&key.with_extension("pub")) else {
        return;
    };
    let base = free_port_range().to_string();
    let me = user();
    let map = format!("*=127.0.0.1:{}", sshd.port);
    let mut args = up_args(
        &moto,
        run,
        &[
            "--base-port",
            &base,
            "--ssh-user",
            &me,
            "--key-name",
            "my-key",
            "--ssh-key",
            key.to_str().unwrap(),
            "--host-map",
            &map,
            "--load-seconds",
            "1",
        ],
    );
    args.extend(install_flags(INFRA, &remote));
    args[0] = "run";
    let stdout = run_ok(ec2(out.path(), &args));
    assert!(
        stdout.contains("scenarios: 4 passed, 0 failed, 3 skipped"),
        "{stdout}"
    );
    assert!(stdout.contains("run t-run is down"), "{stdout}");
    assert_eq!(leftovers(&moto, run), (0, 0, 0));
    // Teardown stopped the services and collected their logs; the user's key pair stays.
    assert!(servers.pids().is_empty(), "pid files are removed by stop");
    let st = RunState::load(out.path(), run).unwrap();
    let collected = |f: &str| {
        st.instance_ids
            .iter()
            .any(|i| out.path().join("ec2").join(run).join(i).join(f).is_file())
    };
    assert!(collected("frontend_log") && collected("frontend0.stderr.log"));
    let kept = rt().block_on(async {
        c.describe_key_pairs()
            .key_names("my-key")
            .send()
            .await
            .is_ok()
    });
    assert!(kept, "a key pair the user brought is not deleted");
}
