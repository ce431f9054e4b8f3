//! `Server-Timing` headers: every service reports its own time and the time of each
//! downstream call it made (`frontend;dur=1.204, cache;dur=0.311`), so a client can split
//! end-to-end latency into tiers. A caller may fold its callee's header into its own with
//! [`Timing::nest`]: the frontend's answer to a buy then also carries the order service's
//! calls as `order.catalog;dur=...` and `order.replication;dur=...`.
use std::borrow::Cow;
use std::future::Future;
use std::time::{Duration, Instant};

/// The header name.
pub const SERVER_TIMING: &str = "server-timing";

/// The timings of one request.
#[derive(Debug)]
pub struct Timing {
    start: Instant,
    parts: Vec<(Cow<'static, str>, Duration)>,
}

impl Timing {
    pub fn start() -> Timing {
        Timing {
            start: Instant::now(),
            parts: Vec::new(),
        }
    }

    fn add(&mut self, name: Cow<'static, str>, d: Duration) {
        match self.parts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += d,
            None => self.parts.push((name, d)),
        }
    }

    /// Records `d` under `name` (repeated names add up): a part timed elsewhere, such as
    /// one call made for many requests.
    pub fn record(&mut self, name: &'static str, d: Duration) {
        self.add(Cow::Borrowed(name), d);
    }

    /// Runs `f`, recording its duration under `name` (repeated names add up).
    pub async fn time<T>(&mut self, name: &'static str, f: impl Future<Output = T>) -> T {
        let t = Instant::now();
        let out = f.await;
        self.add(Cow::Borrowed(name), t.elapsed());
        out
    }

    /// Adds the downstream calls listed in `header`, the `Server-Timing` answer of the
    /// call recorded as `callee`, as `callee.<name>` (the callee's own time, the first
    /// entry, is left out: [`Timing::time`] already measured the call).
    pub fn nest(&mut self, callee: &str, header: &str) {
        for (name, ms) in parse(header).into_iter().skip(1) {
            let d = Duration::from_secs_f64(ms / 1000.0);
            self.add(Cow::Owned(format!("{callee}.{name}")), d);
        }
    }

    /// `own;dur=<ms since start>, <name>;dur=<ms>, ...` (milliseconds, 3 decimals).
    pub fn header(&self, own: &str) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut s = format!("{own};dur={:.3}", ms(self.start.elapsed()));
        for (name, d) in &self.parts {
            s.push_str(&format!(", {name};dur={:.3}", ms(*d)));
        }
        s
    }
}

/// The `(name, milliseconds)` entries of a `Server-Timing` header, in order. Entries
/// without a parseable `dur` are skipped; other parameters (`desc=...`) are ignored.
pub fn parse(header: &str) -> Vec<(&str, f64)> {
    header
        .split(',')
        .filter_map(|entry| {
            let mut params = entry.split(';');
            let name = params.next()?.trim();
            if name.is_empty() {
                return None;
            }
            let dur = params.find_map(|p| {
                let (k, v) = p.split_once('=')?;
                (k.trim().eq_ignore_ascii_case("dur")).then(|| v.trim().trim_matches('"'))
            })?;
            let ms: f64 = dur.parse().ok()?;
            (ms.is_finite() && ms >= 0.0).then_some((name, ms))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn header_lists_own_time_then_each_downstream_call() {
        let mut t = Timing::start();
        t.time("cache", async {}).await;
        t.time("catalog", tokio::time::sleep(Duration::from_millis(2)))
            .await;
        t.time("cache", async {}).await;
        let h = t.header("frontend");
        let names: Vec<&str> = h
            .split(", ")
            .map(|p| p.split(';').next().unwrap())
            .collect();
        assert_eq!(names, ["frontend", "cache", "catalog"]);
        let catalog: f64 = h.split("catalog;dur=").nth(1).unwrap().parse().unwrap();
        assert!(catalog >= 2.0, "{h}");
        let parsed = parse(&h);
        let names: Vec<&str> = parsed.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["frontend", "cache", "catalog"]);
        assert!(parsed[2].1 >= 2.0);
        assert_eq!(parse("a;dur=x, ;dur=1, b;dur=2.5"), [("b", 2.5)]);
    }

    #[test]
    fn parses_headers_and_skips_bad_entries() {
        assert_eq!(
            parse("frontend;dur=1.5, cache;desc=\"x\";dur=0.25,bad;dur=x, none, ;dur=1"),
            [("frontend", 1.5), ("cache", 0.25)]
        );
        assert_eq!(parse("a;DUR=\"2\""), [("a", 2.0)]);
        assert!(parse("").is_empty());
        assert!(parse("a;dur=-1").is_empty());
    }

    #[test]
    fn nested_calls_are_prefixed_with_the_callee() {
        let mut t = Timing::start();
        t.nest(
            "order",
            "order;dur=3.000, catalog;dur=2.000, catalog.replication;dur=1.5",
        );
        t.nest("order", "order;dur=1, catalog;dur=1.000");
        let h = t.header("frontend");
        let parts = parse(&h);
        assert_eq!(parts[0].0, "frontend");
        assert_eq!(
            &parts[1..],
            [("order.catalog", 3.0), ("order.catalog.replication", 1.5)]
        );
    }
}
