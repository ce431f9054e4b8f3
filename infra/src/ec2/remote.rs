//! The control script `deploy` writes next to the `infra` binary on every host:
//! `bookstore.sh start|stop|status|health SECONDS`.
//!
//! `start` runs each of the host's services as `infra serve KIND --id N ...` so that it
//! outlives the SSH session: as a systemd unit when systemd runs and `sudo -n` works,
//! else with `setsid nohup ... &` and a pid file in `run/`. Tokens come from the file
//! `env` (mode 0600), never from the command line.

/// A service on a host: kind, replica id, the address it binds, port.
#[derive(Debug, Clone)]
pub struct Svc {
    pub kind: String,
    pub id: u32,
    pub host: String,
    pub port: u16,
}

/// The script for one host's services.
pub fn control_script(run: &str, services: &[Svc]) -> String {
    let list: String = services
        .iter()
        .map(|s| format!("{} {} {} {}\n", s.kind, s.id, s.host, s.port))
        .collect();
    SCRIPT
        .replace("@RUN@", run)
        .replace("@SERVICES@", list.trim_end())
}

const SCRIPT: &str = r#"#!/bin/bash
# bookstore run @RUN@: written by `infra ec2 deploy`. Usage: bookstore.sh start|stop|status|health SECONDS
set -u
cd "$(dirname "$0")" || exit 1
DIR=$(pwd)
SERVICES="@SERVICES@"

use_systemd() {
    [ -z "${BOOKSTORE_NO_SYSTEMD:-}" ] && [ -d /run/systemd/system ] \
        && command -v systemctl >/dev/null 2>&1 && sudo -n true 2>/dev/null
}

args_of() { # kind id
    local a="serve $1 --id $2 --cluster $DIR/cluster.csv --output-dir $DIR/output"
    [ "$1" = catalog ] && a="$a --books $DIR/books.csv"
    echo "$a"
}

start() {
    mkdir -p output run
    stop >/dev/null 2>&1
    local failed=0
    while read -r kind id host port; do
        [ -n "$kind" ] || continue
        local name="$kind$id" log="$DIR/output/$kind$id.stderr.log"
        if use_systemd; then
            sudo -n tee "/etc/systemd/system/bookstore-$name.service" >/dev/null <<UNIT
[Unit]
Description=bookstore $kind $id (run @RUN@)
After=network-online.target
[Service]
User=$(id -un)
WorkingDirectory=$DIR
EnvironmentFile=$DIR/env
ExecStart=$DIR/infra $(args_of "$kind" "$id")
StandardOutput=append:$log
StandardError=append:$log
Restart=on-failure
[Install]
WantedBy=multi-user.target
UNIT
            sudo -n systemctl daemon-reload && sudo -n systemctl restart "bookstore-$name" \
                && echo "started $kind $id on $host:$port (systemd unit bookstore-$name)" \
                || { echo "cannot start bookstore-$name"; failed=1; }
        else
            ( set -a; . "$DIR/env"; set +a
              exec setsid nohup "$DIR/infra" $(args_of "$kind" "$id") </dev/null >>"$log" 2>&1 ) &
            echo $! > "run/$name.pid"
            echo "started $kind $id on $host:$port (pid $!, setsid nohup)"
        fi
    done <<< "$SERVICES"
    sleep 0.5
    status || failed=1
    return $failed
}

stop() {
    while read -r kind id host port; do
        [ -n "$kind" ] || continue
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
    done <<< "$SERVICES"
}

status() {
    local bad=0
    while read -r kind id host port; do
        [ -n "$kind" ] || continue
        local name="$kind$id"
        if [ -f "/etc/systemd/system/bookstore-$name.service" ] && use_systemd; then
            systemctl is-active --quiet "bookstore-$name" && continue
        elif [ -f "run/$name.pid" ] && kill -0 "$(cat "run/$name.pid")" 2>/dev/null; then
            continue
        fi
        echo "$kind $id is not running; the end of output/$name.stderr.log:"
        tail -n 15 "output/$name.stderr.log" 2>/dev/null
        bad=1
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

health() { # seconds
    local deadline=$(( $(date +%s) + ${1:-60} ))
    while read -r kind id host port; do
        [ -n "$kind" ] || continue
        until healthy "$host" "$port"; do
            if [ "$(date +%s)" -ge "$deadline" ]; then
                echo "$kind $id ($host:$port) did not answer /health in time"
                status
                return 1
            fi
            sleep 0.2
        done
        echo "$kind $id ($host:$port) is healthy"
    done <<< "$SERVICES"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status && echo "every service is running" ;;
    health) health "${2:-60}" ;;
    *) echo "usage: $0 start|stop|status|health SECONDS" >&2; exit 2 ;;
esac
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_lists_the_services() {
        let s = control_script(
            "r1",
            &[
                Svc {
                    kind: "frontend".into(),
                    id: 0,
                    host: "10.0.0.1".into(),
                    port: 8000,
                },
                Svc {
                    kind: "catalog".into(),
                    id: 1,
                    host: "10.0.0.1".into(),
                    port: 8003,
                },
            ],
        );
        assert!(s.contains("SERVICES=\"frontend 0 10.0.0.1 8000\ncatalog 1 10.0.0.1 8003\"\n"));
        assert!(s.contains("# bookstore run r1:"));
        assert!(!s.contains("@RUN@") && !s.contains("@SERVICES@"));
    }
}
