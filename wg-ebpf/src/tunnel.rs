//! The tunnel interface pair: `wg_pass` on `wg0` (an XDP program there is
//! what lets frames redirected into `wg0x` reach the stack), and `tun_tx` on
//! `wg0x`, which takes every packet the kernel routes into `wg0`.
//!
//! `tun_tx`: inner destination → peer (LPM) → MSS clamp → a valid session?
//! then steer to a CPU where `crypt_tx` encrypts; else hand the packet to the
//! control plane (ring buffer) to stage while it handshakes. Control frames
//! from the control plane (keepalive requests) are steered the same way.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_xdp_load_bytes},
    macros::xdp,
    programs::XdpContext,
};
use wg_ebpf_common::{
    maps::{
        ControlFrame, EventHeader, Session, TunnelConfig, CONTROL_MAGIC_KEEPALIVE,
        ETH_P_WG_CONTROL, EVENT_NO_SESSION, EVENT_PACKET_MAX, SESSION_CAN_SEND,
    },
    wire::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
    Counter, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME_SECS,
};

use crate::{
    count, inner, load,
    maps::{CPUS_TX, EVENTS, FAST_TX, PEERS, SESSIONS, TUNNEL, XSKS_TX},
    read_be16, steer_cpu, DROP, PASS,
};

#[xdp]
pub fn wg_pass(_ctx: XdpContext) -> u32 {
    PASS
}

#[xdp]
pub fn tun_tx(ctx: XdpContext) -> u32 {
    match try_tun_tx(&ctx) {
        Ok((c, v)) => {
            count(c);
            v
        }
        Err(c) => {
            count(c);
            DROP
        }
    }
}

/// REJECT_AFTER_TIME in nanoseconds, or the test hook's override.
#[inline(always)]
pub fn reject_after_ns(cfg: &TunnelConfig) -> u64 {
    let secs = if cfg.reject_after_time_secs != 0 {
        cfg.reject_after_time_secs as u64
    } else {
        REJECT_AFTER_TIME_SECS
    };
    secs * 1_000_000_000
}

/// The session peer `peer_id` sends with, if it may send now.
#[inline(always)]
pub fn sendable_session(cfg: &TunnelConfig, peer_id: u32) -> Option<*mut Session> {
    sendable_index(cfg, crate::maps::current_index(peer_id))
}

/// The session with local index `index`, if it may send now.
#[inline(always)]
pub fn sendable_index(cfg: &TunnelConfig, index: u32) -> Option<*mut Session> {
    if index == 0 {
        return None;
    }
    let s = SESSIONS.get_ptr_mut(&index)?;
    // SAFETY: a live map value.
    let sr = unsafe { &*s };
    if sr.flags & SESSION_CAN_SEND == 0 {
        return None;
    }
    let st = crate::maps::state_of(sr, index)?;
    // SAFETY: a live array value; a racy read of the counter is fine here
    // (the fetch-add that reserves one checks the limit again).
    if unsafe { core::ptr::read_volatile(&(*st).send_counter) } >= REJECT_AFTER_MESSAGES {
        return None;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(sr.birth_ns) >= reject_after_ns(cfg) {
        return None;
    }
    Some(s)
}

#[inline(always)]
fn try_tun_tx(ctx: &XdpContext) -> Result<(Counter, u32), Counter> {
    let cfg = TUNNEL.get(0).ok_or(Counter::DropInternal)?;
    let proto = read_be16(ctx, 12).map_err(|_| Counter::DropBadInner)?;
    let avail = ctx.data_end() - ctx.data();
    let peer_id = match proto {
        ETH_P_WG_CONTROL => {
            let body = load::<8>(ctx, ETH_HLEN).map_err(|_| Counter::DropBadInner)?;
            let frame = ControlFrame {
                magic: u32::from_le_bytes([body[0], body[1], body[2], body[3]]),
                peer_id: u32::from_le_bytes([body[4], body[5], body[6], body[7]]),
            };
            if frame.magic != CONTROL_MAGIC_KEEPALIVE {
                return Err(Counter::DropBadInner);
            }
            frame.peer_id
        }
        ETH_P_IP | ETH_P_IPV6 => {
            let inner = inner::parse(ctx, ETH_HLEN, avail - ETH_HLEN)?;
            let peer_id =
                inner::peer_for(ctx, ETH_HLEN, inner, false).ok_or(Counter::DropNoPeer)?;
            let mss = if inner.v6 { cfg.mss_v6 } else { cfg.mss_v4 };
            inner::clamp_mss(ctx, ETH_HLEN, inner, mss);
            peer_id
        }
        // IPv6 neighbour discovery and the like never reach here (wg0 is
        // NOARP, without link-local addresses); anything else is not ours.
        _ => return Err(Counter::DropBadInner),
    };
    let peer = PEERS.get(peer_id).ok_or(Counter::DropNoPeer)?;
    if peer.endpoint_family == 0 {
        return Err(Counter::DropNoEndpoint);
    }
    if sendable_session(cfg, peer_id).is_none() {
        if proto == ETH_P_WG_CONTROL {
            return Err(Counter::DropSessionExpired);
        }
        return stage(ctx, peer_id, avail - ETH_HLEN);
    }
    if proto != ETH_P_WG_CONTROL && FAST_TX.get(peer_id).is_some_and(|v| *v != 0) {
        // The fast path's worker, if one runs on this queue.
        if let Ok(v) = XSKS_TX.redirect(ctx.rx_queue_index(), PASS as u64) {
            return Ok((Counter::TxFastPath, v));
        }
    }
    let cpu = steer_cpu(cfg, peer_id, true);
    match CPUS_TX.redirect(cpu, 0) {
        Ok(v) => Ok((Counter::TxSteered, v)),
        Err(_) => Err(Counter::DropInternal),
    }
}

/// Hands the inner packet to the control plane, which starts a handshake
/// and re-injects the packet once a session exists.
#[inline(always)]
fn stage(ctx: &XdpContext, peer_id: u32, len: usize) -> Result<(Counter, u32), Counter> {
    const REC: usize = core::mem::size_of::<EventHeader>() + EVENT_PACKET_MAX;
    let Some(mut rec) = EVENTS.reserve_bytes(REC, 0) else {
        return Err(Counter::DropEventsFull);
    };
    let len = if len > EVENT_PACKET_MAX {
        EVENT_PACKET_MAX
    } else {
        len
    };
    let hdr = EventHeader {
        kind: EVENT_NO_SESSION,
        peer_id,
        len: len as u32,
        _pad: 0,
    };
    let buf: &mut [u8] = &mut rec;
    let ok = if buf.len() >= REC && len > 0 {
        // SAFETY: the record is REC bytes; the header fits at its start.
        unsafe { core::ptr::write_unaligned(buf.as_mut_ptr() as *mut EventHeader, hdr) };
        // SAFETY: destination has EVENT_PACKET_MAX bytes after the header;
        // len is bounded to 1..=EVENT_PACKET_MAX; the helper checks the packet.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                ctx.ctx,
                ETH_HLEN as u32,
                buf.as_mut_ptr().add(core::mem::size_of::<EventHeader>()) as *mut _,
                len as u32,
            )
        };
        rc == 0
    } else {
        false
    };
    if ok {
        rec.submit(0);
        Ok((Counter::TxStaged, DROP))
    } else {
        rec.discard(0);
        Err(Counter::DropInternal)
    }
}
