//! `up`, `down` and `run` against moto alone: what is created, tagged and deleted, and
//! what a failure or Ctrl-C leaves.
use super::*;

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
    let group_count = || {
        rt().block_on(async {
            c.describe_security_groups()
                .send()
                .await
                .unwrap()
                .security_groups()
                .len()
        })
    };
    let default_groups = group_count() - 2;
    run_ok(ec2(
        out.path(),
        &["down", "--all-runs", "--endpoint-url", &moto.url],
    ));
    assert_eq!(leftovers(&moto, "t-crash1"), (0, 0, 0));
    assert_eq!(leftovers(&moto, "t-crash2"), (0, 0, 0));
    assert_eq!(
        group_count(),
        default_groups,
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
    while RunState::load(out.path(), "t-runint").ok().map(|s| s.phase) != Some(Phase::Up) {
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
