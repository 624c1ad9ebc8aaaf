//! One worker: the AF_XDP sockets of one WAN queue and of `wg0x`, sharing
//! one UMEM, and the loop that serves them on one thread.
//!
//! Receive: WAN rx ring → `rx::process` (decrypted in place, an Ethernet
//! header written just before the inner packet) → `wg0x` tx ring.
//! Send: `wg0x` rx ring (what `tun_tx` handed over) → `tx::process`
//! (sealed in place, outer headers written into the headroom) → WAN tx
//! ring. Completions of either tx ring give frames back to a spare pool
//! that refills both fill rings. Idle: spin briefly (a poll sleep and wake
//! costs ~2.5 µs here), then poll(2) on both sockets, so an idle tunnel
//! costs no CPU.

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
    rx::{self, Outer, Seen},
    state::{StateMap, U32Map},
    tables::{Published, Tables, WorkerSession},
    tx::{self, L2},
    xsk, Shared, WorkerEvent,
};

/// UMEM: 16,384 frames of 2 KiB (32 MiB). The two fill rings hold at most
/// 8,192 frames and the rx rings as many again in a burst; tx frames in
/// flight are capped ([`MAX_IN_FLIGHT`]), so the fill rings do not run dry.
pub const FRAMES: u32 = 16384;
pub const FRAME_SIZE: u32 = 2048;
/// Tx and completion rings.
const RING: u32 = 1024;
/// Fill and rx rings: a burst the worker cannot take at once waits here
/// rather than being dropped (`rx_ring_full`). With 1,024, four TCP
/// streams from the tunnel's own host lost 5.8% of their packets on the
/// `wg0x` socket and retransmitted as much.
const RX_RING: u32 = 4096;
const BATCH: u32 = 64;
/// Spin this long with nothing to do before sleeping in poll(2).
const SPIN: Duration = Duration::from_micros(50);
/// Spin this long on frames a tx device will not take (its in-flight cap
/// or ring full) before sleeping 1 ms at a time: under load a veth frees
/// room within microseconds, and a sleep there would stall the tunnel; a
/// device that stays stuck (down, queue stopped) must not cost a core.
const BLOCKED_SPIN: Duration = Duration::from_millis(2);
/// Copy-mode tx skbs hold frames until freed: room for many in flight.
const SNDBUF: i32 = 8 << 20;
/// Frames handed to a device and not completed yet, at most. In copy mode
/// a frame completes when its skb is freed; on a veth whose peer runs XDP
/// (or GRO) that is when the peer's NAPI takes it off a ring of 256
/// (VETH_RING_SIZE), and a full ring drops the frame (`sendto` says EBUSY,
/// nothing else counts it). Staying under 256 in flight keeps our own
/// frames from overflowing it; a real NIC's ring is larger.
const MAX_IN_FLIGHT: u32 = 192;

/// The BPF maps a worker touches: handles of its own for rare writes (a
/// session confirmed by its first packet, a peer roaming, `FAST_TX`), and
/// `PEER_CURRENT` mapped for the per-packet read.
pub struct WorkerMaps {
    pub sessions: Map,
    pub peer_current: Map,
    pub peers: Map,
    pub fast_tx: Map,
    pub current: U32Map,
}

struct Tx {
    ring: xsk::Ring<libc::xdp_desc>,
    comp: xsk::Ring<u64>,
    fd_raw: i32,
    /// Submitted, not completed.
    in_flight: u32,
    /// EBUSY answers (a frame the device dropped).
    device_drops: u64,
}

impl Tx {
    /// Sends what the ring holds; copy mode sends at most 32 frames a call,
    /// so the kick loops while the kernel keeps taking them.
    fn kick(&mut self, spare: &mut Vec<u64>) {
        for _ in 0..64 {
            if xsk::kick_tx(&self.fd_raw) < 0 {
                let e = std::io::Error::last_os_error().raw_os_error();
                if e == Some(libc::EBUSY) {
                    self.device_drops += 1;
                } else if e != Some(libc::EAGAIN) && e != Some(libc::ENOBUFS) {
                    return;
                }
            }
            if self.ring.free(RING) == RING {
                return;
            }
            self.complete(spare);
        }
    }

    fn complete(&mut self, spare: &mut Vec<u64>) {
        let c = self.comp.peek(RING);
        for i in 0..c {
            let a = *self.comp.get(i);
            spare.push(a - a % FRAME_SIZE as u64);
        }
        self.comp.release(c);
        self.in_flight = self.in_flight.saturating_sub(c);
    }

    /// Descriptors that may be put on the ring now.
    fn room(&mut self, want: u32) -> u32 {
        self.ring
            .free(want)
            .min(MAX_IN_FLIGHT.saturating_sub(self.in_flight))
    }

    fn submit(&mut self, n: u32) {
        self.ring.submit(n);
        self.in_flight += n;
    }
}

pub struct Worker {
    pub queue: u32,
    pub cpu: Option<usize>,
    umem: xsk::Umem,
    wan: OwnedFd,
    wgx: OwnedFd,
    wan_fill: xsk::Ring<u64>,
    wan_rx: xsk::Ring<libc::xdp_desc>,
    wan_tx: Tx,
    wgx_fill: xsk::Ring<u64>,
    wgx_rx: xsk::Ring<libc::xdp_desc>,
    wgx_tx: Tx,
    /// Frames on no ring.
    spare: Vec<u64>,
    pub zerocopy: bool,
    wan_ifindex: u32,
}

fn fill_from(ring: &mut xsk::Ring<u64>, spare: &mut Vec<u64>, max: u32) {
    let n = ring.free(max).min(max).min(spare.len() as u32);
    for i in 0..n {
        ring.put(i, spare.pop().unwrap_or(0));
    }
    if n > 0 {
        ring.submit(n);
    }
}

impl Worker {
    /// Creates the sockets. `wan_ifindex`/`wgx_ifindex`: the devices.
    /// Zero-copy is tried first and copy mode taken when the driver
    /// refuses it.
    pub fn new(wan_ifindex: u32, queue: u32, wgx_ifindex: u32) -> std::io::Result<Self> {
        let umem = xsk::Umem::new(FRAMES, FRAME_SIZE)?;
        let wan = xsk::socket()?;
        xsk::umem_reg(wan.as_raw_fd(), &umem, 0)?;
        xsk::set_sndbuf(wan.as_raw_fd(), SNDBUF)?;
        let (wan_fill, wan_comp) = xsk::umem_rings(wan.as_raw_fd(), RX_RING, RING)?;
        let wan_rx = xsk::rx_ring(wan.as_raw_fd(), RX_RING)?;
        let wan_txr = xsk::tx_ring(wan.as_raw_fd(), RING)?;
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
        let (wgx_fill, wgx_comp) = xsk::umem_rings(wgx.as_raw_fd(), RX_RING, RING)?;
        let wgx_rx = xsk::rx_ring(wgx.as_raw_fd(), RX_RING)?;
        let wgx_txr = xsk::tx_ring(wgx.as_raw_fd(), RING)?;
        // wg0x has one queue unless made with more; its queue 0 serves.
        xsk::bind(wgx.as_raw_fd(), wgx_ifindex, 0, 0, Some(wan.as_raw_fd()))?;
        let (wan_raw, wgx_raw) = (wan.as_raw_fd(), wgx.as_raw_fd());
        let mut w = Self {
            queue,
            cpu: None,
            umem,
            wan,
            wgx,
            wan_fill,
            wan_rx,
            wan_tx: Tx {
                ring: wan_txr,
                comp: wan_comp,
                fd_raw: wan_raw,
                in_flight: 0,
                device_drops: 0,
            },
            wgx_fill,
            wgx_rx,
            wgx_tx: Tx {
                ring: wgx_txr,
                comp: wgx_comp,
                fd_raw: wgx_raw,
                in_flight: 0,
                device_drops: 0,
            },
            spare: (0..FRAMES)
                .rev()
                .map(|i| i as u64 * FRAME_SIZE as u64)
                .collect(),
            zerocopy,
            wan_ifindex,
        };
        fill_from(&mut w.wan_fill, &mut w.spare, RX_RING);
        fill_from(&mut w.wgx_fill, &mut w.spare, RX_RING);
        Ok(w)
    }

    /// The socket to register in `XSKS` for this queue.
    pub fn wan_fd(&self) -> &OwnedFd {
        &self.wan
    }

    /// The socket to register in `XSKS_TX`.
    pub fn wgx_fd(&self) -> &OwnedFd {
        &self.wgx
    }

    fn recycle(&mut self) {
        self.wan_tx.complete(&mut self.spare);
        self.wgx_tx.complete(&mut self.spare);
        // Half of what is spare to each fill ring at most, so neither
        // direction can starve the other.
        let half = (self.spare.len() as u32).div_ceil(2);
        fill_from(&mut self.wan_fill, &mut self.spare, half);
        let rest = self.spare.len() as u32;
        fill_from(&mut self.wgx_fill, &mut self.spare, rest);
    }

    /// The loop; returns when `shared.stop` is set.
    pub fn run(
        mut self,
        shared: Arc<Shared>,
        published: Arc<Published>,
        mut maps: WorkerMaps,
        state: StateMap,
    ) {
        if let Some(cpu) = self.cpu {
            pin_to(cpu);
        }
        let idx = shared.worker_index(self.queue);
        let mut gen = 0u64;
        // The published tables, and the sessions this worker looked up
        // (`tables.sessions`, emptied with every new publication: the
        // daemon publishes after every session removal).
        let mut tables: Tables = (*published.current()).clone();
        let mut confirmed: HashSet<u32> = HashSet::new();
        let mut endpoints: HashMap<u32, Outer> = HashMap::new();
        let mut l2s: HashMap<u32, L2> = HashMap::new();
        let mut idle_since: Option<Instant> = None;
        let mut pfds = [
            libc::pollfd {
                fd: self.wan.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wgx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        while !shared.stop.load(Ordering::Relaxed) {
            if let Some(t) = published.refresh(&mut gen) {
                tables = (*t).clone();
                // Endpoints may have been set by the operator: learn again.
                for peer in l2s.keys() {
                    set_fast_tx(&mut maps, *peer, false);
                }
                l2s.clear();
                endpoints.clear();
            }
            self.recycle();
            let got_rx = self.wan_rx.peek(BATCH);
            let got_tx = self.wgx_rx.peek(BATCH);
            let mut moved = 0;
            if got_rx > 0 || got_tx > 0 {
                let now_ns = ktime_ns();
                if got_rx > 0 {
                    moved += self.receive(
                        got_rx,
                        &shared,
                        idx,
                        &mut tables,
                        &mut maps,
                        &state,
                        now_ns,
                        &mut confirmed,
                        &mut endpoints,
                        &mut l2s,
                    );
                }
                if got_tx > 0 {
                    moved += self.send(
                        got_tx,
                        &shared,
                        idx,
                        &mut tables,
                        &mut maps,
                        &state,
                        now_ns,
                        &l2s,
                    );
                }
            }
            if moved > 0 {
                idle_since = None;
                self.publish_drops(&shared, idx);
                continue;
            }
            // Nothing moved: both rx rings empty, or frames waiting on a
            // device that takes none (down, or its queue stopped; `blocked`).
            let blocked = got_rx > 0 || got_tx > 0;
            // Frames a kick left on a tx ring (the device was busy) go
            // before we sleep: nothing else would send them.
            let mut waiting = false;
            for tx in [&mut self.wan_tx, &mut self.wgx_tx] {
                if tx.ring.free(RING) < RING {
                    tx.kick(&mut self.spare);
                    waiting |= tx.ring.free(RING) < RING;
                }
            }
            self.publish_drops(&shared, idx);
            let now = Instant::now();
            let since = *idle_since.get_or_insert(now);
            if now.duration_since(since) < if blocked { BLOCKED_SPIN } else { SPIN } {
                std::hint::spin_loop();
                continue;
            }
            if blocked {
                // The rx rings hold frames, so poll(2) on them would return
                // at once: sleep 1 ms instead of spinning on a stuck device.
                // SAFETY: no pollfds.
                unsafe { libc::poll(std::ptr::null_mut(), 0, 1) };
            } else {
                // need_wakeup: the kernel wakes us on rx, but not when a
                // busy device frees room for frames still on a tx ring:
                // then look again in 1 ms. Otherwise 100 ms bounds how long
                // a stop request waits.
                let ms = if waiting { 1 } else { 100 };
                // SAFETY: two valid pollfds.
                unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
            }
            shared.stats[idx].polls.fetch_add(1, Ordering::Relaxed);
        }
        for peer in l2s.keys() {
            set_fast_tx(&mut maps, *peer, false);
        }
    }

    /// Frames the devices dropped (EBUSY), into the shared counters.
    fn publish_drops(&mut self, shared: &Shared, idx: usize) {
        let drops = self.wan_tx.device_drops + self.wgx_tx.device_drops;
        if drops > 0 {
            shared.stats[idx]
                .tx_device_drops
                .fetch_add(drops, Ordering::Relaxed);
            self.wan_tx.device_drops = 0;
            self.wgx_tx.device_drops = 0;
        }
    }

    /// Takes up to `got` frames off the WAN rx ring; returns how many (0
    /// when the tunnel device's tx ring has no room).
    #[allow(clippy::too_many_arguments)]
    fn receive(
        &mut self,
        got: u32,
        shared: &Shared,
        idx: usize,
        tables: &mut Tables,
        maps: &mut WorkerMaps,
        state: &StateMap,
        now_ns: u64,
        confirmed: &mut HashSet<u32>,
        endpoints: &mut HashMap<u32, Outer>,
        l2s: &mut HashMap<u32, L2>,
    ) -> u32 {
        // Room on the tx ring; what does not fit stays on the rx ring for
        // the next round (bounded: a device that stopped sending must not
        // hold the worker, which has a stop request to see).
        let mut room = self.wgx_tx.room(got);
        for _ in 0..16 {
            if room >= got {
                break;
            }
            self.wgx_tx.kick(&mut self.spare);
            self.recycle();
            room = self.wgx_tx.room(got);
        }
        let got = got.min(room);
        if got == 0 {
            return 0;
        }
        let w = &shared.stats[idx];
        let mut out = 0u32;
        for i in 0..got {
            let d = *self.wan_rx.get(i);
            let mut seen = Seen::default();
            let mut learnt = None;
            let verdict = match self.umem.frame(d.addr) {
                Some((f, off)) => {
                    let f = &mut f[off..];
                    let len = d.len as usize;
                    // The link-layer header before decryption moves it.
                    let eth: Option<[u8; 14]> = f.get(..14).and_then(|e| e.try_into().ok());
                    let v = match rx::process(f, len, tables, state, now_ns, &mut seen) {
                        // Not cached yet: a session the daemon installed
                        // since; take it from SESSIONS, then try again.
                        rx::Verdict::Drop(Counter::DropUnknownIndex)
                            if learn_rx_session(maps, tables, f, len) =>
                        {
                            rx::process(f, len, tables, state, now_ns, &mut seen)
                        }
                        v => v,
                    };
                    learnt = eth;
                    v
                }
                None => rx::Verdict::Drop(Counter::DropInternal),
            };
            match verdict {
                rx::Verdict::Deliver { start, len } => {
                    self.wgx_tx.ring.put(
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
                rx::Verdict::Keepalive => {
                    w.count(Counter::RxKeepalive);
                    w.rx_packets.fetch_add(1, Ordering::Relaxed);
                    w.rx_bytes.fetch_add(seen.msg_len as u64, Ordering::Relaxed);
                    self.spare.push(d.addr - d.addr % FRAME_SIZE as u64);
                }
                rx::Verdict::Drop(c) => {
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
                    self.roam(maps, shared, idx, peer, &outer);
                    endpoints.insert(peer, outer);
                    // Replies go back the way this came (untagged
                    // Ethernet only; anything else stays on BPF).
                    let l2 = learnt
                        .filter(|e| e[12..14] == [0x08, 0x00] || e[12..14] == [0x86, 0xdd])
                        .map(|e| L2 {
                            dst_mac: e[6..12].try_into().unwrap_or_default(),
                            src_mac: e[0..6].try_into().unwrap_or_default(),
                            v6: outer.v6,
                            local: outer.dst,
                            remote: outer.src,
                            port_be: outer.sport_be,
                        });
                    match l2 {
                        Some(l2) => {
                            l2s.insert(peer, l2);
                            set_fast_tx(maps, peer, true);
                        }
                        None => {
                            l2s.remove(&peer);
                            set_fast_tx(maps, peer, false);
                        }
                    }
                }
            }
            if let Some(index) = seen.confirmed {
                if confirmed.insert(index) {
                    confirm(maps, index);
                }
            }
        }
        self.wan_rx.release(got);
        if out > 0 {
            self.wgx_tx.submit(out);
            self.wgx_tx.kick(&mut self.spare);
        }
        got
    }

    /// Takes up to `got` frames off the tunnel device's rx ring; returns how
    /// many (0 when the WAN tx ring has no room).
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        got: u32,
        shared: &Shared,
        idx: usize,
        tables: &mut Tables,
        maps: &mut WorkerMaps,
        state: &StateMap,
        now_ns: u64,
        l2s: &HashMap<u32, L2>,
    ) -> u32 {
        let mut room = self.wan_tx.room(got);
        for _ in 0..16 {
            if room >= got {
                break;
            }
            self.wan_tx.kick(&mut self.spare);
            self.recycle();
            room = self.wan_tx.room(got);
        }
        let got = got.min(room);
        if got == 0 {
            return 0;
        }
        let w = &shared.stats[idx];
        let mut out = 0u32;
        for i in 0..got {
            let d = *self.wgx_rx.get(i);
            let mut seen = tx::Seen::default();
            let verdict = match self.umem.frame(d.addr) {
                Some((f, off)) => {
                    let len = d.len as usize;
                    let current = |p| maps.current.get(p);
                    let l2 = |p| l2s.get(&p).copied();
                    match tx::process(f, off, len, tables, current, l2, state, now_ns, &mut seen) {
                        tx::Verdict::NeedSession(index) => {
                            if learn_session(maps, tables, index) {
                                let current = |p| maps.current.get(p);
                                tx::process(
                                    f, off, len, tables, current, l2, state, now_ns, &mut seen,
                                )
                            } else {
                                tx::Verdict::Drop(Counter::DropSessionExpired)
                            }
                        }
                        v => v,
                    }
                }
                None => tx::Verdict::Drop(Counter::DropInternal),
            };
            match verdict {
                tx::Verdict::Send { start, len } => {
                    self.wan_tx.ring.put(
                        out,
                        libc::xdp_desc {
                            addr: d.addr - d.addr % FRAME_SIZE as u64 + start as u64,
                            len: len as u32,
                            options: 0,
                        },
                    );
                    out += 1;
                    w.count(Counter::TxSent);
                    w.tx_packets.fetch_add(1, Ordering::Relaxed);
                    w.tx_bytes.fetch_add(seen.msg_len as u64, Ordering::Relaxed);
                    if let Some(p) = seen.peer {
                        shared.peer_tx(p, seen.msg_len as u64, now_ns);
                    }
                    if seen.rekey {
                        if let Some(p) = seen.peer {
                            shared.event(WorkerEvent::RekeyWanted(p));
                        }
                    }
                }
                tx::Verdict::NeedSession(_) => {
                    w.count(Counter::DropSessionExpired);
                    self.spare.push(d.addr - d.addr % FRAME_SIZE as u64);
                }
                tx::Verdict::Drop(c) => {
                    w.count(c);
                    self.spare.push(d.addr - d.addr % FRAME_SIZE as u64);
                }
            }
        }
        self.wgx_rx.release(got);
        if out > 0 {
            self.wan_tx.submit(out);
            self.wan_tx.kick(&mut self.spare);
        }
        got
    }

    /// An authenticated packet from a new address moves the peer's
    /// endpoint there (as `roam` in BPF), and tells the control plane.
    fn roam(&self, maps: &mut WorkerMaps, shared: &Shared, idx: usize, peer_id: u32, o: &Outer) {
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
            shared.stats[idx].count(Counter::EndpointRoamed);
            shared.event(WorkerEvent::Roamed(peer_id));
        }
    }
}

/// `FAST_TX[peer]`: whether `tun_tx` hands the peer's packets to us.
fn set_fast_tx(maps: &mut WorkerMaps, peer: u32, on: bool) {
    if let Ok(mut a) = Array::<_, u32>::try_from(&mut maps.fast_tx) {
        let _ = a.set(peer, u32::from(on), 0);
    }
}

/// Caches session `index` from SESSIONS; false when there is none.
fn learn_session(maps: &WorkerMaps, tables: &mut Tables, index: u32) -> bool {
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

/// As `learn_session`, for the receiver index of the data message in `f`.
fn learn_rx_session(maps: &WorkerMaps, tables: &mut Tables, f: &[u8], len: usize) -> bool {
    let Some((_, payload, plen)) = f.get(..len).and_then(rx::parse_outer) else {
        return false;
    };
    if plen < 8 {
        return false;
    }
    match f.get(payload + 4..payload + 8) {
        Some(r) => learn_session(maps, tables, u32::from_le_bytes([r[0], r[1], r[2], r[3]])),
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
