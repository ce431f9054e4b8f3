//! What a local cluster starts: cluster files on free loopback ports, the books file
//! checked first, and the coordinators added and retired at run time
//! (`<output-dir>/coordinators.json`).
use anyhow::{anyhow, bail, Context};
use bookstore_common::config::{ClusterConfig, Endpoint, Kind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A books file for tests: one line `N,Book N,t,STOCK,10` for each `(N, STOCK)`.
pub fn books_csv(books: &[(u32, u64)]) -> String {
    let mut csv = String::from("item_number,title,topic,stock,cost\n");
    for (n, stock) in books {
        csv.push_str(&format!("{n},Book {n},t,{stock},10\n"));
    }
    csv
}

/// Writes `cluster` and `books` ([`books_csv`]) into `dir` as `cluster.csv` and
/// `books.csv`, and returns options that start them with the tokens given, output under
/// `dir/out`.
pub fn options_in(
    dir: &Path,
    cluster: &ClusterConfig,
    books: &[(u32, u64)],
    cluster_token: &str,
    admin_token: &str,
) -> std::io::Result<super::LocalOptions> {
    std::fs::write(dir.join("cluster.csv"), cluster.to_text())?;
    std::fs::write(dir.join("books.csv"), books_csv(books))?;
    Ok(super::LocalOptions::new(
        dir.join("cluster.csv"),
        dir.join("books.csv"),
        dir.join("out"),
        cluster_token.into(),
        admin_token.into(),
    ))
}

/// A cluster file for `n_catalog` catalogs and `n_order` orders, one coordinator, one
/// frontend and a cache, on free loopback ports.
pub fn free_port_cluster(n_catalog: usize, n_order: usize) -> std::io::Result<ClusterConfig> {
    free_port_cluster_with(1, 1, n_catalog, n_order)
}

/// A cluster file with `n_coordinators` coordinators and `n_frontends` frontends besides.
pub fn free_port_cluster_with(
    n_coordinators: usize,
    n_frontends: usize,
    n_catalog: usize,
    n_order: usize,
) -> std::io::Result<ClusterConfig> {
    let counts = [n_coordinators, n_frontends, n_catalog, n_order];
    free_port_cluster_on(counts, |_, _| "127.0.0.1".to_string())
}

/// A cluster file with `[coordinators, frontends, catalogs, orders]` servers of those
/// kinds and a cache, each on a free port of the address `host(kind, id)` names. (The
/// ports are held until the whole file is made, so no two servers get the same one.)
pub fn free_port_cluster_on(
    [coordinators, frontends, catalogs, orders]: [usize; 4],
    host: impl Fn(Kind, u32) -> String,
) -> std::io::Result<ClusterConfig> {
    let mut parts = Vec::new();
    let mut hold = Vec::new();
    for (kind, n) in [
        (Kind::Coordinator, coordinators),
        (Kind::Frontend, frontends),
        (Kind::Cache, 1),
        (Kind::Catalog, catalogs),
        (Kind::Order, orders),
    ] {
        for id in 0..n as u32 {
            let addr = host(kind, id);
            let l = std::net::TcpListener::bind((addr.as_str(), 0))?;
            parts.push((kind, Endpoint::new(addr, l.local_addr()?.port())));
            hold.push(l);
        }
    }
    Ok(ClusterConfig::from_parts(&parts))
}

/// A random token (hex, 32 characters).
pub fn random_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Files up to this size are parsed whole before the cluster starts.
const BOOKS_FULL_CHECK_BYTES: u64 = 1 << 20;

/// Checks the books file before starting anything. A small file is parsed whole; a big
/// one only by its header and first book: the catalogs check every line when they load
/// it (and a start failure shows the end of their log), and a full parse here would add
/// seconds to the start of a million-book catalog. When the first lines look wrong the
/// whole file is parsed, for an exact error.
pub fn check_books(path: &Path) -> anyhow::Result<()> {
    use std::io::BufRead;
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if file.metadata().map_or(0, |m| m.len()) <= BOOKS_FULL_CHECK_BYTES {
        bookstore_common::config::load_books(path)?;
        return Ok(());
    }
    let mut reader = std::io::BufReader::new(file);
    let mut head = String::new();
    for _ in 0..2 {
        match reader.read_line(&mut head) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => bail!("{}: cannot read: {e}", path.display()),
        }
    }
    let name = path.display().to_string();
    if bookstore_common::config::parse_books(head.as_bytes(), &name).is_ok() {
        return Ok(());
    }
    bookstore_common::config::load_books(path)?;
    Ok(())
}

/// Coordinators added and retired at run time (`local add|remove coordinator`), kept in
/// `<output-dir>/coordinators.json` so that a restarted `local up` starts the group as it
/// was left.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CoordinatorLayout {
    /// Added coordinators: `host:port` by id.
    #[serde(default)]
    pub added: BTreeMap<u32, String>,
    /// Ids removed from the group (never started again).
    #[serde(default)]
    pub retired: Vec<u32>,
}

impl CoordinatorLayout {
    fn path(output_dir: &Path) -> PathBuf {
        output_dir.join("coordinators.json")
    }

    pub fn load(output_dir: &Path) -> anyhow::Result<CoordinatorLayout> {
        let path = Self::path(output_dir);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CoordinatorLayout::default()),
            Err(e) => Err(anyhow!("{}: {e}", path.display())),
        }
    }

    pub(super) fn save(&self, output_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(output_dir);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(self).expect("layout encodes"),
        )
        .with_context(|| path.display().to_string())
    }
}

/// What to start: the cluster file's servers, with the coordinators added and without
/// those retired at run time.
pub(super) fn planned_servers(
    cluster: &ClusterConfig,
    output_dir: &Path,
) -> anyhow::Result<Vec<(Kind, u32, Endpoint)>> {
    let layout = CoordinatorLayout::load(output_dir)?;
    let mut out = Vec::new();
    for (kind, id, e) in cluster.all() {
        if kind == Kind::Coordinator && layout.retired.contains(&id) {
            continue;
        }
        out.push((kind, id, e));
        if kind == Kind::Coordinator && id + 1 == cluster.servers(kind).len() as u32 {
            for (added, addr) in &layout.added {
                if layout.retired.contains(added) {
                    continue;
                }
                let (host, port) = addr
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse().ok()?)))
                    .with_context(|| format!("coordinators.json: bad address {addr:?}"))?;
                out.push((kind, *added, Endpoint::new(host, port)));
            }
        }
    }
    Ok(out)
}
