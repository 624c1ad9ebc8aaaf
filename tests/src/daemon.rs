//! The `wg-appliance` binary as operators run it, for the tests that drive
//! the CLI: a foreground daemon in a namespace (killed with SIGKILL on drop,
//! so nothing of ours runs its cleanup: a `kill -9`), configuration files
//! written 0600 as they hold private keys, and the cleanup of what a run
//! leaves outside its namespaces.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::Netns;

/// Writes `text` to `path`, mode 0600 (a wg-quick file holds a private key;
/// wg-appliance refuses one others may read).
pub fn write_secret(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// `ip netns exec <ns> env <env...> <bin> <args...>`, stderr to `log`.
pub struct ForegroundDaemon {
    child: Child,
    log: PathBuf,
}

impl ForegroundDaemon {
    /// Starts it; `env` entries are `NAME=value`.
    pub fn start(ns: &Netns, env: &[&str], bin: &Path, args: &[&str], log: &Path) -> Result<Self> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "env"])
            .args(env)
            .arg(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("starting wg-appliance")?;
        Ok(Self {
            child,
            log: log.to_owned(),
        })
    }

    /// `up --foreground <conf>` with `env`.
    pub fn up(ns: &Netns, env: &[&str], bin: &Path, conf: &Path, log: &Path) -> Result<Self> {
        let conf = conf.to_str().context("configuration path")?;
        Self::start(ns, env, bin, &["up", "--foreground", conf], log)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ForegroundDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// On drop, removes what a CLI-driven test leaves outside its namespaces:
/// the interface's UAPI socket and log, and a scratch directory.
pub struct CliCleanup {
    pub ifname: String,
    pub dir: PathBuf,
}

impl Drop for CliCleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname));
        let _ = std::fs::remove_file(format!("/var/log/wg-appliance/{}.log", self.ifname));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Resident memory of process `pid` in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
