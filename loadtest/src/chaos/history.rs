//! The history of a chaos run: every client operation is recorded when it is invoked and
//! again when it completes (`ok`, `fail` or `info` = outcome unknown), Jepsen style, and
//! the nemesis records each fault it starts and ends. Everything is streamed to
//! `history.jsonl` as it happens and kept in memory for the checkers.
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// What a client operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// `POST /buy` through the frontend (retried with the same idempotency key).
    Buy,
    /// `GET /lookup` through the frontend (stock; may be served by the cache).
    Read,
    /// `GET /lookup` straight from the cache (internal route): checker 6.
    CacheRead,
    /// `POST /admin/restock` (retried with the same idempotency key).
    Restock,
    /// `GET /search` (availability only).
    Search,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Buy => "buy",
            OpKind::Read => "read",
            OpKind::CacheRead => "cache_read",
            OpKind::Restock => "restock",
            OpKind::Search => "search",
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Definitely happened (buy acknowledged, read answered).
    Ok,
    /// Definitely did not happen (409 out of stock, cache miss, a read that failed).
    Fail,
    /// Unknown: may or may not have taken effect, at any time after its invocation.
    Info,
}

/// One completed operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    pub id: usize,
    pub process: usize,
    pub kind: OpKind,
    /// The book (0 for a search).
    pub book: u32,
    /// Restock: copies added.
    pub quantity: Option<i64>,
    /// Read / cache read: the stock returned; restock: the stock after, as answered.
    pub value: Option<i64>,
    pub order_id: Option<String>,
    pub key: Option<String>,
    pub error: Option<String>,
    pub outcome: Outcome,
    /// Nanoseconds since the start of the run.
    pub invoke_ns: u64,
    pub complete_ns: u64,
    /// Attempts made (buys and restocks retry an unknown outcome with the same key).
    pub attempts: u32,
}

impl Op {
    pub fn latency_ms(&self) -> f64 {
        (self.complete_ns - self.invoke_ns) as f64 / 1e6
    }
}

/// A fault, as the nemesis carried it out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultRecord {
    pub kind: String,
    /// e.g. "catalog 0 (primary)".
    pub target: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Anything worth knowing (what was done, what failed).
    pub note: String,
}

/// A line of `history.jsonl`.
#[derive(Debug, Serialize)]
struct Line<'a> {
    index: usize,
    #[serde(rename = "type")]
    ty: &'a str,
    process: String,
    f: &'a str,
    time_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    book: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

struct Inner {
    out: Option<std::io::BufWriter<std::fs::File>>,
    lines: usize,
    ops: Vec<Op>,
    faults: Vec<FaultRecord>,
    next_id: usize,
}

/// The recorder shared by every client and the nemesis.
pub struct History {
    t0: Instant,
    inner: Mutex<Inner>,
}

/// An operation in flight, returned by [`History::invoke`].
#[derive(Debug)]
pub struct Pending {
    pub id: usize,
    pub process: usize,
    pub kind: OpKind,
    pub book: u32,
    pub quantity: Option<i64>,
    pub key: Option<String>,
    pub invoke_ns: u64,
}

impl History {
    /// A history streamed to `path` (none in memory-only mode).
    pub fn create(path: Option<&Path>) -> std::io::Result<History> {
        let out = match path {
            Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p)?)),
            None => None,
        };
        Ok(History {
            t0: Instant::now(),
            inner: Mutex::new(Inner {
                out,
                lines: 0,
                ops: Vec::new(),
                faults: Vec::new(),
                next_id: 0,
            }),
        })
    }

    /// Nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    pub fn start(&self) -> Instant {
        self.t0
    }

    fn write(inner: &mut Inner, mut line: Line<'_>) {
        line.index = inner.lines;
        inner.lines += 1;
        if let Some(out) = inner.out.as_mut() {
            if let Ok(text) = serde_json::to_string(&line) {
                let _ = writeln!(out, "{text}");
            }
        }
    }

    /// Records the invocation of an operation.
    pub fn invoke(
        &self,
        process: usize,
        kind: OpKind,
        book: u32,
        quantity: Option<i64>,
        key: Option<String>,
    ) -> Pending {
        let mut inner = self.inner.lock().unwrap();
        let invoke_ns = self.now_ns();
        let id = inner.next_id;
        inner.next_id += 1;
        let value = match (&key, quantity) {
            (Some(k), Some(q)) => Some(serde_json::json!({"key": k, "quantity": q})),
            (Some(k), None) => Some(serde_json::json!({ "key": k })),
            _ => None,
        };
        Self::write(
            &mut inner,
            Line {
                index: 0,
                ty: "invoke",
                process: process.to_string(),
                f: kind.name(),
                time_ns: invoke_ns,
                book: (book > 0).then_some(book),
                value,
                error: None,
            },
        );
        Pending {
            id,
            process,
            kind,
            book,
            quantity,
            key,
            invoke_ns,
        }
    }

    /// Records the completion of `p`.
    #[allow(clippy::too_many_arguments)]
    pub fn complete(
        &self,
        p: Pending,
        outcome: Outcome,
        value: Option<i64>,
        order_id: Option<String>,
        error: Option<String>,
        attempts: u32,
    ) {
        let mut inner = self.inner.lock().unwrap();
        let complete_ns = self.now_ns();
        let ty = match outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        };
        let v = match (&order_id, value) {
            (Some(o), _) => Some(serde_json::json!({ "order_id": o })),
            (None, Some(v)) => Some(serde_json::json!(v)),
            _ => None,
        };
        Self::write(
            &mut inner,
            Line {
                index: 0,
                ty,
                process: p.process.to_string(),
                f: p.kind.name(),
                time_ns: complete_ns,
                book: (p.book > 0).then_some(p.book),
                value: v,
                error: error.as_deref(),
            },
        );
        inner.ops.push(Op {
            id: p.id,
            process: p.process,
            kind: p.kind,
            book: p.book,
            quantity: p.quantity,
            value,
            order_id,
            key: p.key,
            error,
            outcome,
            invoke_ns: p.invoke_ns,
            complete_ns,
            attempts,
        });
    }

    /// Records the start of a fault (a nemesis `info` line).
    pub fn fault_started(&self, kind: &str, target: &str) -> u64 {
        let mut inner = self.inner.lock().unwrap();
        let t = self.now_ns();
        Self::write(
            &mut inner,
            Line {
                index: 0,
                ty: "info",
                process: "nemesis".into(),
                f: kind,
                time_ns: t,
                book: None,
                value: Some(serde_json::json!({"start": target})),
                error: None,
            },
        );
        t
    }

    /// Records the end of a fault.
    pub fn fault_ended(&self, record: FaultRecord) {
        let mut inner = self.inner.lock().unwrap();
        Self::write(
            &mut inner,
            Line {
                index: 0,
                ty: "info",
                process: "nemesis".into(),
                f: &record.kind,
                time_ns: record.end_ns,
                book: None,
                value: Some(serde_json::json!({"end": record.target, "note": record.note})),
                error: None,
            },
        );
        inner.faults.push(record);
    }

    /// A free-form nemesis note (heal, skipped fault kinds, ...).
    pub fn note(&self, f: &str, text: &str) {
        let mut inner = self.inner.lock().unwrap();
        let t = self.now_ns();
        Self::write(
            &mut inner,
            Line {
                index: 0,
                ty: "info",
                process: "nemesis".into(),
                f,
                time_ns: t,
                book: None,
                value: Some(serde_json::json!(text)),
                error: None,
            },
        );
    }

    /// Flushes the file and returns the operations (sorted by invocation) and faults.
    pub fn finish(&self) -> (Vec<Op>, Vec<FaultRecord>) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(out) = inner.out.as_mut() {
            let _ = out.flush();
        }
        let mut ops = inner.ops.clone();
        ops.sort_by_key(|o| (o.invoke_ns, o.id));
        let mut faults = inner.faults.clone();
        faults.sort_by_key(|f| f.start_ns);
        (ops, faults)
    }
}
