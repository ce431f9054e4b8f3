//! `infra ec2` as a user runs it, against moto's EC2 server (started here on a free
//! loopback port) and a real OpenSSH server (started here on a free loopback port, with
//! its own host and user keys). Instance addresses from moto are fake and never used: a
//! host map sends ssh and the services to 127.0.0.1. No test connects outside 127.0.0.0/8.
//!
//! A missing tool (moto_server, sshd, ssh) fails the test when CI=true, and skips it with
//! a printed reason elsewhere.
//!
//! This file holds the harness (moto, sshd, the `infra ec2` command); the tests are in
//! `lifecycle` (up, down and run against moto alone), `deploy` (deploy, test, collect,
//! scale and host loss against a real sshd) and `trust` (host keys, where the tokens go).
#![cfg(feature = "ec2")]
use aws_sdk_ec2::types::Filter;
use bookstore_common::config::Kind;
use bookstore_common::types::{Book, Versioned};
use infra::ec2::state::{Phase, RunState, Service};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod deploy;
mod lifecycle;
mod trust;

use crate::{workspace, INFRA};
const OWNER: &str = "136693071363";
const NEWEST_X86: &str = "ami-0deb12000000002";

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

/// The flags that install `binary` on the test hosts: into `remote`, waiting up to 20 s
/// for ssh.
fn install_flags<'a>(binary: &'a str, remote: &'a Path) -> [&'a str; 6] {
    let remote = remote.to_str().unwrap();
    [
        "--binary",
        binary,
        "--remote-dir",
        remote,
        "--ssh-wait",
        "20",
    ]
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

/// sshd and ssh are installed (else a skip, as `need` says).
fn have_ssh() -> bool {
    need("/usr/sbin/sshd").is_some() && need("ssh").is_some()
}

/// A new ed25519 key pair without a passphrase at `path` (and `path`.pub).
fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

/// What a deploy test stands on: moto, a work folder, and the folder under it that the
/// hosts' files go to, whose servers are killed when the last part is dropped. Bound in
/// this order, the servers die first and moto last. None (the test skips) without moto,
/// sshd or ssh.
fn ssh_scene() -> Option<(Moto, tempfile::TempDir, PathBuf, ServersUnder)> {
    let moto = Moto::start()?;
    if !have_ssh() {
        return None;
    }
    let out = tempfile::tempdir().unwrap();
    let remote = out.path().join("remote");
    let servers = ServersUnder(remote.clone());
    Some((moto, out, remote, servers))
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
        keygen(&host_key);
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
