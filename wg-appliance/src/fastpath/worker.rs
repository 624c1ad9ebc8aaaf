//! One worker: the AF_XDP sockets of one WAN queue and of `wg0x`, sharing
//! one UMEM, and the loop that serves them on a pinned thread.
//!
//! Receive: WAN rx ring → `rx::process` → `wg0x` tx ring (the frame is
//! transmitted where it lies: the inner packet is decrypted in place and
//! its Ethernet header written just before it) → completion → fill.
//! Idle: spin briefly (a poll sleep and wake costs ~2.5 µs here), then
//! poll(2) on the rx socket, so an idle tunnel costs no CPU.

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsRawFd, OwnedFd},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap as BpfHashMap, Map};
use wg_ebpf_common::{
    maps::{Peer, Session, SESSION_CAN_SEND},
    Counter,
};

use super::{
    rx::{self, Outer, Seen, Verdict},
    state::StateMap,
    tables::{Published, Tables, WorkerSession},
    xsk, Shared, WorkerEvent,
};

/// UMEM: 4,096 frames of 2 KiB (8 MiB). Rings of 1,024: fill + rx hold at
/// most 2,048 frames, so half the UMEM is left for frames held by tx
/// skbs in copy mode (the probe's finding: otherwise the fill ring runs
/// dry).
pub const FRAMES: u32 = 4096;
pub const FRAME_SIZE: u32 = 2048;
const RING: u32 = 1024;
const BATCH: u32 = 64;
/// Spin this long with nothing to do before sleeping in poll(2).
const SPIN: Duration = Duration::from_micros(50);
/// Copy-mode tx skbs hold frames until freed: room for many in flight.
const SNDBUF: i32 = 8 << 20;

/// The BPF maps a worker writes on rare events (a session confirmed by
/// its first packet, a peer roaming): handles of its own.
pub struct WorkerMaps {
    pub sessions: Map,
    pub peer_current: Map,
    pub peers: Map,
}

pub struct Worker {
    pub queue: u32,
    pub cpu: Option<usize>,
    umem: xsk::Umem,
    wan: OwnedFd,
    wgx: OwnedFd,
    fill: xsk::Ring<u64>,
    _wan_comp: xsk::Ring<u64>,
    rx: xsk::Ring<libc::xdp_desc>,
    _wgx_fill: xsk::Ring<u64>,
    wgx_comp: xsk::Ring<u64>,
    tx: xsk::Ring<libc::xdp_desc>,
    /// Frames on no ring.
    spare: Vec<u64>,
    pub zerocopy: bool,
    wan_ifindex: u32,
}

impl Worker {
    /// Creates the sockets. `wan`/`wgx`: ifindexes. Zero-copy is tried
    /// first and copy mode taken when the driver refuses it.
    pub fn new(wan_ifindex: u32, queue: u32, wgx_ifindex: u32) -> std::io::Result<Self> {
        let umem = xsk::Umem::new(FRAMES, FRAME_SIZE)?;
        let wan = xsk::socket()?;
        xsk::umem_reg(wan.as_raw_fd(), &umem, 0)?;
        let (mut fill, wan_comp) = xsk::umem_rings(wan.as_raw_fd(), RING, RING)?;
        let rx = xsk::rx_ring(wan.as_raw_fd(), RING)?;
        let mut zerocopy = true;
        if xsk::bind(
            wan.as_raw_fd(),
            wan_ifindex,
            queue,
            libc::XDP_ZEROCOPY | libc::XDP_USE_NEED_WAKEUP,
            None,
        )
        .is_err()
        {
            zerocopy = false;
            xsk::bind(
                wan.as_raw_fd(),
                wan_ifindex,
                queue,
                libc::XDP_COPY | libc::XDP_USE_NEED_WAKEUP,
                None,
            )?;
        }
        let wgx = xsk::socket()?;
        xsk::set_sndbuf(wgx.as_raw_fd(), SNDBUF)?;
        let (wgx_fill, wgx_comp) = xsk::umem_rings(wgx.as_raw_fd(), RING, RING)?;
        let tx = xsk::tx_ring(wgx.as_raw_fd(), RING)?;
        // wg0x has one queue per CPU at most; its queue 0 carries the tx.
        xsk::bind(wgx.as_raw_fd(), wgx_ifindex, 0, 0, Some(wan.as_raw_fd()))?;

        let n = fill.free(RING);
        for i in 0..n {
            fill.put(i, i as u64 * FRAME_SIZE as u64);
        }
        fill.submit(n);
        let spare = (n..FRAMES).map(|i| i as u64 * FRAME_SIZE as u64).collect();
        Ok(Self {
            queue,
            cpu: None,
            umem,
            wan,
            wgx,
            fill,
            _wan_comp: wan_comp,
            rx,
            _wgx_fill: wgx_fill,
            wgx_comp,
            tx,
            spare,
            zerocopy,
            wan_ifindex,
        })
    }

    /// The socket to register in `XSKS` for this queue.
    pub fn wan_fd(&self) -> &OwnedFd {
        &self.wan
    }

    /// Gives frames back to the fill ring: completed transmissions first,
    /// then frames that were dropped (`spare`).
    fn recycle(&mut self) {
        let c = self.wgx_comp.peek(RING);
        for i in 0..c {
            let a = *self.wgx_comp.get(i);
            self.spare.push(a - a % FRAME_SIZE as u64);
        }
        self.wgx_comp.release(c);
        let n = self
            .fill
            .free(self.spare.len() as u32)
            .min(self.spare.len() as u32);
        for i in 0..n {
            let a = self.spare.pop().unwrap_or(0);
            self.fill.put(i, a);
        }
        if n > 0 {
            self.fill.submit(n);
        }
    }

    /// Sends what the tx ring holds; copy mode sends at most 32 frames a
    /// call, so the kick loops while the kernel keeps taking them.
    fn kick(&mut self) {
        for _ in 0..64 {
            if xsk::kick_tx(&self.wgx) < 0 {
                let e = std::io::Error::last_os_error().raw_os_error();
                if e != Some(libc::EAGAIN) && e != Some(libc::EBUSY) && e != Some(libc::ENOBUFS) {
                    return;
                }
            }
            // Everything submitted has been consumed by the kernel.
            if self.tx.free(RING) == RING {
                return;
            }
            self.recycle();
        }
    }

    /// The loop; returns when `shared.stop` is set.
    pub fn run(
        mut self,
        shared: Arc<Shared>,
        published: Arc<Published>,
        maps: WorkerMaps,
        state: StateMap,
    ) {
        if let Some(cpu) = self.cpu {
            pin_to(cpu);
        }
        let mut maps = maps;
        let idx = shared.worker_index(self.queue);
        let mut gen = 0u64;
        // The published tables, and the sessions this worker looked up
        // (`tables.sessions`, emptied with every new publication: the
        // daemon publishes after every session removal).
        let mut tables: Tables = (*published.current()).clone();
        let mut confirmed: HashSet<u32> = HashSet::new();
        let mut endpoints: HashMap<u32, Outer> = HashMap::new();
        let mut idle_since: Option<Instant> = None;
        let mut pfd = libc::pollfd {
            fd: self.wan.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        while !shared.stop.load(Ordering::Relaxed) {
            if let Some(t) = published.refresh(&mut gen) {
                tables = (*t).clone();
            }
            self.recycle();
            let got = self.rx.peek(BATCH);
            if got == 0 {
                let now = Instant::now();
                let since = *idle_since.get_or_insert(now);
                if now.duration_since(since) >= SPIN {
                    // need_wakeup: the kernel wakes us on rx; 100 ms bounds
                    // how long a stop request waits.
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut pfd, 1, 100) };
                    shared.stats[idx].polls.fetch_add(1, Ordering::Relaxed);
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            idle_since = None;
            let now_ns = ktime_ns();
            let mut out = 0u32;
            while self.tx.free(got) < got {
                self.kick();
                self.recycle();
            }
            for i in 0..got {
                let d = *self.rx.get(i);
                let mut seen = Seen::default();
                let verdict = match self.umem.frame(d.addr) {
                    Some((f, off)) => {
                        let f = &mut f[off..];
                        let len = d.len as usize;
                        match rx::process(f, len, &tables, &state, now_ns, &mut seen) {
                            // Not cached yet: a session the daemon installed
                            // since; take it from SESSIONS, then try again.
                            Verdict::Drop(Counter::DropUnknownIndex)
                                if learn_session(&mut maps, &mut tables, f, len) =>
                            {
                                rx::process(f, len, &tables, &state, now_ns, &mut seen)
                            }
                            v => v,
                        }
                    }
                    None => Verdict::Drop(Counter::DropInternal),
                };
                let w = &shared.stats[idx];
                match verdict {
                    Verdict::Deliver { start, len } => {
                        self.tx.put(
                            out,
                            libc::xdp_desc {
                                addr: d.addr + start as u64,
                                len: len as u32,
                                options: 0,
                            },
                        );
                        out += 1;
                        w.count(Counter::RxDelivered);
                        w.rx_packets.fetch_add(1, Ordering::Relaxed);
                        w.rx_bytes.fetch_add(seen.msg_len as u64, Ordering::Relaxed);
                    }
                    Verdict::Keepalive => {
                        w.count(Counter::RxKeepalive);
                        w.rx_packets.fetch_add(1, Ordering::Relaxed);
                        w.rx_bytes.fetch_add(seen.msg_len as u64, Ordering::Relaxed);
                        self.spare.push(d.addr - d.addr % FRAME_SIZE as u64);
                    }
                    Verdict::Drop(c) => {
                        w.count(c);
                        self.spare.push(d.addr - d.addr % FRAME_SIZE as u64);
                    }
                }
                if seen.mss_clamped {
                    w.count(Counter::MssClamped);
                }
                if let Some((peer, outer)) = seen.peer {
                    shared.peer_rx(peer, seen.msg_len as u64, now_ns, seen.data);
                    if endpoints.get(&peer) != Some(&outer) {
                        self.roam(&mut maps, &shared, peer, &outer);
                        endpoints.insert(peer, outer);
                    }
                }
                if let Some(index) = seen.confirmed {
                    if confirmed.insert(index) {
                        confirm(&mut maps, index);
                    }
                }
            }
            self.rx.release(got);
            if out > 0 {
                self.tx.submit(out);
                self.kick();
            }
        }
    }

    /// An authenticated packet from a new address moves the peer's
    /// endpoint there (as `roam` in BPF), and tells the control plane.
    fn roam(&self, maps: &mut WorkerMaps, shared: &Shared, peer_id: u32, o: &Outer) {
        let Ok(mut peers) = Array::<_, Peer>::try_from(&mut maps.peers) else {
            return;
        };
        let Ok(mut p) = peers.get(&peer_id, 0) else {
            return;
        };
        let family = if o.v6 { 6 } else { 4 };
        if p.endpoint_family == family
            && p.endpoint_addr == o.src
            && p.endpoint_port == o.sport_be
            && p.local_addr == o.dst
            && p.ifindex == self.wan_ifindex
        {
            return;
        }
        let moved =
            p.endpoint_family != 0 && (p.endpoint_addr != o.src || p.endpoint_port != o.sport_be);
        p.endpoint_addr = o.src;
        p.endpoint_port = o.sport_be;
        p.endpoint_family = family;
        p.local_addr = o.dst;
        p.ifindex = self.wan_ifindex;
        if peers.set(peer_id, p, 0).is_ok() && moved {
            shared.stats[shared.worker_index(self.queue)].count(Counter::EndpointRoamed);
            shared.event(WorkerEvent::Roamed(peer_id));
        }
    }
}

/// Looks up the receiver index of the data message in `f` in SESSIONS
/// and caches the session; false when there is none.
fn learn_session(maps: &mut WorkerMaps, tables: &mut Tables, f: &[u8], len: usize) -> bool {
    let Some((_, payload, plen)) = f.get(..len).and_then(rx::parse_outer) else {
        return false;
    };
    if plen < 8 {
        return false;
    }
    let Some(r) = f.get(payload + 4..payload + 8) else {
        return false;
    };
    let index = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
    let Ok(sessions) = BpfHashMap::<_, u32, Session>::try_from(&maps.sessions) else {
        return false;
    };
    let Ok(s) = sessions.get(&index, 0) else {
        return false;
    };
    match WorkerSession::new(&s) {
        Some(ws) => {
            tables.sessions.insert(index, Arc::new(ws));
            true
        }
        None => false,
    }
}

/// A responder's session confirmed by its first packet becomes the peer's
/// sending session (as `crypt_rx` does in BPF).
fn confirm(maps: &mut WorkerMaps, index: u32) {
    let Ok(mut sessions) = BpfHashMap::<_, u32, Session>::try_from(&mut maps.sessions) else {
        return;
    };
    let Ok(mut s) = sessions.get(&index, 0) else {
        return;
    };
    if s.flags & SESSION_CAN_SEND != 0 {
        return;
    }
    s.flags |= SESSION_CAN_SEND;
    if sessions.insert(index, s, 0).is_err() {
        return;
    }
    if let Ok(mut cur) = Array::<_, u32>::try_from(&mut maps.peer_current) {
        let _ = cur.set(s.peer_id, index, 0);
    }
}

pub fn ktime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
