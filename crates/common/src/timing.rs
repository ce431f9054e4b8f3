//! `Server-Timing` headers: every service reports its own time and the time of each
//! downstream call it made (`frontend;dur=1.204, cache;dur=0.311`), so a client can split
//! end-to-end latency into tiers.
use std::future::Future;
use std::time::{Duration, Instant};

/// The header name.
pub const SERVER_TIMING: &str = "server-timing";

/// The timings of one request.
#[derive(Debug)]
pub struct Timing {
    start: Instant,
    parts: Vec<(&'static str, Duration)>,
}

impl Timing {
    pub fn start() -> Timing {
        Timing {
            start: Instant::now(),
            parts: Vec::new(),
        }
    }

    /// Runs `f`, recording its duration under `name` (repeated names add up).
    pub async fn time<T>(&mut self, name: &'static str, f: impl Future<Output = T>) -> T {
        let t = Instant::now();
        let out = f.await;
        let d = t.elapsed();
        match self.parts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += d,
            None => self.parts.push((name, d)),
        }
        out
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

/// Parses a header written by [`Timing::header`] into `(name, milliseconds)` pairs, in
/// order (the first is the server's own time). Malformed parts are skipped.
pub fn parse(header: &str) -> Vec<(String, f64)> {
    header
        .split(',')
        .filter_map(|part| {
            let (name, dur) = part.trim().split_once(";dur=")?;
            let ms: f64 = dur.trim().parse().ok()?;
            (!name.is_empty() && ms.is_finite()).then(|| (name.to_string(), ms))
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
        let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["frontend", "cache", "catalog"]);
        assert!(parsed[2].1 >= 2.0);
        assert_eq!(
            parse("a;dur=x, ;dur=1, b;dur=2.5"),
            [("b".to_string(), 2.5)]
        );
    }
}
