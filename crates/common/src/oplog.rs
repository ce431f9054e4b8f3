//! The seed's operation logs (`output/catalog0_log`, ...): one operation a line, such
//! as `query_by_item,1` or `bought book 1`. Lines go through a bounded queue to a writer
//! thread, so the request path never waits for the disk; they reach the file within a
//! few milliseconds.
//!
//! A log is an audit trail, so what goes in must not be able to forge it and it must not
//! fill the disk:
//! - every record is exactly one line: control characters (and the Unicode line and
//!   paragraph separators) are escaped (`\n`, `\r`, `\t`, `\u{85}`), and so is the
//!   backslash, so the escaping can be undone;
//! - the file rotates by size (`file-rotate`): past [`Limits::file_bytes`] it becomes
//!   `<name>.1` (the older ones `.2`, ...), and [`Limits::keep`] rotated files are kept;
//! - the queue holds at most [`Limits::queue`] records; past it a record is dropped and
//!   counted ([`OpLog::dropped`], `bookstore_oplog_dropped_lines_total` in `/metrics`).
use crate::metrics::{catch_up, Metrics};
use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use prometheus_client::metrics::counter::Counter;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

/// How long a busy log's writer sleeps between batches.
const BATCH: std::time::Duration = std::time::Duration::from_millis(5);

/// Bytes gathered before one write to the file (a rotation falls between two writes,
/// so always at a line break).
const WRITE_CHUNK: usize = 64 * 1024;

/// The bounds of one operation log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Records waiting for the writer; past it new ones are dropped and counted.
    pub queue: usize,
    /// A file rotates once it is larger than this.
    pub file_bytes: usize,
    /// Rotated files kept (`<name>.1` ... `<name>.<keep>`).
    pub keep: usize,
}

impl Default for Limits {
    /// 65,536 queued records; files of 32 MiB, 4 rotated ones kept (160 MiB a log).
    fn default() -> Limits {
        Limits {
            queue: 65_536,
            file_bytes: 32 << 20,
            keep: 4,
        }
    }
}

enum Msg {
    Line(String),
    Lines(Vec<String>),
}

/// A handle to one operation log; cheap to clone.
#[derive(Clone, Debug)]
pub struct OpLog {
    tx: Option<mpsc::SyncSender<Msg>>,
    dropped: Arc<AtomicU64>,
}

impl OpLog {
    /// Opens (appending) `path` with the default [`Limits`], creating its directory.
    pub fn open(path: &Path) -> std::io::Result<OpLog> {
        OpLog::open_with(path, Limits::default())
    }

    /// Opens (appending) `path`, creating its directory.
    pub fn open_with(path: &Path, limits: Limits) -> std::io::Result<OpLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Fail here, not silently in the writer, if the file cannot be opened.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let file = FileRotate::new(
            path,
            AppendCount::new(limits.keep.max(1)),
            ContentLimit::BytesSurpassed(limits.file_bytes.max(1)),
            Compression::None,
            None,
        );
        let (tx, rx) = mpsc::sync_channel::<Msg>(limits.queue.max(1));
        std::thread::Builder::new()
            .name("oplog".into())
            .spawn(move || write_loop(file, rx))?;
        Ok(OpLog {
            tx: Some(tx),
            dropped: Arc::default(),
        })
    }

    /// A log that drops everything (and counts nothing).
    pub fn disabled() -> OpLog {
        OpLog {
            tx: None,
            dropped: Arc::default(),
        }
    }

    /// Records one operation (one line, whatever it holds).
    pub fn record(&self, line: String) {
        self.send(Msg::Line(line));
    }

    /// Records several operations, one line each, as one queued record.
    pub fn record_lines(&self, lines: Vec<String>) {
        let n = lines.len() as u64;
        if let Some(tx) = &self.tx {
            if tx.try_send(Msg::Lines(lines)).is_err() {
                self.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn send(&self, msg: Msg) {
        if let Some(tx) = &self.tx {
            if tx.try_send(msg).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped because the queue was full (or the writer had stopped).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Exports `bookstore_oplog_dropped_lines_total` to `metrics`.
    pub fn register_metrics(&self, metrics: &Metrics) {
        let counter: Counter<u64> = metrics.add(
            "oplog_dropped_lines",
            "Operation-log lines dropped because the writer fell behind (queue full)",
        );
        let dropped = self.dropped.clone();
        metrics.on_scrape(move || catch_up(&counter, dropped.load(Ordering::Relaxed)));
    }
}

fn write_loop(mut file: FileRotate<AppendCount>, rx: mpsc::Receiver<Msg>) {
    let mut buf = Vec::with_capacity(2 * WRITE_CHUNK);
    let put = |buf: &mut Vec<u8>, file: &mut FileRotate<AppendCount>, msg: Msg| {
        match msg {
            Msg::Line(l) => push_line(buf, &l),
            Msg::Lines(ls) => ls.iter().for_each(|l| push_line(buf, l)),
        }
        if buf.len() >= WRITE_CHUNK {
            flush(buf, file);
        }
    };
    // Idle, the writer blocks on the queue and the first record wakes it. Busy, it
    // sleeps between batches instead: a sender wakes a thread only when one waits on
    // the queue, so under load recording a line costs no system call (it did: a futex
    // wake per request, a fifth of a frontend's CPU under lookups). Lines reach the file
    // at most BATCH late.
    while let Ok(msg) = rx.recv() {
        put(&mut buf, &mut file, msg);
        loop {
            flush(&mut buf, &mut file);
            std::thread::sleep(BATCH);
            let mut drained = 0;
            loop {
                match rx.try_recv() {
                    Ok(msg) => {
                        put(&mut buf, &mut file, msg);
                        drained += 1;
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        flush(&mut buf, &mut file);
                        return;
                    }
                }
            }
            if drained == 0 {
                break;
            }
        }
    }
    flush(&mut buf, &mut file);
}

fn flush(buf: &mut Vec<u8>, file: &mut FileRotate<AppendCount>) {
    if !buf.is_empty() {
        let _ = file.write_all(buf);
        let _ = file.flush();
        buf.clear();
    }
}

/// Appends `line` and a newline to `out`, escaped so that it stays one line.
pub fn push_line(out: &mut Vec<u8>, line: &str) {
    let plain = line
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'\\');
    if plain {
        out.extend_from_slice(line.as_bytes());
    } else {
        let mut tmp = [0u8; 4];
        for c in line.chars() {
            match c {
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                    out.extend_from_slice(format!("\\u{{{:x}}}", c as u32).as_bytes())
                }
                c => out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes()),
            }
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/catalog0_log");
        let log = OpLog::open(&path).unwrap();
        log.record("query_by_item,1".into());
        log.record_lines(vec!["update,1,na,-1".into(), "update,2,na,-1".into()]);
        drop(log);
        for _ in 0..100 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text == "query_by_item,1\nupdate,1,na,-1\nupdate,2,na,-1\n" {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("log lines never arrived");
    }

    #[test]
    fn escaping_keeps_a_record_on_one_line() {
        let mut out = Vec::new();
        push_line(&mut out, "a\nb\\c\u{1b}[31m\u{2029}é");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\nb\\\\c\\u{1b}[31m\\u{2029}é\n"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        // A queue nobody drains: records past its bound are dropped and counted.
        let (tx, _rx) = mpsc::sync_channel(4);
        let log = OpLog {
            tx: Some(tx),
            dropped: Arc::default(),
        };
        for i in 0..10 {
            log.record(format!("lookup,{i}"));
        }
        log.record_lines(vec!["a".into(), "b".into()]);
        assert_eq!(log.dropped(), 8);
    }

    #[test]
    fn rotation_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache_log");
        let limits = Limits {
            queue: 1 << 20,
            file_bytes: 1000,
            keep: 2,
        };
        let log = OpLog::open_with(&path, limits).unwrap();
        // Five bursts, so five writes at least.
        for burst in 0..5 {
            for i in 0..200 {
                log.record(format!("lookup,{burst},{i},hit"));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        drop(log);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["cache_log", "cache_log.1", "cache_log.2"]);
        for n in names {
            let text = std::fs::read_to_string(dir.path().join(&n)).unwrap();
            assert!(text.ends_with('\n'), "{n} ends mid-line");
            assert!(text.lines().all(|l| l.starts_with("lookup,")), "{n}");
        }
    }
}
