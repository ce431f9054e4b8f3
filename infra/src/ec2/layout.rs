//! Which service runs on which host, the cluster file, the operator's CIDR and host maps.
use bookstore_common::config::{ClusterConfig, Endpoint, Kind};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

/// The services of a run (frontend, coordinator, cache, catalogs, orders): the frontend
/// first, so that it takes the base port, the one open to the operator.
pub fn services(n_catalog: u32, n_order: u32) -> Vec<(Kind, u32)> {
    let mut v = vec![
        (Kind::Frontend, 0),
        (Kind::Coordinator, 0),
        (Kind::Cache, 0),
    ];
    v.extend((0..n_catalog).map(|i| (Kind::Catalog, i)));
    v.extend((0..n_order).map(|i| (Kind::Order, i)));
    v
}

/// Places services on `n_hosts` hosts: each goes to the least loaded host that does not
/// already hold a replica of the same kind (lowest index on a tie), so replicas of one
/// kind land on different hosts whenever there are enough hosts. Ports are `base_port`
/// plus the service's position, so the services never collide even when every host is
/// the same machine (tests). Returns `(kind, id, host index, port)`.
pub fn place(n_hosts: usize, base_port: u16, svcs: &[(Kind, u32)]) -> Vec<(Kind, u32, usize, u16)> {
    let n_hosts = n_hosts.max(1);
    let mut load = vec![0usize; n_hosts];
    let mut kinds: Vec<Vec<Kind>> = vec![Vec::new(); n_hosts];
    let mut out = Vec::new();
    for (i, &(kind, id)) in svcs.iter().enumerate() {
        let pick = |allow_same: bool| {
            (0..n_hosts)
                .filter(|&h| allow_same || !kinds[h].contains(&kind))
                .min_by_key(|&h| (load[h], h))
        };
        let h = pick(false).or_else(|| pick(true)).unwrap_or(0);
        load[h] += 1;
        kinds[h].push(kind);
        out.push((kind, id, h, base_port + i as u16));
    }
    out
}

/// The cluster file for placed services, each host's services at `host_addrs[host]`.
pub fn cluster(placed: &[(Kind, u32, usize, u16)], host_addrs: &[String]) -> ClusterConfig {
    let parts: Vec<(Kind, Endpoint)> = placed
        .iter()
        .map(|&(k, _, h, port)| (k, Endpoint::new(host_addrs[h].clone(), port)))
        .collect();
    ClusterConfig::from_parts(&parts)
}

/// Checks `--allow`: an IPv4 or IPv6 CIDR, not "everyone".
pub fn check_cidr(cidr: &str) -> Result<(), String> {
    let (addr, len) = cidr.split_once('/').ok_or_else(|| {
        format!("--allow {cidr:?}: expected a CIDR like 203.0.113.7/32 (your address, /32)")
    })?;
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("--allow {cidr:?}: {addr:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u32 = match len.parse() {
        Ok(l) if l <= max => l,
        _ => return Err(format!("--allow {cidr:?}: prefix length must be 0-{max}")),
    };
    if len == 0 {
        return Err(format!(
            "--allow {cidr:?} would open SSH and the frontend to the whole internet; give your own address (e.g. 203.0.113.7/32)"
        ));
    }
    Ok(())
}

/// Instance id to the `host`, `port` to ssh to (and run its services on).
pub type HostMap = BTreeMap<String, (String, u16)>;

/// Parses `--host-map` values: each is `INSTANCE=HOST[:PORT]` (port 22 by default), or the
/// path of a file of such lines (blank lines and `#` comments allowed).
pub fn parse_host_map(values: &[String]) -> Result<HostMap, String> {
    let mut map = HostMap::new();
    for v in values {
        if v.contains('=') {
            let (id, target) = parse_entry(v).map_err(|e| format!("--host-map {v:?}: {e}"))?;
            map.insert(id, target);
        } else {
            let text = std::fs::read_to_string(Path::new(v)).map_err(|e| {
                format!("--host-map {v}: not ID=HOST[:PORT] and not a readable file: {e}")
            })?;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (id, target) = parse_entry(line).map_err(|e| format!("{v}:{}: {e}", i + 1))?;
                map.insert(id, target);
            }
        }
    }
    Ok(map)
}

fn parse_entry(s: &str) -> Result<(String, (String, u16)), String> {
    let (id, target) = s
        .split_once('=')
        .ok_or_else(|| "expected INSTANCE=HOST[:PORT]".to_string())?;
    let id = id.trim();
    let target = target.trim();
    if id.is_empty() || target.is_empty() {
        return Err("expected INSTANCE=HOST[:PORT]".into());
    }
    let (host, port) = match target.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("bad port {p:?}"))?;
            (h.trim_matches(|c| c == '[' || c == ']').to_string(), port)
        }
        _ => (target.to_string(), 22),
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("bad host {host:?}"));
    }
    Ok((id.to_string(), (host, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_of_a_kind_go_to_different_hosts() {
        let svcs = services(2, 2);
        for n in 1..=6 {
            let placed = place(n, 8000, &svcs);
            assert_eq!(placed.len(), 7);
            if n >= 2 {
                for kind in [Kind::Catalog, Kind::Order] {
                    let hosts: Vec<usize> =
                        placed.iter().filter(|p| p.0 == kind).map(|p| p.2).collect();
                    assert_ne!(hosts[0], hosts[1], "{n} hosts: {placed:?}");
                }
            }
            let used: std::collections::HashSet<usize> = placed.iter().map(|p| p.2).collect();
            assert_eq!(used.len(), n.min(7), "{n} hosts: every host gets work");
        }
        let placed = place(2, 9000, &svcs);
        let c = cluster(&placed, &["10.0.0.1".into(), "10.0.0.2".into()]);
        assert_eq!(
            c.to_text(),
            "coordinator,10.0.0.2:9001\nfrontend,10.0.0.1:9000\ncache,10.0.0.1:9002\ncatalog,10.0.0.2:9003\ncatalog,10.0.0.1:9004\norder,10.0.0.2:9005\norder,10.0.0.1:9006\n"
        );
        ClusterConfig::parse(&c.to_text(), "c").unwrap();
    }

    #[test]
    fn cidrs_are_checked() {
        assert!(check_cidr("203.0.113.7/32").is_ok());
        assert!(check_cidr("2001:db8::/64").is_ok());
        assert!(check_cidr("0.0.0.0/0")
            .unwrap_err()
            .contains("whole internet"));
        assert!(check_cidr("203.0.113.7").is_err());
        assert!(check_cidr("203.0.113.7/33").is_err());
        assert!(check_cidr("example.com/32").is_err());
    }

    #[test]
    fn host_maps_parse_from_args_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("map");
        std::fs::write(&f, "# test hosts\ni-b = 127.0.0.1:2200\n\ni-c=127.0.0.2\n").unwrap();
        let m = parse_host_map(&["i-a=127.0.0.1:2222".into(), f.display().to_string()]).unwrap();
        assert_eq!(m["i-a"], ("127.0.0.1".to_string(), 2222));
        assert_eq!(m["i-b"], ("127.0.0.1".to_string(), 2200));
        assert_eq!(m["i-c"], ("127.0.0.2".to_string(), 22));
        assert!(parse_host_map(&["i-a=127.0.0.1:x".into()]).is_err());
        assert!(parse_host_map(&["/no/such/file".into()]).is_err());
    }
}
