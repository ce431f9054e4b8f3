//! Configuration: the cluster file (the seed's `kind,host:port` format), the books CSV,
//! and the settings every service shares.
//!
//! Environment variables (each also a command-line flag):
//! - `BOOKSTORE_CLUSTER`: cluster file (default `config/cluster.csv`)
//! - `BOOKSTORE_BOOKS`: books CSV (default `data/books.csv`)
//! - `BOOKSTORE_OUTPUT_DIR`: where the operation logs go (default `output`)
//! - `BOOKSTORE_CLUSTER_TOKEN`: the token every internal call must carry (required)
//! - `BOOKSTORE_ADMIN_TOKEN`: the token of the frontend's admin routes (optional; admin
//!   routes answer 401 to everyone when it is unset)
//! - `RUST_LOG`: tracing filter (default `info`)
use crate::types::{Book, ItemNumber};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// The kinds of server in a cluster file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A member of the coordinator group (Raft): views, member tables, read leases.
    Coordinator,
    Frontend,
    Cache,
    Catalog,
    Order,
}

impl Kind {
    /// Every kind, in start order (coordinators first).
    pub const ALL: [Kind; 5] = [
        Kind::Coordinator,
        Kind::Frontend,
        Kind::Cache,
        Kind::Catalog,
        Kind::Order,
    ];

    /// The replicated kinds, whose views the coordinators decide.
    pub const REPLICATED: [Kind; 2] = [Kind::Catalog, Kind::Order];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Coordinator => "coordinator",
            Kind::Frontend => "frontend",
            Kind::Cache => "cache",
            Kind::Catalog => "catalog",
            Kind::Order => "order",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A server's address as written in the cluster file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Endpoint {
            host: host.into(),
            port,
        }
    }

    /// `http://host:port`
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// `host:port`, for binding.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The endpoint of a base URL `http://host:port` (what [`Endpoint::url`] writes, and
    /// what the view service's member table holds); `None` for anything else.
    pub fn from_url(url: &str) -> Option<Endpoint> {
        let rest = url.strip_prefix("http://")?.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        Some(Endpoint::new(host, port.parse().ok()?))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A configuration file that was refused, with the line and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}:{line}: {reason}")]
    Line {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{file}: {reason}")]
    Whole { file: String, reason: String },
}

/// Which server of which kind listens where. The order of the lines of one kind is the
/// replica id (0, 1, ...), as in the seed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterConfig {
    servers: HashMap<Kind, Vec<Endpoint>>,
}

impl ClusterConfig {
    /// Builds a config in code (tests, `infra`).
    pub fn from_parts(parts: &[(Kind, Endpoint)]) -> ClusterConfig {
        let mut c = ClusterConfig::default();
        for (k, e) in parts {
            c.servers.entry(*k).or_default().push(e.clone());
        }
        c
    }

    /// Reads and checks a cluster file.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        ClusterConfig::parse(&text, &file)
    }

    /// Parses cluster-file text; `file` names it in errors. Blank lines and lines
    /// starting with `#` are skipped.
    pub fn parse(text: &str, file: &str) -> Result<ClusterConfig, ConfigError> {
        let mut config = ClusterConfig::default();
        let mut seen: HashMap<Endpoint, usize> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: String| ConfigError::Line {
                file: file.to_string(),
                line: line_no,
                reason,
            };
            let (kind, addr) = line
                .split_once(',')
                .ok_or_else(|| err(format!("expected `kind,host:port`, got {line:?}")))?;
            let kind_name = kind.trim();
            let kind = Kind::parse(kind_name).ok_or_else(|| {
                err(format!(
                    "unknown kind {kind_name:?} (expected coordinator, frontend, cache, catalog or order)"
                ))
            })?;
            let addr = addr.trim();
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| err(format!("expected host:port, got {addr:?}")))?;
            if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == ',') {
                return Err(err(format!("bad host {host:?}")));
            }
            let port: u16 = match port.parse() {
                Ok(p) if p > 0 => p,
                _ => return Err(err(format!("bad port {port:?} (expected 1-65535)"))),
            };
            let ep = Endpoint::new(host, port);
            if let Some(first) = seen.insert(ep.clone(), line_no) {
                return Err(err(format!("address {ep} is already used on line {first}")));
            }
            config.servers.entry(kind).or_default().push(ep);
        }
        for kind in [
            Kind::Coordinator,
            Kind::Frontend,
            Kind::Catalog,
            Kind::Order,
        ] {
            if config.servers(kind).is_empty() {
                return Err(ConfigError::Whole {
                    file: file.to_string(),
                    reason: format!("no {kind} server listed"),
                });
            }
        }
        if config.servers(Kind::Cache).len() > 1 {
            return Err(ConfigError::Whole {
                file: file.to_string(),
                reason: "more than one cache server listed (the cache is not replicated)".into(),
            });
        }
        Ok(config)
    }

    /// The servers of a kind, in replica-id order.
    pub fn servers(&self, kind: Kind) -> &[Endpoint] {
        self.servers.get(&kind).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The base URLs of the servers of a kind, in replica-id order.
    pub fn urls(&self, kind: Kind) -> Vec<String> {
        self.servers(kind).iter().map(Endpoint::url).collect()
    }

    /// Server `id` of `kind`.
    pub fn server(&self, kind: Kind, id: u32) -> Option<&Endpoint> {
        self.servers(kind).get(id as usize)
    }

    /// Every server, coordinators first, as (kind, id, endpoint).
    pub fn all(&self) -> Vec<(Kind, u32, Endpoint)> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            for (i, e) in self.servers(kind).iter().enumerate() {
                out.push((kind, i as u32, e.clone()));
            }
        }
        out
    }

    /// The file text for this config.
    pub fn to_text(&self) -> String {
        self.all()
            .into_iter()
            .map(|(k, _, e)| format!("{k},{e}\n"))
            .collect()
    }
}

/// Reads and checks a books CSV with the header `item_number,title,topic,stock,cost`.
pub fn load_books(path: &Path) -> Result<Vec<Book>, ConfigError> {
    let file = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|e| ConfigError::Read {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    parse_books(std::io::BufReader::new(f), &file)
}

/// Parses books CSV from any reader; `file` names it in errors.
pub fn parse_books<R: std::io::Read>(reader: R, file: &str) -> Result<Vec<Book>, ConfigError> {
    const HEADER: [&str; 5] = ["item_number", "title", "topic", "stock", "cost"];
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let header_err = |reason: String| ConfigError::Line {
        file: file.to_string(),
        line: 1,
        reason,
    };
    let headers = rdr
        .headers()
        .map_err(|e| header_err(format!("cannot read the header: {e}")))?
        .clone();
    if headers.iter().collect::<Vec<_>>() != HEADER {
        return Err(header_err(format!(
            "expected the header `{}`, got `{}`",
            HEADER.join(","),
            headers.iter().collect::<Vec<_>>().join(",")
        )));
    }
    let mut books = Vec::new();
    let mut seen: HashSet<ItemNumber> = HashSet::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = rdr.position().line() as usize;
        match rdr.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(line);
                return Err(ConfigError::Line {
                    file: file.to_string(),
                    line,
                    reason: csv_reason(&e),
                });
            }
        }
        let line = record.position().map(|p| p.line() as usize).unwrap_or(line);
        let err = |reason: String| ConfigError::Line {
            file: file.to_string(),
            line,
            reason,
        };
        if record.len() == 1 && record.get(0) == Some("") {
            continue; // blank line
        }
        let num = |i: usize, name: &str| -> Result<u32, ConfigError> {
            let v = record.get(i).unwrap_or("");
            v.parse::<u32>()
                .map_err(|_| err(format!("{name} must be a whole number >= 0, got {v:?}")))
        };
        let item_number = ItemNumber::new(num(0, "item_number")?)
            .ok_or_else(|| err("item_number must be positive".into()))?;
        let title = record.get(1).unwrap_or("").to_string();
        let topic = record.get(2).unwrap_or("").to_string();
        if title.is_empty() {
            return Err(err("title is empty".into()));
        }
        if topic.is_empty() {
            return Err(err("topic is empty".into()));
        }
        let stock = num(3, "stock")?;
        let cost = num(4, "cost")?;
        if !seen.insert(item_number) {
            return Err(err(format!("item_number {item_number} appears twice")));
        }
        books.push(Book {
            item_number,
            title,
            topic,
            stock,
            cost,
        });
    }
    if books.is_empty() {
        return Err(ConfigError::Whole {
            file: file.to_string(),
            reason: "no books".into(),
        });
    }
    Ok(books)
}

fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("expected {expected_len} fields, got {len}"),
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".into(),
        _ => e.to_string(),
    }
}

/// Where things are by default, relative to the working directory.
pub const DEFAULT_CLUSTER_FILE: &str = "config/cluster.csv";
pub const DEFAULT_BOOKS_FILE: &str = "data/books.csv";
pub const DEFAULT_OUTPUT_DIR: &str = "output";

/// Settings every service process takes (flags or environment).
#[derive(Debug, Clone)]
pub struct CommonSettings {
    pub cluster: ClusterConfig,
    pub output_dir: PathBuf,
    pub cluster_token: crate::auth::Secret,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "coordinator,127.0.0.1:8006\nfrontend,127.0.0.1:8000\ncache,127.0.0.1:8001\ncatalog,127.0.0.1:8002\ncatalog,127.0.0.1:8003\norder,127.0.0.1:8004\norder,127.0.0.1:8005\n";

    #[test]
    fn parses_the_seed_format() {
        let c = ClusterConfig::parse(SEED, "c").unwrap();
        assert_eq!(c.servers(Kind::Catalog).len(), 2);
        assert_eq!(c.server(Kind::Order, 1).unwrap().port, 8005);
        assert_eq!(ClusterConfig::parse(&c.to_text(), "c").unwrap(), c);
    }

    #[test]
    fn refuses_bad_lines_with_their_number() {
        let bad = |text: &str| ClusterConfig::parse(text, "f").unwrap_err().to_string();
        assert_eq!(
            bad("frontend,127.0.0.1:8000\nwarehouse,127.0.0.1:9\n"),
            "f:2: unknown kind \"warehouse\" (expected coordinator, frontend, cache, catalog or order)"
        );
        assert!(bad("frontend,127.0.0.1:8000\ncatalog,127.0.0.1:8000\n")
            .starts_with("f:2: address 127.0.0.1:8000 is already used on line 1"));
        assert!(bad("frontend,127.0.0.1:99999\n").starts_with("f:1: bad port"));
        assert!(bad("frontend,127.0.0.1:0\n").starts_with("f:1: bad port"));
        assert!(bad("frontend 127.0.0.1:80\n").starts_with("f:1: expected"));
        assert!(bad("frontend,127.0.0.1:8000\n").contains("no coordinator server"));
        assert!(
            bad("coordinator,127.0.0.1:9\nfrontend,127.0.0.1:8000\n").contains("no catalog server")
        );
    }

    #[test]
    fn parses_books_and_refuses_bad_rows() {
        let ok = "item_number,title,topic,stock,cost\n1,A,t,3,10\n2,\"B, the sequel\",t,0,5\n";
        let books = parse_books(ok.as_bytes(), "b").unwrap();
        assert_eq!(books.len(), 2);
        assert_eq!(books[1].title, "B, the sequel");
        let bad = |text: &str| parse_books(text.as_bytes(), "b").unwrap_err().to_string();
        assert!(bad("id,title\n1,A\n").starts_with("b:1: expected the header"));
        let h = "item_number,title,topic,stock,cost\n";
        assert_eq!(
            bad(&format!("{h}1,A,t,3,10\n2,B,t,x,10\n")),
            "b:3: stock must be a whole number >= 0, got \"x\""
        );
        assert!(bad(&format!("{h}1,A,t,3,10\n1,B,t,3,10\n"))
            .contains("b:3: item_number 1 appears twice"));
        assert!(bad(&format!("{h}1,A,t,3\n")).starts_with("b:2: expected 5 fields"));
        assert!(bad(&format!("{h}1,,t,3,4\n")).contains("title is empty"));
        assert!(bad(&format!("{h}1,A,t,-3,4\n")).contains("stock must be"));
        assert!(bad(h).contains("no books"));
    }
}
