//! Types and constants shared by the wg-appliance BPF programs (`wg-ebpf`)
//! and userspace (`wg-appliance`).
//!
//! Everything here is `#![no_std]`, allocation-free and host-testable. Map
//! keys and values are `#[repr(C)]` with explicit padding so both sides agree
//! on the layout byte for byte; `aya::Pod` is implemented only with the
//! `user` feature, which only userspace enables.
#![no_std]
// BPF has atomic fetch-and-op but the target declares no CAS; see `atomic`.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features, incomplete_features))]

pub mod aead;
pub mod atomic;
pub mod maps;
pub mod replay;
pub mod wire;

/// WireGuard message types (the first byte of every message).
pub const MSG_HANDSHAKE_INITIATION: u8 = 1;
pub const MSG_HANDSHAKE_RESPONSE: u8 = 2;
pub const MSG_COOKIE_REPLY: u8 = 3;
pub const MSG_TRANSPORT_DATA: u8 = 4;

/// Exact sizes of the fixed-size messages, in bytes.
pub const HANDSHAKE_INITIATION_LEN: usize = 148;
pub const HANDSHAKE_RESPONSE_LEN: usize = 92;
pub const COOKIE_REPLY_LEN: usize = 64;
/// Transport data: 16-byte header (type, reserved, receiver, counter) and a
/// 16-byte Poly1305 tag around a payload padded to a multiple of 16.
pub const TRANSPORT_HEADER_LEN: usize = 16;
pub const AEAD_TAG_LEN: usize = 16;
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + AEAD_TAG_LEN;
/// Senders pad plaintext to a multiple of this, but never past the MTU.
pub const TRANSPORT_ALIGN: usize = 16;

/// Protocol timing and limits, with the protocol's own names.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
pub const REKEY_AFTER_TIME_SECS: u64 = 120;
pub const REJECT_AFTER_TIME_SECS: u64 = 180;
pub const REKEY_ATTEMPT_TIME_SECS: u64 = 90;
pub const REKEY_TIMEOUT_SECS: u64 = 5;
pub const KEEPALIVE_TIMEOUT_SECS: u64 = 10;

/// The UDP port WireGuard conventionally listens on.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;

/// Index of the single entry of the `CONFIG` array map.
pub const CONFIG_KEY: u32 = 0;

/// Per-interface data-path configuration, written by userspace into the
/// `CONFIG` array (one entry) before the programs are attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// UDP port the appliance listens on, host byte order. 0 means "not
    /// configured": the classifier then passes everything untouched.
    pub listen_port: u16,
    pub _pad: u16,
    /// Handshake messages per second accepted from one source address
    /// (0: [`DEFAULT_HS_RATE`]).
    pub hs_rate: u32,
}

/// Handshake messages per second and source the XDP limiter lets through by
/// default: far above what a well-behaved peer sends (one initiation per
/// REKEY_TIMEOUT), low enough that a flood from one address stays cheap.
pub const DEFAULT_HS_RATE: u32 = 20;

/// What `wan_rx` counts. Every verdict the program returns has a counter here;
/// every drop has a reason. The `STATS` per-CPU array is indexed by this enum.
///
/// Keep the discriminants dense and stable: they are map indexes, and the
/// names (from [`Counter::name`]) are exported as metric label values.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// Any packet seen by `wan_rx`.
    RxPackets = 0,
    /// Not UDP to the listen port (other protocols, other ports, ARP...): passed untouched.
    PassNotWireguard,
    /// Valid handshake initiation, passed to the control plane's socket.
    PassHandshakeInitiation,
    /// Valid handshake response, passed to the control plane's socket.
    PassHandshakeResponse,
    /// Valid cookie reply, passed to the control plane's socket.
    PassCookieReply,
    /// Well-formed transport data message.
    PassTransportData,
    /// First IP fragment of a datagram to the listen port: passed so the kernel
    /// reassembles it and the socket receives it whole (WireGuard itself never
    /// fragments, but a path with a small MTU can).
    PassFragmentFirst,
    /// Non-first IP fragment (no UDP header to classify): passed to the kernel's
    /// reassembly, which either completes a datagram to the socket or drops it.
    PassFragmentOther,
    /// Dropped: headers end before the packet says they do (Ethernet, VLAN, IP, UDP).
    DropTruncated,
    /// Dropped: IPv4 header length below 20 bytes, or UDP length field below 8
    /// or beyond the packet.
    DropBadHeader,
    /// Dropped: UDP payload shorter than the 4-byte WireGuard message header.
    DropTooShort,
    /// Dropped: message type not 1..=4.
    DropBadType,
    /// Dropped: the three reserved bytes after the type are not zero.
    DropBadReserved,
    /// Dropped: a handshake or cookie message with a length other than 148/92/64.
    DropBadHandshakeLength,
    /// Dropped: a transport data message shorter than 32 bytes.
    DropBadDataLength,
    /// Dropped: transport data for a receiver index with no session.
    DropUnknownIndex,
    /// Dropped: handshake message over the per-source rate limit.
    DropHandshakeRateLimited,
    /// Dropped: the counter was seen before or is too old (replay window).
    DropReplay,
    /// Dropped: the Poly1305 tag did not verify.
    DropAuthFailed,
    /// Dropped: the session is past REJECT_AFTER_TIME / REJECT_AFTER_MESSAGES
    /// or not yet usable in this direction.
    DropSessionExpired,
    /// Dropped: decrypted inner packet is not valid IPv4/IPv6.
    DropBadInner,
    /// Dropped: inner source address not in the sending peer's AllowedIPs.
    DropAllowedIps,
    /// Dropped: no peer's AllowedIPs covers the inner destination.
    DropNoPeer,
    /// Dropped: the peer has no endpoint yet.
    DropNoEndpoint,
    /// Dropped: the FIB has no route or no neighbour for the endpoint.
    DropNoRoute,
    /// Dropped: the packet could not be resized or redirected.
    DropInternal,
    /// Dropped: no session, and the ring buffer to the control plane is full.
    DropEventsFull,
    /// Transport data redirected to a CPU for decryption.
    RxSteered,
    /// Authenticated data packet delivered into the tunnel interface.
    RxDelivered,
    /// Authenticated keepalive (empty payload) received.
    RxKeepalive,
    /// Inner packet steered to a CPU for encryption.
    TxSteered,
    /// Encrypted packet sent out of a WAN interface.
    TxSent,
    /// Keepalive sent on the control plane's request.
    TxKeepalive,
    /// Inner packet handed to the control plane to wait for a handshake.
    TxStaged,
    /// TCP MSS option lowered to fit the tunnel.
    MssClamped,
    /// Peer endpoint updated from an authenticated packet (roaming).
    EndpointRoamed,
    /// Transport data redirected to an AF_XDP fast-path worker (`wan_rx`).
    RxFastPath,
    /// Inner packet redirected to an AF_XDP fast-path worker (`tun_tx`).
    TxFastPath,
}

impl Counter {
    /// Number of counters; the size of the `STATS` map.
    pub const COUNT: u32 = Counter::TxFastPath as u32 + 1;

    /// All counters in index order.
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::RxPackets,
        Counter::PassNotWireguard,
        Counter::PassHandshakeInitiation,
        Counter::PassHandshakeResponse,
        Counter::PassCookieReply,
        Counter::PassTransportData,
        Counter::PassFragmentFirst,
        Counter::PassFragmentOther,
        Counter::DropTruncated,
        Counter::DropBadHeader,
        Counter::DropTooShort,
        Counter::DropBadType,
        Counter::DropBadReserved,
        Counter::DropBadHandshakeLength,
        Counter::DropBadDataLength,
        Counter::DropUnknownIndex,
        Counter::DropHandshakeRateLimited,
        Counter::DropReplay,
        Counter::DropAuthFailed,
        Counter::DropSessionExpired,
        Counter::DropBadInner,
        Counter::DropAllowedIps,
        Counter::DropNoPeer,
        Counter::DropNoEndpoint,
        Counter::DropNoRoute,
        Counter::DropInternal,
        Counter::DropEventsFull,
        Counter::RxSteered,
        Counter::RxDelivered,
        Counter::RxKeepalive,
        Counter::TxSteered,
        Counter::TxSent,
        Counter::TxKeepalive,
        Counter::TxStaged,
        Counter::MssClamped,
        Counter::EndpointRoamed,
        Counter::RxFastPath,
        Counter::TxFastPath,
    ];

    /// The counter with map index `i`.
    #[inline(always)]
    pub fn from_index(i: u32) -> Option<Counter> {
        Counter::ALL.get(i as usize).copied()
    }

    /// Stable snake_case name, used in metrics and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::RxPackets => "rx_packets",
            Counter::PassNotWireguard => "pass_not_wireguard",
            Counter::PassHandshakeInitiation => "pass_handshake_initiation",
            Counter::PassHandshakeResponse => "pass_handshake_response",
            Counter::PassCookieReply => "pass_cookie_reply",
            Counter::PassTransportData => "pass_transport_data",
            Counter::PassFragmentFirst => "pass_fragment_first",
            Counter::PassFragmentOther => "pass_fragment_other",
            Counter::DropTruncated => "drop_truncated",
            Counter::DropBadHeader => "drop_bad_header",
            Counter::DropTooShort => "drop_too_short",
            Counter::DropBadType => "drop_bad_type",
            Counter::DropBadReserved => "drop_bad_reserved",
            Counter::DropBadHandshakeLength => "drop_bad_handshake_length",
            Counter::DropBadDataLength => "drop_bad_data_length",
            Counter::DropUnknownIndex => "drop_unknown_index",
            Counter::DropHandshakeRateLimited => "drop_handshake_rate_limited",
            Counter::DropReplay => "drop_replay",
            Counter::DropAuthFailed => "drop_auth_failed",
            Counter::DropSessionExpired => "drop_session_expired",
            Counter::DropBadInner => "drop_bad_inner",
            Counter::DropAllowedIps => "drop_allowed_ips",
            Counter::DropNoPeer => "drop_no_peer",
            Counter::DropNoEndpoint => "drop_no_endpoint",
            Counter::DropNoRoute => "drop_no_route",
            Counter::DropInternal => "drop_internal",
            Counter::DropEventsFull => "drop_events_full",
            Counter::RxSteered => "rx_steered",
            Counter::RxDelivered => "rx_delivered",
            Counter::RxKeepalive => "rx_keepalive",
            Counter::TxSteered => "tx_steered",
            Counter::TxSent => "tx_sent",
            Counter::TxKeepalive => "tx_keepalive",
            Counter::TxStaged => "tx_staged",
            Counter::MssClamped => "mss_clamped",
            Counter::EndpointRoamed => "endpoint_roamed",
            Counter::RxFastPath => "rx_fast_path",
            Counter::TxFastPath => "tx_fast_path",
        }
    }

    /// True for the counters that record a dropped packet.
    pub const fn is_drop(self) -> bool {
        let i = self as u32;
        i >= Counter::DropTruncated as u32 && i <= Counter::DropEventsFull as u32
    }
}

/// Outcome of validating the framing of a UDP payload sent to the listen port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// A well-formed message; the counter that records it.
    Valid(Counter),
    /// Malformed; the drop reason.
    Invalid(Counter),
}

/// Validates WireGuard framing from the first four bytes of a UDP payload and
/// its length. Pure, so the BPF program and the host tests share the rule.
#[inline(always)]
pub fn classify_framing(head: [u8; 4], payload_len: usize) -> Framing {
    if !(MSG_HANDSHAKE_INITIATION..=MSG_TRANSPORT_DATA).contains(&head[0]) {
        return Framing::Invalid(Counter::DropBadType);
    }
    if head[1] != 0 || head[2] != 0 || head[3] != 0 {
        return Framing::Invalid(Counter::DropBadReserved);
    }
    match head[0] {
        MSG_HANDSHAKE_INITIATION if payload_len == HANDSHAKE_INITIATION_LEN => {
            Framing::Valid(Counter::PassHandshakeInitiation)
        }
        MSG_HANDSHAKE_RESPONSE if payload_len == HANDSHAKE_RESPONSE_LEN => {
            Framing::Valid(Counter::PassHandshakeResponse)
        }
        MSG_COOKIE_REPLY if payload_len == COOKIE_REPLY_LEN => {
            Framing::Valid(Counter::PassCookieReply)
        }
        MSG_HANDSHAKE_INITIATION | MSG_HANDSHAKE_RESPONSE | MSG_COOKIE_REPLY => {
            Framing::Invalid(Counter::DropBadHandshakeLength)
        }
        // Not "a multiple of 16": senders pad the plaintext to 16 but never
        // past the tunnel MTU, so a full-MTU packet's message is not aligned
        // (the Linux driver's calculate_skb_padding).
        MSG_TRANSPORT_DATA if payload_len >= TRANSPORT_MIN_LEN => {
            Framing::Valid(Counter::PassTransportData)
        }
        MSG_TRANSPORT_DATA => Framing::Invalid(Counter::DropBadDataLength),
        _ => Framing::Invalid(Counter::DropBadType),
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, explicit padding, every bit
    // pattern valid.
    unsafe impl aya::Pod for super::DatapathConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_table_is_dense_and_in_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?} out of order");
        }
    }

    #[test]
    fn framing_rules() {
        use Framing::*;
        assert_eq!(
            classify_framing([1, 0, 0, 0], 148),
            Valid(Counter::PassHandshakeInitiation)
        );
        assert_eq!(
            classify_framing([1, 0, 0, 0], 147),
            Invalid(Counter::DropBadHandshakeLength)
        );
        assert_eq!(
            classify_framing([2, 0, 0, 0], 92),
            Valid(Counter::PassHandshakeResponse)
        );
        assert_eq!(
            classify_framing([2, 0, 0, 0], 148),
            Invalid(Counter::DropBadHandshakeLength)
        );
        assert_eq!(
            classify_framing([3, 0, 0, 0], 64),
            Valid(Counter::PassCookieReply)
        );
        assert_eq!(
            classify_framing([3, 0, 0, 0], 65),
            Invalid(Counter::DropBadHandshakeLength)
        );
        assert_eq!(
            classify_framing([4, 0, 0, 0], 32),
            Valid(Counter::PassTransportData)
        );
        assert_eq!(
            classify_framing([4, 0, 0, 0], 1440),
            Valid(Counter::PassTransportData)
        );
        assert_eq!(
            classify_framing([4, 0, 0, 0], 16),
            Invalid(Counter::DropBadDataLength)
        );
        assert_eq!(
            classify_framing([4, 0, 0, 0], 31),
            Invalid(Counter::DropBadDataLength)
        );
        // A full-MTU packet: 1420 bytes of plaintext, not padded past the MTU.
        assert_eq!(
            classify_framing([4, 0, 0, 0], 1452),
            Valid(Counter::PassTransportData)
        );
        assert_eq!(
            classify_framing([0, 0, 0, 0], 148),
            Invalid(Counter::DropBadType)
        );
        assert_eq!(
            classify_framing([5, 0, 0, 0], 32),
            Invalid(Counter::DropBadType)
        );
        assert_eq!(
            classify_framing([4, 0, 1, 0], 32),
            Invalid(Counter::DropBadReserved)
        );
        assert_eq!(
            classify_framing([9, 1, 0, 0], 32),
            Invalid(Counter::DropBadType)
        );
    }

    #[test]
    fn every_length_has_exactly_one_outcome() {
        for ty in 0u8..=255 {
            for len in 4..=1500 {
                let v = classify_framing([ty, 0, 0, 0], len);
                let valid =
                    matches!((ty, len), (1, 148) | (2, 92) | (3, 64)) || (ty == 4 && len >= 32);
                assert_eq!(matches!(v, Framing::Valid(_)), valid, "type {ty} len {len}");
            }
        }
    }
}
