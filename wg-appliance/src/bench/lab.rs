//! The bench's lab: two network namespaces joined by a veth pair, a
//! WireGuard endpoint of the variant under test in each, and bounded helper
//! processes. Everything is removed on drop (also while unwinding, on error
//! and after Ctrl-C): daemons first (SIGTERM and a bounded wait, then
//! SIGKILL), then their UAPI sockets, then the namespaces (which takes the
//! veths and tunnel interfaces with them).
//!
//! Names are `wgb<pid>n<seq><tag>` (≤ 15 bytes, unique to this process);
//! namespaces, sockets and key files left by a bench process that died are
//! swept when the next one starts. Children get PR_SET_PDEATHSIG(SIGKILL)
//! and their own process group: a Ctrl-C on the terminal reaches only the
//! bench, which then tears down in order, and a killed bench takes its
//! daemons with it.

use std::{
    io::{Read as _, Write as _},
    os::unix::{fs::OpenOptionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

const PREFIX: &str = "wgb";
const UAPI_DIR: &str = "/var/run/wireguard";
static SEQ: AtomicU32 = AtomicU32::new(0);

/// `wgb<pid>n<seq><tag>`, at most 15 bytes (an interface name).
pub fn unique_name(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!("{PREFIX}{}n{n}{tag}", std::process::id());
    assert!(name.len() <= 15, "name {name} too long for an interface");
    name
}

/// Set by SIGINT/SIGTERM: every wait checks it and bails out, so the
/// lab's destructors run.
#[derive(Clone, Default)]
pub struct Stop(pub Arc<AtomicBool>);

impl Stop {
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    pub fn check(&self) -> Result<()> {
        if self.requested() {
            bail!("interrupted");
        }
        Ok(())
    }
}

/// Runs a command, failing with its stderr on a non-zero exit.
pub fn run(cmd: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd}: is it installed? (cargo xtask setup)"))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A child in its own process group that dies with the thread that
/// started it (PR_SET_PDEATHSIG).
fn spawn_guarded(cmd: &mut Command) -> std::io::Result<Child> {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Polls `cond` every 20 ms until true, `timeout`, or a stop request.
pub fn wait_until(
    stop: &Stop,
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        stop.check()?;
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Result<Self> {
        let name = unique_name("");
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("warning: removing namespace {}: {e:#}", self.name);
        }
    }
}

/// Removes what bench processes that no longer exist left behind:
/// namespaces, UAPI sockets, key directories.
pub fn sweep_stale() {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return false;
        };
        let Some(pid) = rest.split('n').next().and_then(|p| p.parse::<u32>().ok()) else {
            return false;
        };
        pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
    };
    if let Ok(dir) = std::fs::read_dir("/var/run/netns") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead(&name) {
                let _ = run("ip", &["netns", "del", &name]);
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(UAPI_DIR) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("wg-bench-") {
                if dead(&format!("{PREFIX}{rest}n")) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// A long-running process inside a namespace (a WireGuard daemon, an
/// iperf3 server). `kill_first` skips SIGTERM (boringtun-cli ignores it).
pub struct Proc {
    pub what: String,
    child: Option<Child>,
    kill_first: bool,
}

impl Proc {
    /// Starts `cmd args` in `ns`, output appended to `log` (or discarded).
    pub fn spawn(
        ns: &Netns,
        cmd: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<&Path>,
        kill_first: bool,
    ) -> Result<Self> {
        let what = format!("{cmd} {}", args.join(" "));
        let (out, err) = match log {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening {}", p.display()))?;
                (Stdio::from(f.try_clone()?), Stdio::from(f))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name, cmd])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            c.env(k, v);
        }
        let child = spawn_guarded(&mut c).with_context(|| format!("starting `{what}`"))?;
        Ok(Self {
            what,
            child: Some(child),
            kill_first,
        })
    }

    /// The process id (of `ip netns exec`, which execs the command in place).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails if the process already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                self.child = None;
                bail!("`{}` exited ({st})", self.what);
            }
        }
        Ok(())
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if !self.kill_first {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "warning: `{}` ignored SIGTERM for 5 s; killing it",
                self.what
            );
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a bounded run printed.
pub struct Finished {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

/// Runs `cmd args` in `ns` to completion, killed after `timeout` or on a
/// stop request (then an error).
pub fn run_bounded(
    stop: &Stop,
    ns: &Netns,
    cmd: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<Finished> {
    let what = format!("{cmd} {}", args.join(" "));
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name, cmd])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_guarded(&mut c).with_context(|| format!("starting `{what}`"))?;
    let reader = |r: Option<Box<dyn std::io::Read + Send>>| -> JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = reader(child.stdout.take().map(|s| Box::new(s) as _));
    let err = reader(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if stop.requested() || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            if stop.requested() {
                bail!("interrupted");
            }
            let e = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            bail!("`{what}` still running after {timeout:?}; killed. stderr: {e}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Finished {
        stdout: String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
        success: status.success(),
    })
}

/// A directory for key and config files, root-only, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "wg-bench-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(Self { path })
    }

    /// Writes `contents` to a 0600 file in the directory.
    pub fn write(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)?;
        f.write_all(contents.as_bytes())?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One end of the tunnel: its daemon and its interface.
pub struct Endpoint {
    pub ifname: String,
    pub proc: Proc,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.proc.stop();
        let _ = std::fs::remove_file(format!("{UAPI_DIR}/{}.sock", self.ifname));
    }
}

/// The two-namespace topology of one variant. Field order is drop order:
/// daemons, then namespaces, then files.
pub struct Lab {
    pub a_end: Option<Endpoint>,
    pub b_end: Option<Endpoint>,
    pub veth_a: String,
    pub veth_b: String,
    pub a: Netns,
    pub b: Netns,
    pub dir: TempDir,
}

impl Lab {
    /// Namespaces `a` and `b` and a veth between them with `out_a`/`out_b`
    /// (CIDR). GRO is on at both ends for every variant: the receiving veth
    /// of XDP-redirected frames needs it (docs/architecture.md, veth facts), and
    /// the wire is the same for all variants.
    pub fn new(out_a: &str, out_b: &str) -> Result<Self> {
        let a = Netns::new()?;
        let b = Netns::new()?;
        let veth_a = unique_name("a");
        let veth_b = unique_name("b");
        run(
            "ip",
            &[
                "link", "add", &veth_a, "netns", &a.name, "type", "veth", "peer", "name", &veth_b,
                "netns", &b.name,
            ],
        )?;
        for (ns, dev, addr) in [(&a, &veth_a, out_a), (&b, &veth_b, out_b)] {
            ns.ip(&["addr", "add", addr, "dev", dev])?;
            ns.ip(&["link", "set", dev, "up"])?;
            ns.exec("ethtool", &["-K", dev, "gro", "on"])?;
        }
        Ok(Self {
            a_end: None,
            b_end: None,
            veth_a,
            veth_b,
            a,
            b,
            dir: TempDir::new()?,
        })
    }
}

impl Netns {
    /// Runs `f` on a scoped thread that entered this namespace
    /// (setns(CLONE_NEWNET) on /var/run/netns/<name>); its sockets live
    /// there.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        use std::os::fd::AsRawFd as _;
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.name))
            .with_context(|| format!("namespace {} vanished", self.name))?;
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                // SAFETY: setns on this (scoped) thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns({}): {}", self.name, std::io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

/// `GET /metrics` from `addr` as seen from inside namespace `ns`.
pub fn scrape_metrics(ns: &Netns, addr: &str) -> Result<String> {
    let addr: std::net::SocketAddr = addr.parse()?;
    ns.enter(|| -> Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or(body))
    })
}
