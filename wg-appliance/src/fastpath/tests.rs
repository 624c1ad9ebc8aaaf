//! The fast path's per-packet steps on crafted frames, and `ring` proven
//! equal to the `chacha20poly1305` crate (which `tests/tests/bpf_aead.rs`
//! proves equal to the BPF implementation).

use std::{net::IpAddr, sync::Arc};

use chacha20poly1305::{aead::AeadInPlace, ChaCha20Poly1305, KeyInit};
use proptest::prelude::*;
use ring::aead::Aad;
use wg_ebpf_common::{
    maps::{Session, SESSION_CAN_RECV, SESSION_CAN_SEND},
    Counter,
};

use super::{
    rx::{self, nonce, Seen, Verdict},
    state::StateMap,
    tables::{Tables, WorkerSession},
};

const RECV_KEY: [u8; 32] = [7; 32];
const INDEX: u32 = 0x1234_5678;
const SLOT: u32 = 5;
const PEER: u32 = 3;

fn crate_seal(key: &[u8; 32], counter: u64, pt: &[u8]) -> Vec<u8> {
    let c = ChaCha20Poly1305::new(key.into());
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    let mut buf = pt.to_vec();
    c.encrypt_in_place(&n.into(), b"", &mut buf).expect("seal");
    buf
}

fn tables() -> Tables {
    let s = Session {
        recv_key: RECV_KEY,
        send_key: [9; 32],
        birth_ns: 0,
        remote_index: 99,
        peer_id: PEER,
        flags: SESSION_CAN_RECV | SESSION_CAN_SEND,
        slot: SLOT,
    };
    let mut t = Tables {
        wg_mac: [2, 0, 0, 0, 0, 1],
        mss_v4: 1380,
        mss_v6: 1360,
        reject_after_ns: u64::MAX,
        ..Default::default()
    };
    t.sessions
        .insert(INDEX, Arc::new(WorkerSession::new(&s).expect("keys")));
    t.allowed.insert("10.9.0.0/24".parse().expect("net"), PEER);
    t
}

/// Ethernet + IPv4 + UDP + WireGuard data message carrying `inner`.
fn datagram(counter: u64, inner: &[u8]) -> Vec<u8> {
    let mut pt = inner.to_vec();
    pt.resize(inner.len().div_ceil(16) * 16, 0);
    let ct = crate_seal(&RECV_KEY, counter, &pt);
    let mut wg = vec![4, 0, 0, 0];
    wg.extend_from_slice(&INDEX.to_le_bytes());
    wg.extend_from_slice(&counter.to_le_bytes());
    wg.extend_from_slice(&ct);
    let udp_len = 8 + wg.len();
    let mut f = vec![0u8; 14];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2,
    ];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&51821u16.to_be_bytes());
    f.extend_from_slice(&51820u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&wg);
    f
}

/// An IPv4 TCP SYN from `src` with MSS option `mss`.
fn syn(src: [u8; 4], mss: u16) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 44, 0, 0, 0x40, 0, 64, 6, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&[10, 9, 1, 1]);
    let mut tcp = vec![0u8; 24];
    tcp[12] = 6 << 4;
    tcp[13] = 0x02;
    tcp[20] = 2;
    tcp[21] = 4;
    tcp[22..24].copy_from_slice(&mss.to_be_bytes());
    p.extend_from_slice(&tcp);
    p
}

fn run(f: &mut Vec<u8>, t: &Tables, st: &StateMap) -> (Verdict, Seen) {
    let mut seen = Seen::default();
    let len = f.len();
    f.resize(len + 64, 0);
    let v = rx::process(f, len, t, st, 1, &mut seen);
    (v, seen)
}

#[test]
fn delivers_clamps_and_refuses_replays_and_foreign_sources() {
    let t = tables();
    let st = StateMap::anonymous(8).expect("map");
    st.reset(SLOT, INDEX);
    let inner = syn([10, 9, 0, 2], 1460);
    let mut f = datagram(0, &inner);
    let (v, seen) = run(&mut f, &t, &st);
    let Verdict::Deliver { start, len } = v else {
        panic!("{v:?}")
    };
    assert_eq!(len, 14 + inner.len());
    assert_eq!(&f[start..start + 6], &t.wg_mac);
    let ip = &f[start + 14..start + len];
    assert_eq!(u16::from_be_bytes([ip[42], ip[43]]), 1380, "MSS clamped");
    assert!(seen.mss_clamped && seen.data);
    assert_eq!(seen.peer.map(|p| p.0), Some(PEER));

    let mut again = datagram(0, &inner);
    assert_eq!(
        run(&mut again, &t, &st).0,
        Verdict::Drop(Counter::DropReplay)
    );

    let mut foreign = datagram(1, &syn([10, 8, 0, 2], 1200));
    assert_eq!(
        run(&mut foreign, &t, &st).0,
        Verdict::Drop(Counter::DropAllowedIps)
    );

    let mut keepalive = datagram(2, &[]);
    assert_eq!(run(&mut keepalive, &t, &st).0, Verdict::Keepalive);

    let mut bad = datagram(3, &inner);
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert_eq!(
        run(&mut bad, &t, &st).0,
        Verdict::Drop(Counter::DropAuthFailed)
    );
    // A failed tag leaves the window alone: the genuine packet still passes.
    let mut good = datagram(3, &inner);
    assert!(matches!(run(&mut good, &t, &st).0, Verdict::Deliver { .. }));

    // The slot given to another session: this one's packets stop.
    st.reset(SLOT, INDEX + 1);
    let mut late = datagram(4, &inner);
    assert_eq!(
        run(&mut late, &t, &st).0,
        Verdict::Drop(Counter::DropSessionExpired)
    );
    assert_eq!(t.allowed.lookup(IpAddr::from([10, 9, 0, 2])), Some(&PEER));
}

proptest! {
    #[test]
    fn ring_equals_the_chacha20poly1305_crate(
        key in any::<[u8; 32]>(),
        counter in any::<u64>(),
        pt in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let expected = crate_seal(&key, counter, &pt);
        let k = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &key).expect("key"),
        );
        let mut buf = pt.clone();
        let tag = k
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), &mut buf)
            .expect("seal");
        buf.extend_from_slice(tag.as_ref());
        prop_assert_eq!(&buf, &expected);
        let opened = k.open_in_place(nonce(counter), Aad::empty(), &mut buf).expect("open");
        prop_assert_eq!(opened, &pt[..]);
    }
}
