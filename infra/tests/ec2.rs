//! `infra ec2` as a user runs it, against moto's EC2 server (started here on a free
//! loopback port) and a real OpenSSH server (started here on a free loopback port, with
//! its own host and user keys). Instance addresses from moto are fake and never used: a
//! host map sends ssh and the services to 127.0.0.1. No test connects outside 127.0.0.0/8.
//!
//! A missing tool (moto_server, sshd, ssh) fails the test when CI=true, and skips it with
//! a printed reason elsewhere.
#![cfg(feature = "ec2")]
use aws_sdk_ec2::types::Filter;
use bookstore_common::config::Kind;
use bookstore_common::types::{Book, Versioned};
use infra::ec2::state::{Phase, RunState, Service};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const INFRA: &str = env!("CARGO_BIN_EXE_infra");
const OWNER: &str = "136693071363";
const NEWEST_X86: &str = "ami-0deb12000000002";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The path of `tool`, or None: then a failure under CI, a printed skip elsewhere.
fn need(tool: &str) -> Option<PathBuf> {
    let found = if tool.contains('/') {
        Some(PathBuf::from(tool)).filter(|p| p.is_file())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(tool))
                .find(|p| p.is_file())
        })
    };
    if found.is_none() {
        let why =
            format!("{tool} is not installed (.ci/run installs moto[server] and openssh-server)");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{why}");
        }
        eprintln!("SKIPPED: {why}");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A base port with the 14 ports after it free (the 11 services of one run on loopback,
/// and room for `add`), below the kernel's ephemeral range (32768-60999) so no outgoing
/// connection takes one of them before the services bind.
fn free_port_range() -> u16 {
    for _ in 0..200 {
        let base = 12_000 + (uuid::Uuid::new_v4().as_u128() % 20_000) as u16;
        if (base..base + 14).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no 14 free consecutive ports");
}

fn wait_port(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// moto's EC2 server on a free loopback port, with Debian-like images of its own.
struct Moto {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Moto {
    fn start() -> Option<Moto> {
        let exe = need("moto_server")?;
        let dir = tempfile::tempdir().unwrap();
        let amis = dir.path().join("amis.json");
        let image = |id: &str, name: &str, arch: &str, date: &str| {
            serde_json::json!({
                "ami_id": id, "name": name, "owner_id": OWNER, "state": "available",
                "architecture": arch, "creation_date": date, "public": true,
                "platform": "Linux/UNIX", "virtualization_type": "hvm",
                "root_device_type": "ebs", "root_device_name": "/dev/xvda",
                "hypervisor": "xen", "image_type": "machine", "description": name,
            })
        };
        let list = serde_json::json!([
            image(
                "ami-0deb12000000001",
                "debian-12-amd64-20250101-1000",
                "x86_64",
                "2025-01-01T00:00:00.000Z"
            ),
            image(
                NEWEST_X86,
                "debian-12-amd64-20261101-2000",
                "x86_64",
                "2026-11-01T00:00:00.000Z"
            ),
            image(
                "ami-0deb12000000003",
                "debian-12-arm64-20261110-2000",
                "arm64",
                "2026-11-10T00:00:00.000Z"
            ),
            image(
                "ami-0deb11000000004",
                "debian-11-amd64-20261112-2000",
                "x86_64",
                "2026-11-12T00:00:00.000Z"
            ),
        ]);
        std::fs::write(&amis, list.to_string()).unwrap();
        let port = free_port();
        let child = Command::new(exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_AMIS_PATH", &amis)
            .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("moto.log")).unwrap())
            .spawn()
            .unwrap();
        let mut m = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(s)) = m.child.try_wait() {
                panic!("moto_server exited: {s}");
            }
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(m)
    }

    /// An EC2 client for checking what `infra ec2` did.
    fn client(&self) -> aws_sdk_ec2::Client {
        let conf = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .endpoint_url(&self.url)
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .build();
        aws_sdk_ec2::Client::from_conf(conf)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// `infra ec2 ARGS` with moto's fake credentials and nothing of the user's AWS setup.
fn ec2(out: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(INFRA);
    c.arg("ec2")
        .args(args)
        .current_dir(workspace())
        .env("BOOKSTORE_OUTPUT_DIR", out)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", out.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            out.join("no-aws-credentials"),
        )
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_EC2")
        .env_remove("BOOKSTORE_CLUSTER_TOKEN")
        .env_remove("BOOKSTORE_ADMIN_TOKEN")
        .stdin(Stdio::null());
    c
}

fn run_ok(mut c: Command) -> String {
    let o = c.output().unwrap();
    let (stdout, stderr) = texts(&o);
    assert!(
        o.status.success(),
        "{c:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

fn run_err(mut c: Command) -> String {
    let o = c.output().unwrap();
    let (stdout, stderr) = texts(&o);
    assert!(
        !o.status.success(),
        "{c:?} should fail\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stderr
}

fn texts(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn up_args<'a>(moto: &'a Moto, run: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "up",
        "--run",
        run,
        "--endpoint-url",
        &moto.url,
        "--allow",
        "203.0.113.7/32",
    ];
    v.extend_from_slice(extra);
    v
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn tag_filter(run: &str) -> Filter {
    Filter::builder()
        .name("tag:bookstore-run")
        .values(run)
        .build()
}

/// What is left of a run in moto: (live instances, security groups, key pairs).
fn leftovers(moto: &Moto, run: &str) -> (usize, usize, usize) {
    let c = moto.client();
    rt().block_on(async {
        let inst = c
            .describe_instances()
            .filters(tag_filter(run))
            .send()
            .await
            .unwrap();
        let live = inst
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()) != Some("terminated"))
            .count();
        let groups = c
            .describe_security_groups()
            .filters(
                Filter::builder()
                    .name("group-name")
                    .values(format!("bookstore-{run}"))
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .security_groups()
            .len();
        let keys = c
            .describe_key_pairs()
            .send()
            .await
            .unwrap()
            .key_pairs()
            .iter()
            .filter(|k| k.key_name() == Some(&format!("bookstore-{run}")))
            .count();
        (live, groups, keys)
    })
}

#[test]
fn up_creates_tagged_instances_and_a_tight_group_and_down_deletes_everything() {
    let Some(moto) = Moto::start() else { return };
    let out = tempfile::tempdir().unwrap();
    let run = "t-lifecycle";
    let stdout = run_ok(ec2(out.path(), &up_args(&moto, run, &["--hosts", "3"])));
    assert!(
        stdout.contains("run t-lifecycle is up (3 instances"),
        "{stdout}"
    );

    let st = RunState::load(out.path(), run).unwrap();
    assert_eq!(st.phase, Phase::Up);
    assert_eq!(st.instance_ids.len(), 3);
    assert_eq!(
        st.image_id.as_deref(),
        Some(NEWEST_X86),
        "the newest x86_64 debian-12 image"
    );
    assert!(st.key_created);
    let key = st.ssh_key.clone().unwrap();
    assert!(key.is_file() && key.with_extension("pub").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(RunState::path(out.path(), run))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the state file holds tokens: 0600");
    }

    // The cluster file: 11 services (3 coordinators, 3 frontends, a cache, 2 catalogs, 2
    // orders) on the instances' private addresses, replicas of a kind on different hosts,
    // each coordinator on a host of its own with a frontend beside it.
    let cluster_file = out.path().join("ec2").join(run).join("cluster.csv");
    let cluster = bookstore_common::config::ClusterConfig::load(&cluster_file).unwrap();
    assert_eq!(cluster.all().len(), 11);
    {
        use bookstore_common::config::Kind::{Coordinator, Frontend};
        let coordinators: Vec<&str> = cluster
            .servers(Coordinator)
            .iter()
            .map(|e| e.host.as_str())
            .collect();
        let frontends: Vec<&str> = cluster
            .servers(Frontend)
            .iter()
            .map(|e| e.host.as_str())
            .collect();
        let distinct: std::collections::HashSet<&&str> = coordinators.iter().collect();
        assert_eq!(
            distinct.len(),
            3,
            "coordinators share a host: {coordinators:?}"
        );
        assert_eq!(
            frontends, coordinators,
            "a frontend beside each coordinator"
        );
    }
    let privates: Vec<String> = st.hosts.iter().map(|h| h.private_ip.clone()).collect();
    for (_, _, e) in cluster.all() {
        assert!(
            privates.contains(&e.host),
            "{e} is not a private address of the run"
        );
    }
    for kind in [
        bookstore_common::config::Kind::Catalog,
        bookstore_common::config::Kind::Order,
    ] {
        let s = cluster.servers(kind);
        assert_ne!(s[0].host, s[1].host, "{kind} replicas share a host");
    }

    let c = moto.client();
    rt().block_on(async {
        // Instances: running, tagged with the run, launched from the image, in the group.
        let inst = c
            .describe_instances()
            .set_instance_ids(Some(st.instance_ids.clone()))
            .send()
            .await
            .unwrap();
        let all: Vec<_> = inst
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .collect();
        assert_eq!(all.len(), 3);
        assert_eq!(inst.reservations().len(), 1, "launched in one call");
        for i in &all {
            assert_eq!(i.state().unwrap().name().unwrap().as_str(), "running");
            assert_eq!(i.image_id(), Some(NEWEST_X86));
            assert_eq!(i.key_name(), Some("bookstore-t-lifecycle"));
            let tags: Vec<_> = i
                .tags()
                .iter()
                .map(|t| (t.key().unwrap(), t.value().unwrap()))
                .collect();
            assert!(tags.contains(&("bookstore-run", run)), "{tags:?}");
            assert!(
                tags.contains(&("Name", "bookstore-t-lifecycle")),
                "{tags:?}"
            );
            let groups: Vec<_> = i
                .security_groups()
                .iter()
                .filter_map(|g| g.group_id())
                .collect();
            assert_eq!(groups, vec![st.security_group_id.as_deref().unwrap()]);
        }

        // The group: SSH and the frontend from the operator only; services from the group.
        let sg = c
            .describe_security_groups()
            .group_ids(st.security_group_id.clone().unwrap())
            .send()
            .await
            .unwrap();
        let sg = &sg.security_groups()[0];
        assert!(sg
            .tags()
            .iter()
            .any(|t| t.key() == Some("bookstore-run") && t.value() == Some(run)));
        let mut rules: Vec<(i32, i32, Vec<String>, Vec<String>)> = sg
            .ip_permissions()
            .iter()
            .map(|p| {
                assert_eq!(p.ip_protocol(), Some("tcp"));
                (
                    p.from_port().unwrap(),
                    p.to_port().unwrap(),
                    p.ip_ranges()
                        .iter()
                        .filter_map(|r| r.cidr_ip().map(String::from))
                        .collect(),
                    p.user_id_group_pairs()
                        .iter()
                        .filter_map(|g| g.group_id().map(String::from))
                        .collect(),
                )
            })
            .collect();
        rules.sort();
        let me = vec!["203.0.113.7/32".to_string()];
        let group = vec![st.security_group_id.clone().unwrap()];
        assert_eq!(
            rules,
            vec![
                (22, 22, me.clone(), vec![]),
                (8000, 8002, me.clone(), vec![]),
                (8000, 8010, vec![], group),
            ],
            "ssh and the frontends from the operator's CIDR only, services from the group only"
        );
        assert!(sg
            .ip_permissions()
            .iter()
            .all(|p| p.ipv6_ranges().is_empty()));

        let keys = c.describe_key_pairs().send().await.unwrap();
        let k = keys
            .key_pairs()
            .iter()
            .find(|k| k.key_name() == Some("bookstore-t-lifecycle"))
            .expect("the run's key pair");
        assert!(k
            .tags()
            .iter()
            .any(|t| t.key() == Some("bookstore-run") && t.value() == Some(run)));
    });

    let stdout = run_ok(ec2(
        out.path(),
        &["down", "--run", run, "--endpoint-url", &moto.url],
    ));
    assert!(stdout.contains("run t-lifecycle is down"), "{stdout}");
    assert_eq!(leftovers(&moto, run), (0, 0, 0));
    assert_eq!(RunState::load(out.path(), run).unwrap().phase, Phase::Down);
    // Idempotent: again, without --run (the state file has the region and endpoint).
    run_ok(ec2(out.path(), &["down", "--run", run]));
    assert_eq!(leftovers(&moto, run), (0, 0, 0));
}

#[test]
fn down_finishes_a_half_finished_up() {
    let Some(moto) = Moto::start() else { return };
    let out = tempfile::tempdir().unwrap();
    let run = "t-half";
    // moto refuses the instance type after the key pair and the group exist.
    let err = run_err(ec2(
        out.path(),
        &up_args(&moto, run, &["--instance-type", "x9.nonexistent"]),
    ));
    assert!(
        err.contains("launching 3 x9.nonexistent instances"),
        "{err}"
    );
    let st = RunState::load(out.path(), run).unwrap();
    assert_eq!(st.phase, Phase::Creating);
    assert!(st.security_group_id.is_some() && st.key_created);
    assert_eq!(leftovers(&moto, run), (0, 1, 1));
    // `down` with no --run picks the unfinished run.
    run_ok(ec2(out.path(), &["down"]));
    assert_eq!(leftovers(&moto, run), (0, 0, 0));
    assert_eq!(RunState::load(out.path(), run).unwrap().phase, Phase::Down);
}

#[test]
fn down_all_runs_finds_leftovers_of_crashed_runs_by_tag() {
    let Some(moto) = Moto::start() else { return };
    let out = tempfile::tempdir().unwrap();
    run_ok(ec2(
        out.path(),
        &up_args(&moto, "t-crash1", &["--hosts", "1", "--coordinators", "1"]),
    ));
    run_ok(ec2(
        out.path(),
        &up_args(&moto, "t-crash2", &["--hosts", "2", "--coordinators", "1"]),
    ));
    // The state files are lost (the runs crashed on another machine, say).
    std::fs::remove_dir_all(out.path().join("ec2")).unwrap();
    assert_eq!(leftovers(&moto, "t-crash1"), (1, 1, 1));
    assert_eq!(leftovers(&moto, "t-crash2"), (2, 1, 1));
    let c = moto.client();
    let default_groups = rt().block_on(async {
        c.describe_security_groups()
            .send()
            .await
            .unwrap()
            .security_groups()
            .len()
    }) - 2;
    run_ok(ec2(
        out.path(),
        &["down", "--all-runs", "--endpoint-url", &moto.url],
    ));
    assert_eq!(leftovers(&moto, "t-crash1"), (0, 0, 0));
    assert_eq!(leftovers(&moto, "t-crash2"), (0, 0, 0));
    let groups_after = rt().block_on(async {
        c.describe_security_groups()
            .send()
            .await
            .unwrap()
            .security_groups()
            .len()
    });
    assert_eq!(
        groups_after, default_groups,
        "only the runs' groups are deleted"
    );
    // Nothing left: still fine.
    run_ok(ec2(
        out.path(),
        &["down", "--all-runs", "--endpoint-url", &moto.url],
    ));
}

#[test]
fn missing_image_and_missing_credentials_are_explained() {
    let Some(moto) = Moto::start() else { return };
    let out = tempfile::tempdir().unwrap();
    let err = run_err(ec2(
        out.path(),
        &up_args(&moto, "t-noimage", &["--image-name", "no-such-image-*"]),
    ));
    assert!(err.contains("no image named \"no-such-image-*\""), "{err}");
    assert!(err.contains("--image-name"), "{err}");
    assert!(
        !RunState::path(out.path(), "t-noimage").exists(),
        "nothing was created"
    );

    let mut c = ec2(out.path(), &up_args(&moto, "t-nocreds", &[]));
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let err = run_err(c);
    assert!(err.contains("no AWS credentials found"), "{err}");
    assert!(err.contains("AWS_PROFILE"), "{err}");

    let err = run_err(ec2(
        out.path(),
        &["up", "--endpoint-url", &moto.url, "--allow", "0.0.0.0/0"],
    ));
    assert!(err.contains("whole internet"), "{err}");
}

#[test]
fn run_tears_down_after_a_failure_and_after_ctrl_c() {
    let Some(moto) = Moto::start() else { return };
    let out = tempfile::tempdir().unwrap();
    // Deploy fails: teardown still deletes everything, and the command fails.
    let mut args = up_args(&moto, "t-runfail", &["--binary", "/nonexistent/infra"]);
    args[0] = "run";
    let err = run_err(ec2(out.path(), &args));
    assert!(
        err.contains("--binary /nonexistent/infra: no such file"),
        "{err}"
    );
    assert!(
        err.contains("run t-runfail is down") || err.contains("[down] key pair"),
        "{err}"
    );
    assert_eq!(leftovers(&moto, "t-runfail"), (0, 0, 0));

    // Ctrl-C while deploy waits for an sshd that never comes: teardown, then exit.
    let closed = free_port();
    let map = format!("*=127.0.0.1:{closed}");
    let mut args = up_args(
        &moto,
        "t-runint",
        &["--host-map", &map, "--ssh-wait", "300"],
    );
    args[0] = "run";
    let child = ec2(out.path(), &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while RunState::load(out.path(), "t-runint").map(|s| s.phase) != Ok(Phase::Up) {
        assert!(Instant::now() < deadline, "run did not get up");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: SIGINT to our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let o = child.wait_with_output().unwrap();
    let (_, stderr) = texts(&o);
    assert!(!o.status.success());
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(leftovers(&moto, "t-runint"), (0, 0, 0), "{stderr}");
    assert_eq!(
        RunState::load(out.path(), "t-runint").unwrap().phase,
        Phase::Down
    );
}

/// OpenSSH's server on a free loopback port, accepting one key for the current user.
struct Sshd {
    child: Child,
    port: u16,
    program: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sshd {
    fn start(authorized_key: &Path) -> Option<Sshd> {
        Sshd::start_on(authorized_key, free_port())
    }

    /// An sshd on `port` with a host key of its own (a new one on every start).
    fn start_on(authorized_key: &Path, port: u16) -> Option<Sshd> {
        let sshd = need("/usr/sbin/sshd")?;
        need("ssh")?;
        need("scp")?;
        let dir = tempfile::tempdir().unwrap();
        let host_key = dir.path().join("host_key");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .status()
            .unwrap();
        assert!(st.success());
        let auth = dir.path().join("authorized_keys");
        std::fs::copy(authorized_key, &auth).unwrap();
        let sftp = [
            "/usr/lib/openssh/sftp-server",
            "/usr/libexec/openssh/sftp-server",
            "/usr/libexec/sftp-server",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("internal-sftp");
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nUsePAM no\nStrictModes no\n\
                 AuthorizedKeysFile {}\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 Subsystem sftp {sftp}\nLogLevel ERROR\n",
                host_key.display(),
                dir.path().join("sshd.pid").display(),
                auth.display()
            ),
        )
        .unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let _ = std::fs::create_dir_all("/run/sshd"); // privilege separation directory
        }
        let child = Sshd::spawn(&sshd, dir.path());
        wait_port(port, Duration::from_secs(10));
        Some(Sshd {
            child,
            port,
            program: sshd,
            _dir: dir,
        })
    }

    fn spawn(program: &Path, dir: &Path) -> Child {
        Command::new(program)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("sshd.log"))
                    .unwrap(),
            )
            .spawn()
            .unwrap()
    }

    /// Stops listening (the host is lost); [`Sshd::resume`] starts again with the same
    /// host key.
    fn pause(&mut self) {
        kill(&mut self.child);
    }

    fn resume(&mut self) {
        self.child = Sshd::spawn(&self.program, self._dir.path());
        wait_port(self.port, Duration::from_secs(10));
    }

    /// The public half of this sshd's host key (`ssh-ed25519 AAAA...`, without a comment).
    fn host_key(&self) -> String {
        let text = std::fs::read_to_string(self._dir.path().join("host_key.pub")).unwrap();
        text.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Kills whatever servers a deploy left under `dir` (pid files), even if a test fails.
struct ServersUnder(PathBuf);

impl ServersUnder {
    fn pids(&self) -> Vec<i32> {
        std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|host| pids_in(&host.path()))
            .collect()
    }
}

/// The pids of the servers a deploy started in one host's folder.
fn pids_in(host_dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for f in std::fs::read_dir(host_dir.join("run"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(p) = std::fs::read_to_string(f.path()) {
            if let Ok(p) = p.trim().parse() {
                pids.push(p);
            }
        }
    }
    pids
}

impl Drop for ServersUnder {
    fn drop(&mut self) {
        for p in self.pids() {
            // SAFETY: SIGKILL to a server process this test's deploy started.
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn user() -> String {
    let o = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn deploy_test_collect_stop_against_a_real_sshd() {
    let Some(moto) = Moto::start() else { return };
    if need("/usr/sbin/sshd").is_none() || need("ssh").is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let remote = out.path().join("remote");
    let servers = ServersUnder(remote.clone());
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
    let stdout = run_ok(ec2(
        out.path(),
        &[
            "deploy",
            "--run",
            run,
            "--host-map",
            &first,
            "--host-map",
            map_file.to_str().unwrap(),
            "--binary",
            INFRA,
            "--remote-dir",
            remote.to_str().unwrap(),
            "--ssh-wait",
            "20",
        ],
    ));
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

/// A replica's `/books` (cluster token): item number to stock.
fn books_of(url: &str, token: &str) -> Vec<(u64, u64)> {
    let client = bookstore_common::client::Client::with_timeout(token, Duration::from_secs(5));
    let v: Versioned<Vec<Book>> = rt()
        .block_on(client.get_json(&format!("{url}/books")))
        .unwrap_or_else(|e| panic!("{url}/books: {e}"));
    v.result
        .iter()
        .map(|b| (b.item_number.into(), b.stock.into()))
        .collect()
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
    let started = Instant::now();
    let o = recorder
        .proxy(ec2(
            out,
            &["add", "catalog", "--run", run, "--wait-seconds", "30"],
        ))
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&o);
    assert_eq!(
        recorder.seen(),
        Vec::<String>::new(),
        "add sent plain HTTP from this machine\n{stderr}"
    );
    assert!(o.status.success(), "add failed\n{stdout}\n{stderr}");
    eprintln!("add took {:?}\n{stderr}", started.elapsed());
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
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (p, n) = (books_of(&primary_url, &token), books_of(&new_url, &token));
        if p == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "primary {p:?}\nnew replica {n:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Scale in: catalog 0 (primary or not) leaves; the view no longer includes it.
    let started = Instant::now();
    let o = recorder
        .proxy(ec2(
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
        ))
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&o);
    assert_eq!(
        recorder.seen(),
        Vec::<String>::new(),
        "remove sent plain HTTP from this machine\n{stderr}"
    );
    assert!(o.status.success(), "remove failed\n{stdout}\n{stderr}");
    eprintln!("remove took {:?}\n{stderr}", started.elapsed());
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
    let Some(moto) = Moto::start() else { return };
    if need("/usr/sbin/sshd").is_none() || need("ssh").is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let remote = out.path().join("remote");
    let servers = ServersUnder(remote.clone());
    let run = "t-run";
    // The run's key must be known to the sshd before `run` makes it: bring your own key.
    let key = out.path().join("my_key");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
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
            "--binary",
            INFRA,
            "--remote-dir",
            remote.to_str().unwrap(),
            "--ssh-wait",
            "20",
            "--load-seconds",
            "1",
        ],
    );
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

/// A run on moto whose hosts are all one test sshd, deployed with a stand-in `infra` that
/// exits at once: `deploy` reaches every host and copies every file, then fails because
/// no service starts. Cheap: no server runs.
struct StandInRun {
    sshd: Sshd,
    out: tempfile::TempDir,
    remote: PathBuf,
    key: PathBuf,
    _moto: Moto,
}

fn stand_in_run(run: &str, hosts: &str) -> Option<StandInRun> {
    let moto = Moto::start()?;
    if need("/usr/sbin/sshd").is_none() || need("ssh").is_none() {
        return None;
    }
    let out = tempfile::tempdir().unwrap();
    let base = free_port_range().to_string();
    let me = user();
    run_ok(ec2(
        out.path(),
        &up_args(
            &moto,
            run,
            &["--hosts", hosts, "--base-port", &base, "--ssh-user", &me],
        ),
    ));
    let key = RunState::load(out.path(), run)
        .unwrap()
        .ssh_key
        .unwrap()
        .with_extension("pub");
    let sshd = Sshd::start(&key)?;
    let stand_in = out.path().join("stand-in");
    std::fs::write(&stand_in, "#!/bin/sh\nexit 1\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let remote = out.path().join("remote");
    let map = format!("*=127.0.0.1:{}", sshd.port);
    let err = run_err(ec2(
        out.path(),
        &[
            "deploy",
            "--run",
            run,
            "--host-map",
            &map,
            "--binary",
            stand_in.to_str().unwrap(),
            "--remote-dir",
            remote.to_str().unwrap(),
            "--ssh-wait",
            "20",
        ],
    ));
    assert!(err.contains("not running"), "{err}");
    Some(StandInRun {
        sshd,
        out,
        remote,
        key,
        _moto: moto,
    })
}

/// Issue 17, item 6: the first contact with a host (deploy) learns its host key into the
/// run's known_hosts; every later connection checks it strictly, so another machine at
/// the same address (with the tokens' file about to cross to it) is refused.
#[test]
fn host_keys_are_learned_on_first_contact_and_checked_after() {
    let Some(r) = stand_in_run("t-hostkeys", "3") else {
        return;
    };
    let run_dir = r.out.path().join("ec2").join("t-hostkeys");
    let learned = r.sshd.host_key();
    // Another machine (another host key) now answers at the hosts' address.
    let port = r.sshd.port;
    drop(r.sshd);
    let Some(impostor) = Sshd::start_on(&r.key, port) else {
        return;
    };
    assert_ne!(impostor.host_key(), learned);
    let err = run_err(ec2(r.out.path(), &["stop", "--run", "t-hostkeys"]));
    assert!(err.contains("host key"), "{err}");
    let known = std::fs::read_to_string(run_dir.join("known_hosts")).unwrap_or_default();
    assert!(known.contains(&learned), "known_hosts:\n{known}");
    assert!(
        !known.contains(&impostor.host_key()),
        "known_hosts:\n{known}"
    );
    // A host whose key was never learned is refused as well: no later command learns.
    std::fs::remove_file(run_dir.join("known_hosts")).unwrap();
    let err = run_err(ec2(r.out.path(), &["stop", "--run", "t-hostkeys"]));
    assert!(err.contains("host key"), "{err}");
    let relearned = std::fs::read_to_string(run_dir.join("known_hosts")).unwrap_or_default();
    assert!(
        !relearned.contains(&impostor.host_key()),
        "a later command learned a host key:\n{relearned}"
    );
}

/// The kinds listed in a deployed host's `bookstore.sh`.
fn kinds_in_script(script: &str) -> Vec<String> {
    let list = script
        .split_once("SERVICES=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(list, _)| list)
        .unwrap_or_default();
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Issue 17, item 6: the admin token goes only to the hosts that run a coordinator (which
/// serves the admin API) or a frontend (which checks it before forwarding); every host
/// gets the cluster token.
#[test]
fn the_admin_token_goes_only_to_the_hosts_that_need_it() {
    let Some(r) = stand_in_run("t-tokens", "4") else {
        return;
    };
    let st = RunState::load(r.out.path(), "t-tokens").unwrap();
    let mut without = 0;
    for id in &st.instance_ids {
        let dir = r.remote.join(id);
        let env = std::fs::read_to_string(dir.join("env")).unwrap();
        let kinds = kinds_in_script(&std::fs::read_to_string(dir.join("bookstore.sh")).unwrap());
        assert!(!kinds.is_empty(), "{id} runs nothing");
        assert!(
            env.contains(st.cluster_token.expose()),
            "{id}: no cluster token"
        );
        let needs = kinds.iter().any(|k| k == "coordinator" || k == "frontend");
        assert_eq!(
            env.contains(st.admin_token.expose()),
            needs,
            "{id} runs {kinds:?}: it should hold the admin token only if it runs a coordinator or a frontend"
        );
        without += usize::from(!needs);
    }
    assert!(
        without > 0,
        "4 hosts: one runs neither a coordinator nor a frontend"
    );
}
