//! Network partitions on loopback with iptables.
//!
//! Every server of the chaos cluster listens on its own loopback address (127.x.y.z)
//! and runs under its own group id (the server wrapper sets it, see [`super::wrapper`]).
//! On loopback every connection's source address is 127.0.0.1, whoever opens it, so the
//! sender is told apart by its group (`-m owner --gid-owner`) and the receiver by its
//! address. A rule "drop what group G sends to address A" cuts every request from G to A;
//! the answers to requests already delivered may still arrive, like messages already in
//! flight when a real network splits.
//!
//! All rules live in one chain of our own (jumped to from `OUTPUT`), which is flushed and
//! deleted on start (leftovers of a killed run) and at the end. Only 127.0.0.0/8
//! addresses are ever named.
use anyhow::{bail, Context};
use std::process::Command;
use std::sync::Mutex;

/// Whether partitions can be made here, and why not.
pub fn available() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("not root (iptables needs root)");
    }
    match Command::new("iptables")
        .args(["-w", "-S", "OUTPUT"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "iptables does not work here: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => bail!("no iptables ({e}); apt-get install -y iptables"),
    }
}

/// One rule of our chain (its match and target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule(Vec<String>);

/// Our chain and the rules currently in it.
pub struct Net {
    chain: String,
    rules: Mutex<Vec<Vec<String>>>,
}

fn iptables(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .context("iptables")?;
    if out.status.success() {
        Ok(())
    } else {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

fn loopback(addr: &str) -> anyhow::Result<()> {
    let ok = addr
        .parse::<std::net::Ipv4Addr>()
        .is_ok_and(|a| a.octets()[0] == 127);
    if ok {
        Ok(())
    } else {
        bail!("refusing to touch {addr}: not a 127.0.0.0/8 address")
    }
}

impl Net {
    /// Removes any leftover chain of that name, creates it and jumps to it from OUTPUT.
    pub fn setup(chain: &str) -> anyhow::Result<Net> {
        let net = Net {
            chain: chain.to_string(),
            rules: Mutex::new(Vec::new()),
        };
        net.teardown();
        iptables(&["-N", chain])?;
        iptables(&["-I", "OUTPUT", "-j", chain])?;
        Ok(net)
    }

    /// Deletes the jump, flushes and deletes the chain (errors ignored: it may not exist).
    pub fn teardown(&self) {
        while iptables(&["-D", "OUTPUT", "-j", &self.chain]).is_ok() {}
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
        self.rules.lock().unwrap().clear();
    }

    fn add(&self, spec: Vec<String>) -> anyhow::Result<Rule> {
        let mut args = vec!["-A".to_string(), self.chain.clone()];
        args.extend(spec.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        iptables(&refs)?;
        self.rules.lock().unwrap().push(spec.clone());
        Ok(Rule(spec))
    }

    /// Removes one rule.
    pub fn remove(&self, rule: &Rule) -> anyhow::Result<()> {
        let mut args = vec!["-D".to_string(), self.chain.clone()];
        args.extend(rule.0.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = iptables(&refs);
        let mut rules = self.rules.lock().unwrap();
        if let Some(i) = rules.iter().position(|x| *x == rule.0) {
            rules.remove(i);
        }
        r
    }

    /// Drops every packet the processes of group `gid` send to `addr`.
    pub fn block_group_to(&self, gid: u32, addr: &str) -> anyhow::Result<Rule> {
        loopback(addr)?;
        self.add(vec![
            "-m".into(),
            "owner".into(),
            "--gid-owner".into(),
            gid.to_string(),
            "-d".into(),
            format!("{addr}/32"),
            "-j".into(),
            "DROP".into(),
        ])
    }

    /// Drops everything group `gid` sends, and everything sent to `addr`.
    pub fn isolate(&self, gid: u32, addr: &str) -> anyhow::Result<Vec<Rule>> {
        loopback(addr)?;
        let out = self.add(vec![
            "-m".into(),
            "owner".into(),
            "--gid-owner".into(),
            gid.to_string(),
            "-d".into(),
            "127.0.0.0/8".into(),
            "-j".into(),
            "DROP".into(),
        ])?;
        let inbound = self.add(vec![
            "-d".into(),
            format!("{addr}/32"),
            "-j".into(),
            "DROP".into(),
        ]);
        match inbound {
            Ok(r) => Ok(vec![out, r]),
            Err(e) => {
                let _ = self.remove(&out);
                Err(e)
            }
        }
    }

    /// Removes every rule added so far (the chain stays).
    pub fn heal(&self) -> anyhow::Result<()> {
        self.rules.lock().unwrap().clear();
        iptables(&["-F", &self.chain])
    }

    /// How many rules are in force.
    pub fn rules(&self) -> usize {
        self.rules.lock().unwrap().len()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}
