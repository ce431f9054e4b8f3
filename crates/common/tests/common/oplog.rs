//! The operation logs as an attacker or a busy server meets them: a parameter cannot
//! forge a line, and a log never grows past its rotation bound.
use bookstore_common::oplog::OpLog;
use std::path::Path;
use std::time::Duration;

/// Waits until the file at `path` ends with `last` and a newline; returns its text.
fn wait_for(path: &Path, last: &str) -> String {
    for _ in 0..500 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.ends_with(&format!("{last}\n")) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{last:?} never reached {}", path.display());
}

#[test]
fn a_parameter_cannot_forge_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frontend_log");
    let log = OpLog::open(&path).unwrap();
    // What `/search?topic=...` records, with hostile topics.
    for topic in [
        "x\nrestock,1,99999,0",
        "x\r\nrestock,2,1,0",
        "x\rrestock,3,1,0",
        "x\u{2028}restock,4,1,0",
        "x\u{85}restock,5,1,0",
        "x\\nrestock",
    ] {
        log.record(format!("search,{topic}"));
    }
    log.record("end".into());
    let text = wait_for(&path, "end");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7, "one line per record: {text:?}");
    for l in &lines[..6] {
        assert!(l.starts_with("search,x"), "{l:?}");
        assert!(
            !l.chars().any(|c| c.is_control() || c == '\u{2028}'),
            "{l:?}"
        );
    }
    // Escaping is reversible: a backslash is escaped too.
    assert_eq!(lines[0], "search,x\\nrestock,1,99999,0");
    assert_eq!(lines[5], "search,x\\\\nrestock");
}

#[test]
fn a_log_rotates_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog0_log");
    let log = OpLog::open(&path).unwrap();
    // 48 MiB of 1 KiB lines: more than one file's worth.
    let line = format!("search,{}", "y".repeat(1017));
    for _ in 0..48 * 1024 {
        log.record(line.clone());
    }
    log.record("end".into());
    drop(log);
    let rotated = dir.path().join("catalog0_log.1");
    for _ in 0..1000 {
        if rotated.exists() && std::fs::read_to_string(&path).is_ok_and(|t| t.ends_with("end\n")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(rotated.exists(), "no rotated file next to the log");
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size <= 40 << 20, "the log grew to {size} bytes");
}
