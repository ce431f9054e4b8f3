//! Which service runs on which host, the cluster file, the operator's CIDR and host maps.
//!
//! The coordinators go on distinct hosts (coordinator `i` on host `i`), and each of those
//! hosts runs a frontend too (frontend `i`), so losing any one host leaves a majority of
//! coordinators and some frontends serving. The other services go to the least loaded
//! host without a replica of their kind.
use super::state::Service;
use anyhow::{anyhow, bail, Context};
use bookstore_common::config::{ClusterConfig, Endpoint, Kind};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

/// Replicas of each replicated kind (catalog, order) a run starts with.
pub const REPLICAS: u32 = 2;

/// What a run is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Coordinators, each on its own host with a frontend beside it.
    pub coordinators: u32,
    /// Catalog replicas.
    pub catalogs: u32,
    /// Order replicas.
    pub orders: u32,
}

impl Shape {
    /// The services of a run: the frontends first, so that they take the first ports
    /// (the ones open to the operator), then the coordinators, the cache, the catalogs
    /// and the orders.
    pub fn services(&self) -> Vec<(Kind, u32)> {
        let mut v: Vec<(Kind, u32)> = (0..self.coordinators)
            .map(|i| (Kind::Frontend, i))
            .collect();
        v.extend((0..self.coordinators).map(|i| (Kind::Coordinator, i)));
        v.push((Kind::Cache, 0));
        v.extend((0..self.catalogs).map(|i| (Kind::Catalog, i)));
        v.extend((0..self.orders).map(|i| (Kind::Order, i)));
        v
    }

    /// How many frontends the run has (their ports are the first ones).
    pub fn frontends(&self) -> u32 {
        self.coordinators
    }
}

/// One placed service: the service and the index of its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub service: Service,
    pub host: usize,
}

/// Places services on `n_hosts` hosts. Coordinator `i` and frontend `i` go to host `i`
/// (so the coordinators are on distinct hosts: there must be at least as many hosts);
/// every other service goes to the least loaded host that does not already hold a
/// replica of its kind (lowest index on a tie), so replicas of one kind land on
/// different hosts whenever there are enough hosts. Ports are `base_port` plus the
/// service's position, so the services never collide even when every host is the same
/// machine (tests).
pub fn place(n_hosts: usize, base_port: u16, svcs: &[(Kind, u32)]) -> anyhow::Result<Vec<Placed>> {
    let coordinators = svcs.iter().filter(|s| s.0 == Kind::Coordinator).count();
    if n_hosts < coordinators.max(1) {
        bail!(
            "{coordinators} coordinators go on {coordinators} distinct hosts, but there are {n_hosts}: pass --hosts {coordinators} or more, or --coordinators 1 for a small run"
        );
    }
    let mut load = vec![0usize; n_hosts];
    let mut kinds: Vec<Vec<Kind>> = vec![Vec::new(); n_hosts];
    let mut out = Vec::new();
    for (i, &(kind, id)) in svcs.iter().enumerate() {
        let pinned = matches!(kind, Kind::Coordinator | Kind::Frontend) && (id as usize) < n_hosts;
        let pick = |allow_same: bool| {
            (0..n_hosts)
                .filter(|&h| allow_same || !kinds[h].contains(&kind))
                .min_by_key(|&h| (load[h], h))
        };
        let h = if pinned {
            id as usize
        } else {
            pick(false).or_else(|| pick(true)).unwrap_or(0)
        };
        let port = u16::try_from(u32::from(base_port) + i as u32).map_err(|_| {
            anyhow!("--base-port {base_port}: the service ports must fit below 65536")
        })?;
        load[h] += 1;
        kinds[h].push(kind);
        out.push(Placed {
            service: Service::new(kind, id, port),
            host: h,
        });
    }
    Ok(out)
}

/// The cluster file for services on hosts reached at `host_addrs[host]`.
pub fn cluster<'a>(
    services: impl IntoIterator<Item = (usize, &'a Service)>,
    host_addrs: &[String],
) -> ClusterConfig {
    let mut all: Vec<(usize, &Service)> = services.into_iter().collect();
    // A cluster file lists the replicas of a kind by id.
    all.sort_by_key(|(_, s)| (s.kind, s.id));
    let parts: Vec<(Kind, Endpoint)> = all
        .into_iter()
        .map(|(h, s)| (s.kind, Endpoint::new(host_addrs[h].clone(), s.port)))
        .collect();
    ClusterConfig::from_parts(&parts)
}

/// Checks `--allow`: an IPv4 or IPv6 CIDR, not "everyone".
pub fn check_cidr(cidr: &str) -> anyhow::Result<()> {
    let (addr, len) = cidr.split_once('/').with_context(|| {
        format!("--allow {cidr:?}: expected a CIDR like 203.0.113.7/32 (your address, /32)")
    })?;
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| anyhow!("--allow {cidr:?}: {addr:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u32 = match len.parse() {
        Ok(l) if l <= max => l,
        _ => bail!("--allow {cidr:?}: prefix length must be 0-{max}"),
    };
    if len == 0 {
        bail!(
            "--allow {cidr:?} would open SSH and the frontend to the whole internet; give your own address (e.g. 203.0.113.7/32)"
        );
    }
    Ok(())
}

/// Instance id to the `host`, `port` to ssh to (and run its services on).
pub type HostMap = BTreeMap<String, (String, u16)>;

/// Parses `--host-map` values: each is `INSTANCE=HOST[:PORT]` (port 22 by default), or the
/// path of a file of such lines (blank lines and `#` comments allowed).
pub fn parse_host_map(values: &[String]) -> anyhow::Result<HostMap> {
    let mut map = HostMap::new();
    for v in values {
        if v.contains('=') {
            let (id, target) = parse_entry(v).with_context(|| format!("--host-map {v:?}"))?;
            map.insert(id, target);
        } else {
            let text = std::fs::read_to_string(Path::new(v)).map_err(|e| {
                anyhow!("--host-map {v}: not ID=HOST[:PORT] and not a readable file: {e}")
            })?;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (id, target) = parse_entry(line).with_context(|| format!("{v}:{}", i + 1))?;
                map.insert(id, target);
            }
        }
    }
    Ok(map)
}

fn parse_entry(s: &str) -> anyhow::Result<(String, (String, u16))> {
    let (id, target) = s.split_once('=').context("expected INSTANCE=HOST[:PORT]")?;
    let id = id.trim();
    let target = target.trim();
    if id.is_empty() || target.is_empty() {
        bail!("expected INSTANCE=HOST[:PORT]");
    }
    let (host, port) = match target.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|&p| p > 0)
                .with_context(|| format!("bad port {p:?}"))?;
            (h.trim_matches(|c| c == '[' || c == ']').to_string(), port)
        }
        _ => (target.to_string(), 22),
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        bail!("bad host {host:?}");
    }
    Ok((id.to_string(), (host, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(coordinators: u32) -> Shape {
        Shape {
            coordinators,
            catalogs: 2,
            orders: 2,
        }
    }

    #[test]
    fn coordinators_go_to_distinct_hosts_each_with_a_frontend() {
        let svcs = shape(3).services();
        assert_eq!(svcs.len(), 11);
        for n in 3..=8 {
            let placed = place(n, 8000, &svcs).unwrap();
            for i in 0..3 {
                let on = |kind| placed.iter().find(|p| p.service.is(kind, i)).unwrap().host;
                assert_eq!(on(Kind::Coordinator), i as usize, "{n} hosts: {placed:?}");
                assert_eq!(on(Kind::Frontend), i as usize, "{n} hosts: {placed:?}");
            }
            // Losing any one host leaves a majority of coordinators and a frontend.
            for lost in 0..n {
                let left = |kind| {
                    placed
                        .iter()
                        .filter(|p| p.service.kind == kind && p.host != lost)
                        .count()
                };
                assert!(left(Kind::Coordinator) >= 2 && left(Kind::Frontend) >= 2);
            }
        }
        let err = place(2, 8000, &svcs).unwrap_err().to_string();
        assert!(err.contains("--coordinators 1"), "{err}");
        assert_eq!(place(1, 8000, &shape(1).services()).unwrap().len(), 7);
        assert!(place(3, 65_530, &svcs)
            .unwrap_err()
            .to_string()
            .contains("65536"));
    }

    #[test]
    fn replicas_of_a_kind_go_to_different_hosts() {
        let svcs = shape(1).services();
        for n in 1..=6 {
            let placed = place(n, 8000, &svcs).unwrap();
            assert_eq!(placed.len(), 7);
            if n >= 2 {
                for kind in [Kind::Catalog, Kind::Order] {
                    let hosts: Vec<usize> = placed
                        .iter()
                        .filter(|p| p.service.kind == kind)
                        .map(|p| p.host)
                        .collect();
                    assert_ne!(hosts[0], hosts[1], "{n} hosts: {placed:?}");
                }
            }
            let used: std::collections::HashSet<usize> = placed.iter().map(|p| p.host).collect();
            assert_eq!(used.len(), n.min(7), "{n} hosts: every host gets work");
        }
        let placed = place(2, 9000, &svcs).unwrap();
        let c = cluster(
            placed.iter().map(|p| (p.host, &p.service)),
            &["10.0.0.1".into(), "10.0.0.2".into()],
        );
        assert_eq!(
            c.to_text(),
            "coordinator,10.0.0.1:9001\nfrontend,10.0.0.1:9000\ncache,10.0.0.2:9002\ncatalog,10.0.0.2:9003\ncatalog,10.0.0.1:9004\norder,10.0.0.2:9005\norder,10.0.0.1:9006\n"
        );
        ClusterConfig::parse(&c.to_text(), "c").unwrap();
    }

    #[test]
    fn cidrs_are_checked() {
        assert!(check_cidr("203.0.113.7/32").is_ok());
        assert!(check_cidr("2001:db8::/64").is_ok());
        assert!(check_cidr("0.0.0.0/0")
            .unwrap_err()
            .to_string()
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
