//! The seed's operation logs (`output/catalog0_log`, ...): one operation a line, such
//! as `query_by_item,1` or `bought book 1`. Lines go through a channel to a writer
//! thread, so the request path never waits for the disk.
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;

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
                while let Ok(line) = rx.recv() {
                    let _ = writeln!(out, "{line}");
                    while let Ok(line) = rx.try_recv() {
                        let _ = writeln!(out, "{line}");
                    }
                    let _ = out.flush();
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
