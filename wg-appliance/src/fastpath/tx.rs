//! One inner packet to send, on the fast path: what `crypt_tx` does in BPF
//! (wg-ebpf/src/crypt.rs), on the frame `tun_tx` handed to the worker:
//! peer (AllowedIPs of the inner destination) → its sending session
//! (`PEER_CURRENT`, mapped) → counter (atomic fetch-add on the shared
//! state) → pad → seal (ring) → outer IPv4/IPv6 + UDP + data header in the
//! frame's headroom, with the addresses learnt from the peer's own packets
//! (see [`L2`]).

use ring::aead::Aad;
use wg_ebpf_common::{
    wire::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP},
    Counter, AEAD_TAG_LEN, MSG_TRANSPORT_DATA, REJECT_AFTER_MESSAGES, REKEY_AFTER_MESSAGES,
    TRANSPORT_HEADER_LEN,
};

use super::{rx::nonce, state::StateMap, tables::Tables};

/// How to reach a peer, learnt from the last authenticated packet it sent
/// (the reply goes back the way it came): MACs swapped, addresses swapped.
/// The worker only takes a peer's packets (`FAST_TX`) once it has this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2 {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub v6: bool,
    /// Our address and the peer's (IPv4 in the first 4 bytes).
    pub local: [u8; 16],
    pub remote: [u8; 16],
    /// The peer's port, network byte order.
    pub port_be: u16,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit `len` bytes at frame offset `start` out of the WAN device.
    Send {
        start: usize,
        len: usize,
    },
    /// The sending session `index` is not cached yet.
    NeedSession(u32),
    Drop(Counter),
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub peer: Option<u32>,
    /// Bytes of the WireGuard message sent.
    pub msg_len: usize,
    /// This packet took the counter REKEY_AFTER_MESSAGES.
    pub rekey: bool,
}

fn csum_add(mut sum: u32, b: &[u8]) -> u32 {
    let mut c = b.chunks_exact(2);
    for w in &mut c {
        sum += u16::from_be_bytes([w[0], w[1]]) as u32;
        // Fold early enough never to overflow.
        if sum > 0xffff_0000 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    if let [last] = c.remainder() {
        sum += (*last as u32) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `f` is the whole UMEM frame; the packet is `f[off..off + len]`: an
/// Ethernet header and the inner IP packet (MSS already clamped by
/// `tun_tx`). `current(peer)` reads `PEER_CURRENT`; `l2(peer)` the learnt
/// addresses.
#[allow(clippy::too_many_arguments)]
pub fn process(
    f: &mut [u8],
    off: usize,
    len: usize,
    t: &Tables,
    current: impl Fn(u32) -> u32,
    l2: impl Fn(u32) -> Option<L2>,
    state: &StateMap,
    now_ns: u64,
    seen: &mut Seen,
) -> Verdict {
    let Some(pkt) = f.get(off..off + len) else {
        return Verdict::Drop(Counter::DropInternal);
    };
    if len < ETH_HLEN + 20 {
        return Verdict::Drop(Counter::DropBadInner);
    }
    let ip = &pkt[ETH_HLEN..];
    let (inner_len, dst) = match ip[0] >> 4 {
        4 => {
            let l = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            let d: [u8; 4] = [ip[16], ip[17], ip[18], ip[19]];
            (l, std::net::IpAddr::from(d))
        }
        6 if ip.len() >= 40 => {
            let l = u16::from_be_bytes([ip[4], ip[5]]) as usize + 40;
            let mut d = [0u8; 16];
            d.copy_from_slice(&ip[24..40]);
            (l, std::net::IpAddr::from(d))
        }
        _ => return Verdict::Drop(Counter::DropBadInner),
    };
    if inner_len > ip.len() || inner_len < 20 {
        return Verdict::Drop(Counter::DropBadInner);
    }
    let Some(&peer) = t.allowed.lookup(dst) else {
        return Verdict::Drop(Counter::DropNoPeer);
    };
    seen.peer = Some(peer);
    let Some(l2) = l2(peer) else {
        return Verdict::Drop(Counter::DropNoRoute);
    };
    let index = current(peer);
    if index == 0 {
        return Verdict::Drop(Counter::DropSessionExpired);
    }
    let Some(s) = t.sessions.get(&index) else {
        return Verdict::NeedSession(index);
    };
    if now_ns.wrapping_sub(s.birth_ns) >= t.reject_after_ns {
        return Verdict::Drop(Counter::DropSessionExpired);
    }
    let Some(st) = state.slot(s.slot, index) else {
        return Verdict::Drop(Counter::DropSessionExpired);
    };

    // Room: the outer headers in front, padding and tag behind.
    let mut padded = inner_len.div_ceil(16) * 16;
    let mtu = t.mtu as usize;
    if padded > mtu && inner_len <= mtu {
        padded = mtu;
    }
    let ip_len = if l2.v6 { 40 } else { 20 };
    let hdr = ETH_HLEN + ip_len + 8 + TRANSPORT_HEADER_LEN;
    let ct = off + ETH_HLEN;
    if ct < hdr || ct + padded + AEAD_TAG_LEN > f.len() {
        return Verdict::Drop(Counter::DropInternal);
    }
    let counter = st.take_send_counter();
    if counter >= REJECT_AFTER_MESSAGES {
        return Verdict::Drop(Counter::DropSessionExpired);
    }
    seen.rekey = counter == REKEY_AFTER_MESSAGES;
    f[ct + inner_len..ct + padded].fill(0);
    let Ok(tag) =
        s.send
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), &mut f[ct..ct + padded])
    else {
        return Verdict::Drop(Counter::DropInternal);
    };
    f[ct + padded..ct + padded + AEAD_TAG_LEN].copy_from_slice(tag.as_ref());

    let start = ct - hdr;
    let udp_len = 8 + TRANSPORT_HEADER_LEN + padded + AEAD_TAG_LEN;
    let h = &mut f[start..ct];
    h[0..6].copy_from_slice(&l2.dst_mac);
    h[6..12].copy_from_slice(&l2.src_mac);
    let l4 = ETH_HLEN + ip_len;
    if l2.v6 {
        h[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        h[14..18].copy_from_slice(&[0x60, 0, 0, 0]);
        h[18..20].copy_from_slice(&(udp_len as u16).to_be_bytes());
        h[20] = IPPROTO_UDP;
        h[21] = 64;
        h[22..38].copy_from_slice(&l2.local);
        h[38..54].copy_from_slice(&l2.remote);
    } else {
        h[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        h[14] = 0x45;
        h[15] = 0;
        h[16..18].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        h[18..22].fill(0);
        h[22] = 64;
        h[23] = IPPROTO_UDP;
        h[24..26].fill(0);
        h[26..30].copy_from_slice(&l2.local[..4]);
        h[30..34].copy_from_slice(&l2.remote[..4]);
        let c = csum_fold(csum_add(0, &h[14..34]));
        h[24..26].copy_from_slice(&c.to_be_bytes());
    }
    h[l4..l4 + 2].copy_from_slice(&t.listen_port.to_be_bytes());
    h[l4 + 2..l4 + 4].copy_from_slice(&u16::from_be(l2.port_be).to_be_bytes());
    h[l4 + 4..l4 + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    h[l4 + 6..l4 + 8].fill(0);
    let wg = l4 + 8;
    h[wg..wg + 4].copy_from_slice(&[MSG_TRANSPORT_DATA, 0, 0, 0]);
    h[wg + 4..wg + 8].copy_from_slice(&s.remote_index.to_le_bytes());
    h[wg + 8..wg + 16].copy_from_slice(&counter.to_le_bytes());
    if l2.v6 {
        // Mandatory over IPv6: pseudo-header, then the whole datagram.
        let mut sum = csum_add(0, &l2.local);
        sum = csum_add(sum, &l2.remote);
        sum = csum_add(sum, &(udp_len as u32).to_be_bytes());
        sum = csum_add(sum, &[0, 0, 0, IPPROTO_UDP]);
        let u = start + l4;
        sum = csum_add(sum, &f[u..u + udp_len]);
        let mut c = csum_fold(sum);
        if c == 0 {
            c = 0xffff;
        }
        f[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
    }
    seen.msg_len = udp_len - 8;
    Verdict::Send {
        start,
        len: hdr + padded + AEAD_TAG_LEN,
    }
}
