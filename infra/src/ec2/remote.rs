//! The control script `deploy` writes next to the `infra` binary on every host (and `add`
//! and `remove` rewrite): `bookstore.sh start|stop|status|health SECONDS [KIND ID]` for
//! every service of the host, `start-one KIND ID` and `stop-one KIND ID` for one of them
//! (the others keep running).
//!
//! `start` runs each of the host's services as
//! `infra serve KIND --id N --listen HOST:PORT ...` so that it outlives the SSH session: as a systemd unit when systemd runs and `sudo -n` works,
//! else with `setsid nohup ... &` and a pid file in `run/`. Tokens come from the file
//! `env` (mode 0600), never from the command line; only the hosts of coordinators and
//! frontends have the admin token in it.

use super::state::Service;

/// A service on a host and the address it binds.
#[derive(Debug, Clone)]
pub struct Svc {
    pub service: Service,
    pub host: String,
}

/// The script for one host's services.
pub fn control_script(run: &str, services: &[Svc]) -> String {
    let list: String = services
        .iter()
        .map(|s| {
            let Service { kind, id, port } = s.service;
            format!("{kind} {id} {} {port}\n", s.host)
        })
        .collect();
    SCRIPT
        .replace("@RUN@", run)
        .replace("@SERVICES@", list.trim_end())
}

const SCRIPT: &str = r#"#!/bin/bash
# bookstore run @RUN@: written by `infra ec2 deploy` (and `add`/`remove`).
# Usage: bookstore.sh start|stop|status|health SECONDS [KIND ID]|start-one KIND ID|stop-one KIND ID
set -u
cd "$(dirname "$0")" || exit 1
DIR=$(pwd)
SERVICES="@SERVICES@"

use_systemd() {
    [ -z "${BOOKSTORE_NO_SYSTEMD:-}" ] && [ -d /run/systemd/system ] \
        && command -v systemctl >/dev/null 2>&1 && sudo -n true 2>/dev/null
}

args_of() { # kind id host port
    local listen="$3:$4"
    case "$3" in *:*) listen="[$3]:$4" ;; esac
    local a="serve $1 --id $2 --listen $listen --cluster $DIR/cluster.csv --output-dir $DIR/output"
    [ "$1" = catalog ] && a="$a --books $DIR/books.csv"
    echo "$a"
}

find_svc() { # kind id: prints "kind id host port" of a listed service
    local kind id host port
    while read -r kind id host port; do
        [ -n "$kind" ] || continue
        if [ "$kind" = "$1" ] && [ "$id" = "$2" ]; then echo "$kind $id $host $port"; return 0; fi
    done <<< "$SERVICES"
    echo "$1 $2 is not a service of this host" >&2
    return 1
}

start_svc() { # kind id host port
    local kind=$1 id=$2 host=$3 port=$4
    local name="$kind$id" log="$DIR/output/$kind$id.stderr.log"
    mkdir -p output run
    if use_systemd; then
        sudo -n tee "/etc/systemd/system/bookstore-$name.service" >/dev/null <<UNIT
[Unit]
Description=bookstore $kind $id (run @RUN@)
After=network-online.target
[Service]
User=$(id -un)
WorkingDirectory=$DIR
EnvironmentFile=$DIR/env
ExecStart=$DIR/infra $(args_of "$kind" "$id" "$host" "$port")
StandardOutput=append:$log
StandardError=append:$log
Restart=on-failure
LimitNOFILE=65536
[Install]
WantedBy=multi-user.target
UNIT
        sudo -n systemctl daemon-reload && sudo -n systemctl restart "bookstore-$name" \
            && echo "started $kind $id on $host:$port (systemd unit bookstore-$name)" \
            || { echo "cannot start bookstore-$name"; return 1; }
    else
        ( set -a; . "$DIR/env"; set +a
          exec setsid nohup "$DIR/infra" $(args_of "$kind" "$id" "$host" "$port") </dev/null >>"$log" 2>&1 ) &
        echo $! > "run/$name.pid"
        echo "started $kind $id on $host:$port (pid $!, setsid nohup)"
    fi
}

stop_svc() { # kind id (listed or not: it may be one that was just removed from the list)
    local kind=$1 id=$2
    local name="$kind$id"
    if [ -f "/etc/systemd/system/bookstore-$name.service" ] && use_systemd; then
        sudo -n systemctl stop "bookstore-$name" && echo "stopped $kind $id"
    fi
    if [ -f "run/$name.pid" ]; then
        local pid; pid=$(cat "run/$name.pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
            echo "stopped $kind $id (pid $pid)"
        fi
        rm -f "run/$name.pid"
    fi
}

status_svc() { # kind id
    local name="$1$2"
    if [ -f "/etc/systemd/system/bookstore-$name.service" ] && use_systemd; then
        systemctl is-active --quiet "bookstore-$name" && return 0
    elif [ -f "run/$name.pid" ] && kill -0 "$(cat "run/$name.pid")" 2>/dev/null; then
        return 0
    fi
    echo "$1 $2 is not running; the end of output/$name.stderr.log:"
    tail -n 15 "output/$name.stderr.log" 2>/dev/null
    return 1
}

start() {
    mkdir -p output run
    stop >/dev/null 2>&1
    local failed=0
    while read -r kind id host port; do
        [ -n "$kind" ] || continue
        start_svc "$kind" "$id" "$host" "$port" || failed=1
    done <<< "$SERVICES"
    sleep 0.5
    status || failed=1
    return $failed
}

start_one() { # kind id: (re)starts one listed service, leaving the others alone
    local svc; svc=$(find_svc "$1" "$2") || return 2
    stop_svc "$1" "$2" >/dev/null 2>&1
    # shellcheck disable=SC2086
    start_svc $svc || return 1
    sleep 0.5
    status_svc "$1" "$2"
}

stop() {
    while read -r kind id host port; do
        [ -n "$kind" ] || continue
        stop_svc "$kind" "$id"
    done <<< "$SERVICES"
}

status() {
    local bad=0
    while read -r kind id host port; do
        [ -n "$kind" ] || continue
        status_svc "$kind" "$id" || bad=1
    done <<< "$SERVICES"
    return $bad
}

healthy() { # host port: GET /health answers 200 (bash's /dev/tcp, no curl needed)
    local line
    { exec 3<>"/dev/tcp/$1/$2"; } 2>/dev/null || return 1
    printf 'GET /health HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" >&3
    read -r -t 2 line <&3
    exec 3<&- 3>&-
    case "$line" in *" 200"*) return 0 ;; esac
    return 1
}

health() { # seconds [kind id]: every listed service, or only that one
    local deadline=$(( $(date +%s) + ${1:-60} ))
    local list="$SERVICES"
    if [ -n "${2:-}" ]; then list=$(find_svc "$2" "${3:-}") || return 2; fi
    while read -r kind id host port; do
        [ -n "$kind" ] || continue
        until healthy "$host" "$port"; do
            if [ "$(date +%s)" -ge "$deadline" ]; then
                echo "$kind $id ($host:$port) did not answer /health in time"
                status_svc "$kind" "$id"
                return 1
            fi
            sleep 0.2
        done
        echo "$kind $id ($host:$port) is healthy"
    done <<< "$list"
}

usage() {
    echo "usage: $0 start|stop|status|health SECONDS [KIND ID]|start-one KIND ID|stop-one KIND ID" >&2
    exit 2
}

one() { # the KIND ID arguments name a file: letters, then digits
    [ $# -eq 2 ] && [[ "$1" =~ ^[a-z]+$ ]] && [[ "$2" =~ ^[0-9]+$ ]] || usage
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status && echo "every service is running" ;;
    health) health "${2:-60}" "${3:-}" "${4:-}" ;;
    start-one) shift; one "$@"; start_one "$1" "$2" ;;
    stop-one) shift; one "$@"; stop_svc "$1" "$2"; echo "$1 $2 is not running" ;;
    *) usage ;;
esac
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use bookstore_common::config::Kind;

    fn svc(kind: Kind, id: u32, host: &str, port: u16) -> Svc {
        Svc {
            service: Service::new(kind, id, port),
            host: host.into(),
        }
    }

    #[test]
    fn the_script_lists_the_services() {
        let s = control_script(
            "r1",
            &[
                svc(Kind::Frontend, 0, "10.0.0.1", 8000),
                svc(Kind::Catalog, 1, "10.0.0.1", 8003),
            ],
        );
        assert!(s.contains("SERVICES=\"frontend 0 10.0.0.1 8000\ncatalog 1 10.0.0.1 8003\"\n"));
        assert!(s.contains("# bookstore run r1:"));
        assert!(!s.contains("@RUN@") && !s.contains("@SERVICES@"));
    }

    /// The systemd unit raises the open-file limit: 2 x 4096 connections and the
    /// replicas' files do not fit in the default 1024.
    #[test]
    fn the_unit_raises_the_open_file_limit() {
        let s = control_script("r1", &[]);
        let unit = &s[s.find("[Service]").expect("a unit")..];
        assert!(unit.contains("\nLimitNOFILE=65536\n"), "{unit}");
    }

    fn alive(pid: i32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    fn pid(dir: &std::path::Path, name: &str) -> i32 {
        std::fs::read_to_string(dir.join("run").join(format!("{name}.pid")))
            .unwrap_or_else(|e| panic!("{name}.pid: {e}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// The script against a stand-in `infra` (it records its arguments and sleeps):
    /// `start-one` and `stop-one` touch one service and leave the other running.
    #[test]
    fn one_service_starts_and_stops_alone() {
        use std::os::unix::fs::PermissionsExt;
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let script = d.join("bookstore.sh");
        std::fs::write(
            &script,
            control_script(
                "r1",
                &[
                    svc(Kind::Frontend, 0, "127.0.0.1", 8000),
                    svc(Kind::Catalog, 3, "127.0.0.1", 8006),
                ],
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("infra"),
            "#!/bin/bash\necho \"$*\" >> \"$(dirname \"$0\")/calls\"\nexec sleep 60\n",
        )
        .unwrap();
        std::fs::write(d.join("env"), "BOOKSTORE_CLUSTER_TOKEN=t\n").unwrap();
        for f in ["bookstore.sh", "infra"] {
            std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let run = |args: &[&str]| {
            Command::new(&script)
                .args(args)
                .env("BOOKSTORE_NO_SYSTEMD", "1")
                .output()
                .unwrap()
        };
        struct Kill(Vec<i32>);
        impl Drop for Kill {
            fn drop(&mut self) {
                for &p in &self.0 {
                    // SAFETY: SIGKILL to a stand-in this test started.
                    unsafe {
                        libc::kill(p, libc::SIGKILL);
                    }
                }
            }
        }
        let o = run(&["start"]);
        assert!(o.status.success(), "{o:?}");
        let (fe, cat) = (pid(d, "frontend0"), pid(d, "catalog3"));
        let mut cleanup = Kill(vec![fe, cat]);
        let calls = std::fs::read_to_string(d.join("calls")).unwrap();
        assert!(
            calls.contains("serve catalog --id 3 --listen 127.0.0.1:8006 --cluster")
                && calls.contains("--books"),
            "{calls}"
        );
        assert!(calls.contains("serve frontend --id 0 --listen 127.0.0.1:8000"));

        let o = run(&["start-one", "catalog", "3"]);
        assert!(o.status.success(), "{o:?}");
        let cat2 = pid(d, "catalog3");
        cleanup.0.push(cat2);
        assert_ne!(cat, cat2, "catalog 3 was restarted");
        assert_eq!(pid(d, "frontend0"), fe);
        assert!(alive(fe) && alive(cat2));

        let o = run(&["stop-one", "catalog", "3"]);
        assert!(o.status.success(), "{o:?}");
        assert!(!d.join("run/catalog3.pid").exists());
        assert!(alive(fe), "the frontend keeps running");

        let o = run(&["start-one", "order", "9"]);
        assert_eq!(
            o.status.code(),
            Some(2),
            "not a service of this host: {o:?}"
        );
        let o = run(&["stop-one", "../x", "1"]);
        assert_eq!(o.status.code(), Some(2), "names are checked: {o:?}");
        let o = run(&["stop"]);
        assert!(o.status.success(), "{o:?}");
        assert!(!d.join("run/frontend0.pid").exists());
    }
}
