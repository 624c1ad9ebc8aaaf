//! Map keys and values of the data path, and the one place their sizes are
//! argued.
//!
//! Layout rules: `#[repr(C)]`, explicit padding, fields ordered large to
//! small so both compilers (host and bpfel) produce the same layout; the
//! tests at the bottom pin the sizes.
//!
//! Sizing:
//! - `MAX_PEERS` = 16,384: the design asks for at least 10,000 peers with
//!   room to grow; peers live in an array indexed by a dense peer id
//!   (`PEERS`, 44 bytes a slot, 704 KiB; `PEER_CURRENT`, the sending
//!   session's index, 4 bytes a slot, 64 KiB; `PEER_STATS`, 64 bytes a slot
//!   per CPU).
//! - `MAX_SESSIONS` = 3 per peer (previous, current, next, as WireGuard keeps
//!   them) = 49,152. A session is about 1.1 KiB (the 8,192-bit replay window
//!   dominates), so the hash map is created without preallocation: memory
//!   follows the sessions actually installed (≈ 11 MiB for 10,000 peers with
//!   one session each) rather than the 54 MiB a preallocated map would pin.
//!   Since the fast path (issue #13) the counters and the replay window live
//!   apart in `SESSION_STATE`, a `BPF_F_MMAPABLE` array (arrays are always
//!   preallocated): 1,048 bytes × 49,152 slots ≈ 51 MiB per device, the
//!   price of one state that BPF and the AF_XDP workers share; the keys stay
//!   in the non-preallocated hash (88 bytes a session).
//! - `MAX_ALLOWED_PREFIXES` = 65,536 per family: several prefixes per peer.
//! - `MAX_CPUS` = 128 steering targets.
//! - `EVENTS`: 1 MiB ring buffer: ≈ 650 staged packets of 1,500 bytes in
//!   flight to the control plane, more than WireGuard's own per-peer staging
//!   queue (128 packets) for a handful of peers handshaking at once.

pub const MAX_PEERS: u32 = 16_384;
pub const SESSIONS_PER_PEER: u32 = 3;
pub const MAX_SESSIONS: u32 = MAX_PEERS * SESSIONS_PER_PEER;
pub const MAX_ALLOWED_PREFIXES: u32 = 65_536;
pub const MAX_CPUS: u32 = 128;
pub const MAX_WAN_PORTS: u32 = 64;
pub const EVENTS_BYTES: u32 = 1 << 20;
/// Sources tracked by the handshake rate limiter (LRU): 64 Ki addresses,
/// 48 bytes each with overhead, ≈ 3 MiB.
pub const MAX_HS_SOURCES: u32 = 65_536;

/// Replay window as in the kernel driver: 8,192 bits of which the newest
/// word is in flux, so 8,192 - 64 counters back are tracked exactly.
pub const REPLAY_BITS_TOTAL: u64 = 8192;
pub const REPLAY_WORDS: usize = (REPLAY_BITS_TOTAL / 64) as usize;
pub const REPLAY_WINDOW: u64 = REPLAY_BITS_TOTAL - 64;

/// Largest inner packet carried in an event to the control plane.
pub const EVENT_PACKET_MAX: usize = 1536;

/// A session's keys. Key: the local receiver index (u32) that the peer puts
/// in the `receiver` field of transport messages to us. Its counters live
/// apart, in [`SessionState`] slot `slot` of the `SESSION_STATE` array, so
/// that userspace can map them (see [`SessionState`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Session {
    pub recv_key: [u8; 32],
    pub send_key: [u8; 32],
    /// `bpf_ktime_get_ns()` when the keys were derived (the control plane
    /// converts from CLOCK_MONOTONIC when installing).
    pub birth_ns: u64,
    /// The peer's index: goes in the `receiver` field of what we send.
    pub remote_index: u32,
    pub peer_id: u32,
    /// `SESSION_*` flags.
    pub flags: u32,
    /// Index of this session's [`SessionState`] in `SESSION_STATE` (never 0:
    /// slot 0 is reserved, so a zeroed session points nowhere usable).
    pub slot: u32,
}

/// The mutable half of a session: the send counter and the replay window.
///
/// One array slot per session in `SESSION_STATE`, a `BPF_F_MMAPABLE` array,
/// so the BPF programs and userspace workers (which map the array) update
/// the very same words with atomic operations: a tunnel can move between
/// the two data paths at any packet without reusing a nonce or accepting a
/// counter twice. The control plane assigns slots when it installs a
/// session and zeroes the slot first; a freed slot is reused only after a
/// grace period (see `Datapath::install_session`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SessionState {
    /// Next send counter; reserved with an atomic fetch-add by whoever
    /// sends (BPF or a worker). The control plane never encrypts with this
    /// session itself (see docs/decisions.md: it injects packets that the
    /// data path encrypts), so a nonce is never used twice.
    pub send_counter: u64,
    /// One more than the greatest counter accepted (0: none yet).
    pub replay_next: u64,
    /// The local receiver index the slot was zeroed for: a reader holding a
    /// slot number it cached checks that the slot still belongs to it.
    pub owner_index: u32,
    pub _pad: u32,
    pub replay_bitmap: [u64; REPLAY_WORDS],
}

impl SessionState {
    /// A fresh slot for the session with local index `owner_index`.
    pub const fn new(owner_index: u32) -> Self {
        Self {
            send_counter: 0,
            replay_next: 0,
            owner_index,
            _pad: 0,
            replay_bitmap: [0; REPLAY_WORDS],
        }
    }
}

/// `BPF_F_MMAPABLE`: the array can be mapped into userspace.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// This side may send with the session (responder: after the first data
/// packet confirmed it; initiator: at once).
pub const SESSION_CAN_SEND: u32 = 1;
/// The session accepts received data.
pub const SESSION_CAN_RECV: u32 = 2;
/// Responder's keypair: the first authenticated packet received on it
/// confirms it, and the data path then makes it the peer's sending session
/// (WireGuard's "next" keypair becoming "current").
pub const SESSION_CONFIRM_ON_RX: u32 = 4;
/// We initiated the handshake of this session (the control plane needs it
/// back after a restart: only the initiator rekeys on time).
pub const SESSION_INITIATOR: u32 = 8;

/// Per-peer state the data path reads and writes. Index: peer id.
///
/// The session a peer sends with is not in here but in its own map
/// (`PEER_CURRENT`, peer id → local receiver index, 0: none): the control
/// plane switches it at every handshake, and as one u32 of its own that
/// write cannot put back an endpoint the data path learnt from a roam in the
/// same instant (a whole-slot read-modify-write could).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// Endpoint address: IPv4 in the first 4 bytes when `endpoint_family` is
    /// 4, IPv6 otherwise. Network byte order.
    pub endpoint_addr: [u8; 16],
    /// Local address traffic to the endpoint leaves from (learnt from
    /// received packets; zero lets the FIB choose).
    pub local_addr: [u8; 16],
    /// Endpoint UDP port, network byte order.
    pub endpoint_port: u16,
    /// 0 (no endpoint), 4 or 6.
    pub endpoint_family: u16,
    /// `PEER_*` flags.
    pub flags: u32,
    /// Interface the endpoint is reached through: the egress hint for the
    /// FIB lookup (set by the control plane from the routing table, then
    /// updated by every authenticated packet received).
    pub ifindex: u32,
}

/// The peer slot is in use.
pub const PEER_ACTIVE: u32 = 1;

/// Per-peer, per-CPU traffic counters. Index: peer id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// `bpf_ktime_get_ns()` of the last authenticated packet received.
    pub last_rx_ns: u64,
    /// `bpf_ktime_get_ns()` of the last packet sent.
    pub last_tx_ns: u64,
    /// Last data (non-keepalive) packet received / sent, for the timers.
    pub last_rx_data_ns: u64,
    pub last_tx_data_ns: u64,
}

/// LPM key data for IPv4 (network order) and IPv6.
pub type Ipv4Key = [u8; 4];
pub type Ipv6Key = [u8; 16];

/// Steering policy: one CPU per peer (order kept) or round robin per packet.
pub const STEER_PER_PEER: u32 = 0;
pub const STEER_PER_PACKET: u32 = 1;

/// Interface-level configuration for the data-path programs (the `CONFIG`
/// array's single entry lives in `crate::DatapathConfig`; this is the
/// tunnel part, in the `TUNNEL` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelConfig {
    /// MAC address of `wg0` (decrypted frames are addressed to it).
    pub wg_mac: [u8; 6],
    /// MSS to clamp TCP SYNs to, per inner family (0: off).
    pub mss_v4: u16,
    pub mss_v6: u16,
    /// MTU of `wg0`: plaintext is padded to 16 but never past it.
    pub mtu: u16,
    /// ifindex of `wg0x`, where decrypted frames are redirected.
    pub wgx_ifindex: u32,
    /// `STEER_*`.
    pub steering: u32,
    /// Number of CPUs in `cpus` (at least 1 when the tunnel is up).
    pub ncpus: u32,
    /// The CPU set steering spreads over.
    pub cpus: [u32; MAX_CPUS as usize],
    /// Test hook: nonzero overrides REJECT_AFTER_TIME (seconds) in BPF.
    pub reject_after_time_secs: u32,
    /// ifindex of `wg0`: the FIB lookup for encrypted packets is made as if
    /// they arrived there.
    pub wg_ifindex: u32,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            wg_mac: [0; 6],
            mss_v4: 0,
            mss_v6: 0,
            mtu: 1420,
            wgx_ifindex: 0,
            steering: STEER_PER_PEER,
            ncpus: 0,
            cpus: [0; MAX_CPUS as usize],
            reject_after_time_secs: 0,
            wg_ifindex: 0,
        }
    }
}

/// Event kinds in the `EVENTS` ring buffer.
pub const EVENT_NO_SESSION: u32 = 1;
pub const EVENT_ENDPOINT_CHANGED: u32 = 2;
pub const EVENT_REKEY_WANTED: u32 = 3;
/// `crypt_tx` found no neighbour entry (ARP/NDP) for the next hop towards a
/// peer's endpoint (`bpf_fib_lookup` says NO_NEIGH): the record is a
/// [`NeighMissing`]. XDP cannot resolve it, and nothing else makes the
/// kernel do so when all traffic to that address is XDP's (a peer that
/// roamed to a new address, for one); the control plane asks the kernel to
/// (RTM_NEWNEIGH with NTF_USE). Packets are dropped (`DropNoRoute`) until
/// the entry is valid. At most one such event per CPU per
/// [`NEIGH_MISSING_INTERVAL_NS`].
pub const EVENT_NEIGH_MISSING: u32 = 4;
pub const NEIGH_MISSING_INTERVAL_NS: u64 = 50_000_000;

/// The record of an [`EVENT_NEIGH_MISSING`] event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighMissing {
    pub hdr: EventHeader,
    /// Interface the next hop is on (the FIB's egress device).
    pub ifindex: u32,
    /// 4 or 6.
    pub family: u32,
    /// The next hop: the endpoint itself, or the gateway towards it. IPv4
    /// in the first 4 bytes. Network byte order.
    pub addr: [u8; 16],
}

impl NeighMissing {
    /// The next hop as an address, if the family is known.
    pub fn next_hop(&self) -> Option<core::net::IpAddr> {
        let a = self.addr;
        match self.family {
            4 => Some(core::net::IpAddr::from([a[0], a[1], a[2], a[3]])),
            6 => Some(core::net::IpAddr::from(a)),
            _ => None,
        }
    }
}

/// Header of every event; `EVENT_NO_SESSION` is followed in the same record
/// by `len` bytes of the inner IP packet that had no session (staged by the
/// control plane and re-injected once the handshake completes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    pub peer_id: u32,
    pub len: u32,
    pub _pad: u32,
}

/// EtherType of control frames the control plane writes into `wg0` for
/// `tun_tx` to act on (IEEE local experimental EtherType 1). Never leaves
/// the host: `tun_tx` consumes every frame of this type.
pub const ETH_P_WG_CONTROL: u16 = 0x88B5;

/// A control frame's body after the Ethernet header: send a keepalive (an
/// empty transport message) to `peer_id` with its current session.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlFrame {
    pub magic: u32,
    pub peer_id: u32,
}

pub const CONTROL_MAGIC_KEEPALIVE: u32 = 0x6b61_6c76; // "kalv"

#[cfg(feature = "user")]
mod user {
    // SAFETY: all plain-old-data, `#[repr(C)]`, explicit padding, every bit
    // pattern valid.
    unsafe impl aya::Pod for super::Session {}
    unsafe impl aya::Pod for super::SessionState {}
    unsafe impl aya::Pod for super::Peer {}
    unsafe impl aya::Pod for super::PeerStats {}
    unsafe impl aya::Pod for super::TunnelConfig {}
    unsafe impl aya::Pod for super::EventHeader {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_pinned() {
        assert_eq!(size_of::<Session>(), 32 + 32 + 8 + 16);
        assert_eq!(size_of::<SessionState>(), 8 + 8 + 8 + REPLAY_WORDS * 8);
        assert_eq!(size_of::<SessionState>() % 8, 0, "mmap stride = size");
        assert_eq!(size_of::<Peer>(), 16 + 16 + 2 + 2 + 4 + 4);
        assert_eq!(core::mem::align_of::<Session>(), 8);
        assert_eq!(size_of::<PeerStats>(), 64);
        assert_eq!(size_of::<EventHeader>(), 16);
        assert_eq!(
            size_of::<TunnelConfig>(),
            6 + 2 + 2 + 2 + 4 + 4 + 4 + 4 * MAX_CPUS as usize + 4 + 4
        );
    }
}
