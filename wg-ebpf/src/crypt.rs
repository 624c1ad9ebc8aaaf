//! The CPUMAP programs that do the crypto, on the CPU steering chose.
//!
//! `crypt_rx`: outer headers → session → replay pre-check → open (tag
//! verified before anything changes) → replay update → keepalive? done →
//! inner source ∈ AllowedIPs(peer) → MSS clamp → roam → strip to an
//! Ethernet frame for `wg0` → redirect into `wg0x`.
//!
//! `crypt_tx`: inner packet (or a keepalive request) → peer → session →
//! counter (atomic fetch-add) → pad and seal in place → outer UDP/IP →
//! FIB lookup for MACs and egress → redirect out of the WAN device.

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    helpers::{
        bpf_csum_diff, bpf_fib_lookup as fib_lookup, bpf_ktime_get_ns, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail,
    },
    macros::xdp,
    programs::XdpContext,
};
use wg_ebpf_common::{
    maps::{
        NeighMissing, Peer, PeerStats, Session, ETH_P_WG_CONTROL, EVENT_ENDPOINT_CHANGED,
        EVENT_NEIGH_MISSING, EVENT_REKEY_WANTED, NEIGH_MISSING_INTERVAL_NS, SESSION_CAN_RECV,
        SESSION_CAN_SEND, SESSION_CONFIRM_ON_RX,
    },
    replay,
    wire::{ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, VLAN_HLEN},
    Counter, AEAD_TAG_LEN, MSG_TRANSPORT_DATA, REJECT_AFTER_MESSAGES, REKEY_AFTER_MESSAGES,
    TRANSPORT_HEADER_LEN,
};

use crate::{
    aead_glue::{open, seal},
    count, inner, load,
    maps::{CONFIG, EVENTS, PEERS, PEER_CURRENT, PEER_STATS, SESSIONS, TUNNEL, TX_PORTS},
    read_be16, store,
    tunnel::{reject_after_ns, sendable_index},
    DROP,
};

/// BPF_FIB_LOOKUP_SRC (Linux 6.7): also return the source address to use.
const BPF_FIB_LOOKUP_SRC: u32 = 1 << 4;
/// bpf_fib_lookup: route found, no valid neighbour entry for the next hop.
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

fn verdict(r: Result<(Counter, u32), Counter>) -> u32 {
    match r {
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

#[xdp(map = "cpumap")]
pub fn crypt_rx(ctx: XdpContext) -> u32 {
    verdict(try_crypt_rx(&ctx))
}

#[xdp(map = "cpumap")]
pub fn crypt_tx(ctx: XdpContext) -> u32 {
    verdict(try_crypt_tx(&ctx))
}

/// Where the pieces of a received datagram are.
struct Outer {
    v6: bool,
    /// Source address (IPv4 in the first 4 bytes) and port, as on the wire.
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    /// Offset and length of the UDP payload (the WireGuard message).
    payload: usize,
    payload_len: usize,
}

#[inline(always)]
fn parse_outer(ctx: &XdpContext) -> Result<Outer, ()> {
    let mut proto = read_be16(ctx, 12)?;
    let mut l3 = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = read_be16(ctx, ETH_HLEN + 2)?;
        l3 += VLAN_HLEN;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let (v6, udp) = match proto {
        ETH_P_IP => {
            let h = load::<20>(ctx, l3)?;
            if h[9] != IPPROTO_UDP {
                return Err(());
            }
            src[..4].copy_from_slice(&h[12..16]);
            dst[..4].copy_from_slice(&h[16..20]);
            (false, l3 + ((h[0] & 0x0f) as usize) * 4)
        }
        ETH_P_IPV6 => {
            let h = load::<40>(ctx, l3)?;
            if h[6] != IPPROTO_UDP {
                // Extension headers: valid, but not worth a fast path.
                return Err(());
            }
            src.copy_from_slice(&h[8..24]);
            dst.copy_from_slice(&h[24..40]);
            (true, l3 + 40)
        }
        _ => return Err(()),
    };
    let u = load::<8>(ctx, udp)?;
    let udp_len = u16::from_be_bytes([u[4], u[5]]) as usize;
    if udp_len < 8 {
        return Err(());
    }
    Ok(Outer {
        v6,
        src,
        dst,
        sport: u16::from_be_bytes([u[0], u[1]]),
        payload: udp + 8,
        payload_len: udp_len - 8,
    })
}

#[inline(always)]
fn stats(peer_id: u32) -> Option<&'static mut PeerStats> {
    // SAFETY: per-CPU value, no concurrent writer on this CPU.
    PEER_STATS.get_ptr_mut(peer_id).map(|p| unsafe { &mut *p })
}

/// What `rx_prepare` found, for the open and `rx_finish`.
///
/// Only scalars cross the calls: a map-value pointer written into the
/// caller's frame by a callee comes back as a plain number to the verifier.
struct RxPlan {
    receiver: u32,
    counter: u64,
    /// Offset and length of the ciphertext (tag excluded).
    ct: usize,
    ct_len: usize,
    now: u64,
}

/// The decryption is split so that its deep call chain starts from a small
/// stack frame: the header work before and after it lives in functions of
/// their own (the BPF stack is 512 bytes for the whole chain).
#[inline(always)]
fn try_crypt_rx(ctx: &XdpContext) -> Result<(Counter, u32), Counter> {
    let mut plan = RxPlan {
        receiver: 0,
        counter: 0,
        ct: 0,
        ct_len: 0,
        now: 0,
    };
    unpack(rx_prepare(ctx, &mut plan))?;
    // Looked up again rather than passed along: see `RxPlan`.
    let sp = SESSIONS
        .get_ptr_mut(&plan.receiver)
        .ok_or(Counter::DropUnknownIndex)?;
    // SAFETY: a live map value.
    let key = unsafe { &(*sp).recv_key };
    if !open(ctx, plan.ct, plan.ct_len, key, plan.counter) {
        return Err(Counter::DropAuthFailed);
    }
    unpack(rx_finish(ctx, &plan))
}

/// Non-inlined functions return `(counter << 32) | verdict` in a u64, a
/// drop as verdict `u32::MAX`: bpf-linker describes a returned Rust enum
/// with data in BTF the kernel refuses (a union member at a non-zero
/// offset), and the whole object's BTF with it.
#[inline(always)]
fn pack(r: Result<(Counter, u32), Counter>) -> u64 {
    match r {
        Ok((c, v)) => ((c as u64) << 32) | v as u64,
        Err(c) => ((c as u64) << 32) | u32::MAX as u64,
    }
}

#[inline(always)]
fn unpack(r: u64) -> Result<(Counter, u32), Counter> {
    let c = Counter::from_index((r >> 32) as u32).unwrap_or(Counter::DropInternal);
    let v = r as u32;
    if v == u32::MAX {
        Err(c)
    } else {
        Ok((c, v))
    }
}

/// Fills `plan`; the result is packed (see `pack`), verdict 0 on success.
#[inline(never)]
fn rx_prepare(ctx: &XdpContext, plan: &mut RxPlan) -> u64 {
    pack(rx_prepare_inner(ctx, plan).map(|()| (Counter::RxSteered, 0)))
}

#[inline(always)]
fn rx_prepare_inner(ctx: &XdpContext, plan: &mut RxPlan) -> Result<(), Counter> {
    let cfg = TUNNEL.get(0).ok_or(Counter::DropInternal)?;
    let o = parse_outer(ctx).map_err(|_| Counter::DropInternal)?;
    if o.payload_len < TRANSPORT_HEADER_LEN + AEAD_TAG_LEN {
        return Err(Counter::DropBadDataLength);
    }
    let hdr = load::<16>(ctx, o.payload).map_err(|_| Counter::DropTruncated)?;
    let receiver = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    let counter = u64::from_le_bytes([
        hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
    ]);
    let sp = SESSIONS
        .get_ptr_mut(&receiver)
        .ok_or(Counter::DropUnknownIndex)?;
    // SAFETY: a live map value.
    let s: &Session = unsafe { &*sp };
    if s.flags & SESSION_CAN_RECV == 0 {
        return Err(Counter::DropSessionExpired);
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(s.birth_ns) >= reject_after_ns(cfg) {
        return Err(Counter::DropSessionExpired);
    }
    let st = crate::maps::state_of(s, receiver).ok_or(Counter::DropSessionExpired)?;
    // SAFETY: a live array value; the replay words are read racily, which
    // the pre-check tolerates (the update decides, atomically).
    let st = unsafe { &*st };
    if !replay::precheck(st.replay_next, &st.replay_bitmap, counter) {
        return Err(Counter::DropReplay);
    }
    *plan = RxPlan {
        receiver,
        counter,
        ct: o.payload + TRANSPORT_HEADER_LEN,
        ct_len: o.payload_len - TRANSPORT_HEADER_LEN - AEAD_TAG_LEN,
        now,
    };
    Ok(())
}

#[inline(never)]
fn rx_finish(ctx: &XdpContext, plan: &RxPlan) -> u64 {
    pack(rx_finish_inner(ctx, plan))
}

#[inline(always)]
fn rx_finish_inner(ctx: &XdpContext, plan: &RxPlan) -> Result<(Counter, u32), Counter> {
    let cfg = TUNNEL.get(0).ok_or(Counter::DropInternal)?;
    let sp = SESSIONS
        .get_ptr_mut(&plan.receiver)
        .ok_or(Counter::DropUnknownIndex)?;
    // SAFETY: pointers into the live session; concurrent readers only race
    // on the replay fields, which `replay` handles.
    let s: &mut Session = unsafe { &mut *sp };
    let st = crate::maps::state_of(s, plan.receiver).ok_or(Counter::DropSessionExpired)?;
    // SAFETY: the state's words are only updated atomically by everyone
    // (BPF on any CPU and the AF_XDP workers), which `replay` relies on.
    if !unsafe {
        replay::update(
            &mut (*st).replay_next,
            &mut (*st).replay_bitmap,
            plan.counter,
        )
    } {
        return Err(Counter::DropReplay);
    }
    let (ct, ct_len, now) = (plan.ct, plan.ct_len, plan.now);
    let peer_id = s.peer_id;
    if s.flags & SESSION_CAN_SEND == 0 && s.flags & SESSION_CONFIRM_ON_RX != 0 {
        s.flags |= SESSION_CAN_SEND;
        if let Some(pp) = PEER_CURRENT.get_ptr_mut(peer_id) {
            // SAFETY: a live map value.
            unsafe { core::ptr::write_volatile(pp, plan.receiver) };
        }
    }
    let o = parse_outer(ctx).map_err(|_| Counter::DropInternal)?;
    if let Some(st) = stats(peer_id) {
        st.rx_packets += 1;
        st.rx_bytes += o.payload_len as u64;
        st.last_rx_ns = now;
    }
    roam(ctx, peer_id, &o);
    if ct_len == 0 {
        return Ok((Counter::RxKeepalive, DROP));
    }

    let inner = inner::parse(ctx, ct, ct_len)?;
    if inner::peer_for(ctx, ct, inner, true) != Some(peer_id) {
        return Err(Counter::DropAllowedIps);
    }
    if let Some(st) = stats(peer_id) {
        st.last_rx_data_ns = now;
    }
    let mss = if inner.v6 { cfg.mss_v6 } else { cfg.mss_v4 };
    inner::clamp_mss(ctx, ct, inner, mss);

    // Keep 14 bytes in front of the inner packet for its Ethernet header,
    // and cut padding and tag off the end.
    let strip = (ct - ETH_HLEN) as i32;
    // SAFETY: shrinking the head of a packet we own.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, strip) } != 0 {
        return Err(Counter::DropInternal);
    }
    let now_len = (ctx.data_end() - ctx.data()) as i32;
    let want = (ETH_HLEN + inner.len) as i32;
    // SAFETY: shrinking the tail to the inner packet's own length.
    if want < now_len && unsafe { bpf_xdp_adjust_tail(ctx.ctx, want - now_len) } != 0 {
        return Err(Counter::DropInternal);
    }
    let mut eth = [0u8; ETH_HLEN];
    eth[..6].copy_from_slice(&cfg.wg_mac);
    eth[6..12].copy_from_slice(&cfg.wg_mac);
    let proto = if inner.v6 { ETH_P_IPV6 } else { ETH_P_IP };
    eth[12..14].copy_from_slice(&proto.to_be_bytes());
    store(ctx, 0, &eth).map_err(|_| Counter::DropInternal)?;
    match TX_PORTS.redirect(cfg.wgx_ifindex, 0) {
        Ok(v) => Ok((Counter::RxDelivered, v)),
        Err(_) => Err(Counter::DropInternal),
    }
}

/// Endpoint roaming: an authenticated packet from a new address moves the
/// peer's endpoint there (and remembers which local address and interface
/// it came in on, so replies leave the same way).
#[inline(always)]
fn roam(ctx: &XdpContext, peer_id: u32, o: &Outer) {
    let Some(pp) = PEERS.get_ptr_mut(peer_id) else {
        return;
    };
    // SAFETY: a live map value; a torn endpoint from two CPUs roaming at
    // once is corrected by the next packet.
    let p: &mut Peer = unsafe { &mut *pp };
    let family = if o.v6 { 6 } else { 4 };
    let port = o.sport.to_be();
    let ifindex = ctx.ingress_ifindex() as u32;
    if p.endpoint_family == family
        && p.endpoint_addr == o.src
        && p.endpoint_port == port
        && p.local_addr == o.dst
        && p.ifindex == ifindex
    {
        return;
    }
    let moved = p.endpoint_family != 0 && (p.endpoint_addr != o.src || p.endpoint_port != port);
    p.endpoint_addr = o.src;
    p.endpoint_port = port;
    p.endpoint_family = family;
    p.local_addr = o.dst;
    p.ifindex = ifindex;
    if moved {
        count(Counter::EndpointRoamed);
        let _ = EVENTS.output::<wg_ebpf_common::maps::EventHeader>(
            &wg_ebpf_common::maps::EventHeader {
                kind: EVENT_ENDPOINT_CHANGED,
                peer_id,
                len: 0,
                _pad: 0,
            },
            0,
        );
    }
}

/// What `tx_prepare` decided, for the seal and `tx_finish` (scalars only,
/// see `RxPlan`).
struct TxPlan {
    peer_id: u32,
    /// Local index of the session the counter was reserved in: the seal
    /// and the header must use that same session. Re-reading the peer's
    /// current index (`PEER_CURRENT`) instead raced with a rekey switching it (key of one
    /// session, receiver index of the other: the peer's tag check failed;
    /// or a counter of one session used with the other's key).
    index: u32,
    counter: u64,
    padded: usize,
    hdr_len: usize,
    keepalive: bool,
}

/// Split like `try_crypt_rx`, for the same stack reason.
#[inline(always)]
fn try_crypt_tx(ctx: &XdpContext) -> Result<(Counter, u32), Counter> {
    let mut plan = TxPlan {
        peer_id: 0,
        index: 0,
        counter: 0,
        padded: 0,
        hdr_len: 0,
        keepalive: false,
    };
    unpack(tx_prepare(ctx, &mut plan))?;
    let sp = SESSIONS
        .get_ptr_mut(&plan.index)
        .ok_or(Counter::DropSessionExpired)?;
    // SAFETY: a live map value.
    let key = unsafe { &(*sp).send_key };
    if !seal(ctx, plan.hdr_len, plan.padded, key, plan.counter) {
        return Err(Counter::DropInternal);
    }
    unpack(tx_finish(ctx, &plan))
}

#[inline(never)]
fn tx_prepare(ctx: &XdpContext, plan: &mut TxPlan) -> u64 {
    pack(tx_prepare_inner(ctx, plan).map(|()| (Counter::TxSteered, 0)))
}

#[inline(always)]
fn tx_prepare_inner(ctx: &XdpContext, plan: &mut TxPlan) -> Result<(), Counter> {
    let cfg = TUNNEL.get(0).ok_or(Counter::DropInternal)?;
    let proto = read_be16(ctx, 12).map_err(|_| Counter::DropBadInner)?;
    let frame_len = ctx.data_end() - ctx.data();
    let (peer_id, inner_len, keepalive) = if proto == ETH_P_WG_CONTROL {
        let body = load::<8>(ctx, ETH_HLEN).map_err(|_| Counter::DropBadInner)?;
        (
            u32::from_le_bytes([body[4], body[5], body[6], body[7]]),
            0usize,
            true,
        )
    } else {
        let inner = inner::parse(ctx, ETH_HLEN, frame_len - ETH_HLEN)?;
        let peer = inner::peer_for(ctx, ETH_HLEN, inner, false).ok_or(Counter::DropNoPeer)?;
        (peer, inner.len, false)
    };
    let peer = PEERS.get(peer_id).ok_or(Counter::DropNoPeer)?;
    if peer.endpoint_family == 0 {
        return Err(Counter::DropNoEndpoint);
    }
    let index = crate::maps::current_index(peer_id);
    let sp = sendable_index(cfg, index).ok_or(Counter::DropSessionExpired)?;
    // SAFETY: a live map value.
    let st = crate::maps::state_of(unsafe { &*sp }, index).ok_or(Counter::DropSessionExpired)?;
    // SAFETY: a live array value; the counter is reserved atomically (the
    // AF_XDP workers take from the same word).
    let counter = unsafe { wg_ebpf_common::atomic::fetch_add_u64(&mut (*st).send_counter, 1) };
    if counter >= REJECT_AFTER_MESSAGES {
        return Err(Counter::DropSessionExpired);
    }
    if counter == REKEY_AFTER_MESSAGES {
        // Exactly one packet crosses the soft limit: tell the control plane,
        // which owns rekeying.
        let _ = EVENTS.output::<wg_ebpf_common::maps::EventHeader>(
            &wg_ebpf_common::maps::EventHeader {
                kind: EVENT_REKEY_WANTED,
                peer_id,
                len: 0,
                _pad: 0,
            },
            0,
        );
    }

    // Resize: [eth][inner][pad][tag] → then grow the head for the outer
    // headers: [eth][ip][udp][wg header][inner][pad][tag].
    // Pad to 16, but never past the MTU (as the Linux driver does).
    let mut padded = (inner_len + 15) & !15;
    let mtu = cfg.mtu as usize;
    if padded > mtu && inner_len <= mtu {
        padded = mtu;
    }
    let v6 = peer.endpoint_family == 6;
    let ip_len = if v6 { 40 } else { 20 };
    let hdr_len = ETH_HLEN + ip_len + 8 + TRANSPORT_HEADER_LEN;
    let want = (ETH_HLEN + padded + AEAD_TAG_LEN) as i32;
    let delta = want - frame_len as i32;
    // SAFETY: resizing a packet we own; the helpers check the limits.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        // No tailroom: frames the stack built with plenty of headroom are
        // handed to XDP in place, ending at their own tail. Grow the head
        // instead and move the frame down into it.
        if delta < 0 || shift_down(ctx, delta as u32, frame_len as u32) != 0 {
            return Err(Counter::DropInternal);
        }
    }
    if padded > inner_len {
        let zeros = [0u8; 16];
        // See udp6_csum: keep the 1..=15 bound visible to the verifier.
        let n = core::hint::black_box(padded - inner_len);
        if n >= 1 && n < 16 {
            store(ctx, ETH_HLEN + inner_len, &zeros[..n]).map_err(|_| Counter::DropInternal)?;
        }
    }
    let grow = (hdr_len - ETH_HLEN) as i32;
    // SAFETY: as above.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return Err(Counter::DropInternal);
    }
    *plan = TxPlan {
        peer_id,
        index,
        counter,
        padded,
        hdr_len,
        keepalive,
    };
    Ok(())
}

#[inline(never)]
fn tx_finish(ctx: &XdpContext, plan: &TxPlan) -> u64 {
    pack(tx_finish_inner(ctx, plan))
}

#[inline(always)]
fn tx_finish_inner(ctx: &XdpContext, plan: &TxPlan) -> Result<(Counter, u32), Counter> {
    let listen_port = CONFIG.get(0).map(|c| c.listen_port).unwrap_or(0);
    let cfg = TUNNEL.get(0).ok_or(Counter::DropInternal)?;
    let peer_id = plan.peer_id;
    let pp = PEERS.get(peer_id).ok_or(Counter::DropNoPeer)?;
    // A copy: roaming may rewrite the endpoint meanwhile; a torn read sends
    // one packet to a stale endpoint at worst.
    let peer: Peer = *pp;
    // SAFETY: read-only lookup of a map value.
    let sp = unsafe { SESSIONS.get(&plan.index) }.ok_or(Counter::DropSessionExpired)?;
    let remote_index = sp.remote_index;
    let (padded, hdr_len, counter, keepalive) =
        (plan.padded, plan.hdr_len, plan.counter, plan.keepalive);
    let v6 = peer.endpoint_family == 6;
    let ip_len = if v6 { 40 } else { 20 };

    // FIB: egress device, MACs and (unless a local address is known from the
    // peer's packets) the source address.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = if v6 { AF_INET6 } else { AF_INET };
    fib.l4_protocol = IPPROTO_UDP;
    fib.sport = listen_port.to_be();
    fib.dport = peer.endpoint_port;
    fib.ifindex = cfg.wg_ifindex;
    let total = hdr_len - ETH_HLEN + padded + AEAD_TAG_LEN;
    fib.__bindgen_anon_1.tot_len = total as u16;
    // Writing a union field is safe; only reads need care.
    if v6 {
        fib.__bindgen_anon_4.ipv6_dst = to_words(&peer.endpoint_addr);
    } else {
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([
            peer.endpoint_addr[0],
            peer.endpoint_addr[1],
            peer.endpoint_addr[2],
            peer.endpoint_addr[3],
        ]);
    }
    // SAFETY: fib is a valid bpf_fib_lookup on the stack.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            // An input lookup from wg0 (see TunnelConfig::wg_ifindex): an
            // output lookup would pin the egress to the ifindex given.
            BPF_FIB_LOOKUP_SRC,
        )
    };
    if rc != 0 {
        if rc == BPF_FIB_LKUP_RET_NO_NEIGH {
            // The FIB filled in the egress device and the next hop.
            // SAFETY: plain unions of plain data.
            let hop = unsafe {
                if v6 {
                    from_words(&fib.__bindgen_anon_4.ipv6_dst)
                } else {
                    let mut a = [0u8; 16];
                    a[..4].copy_from_slice(&fib.__bindgen_anon_4.ipv4_dst.to_ne_bytes());
                    a
                }
            };
            neigh_missing(peer_id, fib.ifindex, v6, &hop);
        }
        return Err(Counter::DropNoRoute);
    }
    let mut src = [0u8; 16];
    // SAFETY: plain unions of plain data.
    unsafe {
        if v6 {
            src = from_words(&fib.__bindgen_anon_3.ipv6_src);
        } else {
            src[..4].copy_from_slice(&fib.__bindgen_anon_3.ipv4_src.to_ne_bytes());
        }
    }
    if peer.local_addr != [0u8; 16] {
        src = peer.local_addr;
    }

    let udp_len = 8 + TRANSPORT_HEADER_LEN + padded + AEAD_TAG_LEN;
    let mut h = [0u8; 78];
    h[0..6].copy_from_slice(&fib.dmac);
    h[6..12].copy_from_slice(&fib.smac);
    let l4 = ETH_HLEN + ip_len;
    if v6 {
        h[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        h[14] = 0x60;
        h[18..20].copy_from_slice(&(udp_len as u16).to_be_bytes());
        h[20] = IPPROTO_UDP;
        h[21] = 64;
        h[22..38].copy_from_slice(&src);
        h[38..54].copy_from_slice(&peer.endpoint_addr);
    } else {
        h[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        h[14] = 0x45;
        h[16..18].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        h[22] = 64;
        h[23] = IPPROTO_UDP;
        h[26..30].copy_from_slice(&src[..4]);
        h[30..34].copy_from_slice(&peer.endpoint_addr[..4]);
        let c = ipv4_csum(&h[14..34]);
        h[24..26].copy_from_slice(&c.to_be_bytes());
    }
    h[l4..l4 + 2].copy_from_slice(&listen_port.to_be_bytes());
    h[l4 + 2..l4 + 4].copy_from_slice(&u16::from_be(peer.endpoint_port).to_be_bytes());
    h[l4 + 4..l4 + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let wg = l4 + 8;
    h[wg] = MSG_TRANSPORT_DATA;
    h[wg + 4..wg + 8].copy_from_slice(&remote_index.to_le_bytes());
    h[wg + 8..wg + 16].copy_from_slice(&counter.to_le_bytes());
    let res = if v6 {
        store(ctx, 0, &h[..78])
    } else {
        store(ctx, 0, &h[..58])
    };
    res.map_err(|_| Counter::DropInternal)?;
    if v6 {
        let c = udp6_csum(ctx, ETH_HLEN, udp_len);
        if c > 0xffff {
            return Err(Counter::DropInternal);
        }
        // bpf_csum_diff sums the bytes as they lie in memory, in host-order
        // 16-bit words (csum_partial): the result's host-order bytes are the
        // checksum as it goes on the wire. Storing it big-endian swapped it
        // on little-endian hosts and receivers dropped every datagram
        // (Udp6InCsumErrors; found by tests/tests/tunnel_traffic.rs).
        let c = c as u16;
        store(ctx, l4 + 6, &c.to_ne_bytes()).map_err(|_| Counter::DropInternal)?;
    }

    if let Some(st) = stats(peer_id) {
        // SAFETY: helper without preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        st.tx_packets += 1;
        st.tx_bytes += (udp_len - 8) as u64;
        st.last_tx_ns = now;
        if !keepalive {
            st.last_tx_data_ns = now;
        }
    }
    let c = if keepalive {
        Counter::TxKeepalive
    } else {
        Counter::TxSent
    };
    match TX_PORTS.redirect(fib.ifindex, 0) {
        Ok(v) => Ok((c, v)),
        Err(_) => Err(Counter::DropNoRoute),
    }
}

/// Asks the control plane to have the kernel resolve `hop` on `ifindex`
/// (see `EVENT_NEIGH_MISSING`), at most once per CPU per interval.
#[inline(always)]
fn neigh_missing(peer_id: u32, ifindex: u32, v6: bool, hop: &[u8; 16]) {
    let Some(last) = crate::maps::NEIGH_RL.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: helper without preconditions; per-CPU value, no concurrent
    // writer on this CPU.
    unsafe {
        let now = bpf_ktime_get_ns();
        if now.wrapping_sub(*last) < NEIGH_MISSING_INTERVAL_NS && *last != 0 {
            return;
        }
        *last = now;
    }
    let ev = NeighMissing {
        hdr: wg_ebpf_common::maps::EventHeader {
            kind: EVENT_NEIGH_MISSING,
            peer_id,
            len: 0,
            _pad: 0,
        },
        ifindex,
        family: if v6 { 6 } else { 4 },
        addr: *hop,
    };
    let _ = EVENTS.output::<NeighMissing>(&ev, 0);
}

#[inline(always)]
fn to_words(a: &[u8; 16]) -> [u32; 4] {
    let mut w = [0u32; 4];
    for i in 0..4 {
        w[i] = u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
    }
    w
}

#[inline(always)]
fn from_words(w: &[u32; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    for i in 0..4 {
        a[4 * i..4 * i + 4].copy_from_slice(&w[i].to_ne_bytes());
    }
    a
}

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[inline(always)]
fn ipv4_csum(h: &[u8]) -> u16 {
    let mut sum = 0u64;
    let mut i = 0;
    while i + 1 < h.len() && i < 20 {
        sum += u16::from_be_bytes([h[i], h[i + 1]]) as u64;
        i += 2;
    }
    !fold(sum)
}

/// UDP checksum over IPv6 (mandatory there): pseudo-header plus the whole
/// datagram, summed with `bpf_csum_diff` 256 bytes at a time through a
/// per-CPU scratch buffer. Addresses are read back from the IPv6 header at
/// `l3`. Returns the checksum, or a value above 0xffff on failure (a plain
/// integer: see `pack`). Kept small: it runs at the bottom of a deep stack.
#[inline(never)]
fn udp6_csum(ctx: &XdpContext, l3: usize, udp_len: usize) -> u32 {
    let Some(scratch) = crate::maps::CSUM_SCRATCH.get_ptr_mut(0) else {
        return u32::MAX;
    };
    let buf = scratch as *mut u8;
    // Pseudo-header: source and destination straight from the packet, then
    // the upper-layer length and next header (RFC 8200 §8.1).
    // SAFETY: buf holds 256 bytes; the helper checks the packet bounds.
    if unsafe { aya_ebpf::helpers::bpf_xdp_load_bytes(ctx.ctx, (l3 + 8) as u32, buf as *mut _, 32) }
        != 0
    {
        return u32::MAX;
    }
    // SAFETY: bytes 32..40 of the 256-byte scratch.
    unsafe {
        core::ptr::write_unaligned(buf.add(32) as *mut u32, (udp_len as u32).to_be());
        core::ptr::write_unaligned(buf.add(36) as *mut u32, (IPPROTO_UDP as u32).to_be());
    }
    // SAFETY: 40 bytes of scratch, a multiple of 4.
    let mut sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, scratch as *mut u32, 40, 0) };
    if sum < 0 {
        return u32::MAX;
    }
    let udp = l3 + 40;
    // udp_len is at most 1,600 bytes: 7 chunks. A fixed
    // trip count with a guard (no `break`), as in aead_glue.
    let mut i = 0usize;
    while i < 7 {
        let off = i * 256;
        if off < udp_len {
            let rest = udp_len - off;
            let n = core::hint::black_box(if rest > 256 { 256 } else { rest });
            if n == 0 || n > 256 {
                return u32::MAX;
            }
            // SAFETY: scratch holds 256 bytes; n is 1..=256.
            if unsafe {
                aya_ebpf::helpers::bpf_xdp_load_bytes(
                    ctx.ctx,
                    (udp + off) as u32,
                    buf as *mut _,
                    n as u32,
                )
            } != 0
            {
                return u32::MAX;
            }
            // bpf_csum_diff takes whole 32-bit words: an odd tunnel MTU can
            // leave 1..3 bytes over, summed as if zero-padded.
            let n4 = (n + 3) & !3;
            let mut k = n;
            while k < n4 && k < 256 {
                // SAFETY: k < 256, inside the scratch.
                unsafe { *buf.add(k) = 0 };
                k += 1;
            }
            if n4 > 256 {
                return u32::MAX;
            }
            // SAFETY: n4 is a multiple of 4 and at most 256.
            sum = unsafe {
                bpf_csum_diff(
                    core::ptr::null_mut(),
                    0,
                    scratch as *mut u32,
                    n4 as u32,
                    sum as u32,
                )
            };
            if sum < 0 {
                return u32::MAX;
            }
        }
        i += 1;
    }
    let c = !fold(sum as u64);
    (if c == 0 { 0xffff } else { c }) as u32
}

/// Grows the head by `by` bytes and moves the first `len` bytes of the frame
/// down into it, so the frame ends `by` bytes later than it did. Returns 0
/// on success (a plain integer: see `pack`). 256-byte chunks through the
/// per-CPU checksum scratch; moving down, a forward copy never overwrites
/// bytes it has yet to read.
#[inline(never)]
fn shift_down(ctx: &XdpContext, by: u32, len: u32) -> u32 {
    if by == 0 || by > 256 || len > 1600 {
        return 1;
    }
    // SAFETY: growing the head of a packet we own; the helper checks room.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(by as i32)) } != 0 {
        return 1;
    }
    let Some(scratch) = crate::maps::CSUM_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let buf = scratch as *mut aya_ebpf::cty::c_void;
    let mut i = 0u32;
    while i < 7 {
        let off = i * 256;
        if off < len {
            let rest = len - off;
            let n = core::hint::black_box(if rest > 256 { 256 } else { rest });
            if n == 0 || n > 256 {
                return 1;
            }
            // SAFETY: scratch holds 256 bytes; n is 1..=256; the helpers
            // check the packet bounds.
            unsafe {
                if aya_ebpf::helpers::bpf_xdp_load_bytes(ctx.ctx, by + off, buf, n) != 0
                    || aya_ebpf::helpers::bpf_xdp_store_bytes(ctx.ctx, off, buf, n) != 0
                {
                    return 1;
                }
            }
        }
        i += 1;
    }
    0
}
