//! The AF_XDP fast path (issue #13): worker threads that decrypt (and, in
//! a later stage, encrypt) with SIMD crypto (`ring`), fed by `wan_rx`
//! through an XSKMAP, beside the BPF data path that stays the fallback.
//!
//! - [`xsk`]: AF_XDP rings over `libc`.
//! - [`state`]: `SESSION_STATE` mapped here: send counters and replay
//!   windows shared with BPF, updated atomically by both.
//! - [`tables`]: keys and AllowedIPs, published by the daemon.
//! - [`rx`]: one received data message, as `crypt_rx` handles it.
//! - [`worker`]: sockets and the loop of one queue.
//!
//! The daemon holds a [`FastPath`]; dropping it stops the workers and
//! closes their sockets, which takes them out of `XSKS`: `wan_rx` then
//! sends every packet to the BPF path again. A kill -9 of the daemon has
//! the same effect (the kernel closes the sockets), so the BPF path
//! carries the tunnel until a new daemon starts its workers.
//!
//! Send: `tun_tx` hands a peer's packets to the worker's socket on `wg0x`
//! (`XSKS_TX`) once the worker has set `FAST_TX[peer]`, which it does when
//! it knows how to reach the peer: the addresses of the peer's last
//! authenticated packet (MACs and IPs swapped). Until then, and for
//! keepalives the control plane asks for, `crypt_tx` sends.

pub mod rx;
pub mod state;
pub mod tables;
pub mod tx;
pub mod worker;
pub mod xsk;

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
};

use wg_ebpf_common::{maps::MAX_PEERS, Counter};

use crate::datapath::{Datapath, DatapathError};

pub use tables::{Published, Tables, WorkerSession};

#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error("AF_XDP socket on {ifname} queue {queue}: {source}")]
    Socket {
        ifname: String,
        queue: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("mapping SESSION_STATE: {0}")]
    Mmap(#[source] std::io::Error),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// Counters of one worker.
pub struct WorkerStats {
    pub queue: u32,
    pub ifname: String,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub polls: AtomicU64,
    /// Frames a transmit kick saw the device drop (EBUSY: veth's ring to
    /// its peer was full); the frame is gone, so the sender will resend.
    pub tx_device_drops: AtomicU64,
    /// By `Counter` index: verdicts and drops, as the BPF path counts them.
    pub counters: Vec<AtomicU64>,
}

impl WorkerStats {
    fn new(ifname: &str, queue: u32) -> Self {
        Self {
            queue,
            ifname: ifname.to_owned(),
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            tx_device_drops: AtomicU64::new(0),
            counters: (0..Counter::COUNT).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn count(&self, c: Counter) {
        if let Some(v) = self.counters.get(c as usize) {
            v.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.counters
            .get(c as usize)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }
}

/// Per-peer traffic the workers carried (added to what BPF counts).
#[derive(Default)]
pub struct PeerCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub last_rx_ns: AtomicU64,
    pub last_rx_data_ns: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub last_tx_ns: AtomicU64,
}

/// What a worker tells the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerEvent {
    /// The peer's endpoint moved (the worker updated `PEERS`).
    Roamed(u32),
    /// A packet to the peer took the counter REKEY_AFTER_MESSAGES.
    RekeyWanted(u32),
}

/// State shared by the workers and the daemon.
pub struct Shared {
    pub stop: AtomicBool,
    pub stats: Vec<WorkerStats>,
    pub peers: Box<[PeerCounters]>,
    events: Mutex<mpsc::Sender<WorkerEvent>>,
}

impl Shared {
    pub fn worker_index(&self, queue: u32) -> usize {
        self.stats
            .iter()
            .position(|s| s.queue == queue)
            .unwrap_or(0)
    }

    pub fn peer_rx(&self, peer: u32, bytes: u64, now_ns: u64, data: bool) {
        if let Some(p) = self.peers.get(peer as usize) {
            p.rx_packets.fetch_add(1, Ordering::Relaxed);
            p.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
            p.last_rx_ns.fetch_max(now_ns, Ordering::Relaxed);
            if data {
                p.last_rx_data_ns.fetch_max(now_ns, Ordering::Relaxed);
            }
        }
    }

    pub fn peer_tx(&self, peer: u32, bytes: u64, now_ns: u64) {
        if let Some(p) = self.peers.get(peer as usize) {
            p.tx_packets.fetch_add(1, Ordering::Relaxed);
            p.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
            p.last_tx_ns.fetch_max(now_ns, Ordering::Relaxed);
        }
    }

    fn event(&self, e: WorkerEvent) {
        if let Ok(tx) = self.events.lock() {
            let _ = tx.send(e);
        }
    }
}

/// How the fast path runs on one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMode {
    pub ifname: String,
    pub queue: u32,
    /// "zerocopy" or "copy".
    pub mode: &'static str,
}

/// The running fast path: its workers, their counters, the tables.
pub struct FastPath {
    shared: Arc<Shared>,
    published: Arc<Published>,
    events: mpsc::Receiver<WorkerEvent>,
    threads: Vec<JoinHandle<()>>,
    modes: Vec<DeviceMode>,
    /// The workers' sockets (WAN, wg0x), for XDP_STATISTICS; open while
    /// the workers run (they are joined before this is dropped).
    sockets: Vec<i32>,
}

/// Frames the kernel could not give a worker (XDP_STATISTICS of its
/// sockets): its rx ring was full, or no frame was free (fill ring empty).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketDrops {
    pub rx_ring_full: u64,
    pub rx_no_frame: u64,
    pub tx_invalid: u64,
    /// Frames the device refused on transmit (see `tx_device_drops`).
    pub tx_device_full: u64,
}

/// Where the workers run.
pub struct FastPathSetup {
    /// WAN device (name, ifindex): one worker on its queue 0.
    pub wan: (String, u32),
    pub wgx_ifindex: u32,
    /// CPU to pin the worker to (None: unpinned).
    pub cpu: Option<usize>,
    pub tables: Tables,
}

impl FastPath {
    /// Creates the sockets, starts the worker and registers its socket in
    /// `XSKS`, after which `wan_rx` hands it the data of known sessions.
    pub fn start(dp: &mut Datapath, setup: FastPathSetup) -> Result<Self, FastPathError> {
        let (ifname, ifindex) = setup.wan.clone();
        let queue = 0;
        let sock_err = |source| FastPathError::Socket {
            ifname: ifname.clone(),
            queue,
            source,
        };
        let mut w = worker::Worker::new(ifindex, queue, setup.wgx_ifindex).map_err(sock_err)?;
        w.cpu = setup.cpu;
        let state_fd = dp.session_state_fd()?;
        let state = state::StateMap::map(state_fd.as_fd(), dp.session_state_entries())
            .map_err(FastPathError::Mmap)?;
        let current_fd = dp.map_fd("PEER_CURRENT")?;
        let maps = worker::WorkerMaps {
            sessions: dp.dup_map("SESSIONS")?,
            peer_current: dp.dup_map("PEER_CURRENT")?,
            peers: dp.dup_map("PEERS")?,
            fast_tx: dp.dup_map("FAST_TX")?,
            current: state::U32Map::map(current_fd.as_fd(), MAX_PEERS)
                .map_err(FastPathError::Mmap)?,
        };
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            stats: vec![WorkerStats::new(&ifname, queue)],
            peers: (0..MAX_PEERS).map(|_| PeerCounters::default()).collect(),
            events: Mutex::new(tx),
        });
        let published = Arc::new(Published::default());
        published.publish(setup.tables);
        let modes = vec![DeviceMode {
            ifname: ifname.clone(),
            queue,
            mode: if w.zerocopy { "zerocopy" } else { "copy" },
        }];
        let sockets = vec![w.wan_fd().as_raw_fd(), w.wgx_fd().as_raw_fd()];
        dp.set_xsk(queue, w.wan_fd())?;
        dp.set_xsk_tx(0, w.wgx_fd())?;
        let (s, p) = (shared.clone(), published.clone());
        let thread = std::thread::Builder::new()
            .name(format!("wg-fast-{queue}"))
            .spawn(move || w.run(s, p, maps, state))
            .map_err(sock_err)?;
        Ok(Self {
            shared,
            published,
            events: rx,
            threads: vec![thread],
            modes,
            sockets,
        })
    }

    pub fn modes(&self) -> &[DeviceMode] {
        &self.modes
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Replaces the tables with `f` applied to a copy of the current ones.
    pub fn update(&self, f: impl FnOnce(&mut Tables)) {
        let mut t = (*self.published.current()).clone();
        f(&mut t);
        self.published.publish(t);
    }

    /// Events the workers sent since the last call.
    pub fn events(&self) -> Vec<WorkerEvent> {
        self.events.try_iter().collect()
    }

    /// What the kernel dropped before a worker saw it.
    pub fn socket_drops(&self) -> SocketDrops {
        let mut d = SocketDrops::default();
        for &fd in &self.sockets {
            if let Ok(s) = xsk::statistics(fd) {
                d.rx_ring_full += s.rx_ring_full;
                d.rx_no_frame += s.rx_dropped;
                d.tx_invalid += s.tx_invalid_descs;
            }
        }
        d.tx_device_full = self
            .shared
            .stats
            .iter()
            .map(|w| w.tx_device_drops.load(Ordering::Relaxed))
            .sum();
        d
    }

    /// Total of a counter over the workers.
    pub fn counter(&self, c: Counter) -> u64 {
        self.shared.stats.iter().map(|w| w.get(c)).sum()
    }

    /// The workers' share of a peer's receive counters.
    pub fn peer(&self, id: u32) -> Option<&PeerCounters> {
        self.shared.peers.get(id as usize)
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
