//! `loadtest gen-books`: a books CSV in the format of `data/books.csv`
//! (`item_number,title,topic,stock,cost`, read by `bookstore_common::config::load_books`)
//! with any number of books, to load the catalog with `--books FILE`.
//!
//! Items 1-7 are the seed's books (so the default lookups and topic searches still
//! work); items 8.. get generated titles, a stock of 100-1,000 and a cost of 5-100, and
//! topics `topic-0000`, `topic-0001`, ... of `hits_per_topic` books each (the last one
//! may have fewer), so searching `topic-0000` returns exactly that many hits.
use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;

/// The seed's books: `(title, topic, stock, cost)` of items 1-7.
pub const SEED_BOOKS: [(&str, &str, u32, u32); 7] = [
    (
        "How to get a good grade in 677 in 20 minutes a day",
        "distributed systems",
        3,
        10,
    ),
    ("RPCs for Dummies", "distributed systems", 3, 20),
    (
        "Xen and the Art of Surviving Graduate School",
        "graduate school",
        3,
        5,
    ),
    (
        "Cooking for the Impatient Graduate Student",
        "graduate school",
        6,
        15,
    ),
    ("How to finish Project 3 on time", "graduate school", 3, 15),
    ("Why theory classes are so hard", "graduate school", 3, 15),
    ("Spring in the Pioneer Valley", "travel", 3, 15),
];

const ADJECTIVES: [&str; 16] = [
    "Practical",
    "Gentle",
    "Distributed",
    "Concurrent",
    "Reliable",
    "Hidden",
    "Modern",
    "Forgotten",
    "Elegant",
    "Impatient",
    "Scalable",
    "Quiet",
    "Consistent",
    "Fast",
    "Lazy",
    "Durable",
];
const NOUNS: [&str; 16] = [
    "Consensus",
    "Caches",
    "Replicas",
    "Logs",
    "Queues",
    "Locks",
    "Clocks",
    "Networks",
    "Failures",
    "Indexes",
    "Snapshots",
    "Leases",
    "Transactions",
    "Threads",
    "Shards",
    "Heartbeats",
];

/// What a generated file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BooksSummary {
    pub books: u64,
    /// Generated topics (`topic-0000` ...), besides the seed's three.
    pub topics: u64,
    /// Books in `topic-0000` (0 when only seed books were written).
    pub first_topic_hits: u64,
}

/// The topic of generated item `item` (>= 8).
pub fn topic_of(item: u64, hits_per_topic: u32) -> String {
    format!("topic-{:04}", (item - 8) / u64::from(hits_per_topic.max(1)))
}

/// Writes `count` books as CSV to `out`; `progress` is called with the books written
/// so far every 100,000 books and at the end.
pub fn write_books<W: Write>(
    out: W,
    count: u32,
    hits_per_topic: u32,
    seed: u64,
    progress: &mut dyn FnMut(u64),
) -> anyhow::Result<BooksSummary> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    if hits_per_topic == 0 {
        bail!("--hits-per-topic must be at least 1");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = csv::Writer::from_writer(out);
    let io = "cannot write the books";
    w.write_record(["item_number", "title", "topic", "stock", "cost"])
        .context(io)?;
    let mut title = String::new();
    for item in 1..=u64::from(count) {
        if let Some((t, topic, stock, cost)) = SEED_BOOKS.get(item as usize - 1) {
            w.write_record([
                item.to_string().as_str(),
                t,
                topic,
                &stock.to_string(),
                &cost.to_string(),
            ])
            .context(io)?;
        } else {
            use std::fmt::Write as _;
            title.clear();
            let _ = write!(
                title,
                "{} {} volume {item}",
                ADJECTIVES[rng.gen_range(0..ADJECTIVES.len())],
                NOUNS[rng.gen_range(0..NOUNS.len())]
            );
            let stock: u32 = rng.gen_range(100..=1000);
            let cost: u32 = rng.gen_range(5..=100);
            w.write_record([
                item.to_string().as_str(),
                &title,
                &topic_of(item, hits_per_topic),
                &stock.to_string(),
                &cost.to_string(),
            ])
            .context(io)?;
        }
        if item % 100_000 == 0 {
            progress(item);
        }
    }
    w.flush().context(io)?;
    if !count.is_multiple_of(100_000) {
        progress(u64::from(count));
    }
    let generated = u64::from(count).saturating_sub(7);
    let per = u64::from(hits_per_topic);
    Ok(BooksSummary {
        books: u64::from(count),
        topics: generated.div_ceil(per),
        first_topic_hits: generated.min(per),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_books_the_catalog_reads() {
        let mut buf = Vec::new();
        let s = write_books(&mut buf, 2_510, 1000, 7, &mut |_| {}).unwrap();
        assert_eq!(
            s,
            BooksSummary {
                books: 2_510,
                topics: 3,
                first_topic_hits: 1000
            }
        );
        let books = bookstore_common::config::parse_books(buf.as_slice(), "gen").unwrap();
        assert_eq!(books.len(), 2_510);
        assert_eq!(books[0].title, SEED_BOOKS[0].0);
        assert_eq!(books[6].topic, "travel");
        let hits = |t: &str| books.iter().filter(|b| b.topic == t).count();
        assert_eq!(hits("topic-0000"), 1000);
        assert_eq!(hits("topic-0001"), 1000);
        assert_eq!(hits("topic-0002"), 503);
        assert_eq!(hits("graduate school"), 4);
        // The same seed writes the same file; another seed other titles.
        let mut again = Vec::new();
        write_books(&mut again, 2_510, 1000, 7, &mut |_| {}).unwrap();
        assert_eq!(buf, again);
        let mut other = Vec::new();
        write_books(&mut other, 2_510, 1000, 8, &mut |_| {}).unwrap();
        assert_ne!(buf, other);
    }

    #[test]
    fn small_counts_and_bad_arguments() {
        let mut buf = Vec::new();
        let s = write_books(&mut buf, 3, 1000, 1, &mut |_| {}).unwrap();
        assert_eq!((s.books, s.topics, s.first_topic_hits), (3, 0, 0));
        assert_eq!(
            bookstore_common::config::parse_books(buf.as_slice(), "gen")
                .unwrap()
                .len(),
            3
        );
        assert!(write_books(Vec::new(), 0, 1000, 1, &mut |_| {}).is_err());
        assert!(write_books(Vec::new(), 10, 0, 1, &mut |_| {}).is_err());
    }
}
