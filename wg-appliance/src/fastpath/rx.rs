//! One received WireGuard data message, on the fast path: the same steps
//! and the same drop reasons as `crypt_rx` in BPF (wg-ebpf/src/crypt.rs),
//! on a frame in the UMEM: outer headers → session → replay pre-check →
//! open (ring, SIMD) → replay update → keepalive? → inner source ∈
//! AllowedIPs(peer) → MSS clamp → an Ethernet frame for `wg0`.
//!
//! Pure apart from the shared session state (`state::StateMap`), so the
//! tests drive it with crafted frames.

use std::net::IpAddr;

use ring::aead::{Aad, Nonce};
use wg_ebpf_common::{
    maps::{SESSION_CAN_RECV, SESSION_CAN_SEND, SESSION_CONFIRM_ON_RX},
    wire::{ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, VLAN_HLEN},
    Counter, AEAD_TAG_LEN, MSG_TRANSPORT_DATA, TRANSPORT_HEADER_LEN,
};

use super::state::StateMap;
use super::tables::Tables;

/// Where a datagram came from and to, as the roaming check needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outer {
    pub v6: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network byte order, as `Peer::endpoint_port`.
    pub sport_be: u16,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit `len` bytes at frame offset `start` into `wg0x`.
    Deliver {
        start: usize,
        len: usize,
    },
    /// Authenticated keepalive: nothing to deliver.
    Keepalive,
    Drop(Counter),
}

/// What else the packet told the worker (besides the verdict).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Peer of an authenticated packet, and its outer addresses.
    pub peer: Option<(u32, Outer)>,
    /// Local index of a responder's session this packet confirmed.
    pub confirmed: Option<u32>,
    /// Bytes of the WireGuard message (for the peer's counters).
    pub msg_len: usize,
    pub data: bool,
    pub mss_clamped: bool,
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

/// Parses Ethernet (one VLAN tag at most), IPv4/IPv6 and UDP. Returns the
/// outer addresses and the offset and length of the UDP payload.
pub fn parse_outer(f: &[u8]) -> Option<(Outer, usize, usize)> {
    let mut proto = be16(f, 12)?;
    let mut l3 = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = be16(f, ETH_HLEN + 2)?;
        l3 += VLAN_HLEN;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let (v6, udp) = match proto {
        ETH_P_IP => {
            let h = f.get(l3..l3 + 20)?;
            if h[9] != IPPROTO_UDP || h[0] >> 4 != 4 || (h[0] & 0x0f) < 5 {
                return None;
            }
            src[..4].copy_from_slice(&h[12..16]);
            dst[..4].copy_from_slice(&h[16..20]);
            (false, l3 + ((h[0] & 0x0f) as usize) * 4)
        }
        ETH_P_IPV6 => {
            let h = f.get(l3..l3 + 40)?;
            if h[6] != IPPROTO_UDP {
                return None;
            }
            src.copy_from_slice(&h[8..24]);
            dst.copy_from_slice(&h[24..40]);
            (true, l3 + 40)
        }
        _ => return None,
    };
    let u = f.get(udp..udp + 8)?;
    let udp_len = u16::from_be_bytes([u[4], u[5]]) as usize;
    if udp_len < 8 || udp + udp_len > f.len() {
        return None;
    }
    let outer = Outer {
        v6,
        src,
        dst,
        sport_be: u16::from_be_bytes([u[0], u[1]]).to_be(),
    };
    Some((outer, udp + 8, udp_len - 8))
}

/// WireGuard's nonce: 32 zero bits, then the counter little-endian.
pub fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Processes the frame `f` (the packet is `f[..len]`, starting at the
/// frame's data offset 0 of the slice given). `now_ns`: CLOCK_MONOTONIC.
pub fn process(
    f: &mut [u8],
    len: usize,
    t: &Tables,
    state: &StateMap,
    now_ns: u64,
    seen: &mut Seen,
) -> Verdict {
    match process_inner(f, len, t, state, now_ns, seen) {
        Ok(v) => v,
        Err(c) => Verdict::Drop(c),
    }
}

fn process_inner(
    f: &mut [u8],
    len: usize,
    t: &Tables,
    state: &StateMap,
    now_ns: u64,
    seen: &mut Seen,
) -> Result<Verdict, Counter> {
    let f = f.get_mut(..len).ok_or(Counter::DropTruncated)?;
    let (outer, payload, payload_len) = parse_outer(f).ok_or(Counter::DropBadHeader)?;
    if payload_len < TRANSPORT_HEADER_LEN + AEAD_TAG_LEN {
        return Err(Counter::DropBadDataLength);
    }
    let h = &f[payload..payload + 16];
    if h[0] != MSG_TRANSPORT_DATA {
        return Err(Counter::DropBadType);
    }
    let receiver = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let counter = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    let s = t.sessions.get(&receiver).ok_or(Counter::DropUnknownIndex)?;
    if s.flags & SESSION_CAN_RECV == 0 || now_ns.wrapping_sub(s.birth_ns) >= t.reject_after_ns {
        return Err(Counter::DropSessionExpired);
    }
    let st = state
        .slot(s.slot, receiver)
        .ok_or(Counter::DropSessionExpired)?;
    if !st.replay_precheck(counter) {
        return Err(Counter::DropReplay);
    }
    let ct = payload + TRANSPORT_HEADER_LEN;
    let ct_len = payload_len - TRANSPORT_HEADER_LEN - AEAD_TAG_LEN;
    s.recv
        .open_in_place(
            nonce(counter),
            Aad::empty(),
            &mut f[ct..payload + payload_len],
        )
        .map_err(|_| Counter::DropAuthFailed)?;
    if !st.replay_update(counter) {
        return Err(Counter::DropReplay);
    }
    if s.flags & SESSION_CAN_SEND == 0 && s.flags & SESSION_CONFIRM_ON_RX != 0 {
        seen.confirmed = Some(receiver);
    }
    seen.peer = Some((s.peer_id, outer));
    seen.msg_len = payload_len;
    if ct_len == 0 {
        return Ok(Verdict::Keepalive);
    }

    let inner = &mut f[ct..ct + ct_len];
    let (v6, inner_len, src) = match inner[0] >> 4 {
        4 if ct_len >= 20 => {
            let l = u16::from_be_bytes([inner[2], inner[3]]) as usize;
            if (inner[0] & 0x0f) < 5 || l < 20 || l > ct_len {
                return Err(Counter::DropBadInner);
            }
            let a: [u8; 4] = inner[12..16]
                .try_into()
                .map_err(|_| Counter::DropBadInner)?;
            (false, l, IpAddr::from(a))
        }
        6 if ct_len >= 40 => {
            let l = u16::from_be_bytes([inner[4], inner[5]]) as usize + 40;
            if l > ct_len {
                return Err(Counter::DropBadInner);
            }
            let a: [u8; 16] = inner[8..24].try_into().map_err(|_| Counter::DropBadInner)?;
            (true, l, IpAddr::from(a))
        }
        _ => return Err(Counter::DropBadInner),
    };
    if t.allowed.lookup(src) != Some(&s.peer_id) {
        return Err(Counter::DropAllowedIps);
    }
    seen.data = true;
    let mss = if v6 { t.mss_v6 } else { t.mss_v4 };
    seen.mss_clamped = clamp_mss(&mut inner[..inner_len], v6, mss);

    let start = ct - ETH_HLEN;
    let eth = &mut f[start..ct];
    eth[..6].copy_from_slice(&t.wg_mac);
    eth[6..12].copy_from_slice(&t.wg_mac);
    let proto = if v6 { ETH_P_IPV6 } else { ETH_P_IP };
    eth[12..14].copy_from_slice(&proto.to_be_bytes());
    Ok(Verdict::Deliver {
        start,
        len: ETH_HLEN + inner_len,
    })
}

/// RFC 1624 incremental checksum update for one 16-bit word.
pub fn csum_replace2(csum: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!csum as u32) + (!old as u32 & 0xffff) + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Lowers the MSS option of a TCP SYN to `mss` when larger (as
/// `inner::clamp_mss` in BPF). True when it changed the packet.
pub fn clamp_mss(ip: &mut [u8], v6: bool, mss: u16) -> bool {
    if mss == 0 {
        return false;
    }
    let (proto, tcp) = if v6 {
        match ip.get(6) {
            Some(&p) => (p, 40),
            None => return false,
        }
    } else {
        if ip.len() < 20 || be16(ip, 6).is_none_or(|f| f & 0x1fff != 0) {
            return false;
        }
        (ip[9], ((ip[0] & 0x0f) as usize) * 4)
    };
    if proto != 6 || ip.len() < tcp + 20 || ip[tcp + 13] & 0x02 == 0 {
        return false;
    }
    let doff = ((ip[tcp + 12] >> 4) as usize) * 4;
    if doff <= 20 || ip.len() < tcp + doff {
        return false;
    }
    let mut i = 20;
    while i < doff {
        match ip[tcp + i] {
            0 => return false,
            1 => i += 1,
            2 => {
                if i + 4 > doff || ip[tcp + i + 1] != 4 {
                    return false;
                }
                let old = u16::from_be_bytes([ip[tcp + i + 2], ip[tcp + i + 3]]);
                if old <= mss {
                    return false;
                }
                let csum = u16::from_be_bytes([ip[tcp + 16], ip[tcp + 17]]);
                ip[tcp + i + 2..tcp + i + 4].copy_from_slice(&mss.to_be_bytes());
                let c = csum_replace2(csum, old, mss);
                ip[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
                return true;
            }
            _ => {
                let l = *ip.get(tcp + i + 1).unwrap_or(&0) as usize;
                if l < 2 {
                    return false;
                }
                i += l;
            }
        }
    }
    false
}
