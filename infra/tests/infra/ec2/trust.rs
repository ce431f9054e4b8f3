//! Issue 17, item 6: host keys learned on first contact and checked after, and each
//! token sent only to the hosts that need it.
use super::*;

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
    if !have_ssh() {
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
    let mut args = vec!["deploy", "--run", run, "--host-map", &map];
    args.extend(install_flags(stand_in.to_str().unwrap(), &remote));
    let err = run_err(ec2(out.path(), &args));
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
