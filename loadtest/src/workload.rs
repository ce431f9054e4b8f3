//! What a run sends: the workload kinds, the request mix, and the small parsers the
//! command line shares with the library (client lists, item ranges, durations).
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The seed's three topics (`data/books.csv`).
pub const SEED_TOPICS: [&str; 3] = ["distributed systems", "graduate school", "travel"];

/// The item numbers used when none are given and none can be found through search.
pub const DEFAULT_ITEMS: std::ops::RangeInclusive<u32> = 1..=7;

/// Fraction of buys of a bare `mixed`.
pub const DEFAULT_BUY_FRACTION: f64 = 0.1;

/// The kind of traffic a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Workload {
    /// `GET /lookup` of a random item.
    Lookup,
    /// `GET /search` of a random topic.
    Search,
    /// `POST /buy` of a random item; a 409 (sold out) is an answer, not an error.
    Buy,
    /// Buys with probability `buy_fraction`, otherwise a lookup or a search (even odds).
    Mixed { buy_fraction: f64 },
    /// Every client buys the same item; the successes must equal the stock seen before.
    Race,
}

impl Workload {
    /// Whether the workload sends buys (and so can sell items out).
    pub fn buys(&self) -> bool {
        matches!(
            self,
            Workload::Buy | Workload::Race | Workload::Mixed { .. }
        )
    }

    /// Whether the workload needs item numbers.
    pub fn needs_items(&self) -> bool {
        !matches!(self, Workload::Search)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Lookup => f.write_str("lookup"),
            Workload::Search => f.write_str("search"),
            Workload::Buy => f.write_str("buy"),
            Workload::Mixed { buy_fraction } => write!(f, "mixed:{buy_fraction}"),
            Workload::Race => f.write_str("race"),
        }
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Workload, String> {
        let s = s.trim();
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let no_arg = |w: Workload| match arg {
            None => Ok(w),
            Some(_) => Err(format!("workload {name} takes no ':' argument")),
        };
        match name.to_ascii_lowercase().as_str() {
            "lookup" => no_arg(Workload::Lookup),
            "search" => no_arg(Workload::Search),
            "buy" => no_arg(Workload::Buy),
            "race" => no_arg(Workload::Race),
            "mixed" => {
                let buy_fraction = match arg {
                    None => DEFAULT_BUY_FRACTION,
                    Some(a) => a
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|r| (0.0..=1.0).contains(r))
                        .ok_or_else(|| {
                            format!("mixed:R needs R, the fraction of buys, in 0..=1 (got {a:?})")
                        })?,
                };
                Ok(Workload::Mixed { buy_fraction })
            }
            _ => Err(format!(
                "unknown workload {s:?}: use lookup, search, buy, mixed[:R] or race"
            )),
        }
    }
}

impl From<Workload> for String {
    fn from(w: Workload) -> String {
        w.to_string()
    }
}

impl TryFrom<String> for Workload {
    type Error = String;
    fn try_from(s: String) -> Result<Workload, String> {
        s.parse()
    }
}

/// The operation of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Lookup,
    Search,
    Buy,
}

impl Op {
    pub const ALL: [Op; 3] = [Op::Lookup, Op::Search, Op::Buy];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Search => "search",
            Op::Buy => "buy",
        }
    }
}

/// One request to send: which operation and its ready-made URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    /// Index of the item in [`Mix::items`] (buys only, to track sold-out items).
    pub item_index: Option<usize>,
    pub url: String,
}

/// The pre-built URLs a workload draws from, so the hot loop only picks one.
#[derive(Debug, Clone)]
pub struct Mix {
    pub workload: Workload,
    pub items: Vec<u32>,
    pub topics: Vec<String>,
    /// The item every client buys in a race.
    pub race_item: u32,
    lookup_urls: Vec<String>,
    search_urls: Vec<String>,
    buy_urls: Vec<String>,
}

impl Mix {
    /// `target` is the base URL (no trailing slash needed); `items` and `topics` must not
    /// be empty for the workloads that use them.
    pub fn new(
        workload: Workload,
        target: &str,
        items: Vec<u32>,
        topics: Vec<String>,
        race_item: u32,
    ) -> Mix {
        let base = target.trim_end_matches('/');
        let lookup_urls = items
            .iter()
            .map(|i| format!("{base}/lookup?item_number={i}"))
            .collect();
        let buy_urls = items
            .iter()
            .map(|i| format!("{base}/buy?item_number={i}"))
            .collect();
        let search_urls = topics
            .iter()
            .map(|t| {
                format!(
                    "{base}/search?topic={}",
                    bookstore_common::client::encode(t)
                )
            })
            .collect();
        Mix {
            workload,
            items,
            topics,
            race_item,
            lookup_urls,
            search_urls,
            buy_urls,
        }
    }

    fn pick<R: Rng>(&self, rng: &mut R, op: Op) -> Request {
        let urls = match op {
            Op::Lookup => &self.lookup_urls,
            Op::Search => &self.search_urls,
            Op::Buy => &self.buy_urls,
        };
        let i = rng.gen_range(0..urls.len());
        Request {
            op,
            item_index: (op == Op::Buy).then_some(i),
            url: urls[i].clone(),
        }
    }

    /// The next request of one client.
    pub fn next<R: Rng>(&self, rng: &mut R, race_url: &str) -> Request {
        match self.workload {
            Workload::Lookup => self.pick(rng, Op::Lookup),
            Workload::Search => self.pick(rng, Op::Search),
            Workload::Buy => self.pick(rng, Op::Buy),
            Workload::Race => Request {
                op: Op::Buy,
                item_index: None,
                url: race_url.to_string(),
            },
            Workload::Mixed { buy_fraction } => {
                if rng.gen_bool(buy_fraction) {
                    self.pick(rng, Op::Buy)
                } else if rng.gen_bool(0.5) {
                    self.pick(rng, Op::Lookup)
                } else {
                    self.pick(rng, Op::Search)
                }
            }
        }
    }
}

/// Parses `1,3,5,9` (positive, in the order given).
pub fn parse_clients(s: &str) -> Result<Vec<usize>, String> {
    let list: Vec<usize> = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("client counts are whole numbers > 0 (got {p:?})"))
        })
        .collect::<Result<_, _>>()?;
    if list.is_empty() {
        return Err("give at least one client count".into());
    }
    Ok(list)
}

/// Parses item numbers: `1-7`, `1,2,5`, `1-3,7`.
pub fn parse_items(s: &str) -> Result<Vec<u32>, String> {
    let bad = |p: &str| format!("items are N, N-M or a comma list of them (got {p:?})");
    let mut items = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let num = |x: &str| {
            x.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(part))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(bad(part));
                }
                items.extend(a..=b);
            }
            None => items.push(num(part)?),
        }
    }
    items.sort_unstable();
    items.dedup();
    if items.is_empty() {
        return Err(bad(s));
    }
    Ok(items)
}

/// Parses a duration: `10s`, `500ms`, `2m`, `1.5s`, or plain seconds (`10`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_wait(s)?;
    if d.is_zero() {
        return Err(format!("a duration must be > 0 (got {:?})", s.trim()));
    }
    Ok(d)
}

/// Like [`parse_duration`], but 0 (no wait) is allowed.
pub fn parse_wait(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("a duration is like 10s, 500ms or 2m (got {s:?})"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        u => return Err(format!("unknown duration unit {u:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("a duration must be >= 0 (got {s:?})"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn workloads_parse_and_print() {
        assert_eq!("lookup".parse::<Workload>().unwrap(), Workload::Lookup);
        assert_eq!("RACE".parse::<Workload>().unwrap(), Workload::Race);
        assert_eq!(
            "mixed".parse::<Workload>().unwrap(),
            Workload::Mixed { buy_fraction: 0.1 }
        );
        let m: Workload = "mixed:0.25".parse().unwrap();
        assert_eq!(m, Workload::Mixed { buy_fraction: 0.25 });
        assert_eq!(m.to_string(), "mixed:0.25");
        assert!("mixed:2".parse::<Workload>().is_err());
        assert!("lookup:1".parse::<Workload>().is_err());
        assert!("write".parse::<Workload>().is_err());
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, "\"mixed:0.25\"");
        assert_eq!(serde_json::from_str::<Workload>(&json).unwrap(), m);
    }

    #[test]
    fn lists_and_durations_parse() {
        assert_eq!(parse_clients("1,3, 5,9").unwrap(), vec![1, 3, 5, 9]);
        assert!(parse_clients("1,0").is_err());
        assert!(parse_clients("").is_err());
        assert_eq!(parse_items("1-3,7,2").unwrap(), vec![1, 2, 3, 7]);
        assert!(parse_items("3-1").is_err());
        assert!(parse_items("x").is_err());
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_wait("0s").unwrap(), Duration::ZERO);
        assert!(parse_wait("-1s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn mix_draws_from_its_urls() {
        let topics = SEED_TOPICS.iter().map(|t| t.to_string()).collect();
        let mix = Mix::new(
            Workload::Mixed { buy_fraction: 0.5 },
            "http://127.0.0.1:1/",
            vec![1, 2],
            topics,
            1,
        );
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = [0usize; 3];
        for _ in 0..1000 {
            let r = mix.next(&mut rng, "");
            seen[r.op.index()] += 1;
            assert!(r.url.starts_with("http://127.0.0.1:1/"));
            assert!(!r.url.contains("//lookup"));
            if r.op == Op::Search {
                assert!(!r.url.contains(' '));
            }
        }
        assert!(seen.iter().all(|n| *n > 150), "{seen:?}");
        assert_eq!(
            bookstore_common::client::encode("graduate school"),
            "graduate%20school".to_string()
        );
    }
}
