//! What the servers of a local cluster cost: CPU time (utime + stime) and context
//! switches (voluntary and not), per process and per thread, read from `/proc`.
//!
//! The servers are the children of a running `infra local up` (its pid is in
//! `<output-dir>/local-up.json`): every `infra serve KIND --id N` and HAProxy. A
//! [`Sample`] is taken before and after a run; [`Cost::between`] subtracts them. On this
//! 2-core machine CPU per request and context switches per request are the stable
//! figures (throughput is noisy): docs/performance.md reports them this way.
use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One server process of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub pid: u32,
    /// `catalog 0`, `haproxy`, ... (from its command line).
    pub label: String,
}

/// One thread's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    /// utime + stime, in clock ticks.
    ticks: u64,
    voluntary: u64,
    involuntary: u64,
}

/// Every server's threads' counters at one moment: `(pid, tid) -> (thread name, counters)`.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    threads: BTreeMap<(u32, u32), (String, Counters)>,
    processes: BTreeMap<u32, (String, Counters)>,
}

/// The cost of an interval, per process and per thread name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// CPU milliseconds of every server together.
    pub cpu_ms: f64,
    /// Context switches of every server thread together.
    pub switches: u64,
    pub voluntary: u64,
    pub involuntary: u64,
    /// By process label.
    pub processes: Vec<PartCost>,
    /// By process label and thread name (threads of one name added up).
    pub threads: Vec<PartCost>,
}

/// The cost of one process, or of the threads of one name in one process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartCost {
    pub name: String,
    pub cpu_ms: f64,
    pub switches: u64,
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of `/proc/.../stat` text (fields 14 and 15, after the `)` of the name).
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The parent pid of `/proc/PID/stat` text (field 4).
fn stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
        .unwrap_or(0)
}

/// A label for a server from its command line: `infra serve catalog --id 1 ...` ->
/// `catalog 1`; anything else by its program name.
fn label(cmdline: &[u8]) -> String {
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if let Some(i) = args.iter().position(|a| a == "serve") {
        let kind = args.get(i + 1).cloned().unwrap_or_default();
        let id = args
            .iter()
            .position(|a| a == "--id")
            .and_then(|j| args.get(j + 1))
            .cloned()
            .unwrap_or_else(|| "0".into());
        return format!("{kind} {id}");
    }
    args.first()
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
        .unwrap_or_else(|| "?".into())
}

/// The children of process `parent` (the servers a `local up` supervises).
pub fn children(parent: u32) -> Vec<Server> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if stat_ppid(&stat) != Some(parent) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        out.push(Server {
            pid,
            label: label(&cmdline),
        });
    }
    out.sort_by(|a, b| a.label.cmp(&b.label));
    out
}

/// The servers of the `infra local up` whose output directory is `dir`.
pub fn local_up_servers(dir: &Path) -> anyhow::Result<Vec<Server>> {
    let file = dir.join("local-up.json");
    let text = std::fs::read_to_string(&file).map_err(|e| {
        anyhow!(
            "{}: {e} (is `infra local up --output-dir {}` running?)",
            file.display(),
            dir.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| file.display().to_string())?;
    let pid = v["pid"]
        .as_u64()
        .with_context(|| format!("{}: no pid", file.display()))? as u32;
    let servers = children(pid);
    if servers.is_empty() {
        bail!(
            "process {pid} ({}) has no child processes: is that `local up` still running?",
            file.display()
        );
    }
    Ok(servers)
}

impl Sample {
    /// Reads every thread of every server now. A server that has exited is skipped.
    pub fn take(servers: &[Server]) -> Sample {
        let mut s = Sample::default();
        for srv in servers {
            let ticks = std::fs::read_to_string(format!("/proc/{}/stat", srv.pid))
                .ok()
                .and_then(|t| stat_ticks(&t));
            let Some(ticks) = ticks else { continue };
            let mut total = Counters {
                ticks,
                ..Counters::default()
            };
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", srv.pid)) else {
                continue;
            };
            for t in tasks.flatten() {
                let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let base = format!("/proc/{}/task/{tid}", srv.pid);
                let (Ok(stat), Ok(status)) = (
                    std::fs::read_to_string(format!("{base}/stat")),
                    std::fs::read_to_string(format!("{base}/status")),
                ) else {
                    continue;
                };
                let name = std::fs::read_to_string(format!("{base}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                let c = Counters {
                    ticks: stat_ticks(&stat).unwrap_or(0),
                    voluntary: status_field(&status, "voluntary_ctxt_switches"),
                    involuntary: status_field(&status, "nonvoluntary_ctxt_switches"),
                };
                total.voluntary += c.voluntary;
                total.involuntary += c.involuntary;
                s.threads.insert((srv.pid, tid), (name, c));
            }
            s.processes.insert(srv.pid, (srv.label.clone(), total));
        }
        s
    }
}

impl Cost {
    /// What happened between two samples of the same servers. Threads that exited in
    /// between are not counted (their switches are gone with them); threads born in
    /// between count from zero.
    pub fn between(before: &Sample, after: &Sample) -> Cost {
        let hz = clock_ticks_per_second();
        let ms = |ticks: u64| ticks as f64 * 1000.0 / hz;
        let mut cost = Cost::default();
        for (pid, (label, a)) in &after.processes {
            let b = before.processes.get(pid).map(|x| x.1).unwrap_or_default();
            let ticks = a.ticks.saturating_sub(b.ticks);
            let vol = a.voluntary.saturating_sub(b.voluntary);
            let inv = a.involuntary.saturating_sub(b.involuntary);
            cost.cpu_ms += ms(ticks);
            cost.voluntary += vol;
            cost.involuntary += inv;
            cost.processes.push(PartCost {
                name: label.clone(),
                cpu_ms: ms(ticks),
                switches: vol + inv,
            });
        }
        cost.switches = cost.voluntary + cost.involuntary;
        let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (key, (name, a)) in &after.threads {
            let b = before.threads.get(key).map(|x| x.1).unwrap_or_default();
            let label = after.processes.get(&key.0).map_or("?", |p| p.0.as_str());
            let e = by_name.entry(format!("{label}/{name}")).or_default();
            e.0 += a.ticks.saturating_sub(b.ticks);
            e.1 += (a.voluntary + a.involuntary).saturating_sub(b.voluntary + b.involuntary);
        }
        cost.threads = by_name
            .into_iter()
            .map(|(name, (ticks, switches))| PartCost {
                name,
                cpu_ms: ms(ticks),
                switches,
            })
            .collect();
        cost.processes.sort_by(|a, b| b.cpu_ms.total_cmp(&a.cpu_ms));
        cost.threads.sort_by(|a, b| b.cpu_ms.total_cmp(&a.cpu_ms));
        cost
    }

    /// A few lines for a terminal: totals per `requests`, then the processes and the
    /// busiest threads.
    pub fn table(&self, requests: u64, what: &str) -> String {
        let n = requests.max(1) as f64;
        let mut out = format!(
            "server CPU {:.0} ms = {:.3} ms per {what}; {} context switches = {:.1} per {what} ({} voluntary, {} involuntary)\n",
            self.cpu_ms,
            self.cpu_ms / n,
            self.switches,
            self.switches as f64 / n,
            self.voluntary,
            self.involuntary
        );
        for p in &self.processes {
            out.push_str(&format!(
                "  {:<16} {:>8.0} ms CPU ({:.3} ms per {what}) {:>9} switches ({:.1} per {what})\n",
                p.name,
                p.cpu_ms,
                p.cpu_ms / n,
                p.switches,
                p.switches as f64 / n
            ));
        }
        out.push_str("  busiest threads:\n");
        for t in self.threads.iter().take(12) {
            out.push_str(&format!(
                "    {:<32} {:>8.0} ms CPU {:>9} switches ({:.1} per {what})\n",
                t.name,
                t.cpu_ms,
                t.switches,
                t.switches as f64 / n
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_spaces_in_the_name() {
        let stat = "1234 (tokio-runtime w) S 77 1234 1234 0 -1 4194368 100 0 0 0 250 40 0 0 20 0 3 0 1 2 3";
        assert_eq!(stat_ticks(stat), Some(290));
        assert_eq!(stat_ppid(stat), Some(77));
        assert_eq!(
            status_field(
                "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n",
                "voluntary_ctxt_switches"
            ),
            12
        );
    }

    #[test]
    fn servers_are_labelled_by_kind_and_id() {
        assert_eq!(
            label(b"/x/infra\0serve\0catalog\0--id\x001\0--cluster\0c.csv\0"),
            "catalog 1"
        );
        assert_eq!(label(b"/usr/sbin/haproxy\0-db\0-f\0x.cfg\0"), "haproxy");
    }

    #[test]
    fn this_process_can_be_measured() {
        let me = Server {
            pid: std::process::id(),
            label: "me".into(),
        };
        let before = Sample::take(std::slice::from_ref(&me));
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = Sample::take(&[me]);
        let cost = Cost::between(&before, &after);
        assert_eq!(cost.processes.len(), 1);
        assert!(!cost.threads.is_empty());
        assert!(cost.table(1, "request").contains("per request"));
    }
}
