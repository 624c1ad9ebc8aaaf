//! Interoperability with an independent implementation: the `boringtun`
//! crate plays the peer, in process. Every scenario ends with real IPv4
//! packets decrypted by the other side (boringtun validates the inner IP
//! header before handing a packet to its tunnel).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use rand_core::OsRng;

use super::*;
use crate::cookie::{Admission, CookieChecker};
use crate::keys::{PresharedKey, PrivateKey};
use crate::session::{inner_packet_len, Session};

const MTU: usize = 1420;

fn our_addr() -> SocketAddr {
    "192.0.2.1:51820".parse().unwrap()
}

/// A minimal, valid IPv4/UDP packet with a correct header checksum.
fn ipv4_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let mut sum: u32 = 0;
    for c in p[..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&1234u16.to_be_bytes());
    p[22..24].copy_from_slice(&5678u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

struct Us {
    id: Identity,
    hs: Handshake,
    checker: CookieChecker,
    now: Duration,
    wall: SystemTime,
    next_index: u32,
}

impl Us {
    fn tick(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.wall += Duration::from_secs(secs);
    }
    fn initiation(&mut self) -> [u8; 148] {
        self.next_index += 1;
        let ts = Tai64N::from_system_time(self.wall);
        self.hs
            .create_initiation(&mut OsRng, ts, self.next_index, self.now)
            .unwrap()
    }
}

fn setup(psk: Option<[u8; 32]>, bt_limiter: Option<u64>) -> (Us, Tunn) {
    let ours = PrivateKey::generate();
    let theirs = boringtun::x25519::StaticSecret::random_from_rng(OsRng);
    let their_pub = boringtun::x25519::PublicKey::from(&theirs);
    let id = Identity::new(&ours);
    let hs = Handshake::new(
        &id,
        PublicKey::from_bytes(their_pub.to_bytes()),
        psk.map(PresharedKey::from_bytes),
    );
    let our_pub = boringtun::x25519::PublicKey::from(*id.public_key().as_bytes());
    let limiter = bt_limiter.map(|l| Arc::new(RateLimiter::new(&their_pub, l)));
    let bt = Tunn::new(theirs, our_pub, psk, None, 7, limiter);
    let checker = CookieChecker::new(id.public_key());
    let us = Us {
        id,
        hs,
        checker,
        now: Duration::from_secs(1000),
        wall: SystemTime::now(),
        next_index: 0,
    };
    (us, bt)
}

fn network(r: TunnResult<'_>) -> Vec<u8> {
    match r {
        TunnResult::WriteToNetwork(b) => b.to_vec(),
        other => panic!("expected a packet for the network, got {other:?}"),
    }
}

/// boringtun decapsulates `msg` and must deliver exactly `expect` (an IPv4
/// packet) to its tunnel.
fn bt_delivers(bt: &mut Tunn, msg: &[u8], expect: &[u8]) {
    let mut buf = vec![0u8; 2048];
    match bt.decapsulate(Some(our_addr().ip()), msg, &mut buf) {
        TunnResult::WriteToTunnelV4(p, src) => {
            assert_eq!(p, expect);
            assert_eq!(src, Ipv4Addr::new(10, 0, 0, 1));
        }
        other => panic!("boringtun did not deliver the packet: {other:?}"),
    }
}

/// Data both ways over an established session.
fn exchange_data(bt: &mut Tunn, session: &mut Session, round: u8) {
    let mut msg = Vec::new();
    let ours = ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], &[round; 100]);
    session.seal(&ours, MTU, &mut msg).unwrap();
    bt_delivers(bt, &msg, &ours);

    let theirs = ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1], &[round ^ 0xff; 333]);
    let mut buf = vec![0u8; 2048];
    let wire = network(bt.encapsulate(&theirs, &mut buf));
    let mut out = Vec::new();
    let opened = session.open(&wire, &mut out).unwrap();
    assert!(!opened.keepalive);
    let n = inner_packet_len(&out).unwrap();
    assert_eq!(&out[..n], &theirs[..]);
}

/// We initiate; boringtun responds; we confirm with data.
fn we_initiate(us: &mut Us, bt: &mut Tunn) -> Session {
    us.tick(1);
    let init = us.initiation();
    let mut buf = vec![0u8; 2048];
    let resp = network(bt.decapsulate(Some(our_addr().ip()), &init, &mut buf));
    assert_eq!(resp.len(), 92);
    let src: SocketAddr = "198.51.100.9:40000".parse().unwrap();
    assert_eq!(
        us.checker.admit(&resp, src, false, us.now, &mut OsRng),
        Admission::Process
    );
    let kp = us.hs.consume_response(&resp).unwrap();
    assert!(kp.is_initiator());
    Session::new(&kp)
}

/// boringtun initiates; we respond; its keepalive confirms our keypair.
fn they_initiate(us: &mut Us, bt: &mut Tunn, under_load: bool) -> Session {
    us.tick(1);
    let src: SocketAddr = "198.51.100.9:40000".parse().unwrap();
    let mut buf = vec![0u8; 2048];
    let mut init = network(bt.format_handshake_initiation(&mut buf, true));
    assert_eq!(init.len(), 148);
    if under_load {
        // First attempt has no mac2: we answer with a cookie.
        assert_eq!(
            us.checker.admit(&init, src, true, us.now, &mut OsRng),
            Admission::SendCookieReply
        );
        let reply = us
            .checker
            .create_reply(&init, src, us.now, &mut OsRng)
            .unwrap();
        let mut buf2 = vec![0u8; 2048];
        assert!(matches!(
            bt.decapsulate(Some(src.ip()), &reply, &mut buf2),
            TunnResult::Done
        ));
        // boringtun retries; now with mac2, which our checker accepts.
        let mut buf3 = vec![0u8; 2048];
        init = network(bt.format_handshake_initiation(&mut buf3, true));
        assert_ne!(&init[132..], &[0u8; 16], "retry carries mac2");
        assert_eq!(
            us.checker.admit(&init, src, true, us.now, &mut OsRng),
            Admission::Process
        );
    } else {
        assert_eq!(
            us.checker.admit(&init, src, false, us.now, &mut OsRng),
            Admission::Process
        );
    }
    let opened = open_initiation(&us.id, &init).unwrap();
    us.hs.consume_initiation(opened, us.now).unwrap();
    us.next_index += 1;
    let (resp, kp) = us
        .hs
        .create_response(&mut OsRng, us.next_index, us.now)
        .unwrap();
    assert!(!kp.is_initiator());
    let mut session = Session::new(&kp);
    let mut buf = vec![0u8; 2048];
    let keepalive = network(bt.decapsulate(Some(src.ip()), &resp, &mut buf));
    let mut out = Vec::new();
    let o = session.open(&keepalive, &mut out).unwrap();
    assert!(
        o.keepalive,
        "boringtun confirms the session with a keepalive"
    );
    session
}

#[test]
fn we_initiate_without_psk() {
    let (mut us, mut bt) = setup(None, None);
    let mut s = we_initiate(&mut us, &mut bt);
    exchange_data(&mut bt, &mut s, 1);
}

#[test]
fn we_initiate_with_psk() {
    let (mut us, mut bt) = setup(Some([0x42; 32]), None);
    let mut s = we_initiate(&mut us, &mut bt);
    exchange_data(&mut bt, &mut s, 2);
}

#[test]
fn they_initiate_without_psk() {
    let (mut us, mut bt) = setup(None, None);
    let mut s = they_initiate(&mut us, &mut bt, false);
    exchange_data(&mut bt, &mut s, 3);
}

#[test]
fn they_initiate_with_psk() {
    let (mut us, mut bt) = setup(Some([0x17; 32]), None);
    let mut s = they_initiate(&mut us, &mut bt, false);
    exchange_data(&mut bt, &mut s, 4);
}

#[test]
fn psk_mismatch_fails_both_ways() {
    let ours = PrivateKey::generate();
    let theirs = boringtun::x25519::StaticSecret::random_from_rng(OsRng);
    let their_pub = boringtun::x25519::PublicKey::from(&theirs);
    let id = Identity::new(&ours);
    let mut hs = Handshake::new(
        &id,
        PublicKey::from_bytes(their_pub.to_bytes()),
        Some(PresharedKey::from_bytes([1; 32])),
    );
    let mut bt = Tunn::new(
        theirs,
        boringtun::x25519::PublicKey::from(*id.public_key().as_bytes()),
        Some([2; 32]),
        None,
        1,
        None,
    );
    let init = hs
        .create_initiation(
            &mut OsRng,
            Tai64N::from_system_time(SystemTime::now()),
            1,
            Duration::ZERO,
        )
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let resp = network(bt.decapsulate(None, &init, &mut buf));
    assert_eq!(
        hs.consume_response(&resp).unwrap_err(),
        NoiseError::DecryptFailed
    );
}

#[test]
fn our_responder_under_load_sends_cookie_and_boringtun_retries_with_mac2() {
    let (mut us, mut bt) = setup(Some([3; 32]), None);
    let mut s = they_initiate(&mut us, &mut bt, true);
    exchange_data(&mut bt, &mut s, 5);
}

#[test]
fn boringtun_under_load_sends_cookie_and_we_retry_with_mac2() {
    // A limit of 0 handshakes per second puts boringtun permanently under load.
    let (mut us, mut bt) = setup(None, Some(0));
    us.tick(1);
    let init = us.initiation();
    assert_eq!(&init[132..], &[0u8; 16]);
    let mut buf = vec![0u8; 2048];
    let reply = network(bt.decapsulate(Some(our_addr().ip()), &init, &mut buf));
    assert_eq!(reply.len(), 64);
    assert_eq!(receiver_index(&reply), Some(us.next_index));
    us.hs.cookie.consume_reply(&reply, us.now).unwrap();
    // Retry (as the retransmit timer would): mac2 present, boringtun answers.
    us.tick(1);
    let init = us.initiation();
    assert_ne!(&init[132..], &[0u8; 16]);
    let mut buf = vec![0u8; 2048];
    let resp = network(bt.decapsulate(Some(our_addr().ip()), &init, &mut buf));
    assert_eq!(resp.len(), 92);
    let kp = us.hs.consume_response(&resp).unwrap();
    let mut s = Session::new(&kp);
    exchange_data(&mut bt, &mut s, 6);
}

#[test]
fn rekey_replaces_the_first_keypair_both_directions() {
    let (mut us, mut bt) = setup(Some([9; 32]), None);
    let mut first = we_initiate(&mut us, &mut bt);
    exchange_data(&mut bt, &mut first, 7);

    // Second handshake, again ours: new indexes and keys, data flows on it.
    let mut second = we_initiate(&mut us, &mut bt);
    assert_ne!(first.local_index(), second.local_index());
    exchange_data(&mut bt, &mut second, 8);
    // boringtun now sends on the new keypair: the old session cannot open it.
    let mut buf = vec![0u8; 2048];
    let p = ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1], b"after rekey");
    let wire = network(bt.encapsulate(&p, &mut buf));
    let mut out = Vec::new();
    assert!(first.open(&wire, &mut out).is_err());
    second.open(&wire, &mut out).unwrap();
    assert_eq!(&out[..inner_packet_len(&out).unwrap()], &p[..]);

    // Third handshake initiated by boringtun replaces ours.
    let mut third = they_initiate(&mut us, &mut bt, false);
    exchange_data(&mut bt, &mut third, 9);
}

#[test]
fn boringtun_rejects_replayed_initiation_and_we_reject_its_replay() {
    let (mut us, mut bt) = setup(None, None);
    us.tick(1);
    let init = us.initiation();
    let mut buf = vec![0u8; 2048];
    network(bt.decapsulate(Some(our_addr().ip()), &init, &mut buf));
    let mut buf = vec![0u8; 2048];
    assert!(matches!(
        bt.decapsulate(Some(our_addr().ip()), &init, &mut buf),
        TunnResult::Err(_)
    ));

    let mut buf = vec![0u8; 2048];
    let theirs = network(bt.format_handshake_initiation(&mut buf, true));
    let o = open_initiation(&us.id, &theirs).unwrap();
    us.hs.consume_initiation(o, us.now).unwrap();
    let o = open_initiation(&us.id, &theirs).unwrap();
    assert_eq!(
        us.hs.consume_initiation(o, us.now + Duration::from_secs(5)),
        Err(NoiseError::ReplayedTimestamp)
    );
    let _ = IpAddr::V4(Ipv4Addr::LOCALHOST);
}
