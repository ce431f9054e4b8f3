//! The seed's operation logs (`output/catalog0_log`, ...): one operation a line, such
//! as `query_by_item,1` or `bought book 1`. Lines go through a channel to a writer
//! thread, so the request path never waits for the disk; they reach the file within a
//! few milliseconds.
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;

/// How long a busy log's writer sleeps between batches.
const BATCH: std::time::Duration = std::time::Duration::from_millis(5);

/// A handle to one operation log; cheap to clone.
#[derive(Clone, Debug)]
pub struct OpLog {
    tx: Option<mpsc::Sender<String>>,
}

impl OpLog {
    /// Opens (appending) `path`, creating its directory.
    pub fn open(path: &Path) -> std::io::Result<OpLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("oplog".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
                // Idle, the writer blocks on the channel and the first line wakes it.
                // Busy, it sleeps between batches instead: a sender wakes a thread only
                // when one waits on the channel, so under load recording a line costs no
                // system call (it did: a futex wake per request, a fifth of a frontend's
                // CPU under lookups). Lines reach the file at most BATCH late.
                while let Ok(line) = rx.recv() {
                    let _ = writeln!(out, "{line}");
                    loop {
                        let _ = out.flush();
                        std::thread::sleep(BATCH);
                        let mut drained = 0;
                        loop {
                            match rx.try_recv() {
                                Ok(line) => {
                                    let _ = writeln!(out, "{line}");
                                    drained += 1;
                                }
                                Err(mpsc::TryRecvError::Empty) => break,
                                Err(mpsc::TryRecvError::Disconnected) => {
                                    let _ = out.flush();
                                    return;
                                }
                            }
                        }
                        if drained == 0 {
                            break;
                        }
                    }
                }
                let _ = out.flush();
            })?;
        Ok(OpLog { tx: Some(tx) })
    }

    /// A log that drops everything.
    pub fn disabled() -> OpLog {
        OpLog { tx: None }
    }

    /// Records one operation.
    pub fn record(&self, line: String) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(line);
        }
    }
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
        log.record("update,1,na,-1".into());
        drop(log);
        for _ in 0..100 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text == "query_by_item,1\nupdate,1,na,-1\n" {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("log lines never arrived");
    }
}
