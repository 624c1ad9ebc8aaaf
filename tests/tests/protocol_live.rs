//! The protocol core against live third-party peers, with no data path:
//! our `noise` and `session` modules over a plain UDP socket in a
//! namespace, wireguard-go / boringtun-cli (configured with `wg`) in
//! another. Both roles: we initiate and ping through the peer; the peer
//! initiates and pings us, and we answer with sealed echo replies.

use std::{
    net::UdpSocket,
    time::{Duration, Instant, SystemTime},
};

use rand_core_06::OsRng;
use wg_appliance::{
    keys::PrivateKey,
    noise::{self, Handshake, Identity, Message, Tai64N},
    session::{inner_packet_len, Session},
};
use wg_appliance_tests::{
    netns_unavailable,
    peers::{Impl, ThirdParty},
    skip, Netns, Veth,
};

const US: [u8; 4] = [10, 99, 0, 1];
const THEM: [u8; 4] = [10, 99, 0, 2];

fn csum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 ICMP echo (type 8 request, 0 reply) with correct checksums.
fn icmp(src: [u8; 4], dst: [u8; 4], ty: u8, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![ty, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

fn recv_until<T>(sock: &UdpSocket, what: &str, mut f: impl FnMut(&[u8]) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 2048];
    loop {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Some(v) = f(&buf[..n]) {
                return v;
            }
        }
    }
}

fn live(which: Impl) {
    let name = format!("protocol_core_live_{which:?}");
    if let Some(why) = netns_unavailable() {
        skip(&name, &why);
        return;
    }
    let me = Netns::new().expect("ns");
    let them = Netns::new().expect("ns");
    let _veth = Veth::new(&me, &["10.98.0.1/24"], &them, &["10.98.0.2/24"]).expect("veth");
    let my_key = PrivateKey::generate();
    let their_key = PrivateKey::generate();
    let tp = ThirdParty::start(which, &them, &their_key, 51821, "10.99.0.2/24").expect("peer");
    tp.add_peer(
        &them,
        &my_key.public_key(),
        Some("10.98.0.1:51820"),
        "10.99.0.1/32",
    )
    .expect("peer config");
    let identity = Identity::new(&my_key);
    let start = Instant::now();

    // 1. We initiate, then ping them through the tunnel.
    me.enter(|| {
        let sock = UdpSocket::bind("10.98.0.1:51820").expect("bind");
        let mut hs = Handshake::new(&identity, their_key.public_key(), None);
        let init = hs
            .create_initiation(
                &mut OsRng,
                Tai64N::from_system_time(SystemTime::now()),
                0x1111,
                start.elapsed(),
            )
            .expect("initiation");
        sock.send_to(&init, "10.98.0.2:51821")
            .expect("send initiation");
        let kp = recv_until(&sock, "the handshake response", |m| {
            match Message::parse(m) {
                Ok(Message::Response(r)) => {
                    Some(hs.consume_response(r).expect("response authenticates"))
                }
                _ => None,
            }
        });
        let mut session = Session::new(&kp);
        let mut out = Vec::new();
        for seq in 1..=3u16 {
            let req = icmp(US, THEM, 8, 0x4242, seq, b"wg-appliance protocol core");
            out.clear();
            session.seal(&req, 1420, &mut out).expect("seal");
            sock.send_to(&out, "10.98.0.2:51821").expect("send data");
            let reply = recv_until(&sock, "an echo reply through the tunnel", |m| {
                if !matches!(Message::parse(m), Ok(Message::Transport(_))) {
                    return None;
                }
                let mut plain = Vec::new();
                let opened = session
                    .open(m, &mut plain)
                    .expect("their transport message opens");
                if opened.keepalive {
                    return None;
                }
                let len = inner_packet_len(&plain).expect("inner IP packet");
                Some(plain[..len].to_vec())
            });
            assert_eq!(&reply[12..16], &THEM, "reply source");
            assert_eq!(reply[20], 0, "ICMP echo reply type");
            assert_eq!(
                u16::from_be_bytes([reply[26], reply[27]]),
                seq,
                "echo sequence"
            );
        }
    })
    .expect("enter");

    // 2. They initiate (a ping from their side); we respond and answer
    //    their echo requests with sealed replies.
    // Forget the session of part 1 on their side, so they must handshake.
    them.exec(
        "wg",
        &[
            "set",
            &tp.ifname,
            "peer",
            &my_key.public_key().to_base64(),
            "remove",
        ],
    )
    .expect("remove peer");
    tp.add_peer(
        &them,
        &my_key.public_key(),
        Some("10.98.0.1:51820"),
        "10.99.0.1/32",
    )
    .expect("peer config");
    let pinger = {
        let ns = them.name().to_owned();
        std::thread::spawn(move || {
            std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    "ping",
                    "-c",
                    "3",
                    "-i",
                    "0.3",
                    "-W",
                    "3",
                    "10.99.0.1",
                ])
                .output()
                .expect("ping")
        })
    };
    me.enter(|| {
        let sock = UdpSocket::bind("10.98.0.1:51820").expect("bind");
        let mut hs = Handshake::new(&identity, their_key.public_key(), None);
        let (mut session, src) =
            recv_until(&sock, "their initiation", |m| match Message::parse(m) {
                Ok(Message::Initiation(i)) => {
                    let opened =
                        noise::open_initiation(&identity, i).expect("initiation authenticates");
                    assert_eq!(opened.peer_public(), &their_key.public_key());
                    hs.consume_initiation(opened, start.elapsed())
                        .expect("consume");
                    let (resp, kp) = hs
                        .create_response(&mut OsRng, 0x2222, start.elapsed())
                        .expect("response");
                    sock.send_to(&resp, "10.98.0.2:51821")
                        .expect("send response");
                    Some((Session::new(&kp), "10.98.0.2:51821"))
                }
                _ => None,
            });
        let mut answered = 0;
        while answered < 3 {
            let req = recv_until(&sock, "their echo request", |m| {
                if !matches!(Message::parse(m), Ok(Message::Transport(_))) {
                    return None;
                }
                let mut plain = Vec::new();
                let opened = session.open(m, &mut plain).expect("opens");
                if opened.keepalive {
                    return None;
                }
                let len = inner_packet_len(&plain).expect("inner");
                Some(plain[..len].to_vec())
            });
            assert_eq!(req[20], 8, "an echo request");
            let (id, seq) = (
                u16::from_be_bytes([req[24], req[25]]),
                u16::from_be_bytes([req[26], req[27]]),
            );
            let reply = icmp(US, THEM, 0, id, seq, &req[28..]);
            let mut out = Vec::new();
            session.seal(&reply, 1420, &mut out).expect("seal");
            sock.send_to(&out, src).expect("send reply");
            answered += 1;
        }
    })
    .expect("enter");
    let out = pinger.join().expect("pinger");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3 received"),
        "{which:?} did not get our sealed echo replies:\n{text}"
    );
    drop(tp);
}

#[test]
fn protocol_core_live_wireguard_go() {
    live(Impl::WireguardGo);
}

#[test]
fn protocol_core_live_boringtun() {
    live(Impl::Boringtun);
}
