//! What lets the tunnel outlive its daemon: BPF pins and the saved
//! configuration, so a restarted daemon adopts the running data path
//! (hitless control-plane restart).
//!
//! Layout, keyed by network namespace (the inode of its nsfs entry) and
//! interface, so two `wg0` in two namespaces never collide:
//! - `/run/wg-appliance/bpf/<netns>/<if>/`: maps, the `wan_rx` program and
//!   the XDP links, pinned (a BPF file system, mounted here if needed);
//! - `/run/wg-appliance/state/<netns>/<if>.state`: the configuration, 0600
//!   (it holds the private key), in a directory only root can enter.
//!
//! `ip netns exec` gives a process a private mount namespace, where a BPF
//! file system mounted dies with the process. [`enter_host_mount_ns`] moves
//! the daemon into PID 1's mount namespace first where the kernel lets it;
//! where it does not (containers, VMs whose PID 1 hides its namespaces), the
//! BPF file system must be mounted on the host side before the daemon starts
//! (`cargo xtask setup`, the systemd unit and the test harness do that), and
//! [`pin_lifetime`] tells the daemon whether its pins will outlive it, so it
//! can say so instead of silently losing hitless restart.
//!
//! The root is `/run/wg-appliance`, or `$WG_APPLIANCE_RUN_DIR` when set (a
//! second appliance tree on one host, and the tests' scratch trees).

use std::{
    fmt::Write as _,
    io::Write as _,
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use ipnet::IpNet;

use crate::{
    config::PeerSpec,
    keys::{PresharedKey, PrivateKey, PublicKey},
};

/// The default root of pins and saved state.
pub const RUN_DIR: &str = "/run/wg-appliance";
/// Environment variable that moves the root elsewhere.
pub const RUN_DIR_ENV: &str = "WG_APPLIANCE_RUN_DIR";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether this process mounted the pin file system itself (see
/// [`pin_lifetime`]).
static MOUNTED_HERE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The root of pins and saved state: `$WG_APPLIANCE_RUN_DIR` or
/// `/run/wg-appliance`.
pub fn run_dir() -> PathBuf {
    match std::env::var_os(RUN_DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(RUN_DIR),
    }
}

/// Where the BPF file system for pins is mounted.
pub fn bpffs_dir() -> PathBuf {
    run_dir().join("bpf")
}

/// The calling thread's network namespace, as an nsfs inode number.
pub fn netns_id() -> Option<u64> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

/// Whether `path` is the root of (or inside) a BPF file system.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs with a valid path and output buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// The BPF file system for pins, mounted at `<run dir>/bpf` if no bpffs is
/// there yet.
pub fn bpffs() -> Result<PathBuf, String> {
    let root = bpffs_dir();
    if is_bpffs(&root) {
        return Ok(root);
    }
    mount_bpffs(&root)?;
    MOUNTED_HERE.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(root)
}

/// Mounts a BPF file system (mode 0700) at `root`, creating the directory.
/// Used by the daemon and, on the host side before any daemon starts, by
/// setup, the systemd unit's helper and the test harness.
pub fn mount_bpffs(root: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| format!("creating {}: {e}", root.display()))?;
    let target =
        std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: mount with valid NUL-terminated strings; root only.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mounting a BPF file system at {}: {}",
            root.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Whether the pins outlive the daemon, so that a restart adopts the
/// running tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinLifetime {
    /// The pin file system was there before the daemon (mounted on the host
    /// side), or the daemon mounted it in a mount namespace that others
    /// share: pins outlive the daemon.
    OutlivesDaemon,
    /// The daemon mounted the pin file system in a mount namespace of its
    /// own (`ip netns exec` where PID 1's namespace cannot be entered): the
    /// pins die with the daemon and a restart cannot adopt the tunnel. The
    /// string says why and how to fix it.
    DiesWithDaemon(String),
    /// The data path is not pinned at all (pinning failed); the string is
    /// the error.
    NotPinned(String),
}

impl PinLifetime {
    /// 1 when a restart can adopt the running tunnel, for the metric.
    pub fn hitless(&self) -> bool {
        matches!(self, Self::OutlivesDaemon)
    }

    /// One line for `show` and the logs.
    pub fn describe(&self) -> String {
        match self {
            Self::OutlivesDaemon => {
                "pinned; a restart of the daemon adopts the running tunnel".into()
            }
            Self::DiesWithDaemon(why) | Self::NotPinned(why) => {
                format!("a restart of the daemon will NOT be hitless: {why}")
            }
        }
    }
}

/// Judges the pins' lifetime after [`bpffs`] (call it once pins exist).
pub fn pin_lifetime() -> PinLifetime {
    if !MOUNTED_HERE.load(std::sync::atomic::Ordering::Relaxed) {
        return PinLifetime::OutlivesDaemon;
    }
    let ino = |p: &str| std::fs::metadata(p).ok().map(|m| m.ino());
    let mine = ino("/proc/self/ns/mnt");
    if mine.is_some() && mine == ino("/proc/1/ns/mnt") {
        return PinLifetime::OutlivesDaemon;
    }
    if mine.is_some() && shares_mount_ns_with_others(mine) {
        return PinLifetime::OutlivesDaemon;
    }
    let dir = bpffs_dir();
    PinLifetime::DiesWithDaemon(format!(
        "this daemon mounted the BPF file system at {dir} itself, inside a mount namespace of \
         its own (ip netns exec?) that ends with it, and PID 1's cannot be entered here. \
         Fix: mount it on the host side before starting the daemon: \
         mkdir -p -m 0700 {dir} && mount -t bpf bpf {dir} \
         (cargo xtask setup and the systemd unit do this)",
        dir = dir.display()
    ))
}

/// Whether a process other than this one and its parent (which waits for
/// the daemon to be ready, then exits) lives in mount namespace `ns`.
fn shares_mount_ns_with_others(ns: Option<u64>) -> bool {
    let me = std::process::id();
    let parent = std::os::unix::process::parent_id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            return false;
        };
        pid != me
            && pid != parent
            && std::fs::metadata(p.path().join("ns/mnt"))
                .ok()
                .map(|m| m.ino())
                == ns
    })
}

/// Removes pin and state directories of network namespaces that no longer
/// exist (their interfaces died with them; the pins would only hold memory).
pub fn sweep_stale() {
    let mut live = std::collections::HashSet::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            if let Ok(m) = std::fs::metadata(p.path().join("ns/net")) {
                live.insert(m.ino());
            }
            if let Ok(tasks) = std::fs::read_dir(p.path().join("task")) {
                for t in tasks.flatten() {
                    if let Ok(m) = std::fs::metadata(t.path().join("ns/net")) {
                        live.insert(m.ino());
                    }
                }
            }
        }
    }
    if let Ok(named) = std::fs::read_dir("/var/run/netns") {
        for n in named.flatten() {
            if let Ok(m) = std::fs::metadata(n.path()) {
                live.insert(m.ino());
            }
        }
    }
    if let Some(me) = netns_id() {
        live.insert(me);
    }
    for sub in ["bpf", "state"] {
        let Ok(dirs) = std::fs::read_dir(run_dir().join(sub)) else {
            continue;
        };
        for d in dirs.flatten() {
            let stale = d
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|ino| !live.contains(&ino));
            if stale {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
}

/// Removes the directory holding `path` if it is empty now: the per-namespace
/// directory of pins or state once its last interface is gone. (A
/// non-empty directory stays; `remove_dir` refuses it.)
pub fn remove_empty_parent(path: &Path) {
    if let Some(p) = path.parent() {
        let _ = std::fs::remove_dir(p);
    }
}

/// Removes the pins and the saved state of interface `ifname` in this
/// network namespace (a data path that will not be adopted: a failed
/// start, or leftovers a restart cannot use).
pub fn remove_pins_and_state(ifname: &str) {
    if let Some(ns) = netns_id() {
        let dir = bpffs_dir().join(ns.to_string()).join(ifname);
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
            remove_empty_parent(&dir);
        }
    }
    if let Some(p) = state_path(ifname) {
        if p.exists() {
            let _ = std::fs::remove_file(&p);
            remove_empty_parent(&p);
        }
    }
}

/// Pin directory of interface `ifname` in this network namespace.
pub fn pin_dir(ifname: &str) -> Result<PathBuf, String> {
    let ns = netns_id().ok_or("cannot read this thread's network namespace")?;
    sweep_stale();
    Ok(bpffs()?.join(ns.to_string()).join(ifname))
}

/// Saved-state file of interface `ifname` in this network namespace.
pub fn state_path(ifname: &str) -> Option<PathBuf> {
    let ns = netns_id()?;
    Some(
        run_dir()
            .join("state")
            .join(ns.to_string())
            .join(format!("{ifname}.state")),
    )
}

/// Moves this (single-threaded) process into PID 1's mount namespace when it
/// runs in another one (`ip netns exec`), so pins outlive it. The network
/// namespace stays. Returns whether it moved.
pub fn enter_host_mount_ns() -> bool {
    let ino = |p: &str| std::fs::metadata(p).ok().map(|m| m.ino());
    match (ino("/proc/self/ns/mnt"), ino("/proc/1/ns/mnt")) {
        (Some(a), Some(b)) if a != b => {}
        _ => return false,
    }
    let Ok(f) = std::fs::File::open("/proc/1/ns/mnt") else {
        return false;
    };
    use std::os::fd::AsRawFd as _;
    // SAFETY: setns on a valid nsfs fd; fails harmlessly if not allowed.
    unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNS) == 0 }
}

/// The configuration a restarted daemon needs (sessions live in the maps).
#[derive(Debug, Clone)]
pub struct SavedState {
    pub private_key: Option<PrivateKey>,
    pub listen_port: u16,
    pub fwmark: u32,
    /// Peers with their data-path ids.
    pub peers: Vec<(u32, PeerSpec)>,
    /// When the private key was set (UNIX seconds), so that its age
    /// survives a restart.
    pub private_key_set_at: Option<u64>,
    /// When each peer's preshared key was set (UNIX seconds), by peer id.
    pub psk_set_at: std::collections::BTreeMap<u32, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {what}; the saved state is damaged. Fix: `wg-appliance down` the interface and bring it up again")]
    Bad {
        path: String,
        line: usize,
        what: String,
    },
}

impl SavedState {
    fn render(&self) -> String {
        let mut s = String::new();
        if let Some(k) = &self.private_key {
            let _ = writeln!(s, "private_key={}", &*k.to_base64());
        }
        if let Some(t) = self.private_key_set_at {
            let _ = writeln!(s, "private_key_set_at={t}");
        }
        let _ = writeln!(s, "listen_port={}", self.listen_port);
        let _ = writeln!(s, "fwmark={}", self.fwmark);
        for (id, p) in &self.peers {
            let _ = writeln!(s, "peer={id} {}", p.public_key.to_base64());
            if let Some(k) = &p.preshared_key {
                let _ = writeln!(s, "preshared_key={}", &*k.to_base64());
            }
            if let Some(t) = self.psk_set_at.get(id) {
                let _ = writeln!(s, "preshared_key_set_at={t}");
            }
            if let Some(e) = p.endpoint {
                let _ = writeln!(s, "endpoint={e}");
            }
            for n in &p.allowed_ips {
                let _ = writeln!(s, "allowed_ip={n}");
            }
            if let Some(k) = p.persistent_keepalive {
                let _ = writeln!(s, "persistent_keepalive={k}");
            }
        }
        s
    }

    /// Writes the state atomically, 0600, in a 0700 directory.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(self.render().as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn load(path: &Path) -> Result<Self, StateError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| StateError::Io {
            path: shown.clone(),
            source,
        })?;
        let mut st = SavedState {
            private_key: None,
            listen_port: 0,
            fwmark: 0,
            peers: Vec::new(),
            private_key_set_at: None,
            psk_set_at: std::collections::BTreeMap::new(),
        };
        for (i, line) in text.lines().enumerate() {
            let bad = |what: &str| StateError::Bad {
                path: shown.clone(),
                line: i + 1,
                what: what.to_owned(),
            };
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let peer_id = st.peers.last().map(|(id, _)| *id);
            let peer = st.peers.last_mut().map(|(_, p)| p);
            match (k, peer) {
                ("private_key_set_at", _) => {
                    st.private_key_set_at = Some(v.parse().map_err(|_| bad("bad time"))?)
                }
                ("preshared_key_set_at", Some(_)) => {
                    let t = v.parse().map_err(|_| bad("bad time"))?;
                    if let Some(id) = peer_id {
                        st.psk_set_at.insert(id, t);
                    }
                }
                ("private_key", _) => {
                    st.private_key = Some(v.parse().map_err(|_| bad("bad private key"))?)
                }
                ("listen_port", _) => st.listen_port = v.parse().map_err(|_| bad("bad port"))?,
                ("fwmark", _) => st.fwmark = v.parse().map_err(|_| bad("bad fwmark"))?,
                ("peer", _) => {
                    let (id, key) = v.split_once(' ').ok_or_else(|| bad("bad peer line"))?;
                    let id: u32 = id.parse().map_err(|_| bad("bad peer id"))?;
                    let key: PublicKey = key.parse().map_err(|_| bad("bad public key"))?;
                    st.peers.push((
                        id,
                        PeerSpec {
                            public_key: key,
                            preshared_key: None,
                            endpoint: None,
                            allowed_ips: Vec::new(),
                            persistent_keepalive: None,
                        },
                    ));
                }
                ("preshared_key", Some(p)) => {
                    p.preshared_key = Some(
                        v.parse::<PresharedKey>()
                            .map_err(|_| bad("bad preshared key"))?,
                    )
                }
                ("endpoint", Some(p)) => {
                    p.endpoint = Some(v.parse::<SocketAddr>().map_err(|_| bad("bad endpoint"))?)
                }
                ("allowed_ip", Some(p)) => p
                    .allowed_ips
                    .push(v.parse::<IpNet>().map_err(|_| bad("bad allowed ip"))?),
                ("persistent_keepalive", Some(p)) => {
                    p.persistent_keepalive = Some(v.parse().map_err(|_| bad("bad keepalive"))?)
                }
                _ => return Err(bad("unexpected line")),
            }
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_and_mode() {
        let dir = std::env::temp_dir().join(format!("wga-state-{}", std::process::id()));
        let path = dir.join("wg0.state");
        let peer = PeerSpec {
            public_key: PrivateKey::generate().public_key(),
            preshared_key: Some(PresharedKey::generate()),
            endpoint: Some("[fd00::1]:51820".parse().expect("ep")),
            allowed_ips: vec![
                "10.0.0.0/24".parse().expect("net"),
                "fd00::/64".parse().expect("net"),
            ],
            persistent_keepalive: Some(25),
        };
        let st = SavedState {
            private_key: Some(PrivateKey::generate()),
            listen_port: 51820,
            fwmark: 7,
            peers: vec![(3, peer)],
            private_key_set_at: Some(1_700_000_000),
            psk_set_at: [(3, 1_700_000_123)].into_iter().collect(),
        };
        st.save(&path).expect("save");
        let meta = std::fs::metadata(&path).expect("meta");
        assert_eq!(meta.mode() & 0o777, 0o600, "state file must be root-only");
        let back = SavedState::load(&path).expect("load");
        assert_eq!(back.render(), st.render());
        assert_eq!(back.private_key_set_at, Some(1_700_000_000));
        assert_eq!(back.psk_set_at.get(&3), Some(&1_700_000_123));
        std::fs::write(&path, "peer=x y\n").expect("write");
        let err = SavedState::load(&path).expect_err("damaged").to_string();
        assert!(err.contains(":1:") && err.contains("down"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
