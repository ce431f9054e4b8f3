//! ssh, scp and tar through the system's OpenSSH client, never prompting: batch mode and
//! the run's own key. Host keys are checked against the run's own known_hosts file, where
//! each host is named by its instance id (`HostKeyAlias`): `deploy`'s first contact with
//! a host learns its key ([`HostKeys::Learn`], OpenSSH's `accept-new`, which still refuses
//! a key that differs from one learned before); every other connection requires the
//! learned key ([`HostKeys::Check`], `StrictHostKeyChecking=yes`).
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// How a connection treats a host key that is not in the run's known_hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeys {
    /// First contact: learn it (a key that differs from a learned one is still refused).
    Learn,
    /// Refuse it: only the learned key is accepted.
    Check,
}

/// Why an ssh, scp or tar step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    /// No session: the host is unreachable, refused the key, or its host key is not the
    /// learned one (ssh's own exit status 255).
    #[error("{0}")]
    Connect(String),
    /// The session ran, and the remote command (or the copy) failed.
    #[error("{0}")]
    Remote(String),
    /// A local tool could not run.
    #[error("{0}")]
    Local(String),
}

impl From<SshError> for String {
    fn from(e: SshError) -> String {
        e.to_string()
    }
}

/// One host to reach over ssh.
#[derive(Debug, Clone)]
pub struct Target {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub key: PathBuf,
    /// The host's name in `known_hosts`: its instance id.
    pub alias: String,
    pub known_hosts: PathBuf,
    pub host_keys: HostKeys,
}

/// An ssh option value as ssh reads it: `%` doubled (ssh expands `%` tokens in file
/// names), in double quotes (for spaces).
fn option_path(p: &Path) -> Result<String, SshError> {
    let s = p.display().to_string();
    if s.contains('"') || s.contains('\n') {
        return Err(SshError::Local(format!(
            "{s}: a path with a double quote or a newline cannot be handed to ssh"
        )));
    }
    Ok(format!("\"{}\"", s.replace('%', "%%")))
}

impl Target {
    fn opts(&self) -> Result<Vec<String>, SshError> {
        let strict = match self.host_keys {
            HostKeys::Learn => "accept-new",
            HostKeys::Check => "yes",
        };
        let mut v: Vec<String> = [
            "BatchMode=yes",
            "LogLevel=ERROR",
            "ConnectTimeout=10",
            "IdentitiesOnly=yes",
            "ServerAliveInterval=15",
            "GlobalKnownHostsFile=/dev/null",
            "HashKnownHosts=no",
            "CheckHostIP=no",
            "UpdateHostKeys=no",
        ]
        .into_iter()
        .map(str::to_string)
        .chain([
            format!("StrictHostKeyChecking={strict}"),
            format!("UserKnownHostsFile={}", option_path(&self.known_hosts)?),
            format!("HostKeyAlias={}", self.alias),
        ])
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        v.push("-i".into());
        v.push(self.key.display().to_string());
        Ok(v)
    }

    /// This target for a first contact, which learns the host's key.
    pub fn learning(mut self) -> Target {
        self.host_keys = HostKeys::Learn;
        self
    }

    fn dest(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{}@{host}", self.user)
    }

    pub fn name(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }

    /// Starts `ssh` to the host running `remote`, with `stdin` and piped output; it is
    /// killed when dropped.
    fn spawn_ssh(&self, remote: &str, stdin: Stdio) -> Result<tokio::process::Child, SshError> {
        Command::new("ssh")
            .args(self.opts()?)
            .arg("-p")
            .arg(self.port.to_string())
            .arg(self.dest())
            .arg(remote)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| missing_tool("ssh", e))
    }

    /// Starts `bash -s` on the host over ssh (stdout and stderr piped) and feeds it
    /// `script` in the background.
    fn spawn_script(
        &self,
        script: &str,
    ) -> Result<(tokio::process::Child, tokio::task::JoinHandle<()>), SshError> {
        let mut child = self.spawn_ssh("bash -s", Stdio::piped())?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| SshError::Local("ssh: no stdin pipe".into()))?;
        let script = script.to_string();
        let feed = tokio::spawn(async move {
            let _ = stdin.write_all(script.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
        Ok((child, feed))
    }

    /// The error of an ssh that ended with `status`: [`SshError::Connect`] for ssh's own
    /// failures (exit status 255), with advice when the host key was refused.
    fn failure(&self, status: std::process::ExitStatus, stderr: &[u8], tail: String) -> SshError {
        let text = format!(
            "ssh {}: {status}: {}{}",
            self.name(),
            String::from_utf8_lossy(stderr).trim(),
            tail
        );
        let text = text + &self.host_key_advice(stderr);
        if status.code() == Some(255) {
            SshError::Connect(text)
        } else {
            SshError::Remote(text)
        }
    }

    /// What to do when ssh refused the host's key (empty if it did not).
    fn host_key_advice(&self, stderr: &[u8]) -> String {
        if !String::from_utf8_lossy(stderr).contains("Host key verification failed") {
            return String::new();
        }
        format!(
            "\nThe host key of {} ({}:{}) is not the one learned at its first contact (in {}), or none was learned. \
             If the instance really was replaced, forget its key with `ssh-keygen -R {} -f {}` and deploy again.",
            self.alias,
            self.host,
            self.port,
            self.known_hosts.display(),
            self.alias,
            self.known_hosts.display()
        )
    }

    /// Runs `script` with `bash -s` on the host; returns its stdout, or an error with its
    /// stderr.
    pub async fn run(&self, script: &str) -> Result<String, SshError> {
        let (child, feed) = self.spawn_script(script)?;
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| SshError::Local(format!("ssh {}: {e}", self.name())))?;
        let _ = feed.await;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).to_string())
        } else {
            Err(self.failure(out.status, &out.stderr, tail_of(&out.stdout)))
        }
    }

    /// Like [`Target::run`], but hands each line of stdout to `on_line` as it arrives (for
    /// progress of long remote commands).
    pub async fn run_lines(
        &self,
        script: &str,
        mut on_line: impl FnMut(&str),
    ) -> Result<(), SshError> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
        let (mut child, feed) = self.spawn_script(script)?;
        let local = |e: std::io::Error| SshError::Local(format!("ssh {}: {e}", self.name()));
        let (Some(mut stderr), Some(stdout)) = (child.stderr.take(), child.stdout.take()) else {
            return Err(SshError::Local("ssh: no output pipes".into()));
        };
        let errors = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf).await;
            buf
        });
        let mut lines = BufReader::new(stdout).lines();
        let mut last = Vec::new();
        while let Some(line) = lines.next_line().await.map_err(local)? {
            on_line(&line);
            last.push(line);
            if last.len() > 15 {
                last.remove(0);
            }
        }
        let status = child.wait().await.map_err(local)?;
        let _ = feed.await;
        let stderr = errors.await.unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(self.failure(status, &stderr, tail_of(last.join("\n").as_bytes())))
        }
    }

    /// Tries `true` over ssh until it works or `limit` passes (a new instance's sshd takes
    /// a while to start). A refused host key ends the wait at once.
    pub async fn wait_reachable(&self, limit: Duration) -> Result<(), SshError> {
        let deadline = Instant::now() + limit;
        loop {
            match self.run("true").await {
                Ok(_) => return Ok(()),
                Err(SshError::Connect(e)) if e.contains("Host key verification failed") => {
                    return Err(SshError::Connect(e))
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(SshError::Connect(format!(
                        "cannot ssh to {} within {limit:?}: {e}",
                        self.name()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        }
    }

    /// Copies local files to `dest`: a remote folder ending in `/` (which must exist), or
    /// a file path for one file.
    pub async fn copy_to(&self, files: &[&Path], dest: &str) -> Result<(), SshError> {
        let out = Command::new("scp")
            .args(self.opts()?)
            .arg("-q")
            .arg("-P")
            .arg(self.port.to_string())
            .args(files)
            .arg(format!("{}:{dest}", self.dest()))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| missing_tool("scp", e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(SshError::Remote(format!(
                "scp to {}:{dest}: {}: {}{}",
                self.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                self.host_key_advice(&out.stderr)
            )))
        }
    }

    /// Copies the remote folder `src` into the local folder `dest` (created), leaving out
    /// the paths in `exclude` (relative to `src`), as a tar stream over ssh.
    pub async fn pull_dir(&self, src: &str, exclude: &[&str], dest: &Path) -> Result<(), SshError> {
        std::fs::create_dir_all(dest)
            .map_err(|e| SshError::Local(format!("{}: {e}", dest.display())))?;
        let excludes: String = exclude
            .iter()
            .map(|x| format!(" --exclude={}", sh_quote(&format!("./{x}"))))
            .collect();
        let script = format!("cd {} && tar -cf -{excludes} .\n", sh_quote(src));
        let mut ssh = self.spawn_ssh(&format!("bash -c {}", sh_quote(&script)), Stdio::null())?;
        let stdout: Stdio = ssh
            .stdout
            .take()
            .ok_or_else(|| SshError::Local("ssh: no stdout pipe".into()))?
            .try_into()
            .map_err(|e| SshError::Local(format!("tar pipe: {e}")))?;
        let tar = Command::new("tar")
            .arg("-xf")
            .arg("-")
            .arg("-C")
            .arg(dest)
            .stdin(stdout)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| missing_tool("tar", e))?;
        let (s, t) = tokio::join!(ssh.wait_with_output(), tar.wait_with_output());
        let s = s.map_err(|e| SshError::Local(format!("ssh {}: {e}", self.name())))?;
        let t = t.map_err(|e| SshError::Local(format!("tar: {e}")))?;
        if !s.status.success() {
            return Err(self.failure(s.status, &s.stderr, format!(" (tar of {src})")));
        }
        if !t.status.success() {
            return Err(SshError::Local(format!(
                "unpacking {src} from {} into {}: {}",
                self.name(),
                dest.display(),
                String::from_utf8_lossy(&t.stderr).trim()
            )));
        }
        Ok(())
    }
}

fn tail_of(stdout: &[u8]) -> String {
    let s = String::from_utf8_lossy(stdout);
    let lines: Vec<&str> = s.lines().collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!("\n{}", lines[lines.len().saturating_sub(15)..].join("\n"))
    }
}

fn missing_tool(tool: &str, e: std::io::Error) -> SshError {
    SshError::Local(if e.kind() == std::io::ErrorKind::NotFound {
        format!("`{tool}` is not installed: install the OpenSSH client (Debian: apt-get install openssh-client)")
    } else {
        format!("cannot run {tool}: {e}")
    })
}

/// Quotes a string for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r#"'\''"#))
    }
}

/// Makes an ed25519 key pair at `path` and `path.pub` with ssh-keygen (no passphrase).
pub async fn keygen(path: &Path, comment: &str) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| missing_tool("ssh-keygen", e))?;
    if !out.status.success() {
        bail!(
            "ssh-keygen {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let pub_path = path.with_extension("pub");
    std::fs::read(&pub_path).with_context(|| pub_path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_are_checked_against_the_runs_file() {
        let t = Target {
            user: "admin".into(),
            host: "203.0.113.9".into(),
            port: 22,
            key: "/k".into(),
            alias: "i-1".into(),
            known_hosts: "/out/50% done/known_hosts".into(),
            host_keys: HostKeys::Check,
        };
        let check = t.opts().unwrap().join(" ");
        assert!(check.contains("StrictHostKeyChecking=yes"), "{check}");
        assert!(check.contains("UserKnownHostsFile=\"/out/50%% done/known_hosts\""));
        assert!(check.contains("HostKeyAlias=i-1"));
        assert!(!check.contains("/dev/null -o StrictHostKeyChecking=no"));
        let learn = t.clone().learning().opts().unwrap().join(" ");
        assert!(
            learn.contains("StrictHostKeyChecking=accept-new"),
            "{learn}"
        );
        let bad = Target {
            known_hosts: "/a\"b".into(),
            ..t
        };
        assert!(bad.opts().is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/tmp/a-b_c.d"), "/tmp/a-b_c.d");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r#"'it'\''s'"#);
        assert_eq!(sh_quote(""), "''");
    }
}
