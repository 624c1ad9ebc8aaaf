//! Every map of the data path, in one place. Sizes are argued in
//! `wg_ebpf_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{
        lpm_trie::LpmTrie, Array, CpuMap, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf,
        XskMap,
    },
};
use wg_ebpf_common::{
    maps::{
        Ipv4Key, Ipv6Key, Peer, PeerStats, Session, SessionState, TunnelConfig, BPF_F_MMAPABLE,
        EVENTS_BYTES, MAX_ALLOWED_PREFIXES, MAX_CPUS, MAX_PEERS, MAX_SESSIONS, MAX_WAN_PORTS,
    },
    Counter, DatapathConfig,
};

/// BPF_F_NO_PREALLOC: sessions are large; allocate as they are installed.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Listen port (one entry).
#[map]
pub static CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

/// Tunnel-side configuration (one entry).
#[map]
pub static TUNNEL: Array<TunnelConfig> = Array::with_max_entries(1, 0);

/// Per-CPU counters indexed by `Counter`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Receiver index → session (keys, and the slot of its state).
#[map]
pub static SESSIONS: HashMap<u32, Session> =
    HashMap::with_max_entries(MAX_SESSIONS, BPF_F_NO_PREALLOC);

/// Session slot → send counter and replay window, shared with the AF_XDP
/// workers, which map this array (see `SessionState`).
#[map]
pub static SESSION_STATE: Array<SessionState> =
    Array::with_max_entries(MAX_SESSIONS, BPF_F_MMAPABLE);

/// The state of `s`, if its slot is valid and still belongs to `index`.
#[inline(always)]
pub fn state_of(s: &Session, index: u32) -> Option<*mut SessionState> {
    let st = SESSION_STATE.get_ptr_mut(s.slot)?;
    // SAFETY: a live array value; owner_index is written only while the
    // slot is free.
    if s.slot == 0 || unsafe { (*st).owner_index } != index {
        return None;
    }
    Some(st)
}

/// Peer id → endpoint.
#[map]
pub static PEERS: Array<Peer> = Array::with_max_entries(MAX_PEERS, 0);

/// Peer id → local index of the session it sends with (0: none); see
/// `wg_ebpf_common::maps::Peer` on why this is a map of its own. Mapped by
/// the fast path's workers, which read it per packet they send.
#[map]
pub static PEER_CURRENT: Array<u32> = Array::with_max_entries(MAX_PEERS, BPF_F_MMAPABLE);

/// Peer id → nonzero when a fast-path worker can send to the peer (it
/// knows the link-layer and IP addresses towards it, learnt from the
/// peer's own packets). `tun_tx` hands such a peer's packets to the worker
/// when `XSKS_TX` has its socket.
#[map]
pub static FAST_TX: Array<u32> = Array::with_max_entries(MAX_PEERS, 0);

/// `wg0x` queue → the AF_XDP socket of the worker that encrypts (empty: the
/// BPF path's `crypt_tx`).
#[map]
pub static XSKS_TX: XskMap = XskMap::with_max_entries(MAX_CPUS, 0);

/// The session peer `peer_id` sends with (0: none), read once: the control
/// plane may switch it at any time.
#[inline(always)]
pub fn current_index(peer_id: u32) -> u32 {
    match PEER_CURRENT.get_ptr(peer_id) {
        // SAFETY: an aligned u32 inside a live map value.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    }
}

/// Peer id → traffic counters, per CPU.
#[map]
pub static PEER_STATS: PerCpuArray<PeerStats> = PerCpuArray::with_max_entries(MAX_PEERS, 0);

/// Cryptokey routing: prefix → peer id, both directions.
#[map]
pub static ALLOWED_V4: LpmTrie<Ipv4Key, u32> = LpmTrie::with_max_entries(MAX_ALLOWED_PREFIXES, 0);
#[map]
pub static ALLOWED_V6: LpmTrie<Ipv6Key, u32> = LpmTrie::with_max_entries(MAX_ALLOWED_PREFIXES, 0);

/// Steering targets: CPU → `crypt_rx` / `crypt_tx` running there.
#[map]
pub static CPUS_RX: CpuMap = CpuMap::with_max_entries(MAX_CPUS, 0);
#[map]
pub static CPUS_TX: CpuMap = CpuMap::with_max_entries(MAX_CPUS, 0);

/// WAN receive queue → the AF_XDP socket of the fast-path worker serving
/// it (issue #13). An empty slot (no worker, or its daemon gone: the kernel
/// takes a closed socket out) sends the packet to the BPF path.
#[map]
pub static XSKS: XskMap = XskMap::with_max_entries(MAX_CPUS, 0);

/// ifindex → device, for redirects out of WAN interfaces and into `wg0x`.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_WAN_PORTS, 0);

/// Per-CPU round-robin cursor for per-packet steering.
#[map]
pub static RR: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Events to the control plane (no session + staged packet, roaming).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(v) = STATS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *v += 1 };
    }
}

/// Scratch for the IPv6 UDP checksum (one 256-byte chunk per CPU).
#[map]
pub static CSUM_SCRATCH: PerCpuArray<[u8; 256]> = PerCpuArray::with_max_entries(1, 0);

/// ChaCha20-Poly1305 working state, per CPU.
#[map]
pub static AEAD_SCRATCH: PerCpuArray<wg_ebpf_common::aead::AeadScratch> =
    PerCpuArray::with_max_entries(1, 0);

/// When this CPU last reported a missing neighbour (`EVENT_NEIGH_MISSING`).
#[map]
pub static NEIGH_RL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Handshake messages per source address: [window start (ns), count].
/// LRU: a flood from many sources recycles entries instead of failing.
#[map]
pub static HS_LIMIT: LruHashMap<[u8; 16], [u64; 2]> =
    LruHashMap::with_max_entries(wg_ebpf_common::maps::MAX_HS_SOURCES, 0);
