//! The inner (tunnelled) packet: its family and addresses, the cryptokey
//! routing lookups, and TCP MSS clamping.
//!
//! Offsets are relative to the start of the inner IP header, `l3`, which the
//! callers know (14 after the Ethernet header of a tunnel frame, or past the
//! outer headers of a decrypted packet).

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use wg_ebpf_common::{
    maps::{Ipv4Key, Ipv6Key},
    Counter,
};

use crate::{
    count, load,
    maps::{ALLOWED_V4, ALLOWED_V6},
    store,
};

/// Address family and total length of an inner packet.
#[derive(Clone, Copy)]
pub struct Inner {
    pub v6: bool,
    /// Length from the IP header's own length field (padding excluded).
    pub len: usize,
}

/// Reads the inner IP header at `l3`; `avail` is how many bytes follow it.
#[inline(always)]
pub fn parse(ctx: &XdpContext, l3: usize, avail: usize) -> Result<Inner, Counter> {
    let h = load::<4>(ctx, l3).map_err(|_| Counter::DropBadInner)?;
    match h[0] >> 4 {
        4 => {
            let len = u16::from_be_bytes([h[2], h[3]]) as usize;
            if (h[0] & 0x0f) < 5 || len < 20 || len > avail {
                return Err(Counter::DropBadInner);
            }
            Ok(Inner { v6: false, len })
        }
        6 => {
            let plen = load::<2>(ctx, l3 + 4).map_err(|_| Counter::DropBadInner)?;
            let len = u16::from_be_bytes(plen) as usize + 40;
            if len > avail {
                return Err(Counter::DropBadInner);
            }
            Ok(Inner { v6: true, len })
        }
        _ => Err(Counter::DropBadInner),
    }
}

/// Peer id whose AllowedIPs cover the source (`src == true`) or destination
/// address of the inner packet.
#[inline(always)]
pub fn peer_for(ctx: &XdpContext, l3: usize, inner: Inner, src: bool) -> Option<u32> {
    if inner.v6 {
        let off = if src { 8 } else { 24 };
        let addr: Ipv6Key = load::<16>(ctx, l3 + off).ok()?;
        let key = Key::new(128, addr);
        ALLOWED_V6.get(&key).copied()
    } else {
        let off = if src { 12 } else { 16 };
        let addr: Ipv4Key = load::<4>(ctx, l3 + off).ok()?;
        let key = Key::new(32, addr);
        ALLOWED_V4.get(&key).copied()
    }
}

/// RFC 1624 incremental update of a ones'-complement checksum for one
/// 16-bit word changing from `old` to `new`.
#[inline(always)]
pub fn csum_replace2(csum: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!csum as u32) + (!old as u32 & 0xffff) + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Lowers the MSS option of a TCP SYN (or SYN-ACK) to `mss` when it is
/// larger, fixing the TCP checksum. Packets that are not TCP SYNs, carry
/// IPv4 options in the way of a plain parse, or IPv6 extension headers, are
/// left alone.
#[inline(always)]
pub fn clamp_mss(ctx: &XdpContext, l3: usize, inner: Inner, mss: u16) {
    if mss == 0 {
        return;
    }
    let (proto, tcp) = if inner.v6 {
        match load::<1>(ctx, l3 + 6) {
            Ok(p) => (p[0], l3 + 40),
            Err(()) => return,
        }
    } else {
        let (Ok(v), Ok(p)) = (load::<1>(ctx, l3), load::<1>(ctx, l3 + 9)) else {
            return;
        };
        // Fragments other than the first carry no TCP header.
        match load::<2>(ctx, l3 + 6) {
            Ok(f) if u16::from_be_bytes(f) & 0x1fff == 0 => {}
            _ => return,
        }
        (p[0], l3 + ((v[0] & 0x0f) as usize) * 4)
    };
    if proto != 6 {
        return;
    }
    let Ok(th) = load::<20>(ctx, tcp) else { return };
    // SYN set (with or without ACK).
    if th[13] & 0x02 == 0 {
        return;
    }
    let doff = ((th[12] >> 4) as usize) * 4;
    if doff <= 20 || doff > 60 {
        return;
    }
    let mut i = 20usize;
    // At most 40 option bytes; every iteration advances at least one byte.
    for _ in 0..40 {
        if i >= doff {
            return;
        }
        let Ok(kind) = load::<1>(ctx, tcp + i) else {
            return;
        };
        match kind[0] {
            0 => return,
            1 => i += 1,
            2 => {
                let Ok(opt) = load::<4>(ctx, tcp + i) else {
                    return;
                };
                if opt[1] != 4 {
                    return;
                }
                let old = u16::from_be_bytes([opt[2], opt[3]]);
                if old > mss {
                    let csum = u16::from_be_bytes([th[16], th[17]]);
                    let new_csum = csum_replace2(csum, old, mss);
                    if store(ctx, tcp + i + 2, &mss.to_be_bytes()).is_ok()
                        && store(ctx, tcp + 16, &new_csum.to_be_bytes()).is_ok()
                    {
                        count(Counter::MssClamped);
                    }
                }
                return;
            }
            _ => {
                let Ok(opt) = load::<2>(ctx, tcp + i) else {
                    return;
                };
                if opt[1] < 2 {
                    return;
                }
                i += opt[1] as usize;
            }
        }
    }
}
