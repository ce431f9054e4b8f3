//! Atomic file replacement: the new contents go to a temp file beside the old one
//! (`<name>.<random>.tmp`), which is fsynced and renamed over it, so a reader or a crash
//! sees the old file or the new one, never a part.
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How the name of [`replace`]'s temp file ends (the WAL's recovery removes such files).
pub const TMP_SUFFIX: &str = ".tmp";

/// How [`replace`] writes a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replace {
    /// `Some(bits)`: the file gets exactly these permission bits (0o600 for files that
    /// hold tokens); `None`: those of a newly created file (0o666 less the umask).
    pub mode: Option<u32>,
    /// Also fsync the directory after the rename, so the new name itself is durable.
    pub sync_dir: bool,
}

impl Replace {
    /// Readable and writable by the owner only.
    pub const PRIVATE: Replace = Replace {
        mode: Some(0o600),
        sync_dir: false,
    };
}

/// A failed step of [`replace`]: what was done (`create`, `write`, `fsync`,
/// `rename into place`, `fsync directory`) to which file.
#[derive(Debug)]
pub struct ReplaceError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl std::fmt::Display for ReplaceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.source)
    }
}

/// No `source()`: the text already ends with the cause, and an error chain printed with
/// its causes (`anyhow`'s `{:#}`) would repeat it.
impl std::error::Error for ReplaceError {}

impl From<ReplaceError> for io::Error {
    fn from(e: ReplaceError) -> io::Error {
        io::Error::new(e.source.kind(), e.to_string())
    }
}

/// Writes `parts` one after the other to `path`, atomically: temp file in the same
/// directory, fsync, rename over `path`, and (with `how.sync_dir`) fsync the directory.
/// A failed replace removes its temp file and leaves the old file as it was.
pub fn replace(path: &Path, parts: &[&[u8]], how: Replace) -> Result<(), ReplaceError> {
    let step = |op: &'static str, p: &Path| {
        let path = p.to_path_buf();
        move |source| ReplaceError { op, path, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut prefix = path.file_name().unwrap_or_default().to_os_string();
    prefix.push(".");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(TMP_SUFFIX);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(how.mode.unwrap_or(0o666)));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(step("create", path))?;
    #[cfg(unix)]
    if let Some(mode) = how.mode {
        // Exactly `mode`, whatever the umask took away at creation.
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(step("chmod", tmp.path()))?;
    }
    for part in parts {
        tmp.write_all(part).map_err(step("write", tmp.path()))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(step("fsync", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| step("rename into place", path)(e.error))?;
    if how.sync_dir {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(step("fsync directory", dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "old and longer").unwrap();
        let how = Replace {
            mode: None,
            sync_dir: true,
        };
        replace(&path, &[b"ne", b"w"], how).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_the_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        // A file left readable by everyone (an earlier run, a copy) is replaced by one
        // that is not.
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        replace(&path, &[b"TOKEN=x\n"], Replace::PRIVATE).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "TOKEN=x\n");
    }

    #[test]
    fn a_failed_replace_names_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("f");
        let e = replace(&path, &[b"x"], Replace::PRIVATE).unwrap_err();
        assert_eq!(e.op, "create");
        assert!(e.to_string().starts_with("create "), "{e}");
    }
}
