//! wg-appliance XDP programs.
//!
//! `wan_rx` runs on every WAN interface. It classifies WireGuard traffic to the
//! configured listen port before anything is authenticated: non-WireGuard
//! traffic passes untouched, malformed WireGuard framing is dropped with a
//! counted reason, well-formed messages pass on (handshakes to the control
//! plane's UDP socket). Every verdict increments exactly one counter besides
//! `RxPackets`, so the counters always add up.
#![no_std]
#![no_main]
// Inline asm for the unaligned 8-byte packet loads and stores of the AEAD
// chunk loop (aead_glue): LLVM has no other way to emit them for BPF.
#![feature(asm_experimental_arch)]

mod aead_test;

use aya_ebpf::{
    bindings::xdp_action,
    cty::c_void,
    helpers::{bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    macros::xdp,
    programs::XdpContext,
};
use wg_ebpf_common::{
    classify_framing,
    maps::{MAX_CPUS, STEER_PER_PACKET},
    wire::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_DSTOPTS,
        IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_UDP, IPV4_MF, IPV4_MIN_HLEN,
        IPV4_OFFSET_MASK, IPV6_FRAG_OFFSET_MASK, IPV6_HLEN, IPV6_MAX_EXT_HEADERS, UDP_HLEN,
        VLAN_HLEN,
    },
    Counter, Framing, CONFIG_KEY,
};

mod aead_glue;
mod crypt;
mod inner;
mod maps;
mod tunnel;

use maps::{count, CONFIG, CPUS_RX, HS_LIMIT, RR, SESSIONS, TUNNEL, XSKS};

/// The one bounds-checked accessor: a pointer to `T` at `off`, or `Err` when
/// the packet ends first.
#[inline(always)]
pub(crate) fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + off) as *const T)
}

#[inline(always)]
pub(crate) fn read_u8(ctx: &XdpContext, off: usize) -> Result<u8, ()> {
    // SAFETY: ptr_at checked the bounds.
    Ok(unsafe { *ptr_at::<u8>(ctx, off)? })
}

#[inline(always)]
pub(crate) fn read_be16(ctx: &XdpContext, off: usize) -> Result<u16, ()> {
    // SAFETY: ptr_at checked the bounds; unaligned read of two bytes.
    let b = unsafe { *ptr_at::<[u8; 2]>(ctx, off)? };
    Ok(u16::from_be_bytes(b))
}

/// Copies `N` bytes at a variable offset with `bpf_xdp_load_bytes`. Used past
/// the variable-length headers (IPv4 options, IPv6 extension chains), where
/// LLVM rewrites direct-access bounds checks into scalar comparisons the
/// verifier cannot follow. The helper checks the bounds itself.
#[inline(always)]
pub(crate) fn load<const N: usize>(ctx: &XdpContext, off: usize) -> Result<[u8; N], ()> {
    // Uninitialised: the helper takes uninitialised memory and fills all N
    // bytes on success. (A zeroed array cost a byte-at-a-time memset call
    // per load, a dozen per packet.)
    let mut buf = core::mem::MaybeUninit::<[u8; N]>::uninit();
    // SAFETY: buf is N writable bytes; the helper fails (non-zero) instead of
    // reading past the packet.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            off as u32,
            buf.as_mut_ptr() as *mut c_void,
            N as u32,
        )
    };
    if rc != 0 {
        return Err(());
    }
    // SAFETY: the helper wrote all N bytes.
    Ok(unsafe { buf.assume_init() })
}

#[inline(always)]
pub(crate) fn load_be16(ctx: &XdpContext, off: usize) -> Result<u16, ()> {
    load::<2>(ctx, off).map(u16::from_be_bytes)
}

/// Where the UDP header starts, or the verdict already reached while walking
/// the IP header.
enum L4 {
    Udp(usize),
    Done(Counter, u32),
}

pub(crate) const PASS: u32 = xdp_action::XDP_PASS;
pub(crate) const DROP: u32 = xdp_action::XDP_DROP;

#[xdp]
pub fn wan_rx(ctx: XdpContext) -> u32 {
    count(Counter::RxPackets);
    let (c, verdict) = match try_wan_rx(&ctx) {
        Ok(v) => v,
        // A datagram to our port whose headers end early.
        Err(()) => (Counter::DropTruncated, DROP),
    };
    count(c);
    verdict
}

#[inline(always)]
fn try_wan_rx(ctx: &XdpContext) -> Result<(Counter, u32), ()> {
    let port = match CONFIG.get(CONFIG_KEY) {
        Some(cfg) if cfg.listen_port != 0 => cfg.listen_port,
        _ => return Ok((Counter::PassNotWireguard, PASS)),
    };

    // Ethernet, with at most one 802.1Q/802.1ad tag.
    let mut proto = match read_be16(ctx, 12) {
        Ok(p) => p,
        Err(()) => return Ok((Counter::PassNotWireguard, PASS)),
    };
    let mut l3 = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = match read_be16(ctx, ETH_HLEN + 2) {
            Ok(p) => p,
            Err(()) => return Ok((Counter::PassNotWireguard, PASS)),
        };
        l3 += VLAN_HLEN;
    }

    // A packet whose IP or UDP header is cut short before we know its port is
    // not known to be ours: the kernel gets it (and drops it).
    let not_ours = L4::Done(Counter::PassNotWireguard, PASS);
    let l4 = match proto {
        ETH_P_IP => ipv4(ctx, l3).unwrap_or(not_ours),
        ETH_P_IPV6 => ipv6(ctx, l3).unwrap_or(not_ours),
        _ => not_ours,
    };
    let udp = match l4 {
        L4::Udp(off) => off,
        L4::Done(c, v) => return Ok((c, v)),
    };

    // The port check must come before any verdict on the UDP header itself:
    // other UDP traffic is none of our business.
    let dport = match load_be16(ctx, udp + 2) {
        Ok(p) => p,
        Err(()) => return Ok((Counter::PassNotWireguard, PASS)),
    };
    if dport != port {
        return Ok((Counter::PassNotWireguard, PASS));
    }
    let udp_len = load_be16(ctx, udp + 4)? as usize;
    let avail = ctx.data_end() - ctx.data();
    if udp_len < UDP_HLEN || udp + udp_len > avail {
        return Ok((Counter::DropBadHeader, DROP));
    }
    let payload = udp + UDP_HLEN;
    let payload_len = udp_len - UDP_HLEN;
    if payload_len < 4 {
        return Ok((Counter::DropTooShort, DROP));
    }
    let head = load::<4>(ctx, payload)?;
    match classify_framing(head, payload_len) {
        Framing::Valid(Counter::PassTransportData) => Ok(steer_rx(ctx, payload)),
        Framing::Valid(c) => {
            if handshake_allowed(ctx, proto == ETH_P_IPV6, l3) {
                Ok((c, PASS))
            } else {
                Ok((Counter::DropHandshakeRateLimited, DROP))
            }
        }
        Framing::Invalid(c) => Ok((c, DROP)),
    }
}

/// Per-source limit on handshake messages (initiations, responses, cookie
/// replies), before any of them costs the control plane a Curve25519
/// operation: at most `hs_rate` per second from one address (default
/// `DEFAULT_HS_RATE`), counted in one-second windows in an LRU map, so a
/// flood from many addresses evicts old entries instead of failing.
#[inline(always)]
fn handshake_allowed(ctx: &XdpContext, v6: bool, l3: usize) -> bool {
    let rate = match CONFIG.get(CONFIG_KEY) {
        Some(c) if c.hs_rate != 0 => c.hs_rate as u64,
        _ => wg_ebpf_common::DEFAULT_HS_RATE as u64,
    };
    let mut key = [0u8; 16];
    if v6 {
        match load::<16>(ctx, l3 + 8) {
            Ok(a) => key = a,
            Err(()) => return false,
        }
    } else {
        match load::<4>(ctx, l3 + 12) {
            Ok(a) => key[..4].copy_from_slice(&a),
            Err(()) => return false,
        }
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    if let Some(w) = HS_LIMIT.get_ptr_mut(&key) {
        // SAFETY: a live map value; racing CPUs can only under-count a
        // little, which a rate limit tolerates.
        let w = unsafe { &mut *w };
        if now.wrapping_sub(w[0]) >= 1_000_000_000 {
            w[0] = now;
            w[1] = 1;
            return true;
        }
        if w[1] >= rate {
            return false;
        }
        w[1] += 1;
        return true;
    }
    let _ = HS_LIMIT.insert(&key, &[now, 1], 0);
    true
}

/// Transport data: a known receiver index goes to a CPU for decryption; an
/// unknown one is dropped here, before it costs anything. Without a tunnel
/// configured (classifier only), data passes to the stack as before.
#[inline(always)]
fn steer_rx(ctx: &XdpContext, payload: usize) -> (Counter, u32) {
    let Some(cfg) = TUNNEL.get(0) else {
        return (Counter::PassTransportData, PASS);
    };
    if cfg.ncpus == 0 {
        return (Counter::PassTransportData, PASS);
    }
    let receiver = match load::<4>(ctx, payload + 4) {
        Ok(r) => u32::from_le_bytes(r),
        Err(()) => return (Counter::DropTruncated, DROP),
    };
    // SAFETY: read-only lookup of a map value.
    let Some(session) = (unsafe { SESSIONS.get(&receiver) }) else {
        return (Counter::DropUnknownIndex, DROP);
    };
    // The fast path's worker for this queue, if one runs (the default
    // action in the flags' low bits, PASS, says "no socket there").
    if let Ok(v) = XSKS.redirect(ctx.rx_queue_index(), PASS as u64) {
        return (Counter::RxFastPath, v);
    }
    let cpu = steer_cpu(cfg, session.peer_id, false);
    match CPUS_RX.redirect(cpu, 0) {
        Ok(v) => (Counter::RxSteered, v),
        Err(_) => (Counter::DropInternal, DROP),
    }
}

/// The CPU a packet of `peer_id` is processed on, per the steering policy.
#[inline(always)]
///
/// Per-peer steering puts a peer's receive direction on the CPU its id
/// hashes to and its send direction on the next one: each direction keeps
/// its order, and a busy tunnel decrypts and encrypts on two CPUs at once.
pub(crate) fn steer_cpu(cfg: &wg_ebpf_common::maps::TunnelConfig, peer_id: u32, tx: bool) -> u32 {
    let n = cfg.ncpus;
    if n == 0 {
        return 0;
    }
    // No `%`: the verifier loses the upper half of a 32-bit modulo and then
    // refuses the result as an index.
    let i: u32 = if cfg.steering == STEER_PER_PACKET {
        match RR.get_ptr_mut(0) {
            Some(p) => {
                // SAFETY: per-CPU value, no concurrent writer on this CPU.
                unsafe {
                    let mut v = (*p).wrapping_add(1);
                    if v >= n {
                        v = 0;
                    }
                    *p = v;
                    v
                }
            }
            None => 0,
        }
    } else {
        // Multiplicative hash of the peer id, scaled into 0..n.
        let h = peer_id.wrapping_mul(0x9E37_79B9) as u64;
        let rx = ((h * n as u64) >> 32) as u32;
        if tx && rx + 1 < n {
            rx + 1
        } else if tx {
            0
        } else {
            rx
        }
    };
    if i >= MAX_CPUS {
        return 0;
    }
    match cfg.cpus.get(i as usize) {
        Some(c) => *c,
        None => 0,
    }
}

/// Writes `buf` into the packet at `off` (helper-checked bounds).
#[inline(always)]
pub(crate) fn store(ctx: &XdpContext, off: usize, buf: &[u8]) -> Result<(), ()> {
    // SAFETY: the helper checks the bounds against the packet.
    let rc = unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            off as u32,
            buf.as_ptr() as *mut c_void,
            buf.len() as u32,
        )
    };
    if rc != 0 {
        return Err(());
    }
    Ok(())
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Result<L4, ()> {
    let vihl = read_u8(ctx, l3)?;
    let ihl = ((vihl & 0x0F) as usize) * 4;
    if vihl >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        return Ok(L4::Done(Counter::DropBadHeader, DROP));
    }
    if read_u8(ctx, l3 + 9)? != IPPROTO_UDP {
        return Ok(L4::Done(Counter::PassNotWireguard, PASS));
    }
    let frag = read_be16(ctx, l3 + 6)?;
    if frag & IPV4_OFFSET_MASK != 0 {
        // No UDP header in this fragment: we cannot tell whose it is.
        return Ok(L4::Done(Counter::PassFragmentOther, PASS));
    }
    let udp = l3 + ihl;
    if frag & IPV4_MF != 0 {
        // First fragment: the UDP header is here but the length field
        // describes the whole datagram. Only ours is counted as ours.
        let port = load_be16(ctx, udp + 2)?;
        return Ok(fragment_first(port));
    }
    Ok(L4::Udp(udp))
}

#[inline(always)]
fn fragment_first(dport: u16) -> L4 {
    match CONFIG.get(CONFIG_KEY) {
        Some(cfg) if cfg.listen_port == dport => L4::Done(Counter::PassFragmentFirst, PASS),
        _ => L4::Done(Counter::PassNotWireguard, PASS),
    }
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Result<L4, ()> {
    if read_u8(ctx, l3)? >> 4 != 6 {
        return Ok(L4::Done(Counter::DropBadHeader, DROP));
    }
    let mut next = read_u8(ctx, l3 + 6)?;
    let mut off = l3 + IPV6_HLEN;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match next {
            IPPROTO_UDP => return Ok(L4::Udp(off)),
            IPPROTO_FRAGMENT => {
                let fh = load::<4>(ctx, off)?;
                if u16::from_be_bytes([fh[2], fh[3]]) & IPV6_FRAG_OFFSET_MASK != 0 {
                    return Ok(L4::Done(Counter::PassFragmentOther, PASS));
                }
                if fh[0] != IPPROTO_UDP {
                    return Ok(L4::Done(Counter::PassNotWireguard, PASS));
                }
                let port = load_be16(ctx, off + 8 + 2)?;
                return Ok(fragment_first(port));
            }
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let eh = load::<2>(ctx, off)?;
                next = eh[0];
                let hdr_len = (eh[1] as usize + 1) * 8;
                off += hdr_len;
            }
            _ => return Ok(L4::Done(Counter::PassNotWireguard, PASS)),
        }
    }
    if next == IPPROTO_UDP {
        return Ok(L4::Udp(off));
    }
    Ok(L4::Done(Counter::PassNotWireguard, PASS))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
