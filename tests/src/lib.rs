//! Harness for wg-appliance's end-to-end tests: network namespaces, veth
//! pairs, running code inside a namespace, bounded waits, loud skips.
//!
//! Invariants:
//! - every namespace and link name is unique to this process and test
//!   (`wgt<pid>n<seq>...`), so tests run in parallel;
//! - a [`Netns`] deletes itself on drop, which also runs while a failing test
//!   unwinds; deleting a namespace destroys the veths inside it;
//! - namespaces left by a process that died (kill -9, CI timeout) are swept by
//!   the next [`Netns::new`];
//! - every wait has a timeout.

pub mod appliance;
pub mod daemon;
pub mod etcd;
pub mod fleet;
pub mod impair;
pub mod packet;
pub mod peers;
pub mod proc;
pub mod topo;

use std::{
    fs::File,
    io::Write as _,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

const PREFIX: &str = "wgt";
static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process: `wgt<pid>n<seq><tag>`. Interface
/// names are limited to 15 bytes, so keep `tag` to a character or two.
pub fn unique_name(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!("{PREFIX}{}n{n}{tag}", std::process::id());
    assert!(name.len() <= 15, "name {name} too long for an interface");
    name
}

/// Runs a command, failing with its stderr when it exits non-zero (the
/// bench lab's runner: one definition for the product and the tests).
pub use wg_appliance::bench::lab::run;

/// A network namespace owned by the test; deleted on drop.
pub struct Netns {
    name: String,
}

/// Mounts the appliance's BPF file system on the host side (this process's
/// mount namespace), once, before any daemon starts: a daemon that runs
/// under `ip netns exec` and mounts it itself loses its pins when it exits,
/// and PID 1's mount namespace cannot always be entered (see
/// `wg_appliance::persist`). Setup and the systemd unit do the same.
pub fn ensure_host_bpffs() -> Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let dir = wg_appliance::persist::bpffs_dir();
        if wg_appliance::persist::is_bpffs(&dir) {
            return Ok(());
        }
        wg_appliance::persist::mount_bpffs(&dir)
    })
    .clone()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

impl Netns {
    pub fn new() -> Result<Self> {
        sweep_stale();
        ensure_host_bpffs()?;
        let name = unique_name("");
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a program inside the namespace (`ip netns exec`).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread that has entered this namespace (the network
    /// namespace only: the rest of the process is shared). Sockets, XDP
    /// attaches and ifindex lookups made by `f` happen in the namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = File::open(format!("/var/run/netns/{}", self.name))
            .with_context(|| format!("namespace {} vanished", self.name))?;
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                // SAFETY: setns on this thread only; the fd is valid.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns({}): {}", self.name, std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Best effort: there is nothing better to do with a failure here than
        // to say so; the sweep of the next run catches what is left.
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("warning: cleaning up namespace {}: {e:#}", self.name);
        }
    }
}

/// Deletes namespaces named by this harness for processes that no longer exist.
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('n').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

/// A veth pair `a` (in `ns_a`) — `b` (in `ns_b`), both up, with addresses.
pub struct Veth {
    pub a: String,
    pub b: String,
}

impl Veth {
    /// Creates the pair and assigns `addr_a`/`addr_b` (CIDR, v4 or v6). IPv6
    /// addresses are added with `nodad` so they are usable at once.
    pub fn new(ns_a: &Netns, addr_a: &[&str], ns_b: &Netns, addr_b: &[&str]) -> Result<Self> {
        let a = unique_name("a");
        let b = unique_name("b");
        run(
            "ip",
            &[
                "link",
                "add",
                &a,
                "netns",
                ns_a.name(),
                "type",
                "veth",
                "peer",
                "name",
                &b,
                "netns",
                ns_b.name(),
            ],
        )?;
        for (ns, dev, addrs) in [(ns_a, &a, addr_a), (ns_b, &b, addr_b)] {
            for addr in addrs {
                if addr.contains(':') {
                    ns.ip(&["addr", "add", addr, "dev", dev, "nodad"])?;
                } else {
                    ns.ip(&["addr", "add", addr, "dev", dev])?;
                }
            }
            ns.ip(&["link", "set", dev, "up"])?;
        }
        Ok(Self { a, b })
    }
}

/// The value of the first sample starting with `prefix` (a name, or a
/// name and the start of its labels) on the /metrics of a daemon in `ns`
/// listening on 127.0.0.1:9586; `None` when the scrape or the sample is
/// missing.
pub fn metric_in(ns: &Netns, prefix: &str) -> Option<f64> {
    let out = ns
        .exec(
            "curl",
            &["-sf", "--max-time", "5", "http://127.0.0.1:9586/metrics"],
        )
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `cond` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Why a test could not run here. Tests return early with this after calling
/// [`skip`], which makes the skip loud and countable.
pub struct Skipped;

/// Reports a skipped test: a banner on stderr and a line in the file named by
/// `WG_TEST_SKIP_LOG` (set by `cargo xtask test`, which counts skips apart
/// from passes and prints the reasons in its summary). A skip that cannot be
/// recorded panics: it would otherwise count as a pass.
pub fn skip(test: &str, reason: &str) -> Skipped {
    eprintln!("\n!!!! SKIPPED {test}: {reason} !!!!\n");
    append_log("WG_TEST_SKIP_LOG", &format!("{test}\t{reason}"));
    Skipped
}

/// Reports that a test repeated an attempt (for a cause outside the code
/// under test, said in `reason`): a banner and a line in the file named by
/// `WG_TEST_RETRY_LOG`, which `cargo xtask test` lists in its summary.
pub fn retried(test: &str, attempt: u32, reason: &str) {
    eprintln!("\n!!!! RETRY {test}, attempt {attempt}: {reason} !!!!\n");
    append_log("WG_TEST_RETRY_LOG", &format!("{test}\t{attempt}\t{reason}"));
}

/// Appends a line to the file named by environment variable `var`, if set;
/// panics when it cannot (the summary would be wrong).
fn append_log(var: &str, line: &str) {
    let Some(path) = std::env::var_os(var) else {
        return;
    };
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = r {
        panic!(
            "cannot record `{line}` in {} ({var}): {e}",
            std::path::Path::new(&path).display()
        );
    }
}

/// Returns why namespace tests cannot run on this machine, if they cannot:
/// they need root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) and `ip`.
pub fn netns_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, XDP, BPF)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) not installed; run `cargo xtask setup`".into());
    }
    None
}

/// Early-return helper: `require_netns!("test_name");` at the top of a test.
#[macro_export]
macro_rules! require_netns {
    ($test:expr) => {
        if let Some(why) = $crate::netns_unavailable() {
            let _ = $crate::skip($test, &why);
            return;
        }
    };
}

/// Daemon logs on stderr for tests (RUST_LOG, default info), once.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The `wg-appliance` binary of this workspace's debug build (`cargo xtask
/// test` builds it before the tests run).
pub fn appliance_bin() -> Result<std::path::PathBuf> {
    // A measurement's choice (e.g. the release build for docs/scale.md).
    if let Some(b) = std::env::var_os("WG_APPLIANCE_BIN") {
        return Ok(b.into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/wg-appliance");
    if !bin.exists() {
        bail!(
            "{} is missing. Fix: cargo build -p wg-appliance (cargo xtask test does it)",
            bin.display()
        );
    }
    Ok(bin)
}
