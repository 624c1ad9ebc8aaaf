//! `wan_rx` attached to a veth inside a namespace, fed by real UDP datagrams
//! from a second namespace: the counters the loader reads back, and what
//! the listening socket behind XDP actually receives, must agree with what
//! was sent.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use wg_appliance::datapath::{Datapath, ModePolicy};
use wg_appliance_tests::{netns_unavailable, packet::wg_message, skip, wait_until, Netns, Veth};
use wg_ebpf_common::Counter::{self, *};

const PORT: u16 = 51820;

/// Sends one datagram per payload from inside `ns` to `dst`.
fn send_all(ns: &Netns, bind: &str, dst: SocketAddr, payloads: &[Vec<u8>]) {
    ns.enter(|| {
        let s = UdpSocket::bind(bind).expect("bind sender");
        for p in payloads {
            s.send_to(p, dst).expect("send");
        }
    })
    .expect("enter sender namespace");
}

/// Receives datagrams until none arrives for 300 ms (bounded overall by
/// the number expected plus a margin). Returns their lengths.
fn drain(sock: &UdpSocket, max: usize) -> Vec<usize> {
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    while got.len() < max + 8 {
        match sock.recv(&mut buf) {
            Ok(n) => got.push(n),
            Err(_) => break,
        }
    }
    got
}

#[test]
fn wan_rx_on_veth_counts_real_datagrams() {
    if let Some(why) = netns_unavailable() {
        skip("wan_rx_on_veth_counts_real_datagrams", &why);
        return;
    }
    let gw = Netns::new().expect("gateway namespace");
    let peer = Netns::new().expect("peer namespace");
    let veth = Veth::new(
        &gw,
        &["10.77.0.1/24", "fd77::1/64"],
        &peer,
        &["10.77.0.2/24", "fd77::2/64"],
    )
    .expect("veth pair");

    let mut dp = Datapath::load(PORT).expect("load BPF programs");
    let mode = gw
        .enter(|| dp.attach_wan(&veth.a, ModePolicy::Auto))
        .expect("enter gateway namespace")
        .expect("attach wan_rx");
    println!("wan_rx attached to {} in {mode} mode", veth.a);

    // The control plane's socket behind XDP, dual-stack.
    let sock = gw
        .enter(|| UdpSocket::bind(("::", PORT)).expect("bind listener"))
        .expect("enter gateway namespace");

    let valid = vec![
        wg_message(1, [0; 3], 148),
        wg_message(2, [0; 3], 92),
        wg_message(3, [0; 3], 64),
        wg_message(4, [0; 3], 32),
        wg_message(4, [0; 3], 1424),
    ];
    let invalid = vec![
        wg_message(0, [0; 3], 148),    // bad type
        wg_message(1, [0, 0, 1], 148), // bad reserved
        wg_message(1, [0; 3], 100),    // bad handshake length
        wg_message(4, [0; 3], 31),     // bad data length (below 32)
        vec![4, 0],                    // too short
    ];
    // A datagram larger than the MTU leaves the peer in three IPv4 fragments.
    let big = vec![wg_message(4, [0; 3], 3008)];

    let before = dp.counters().expect("counters");
    let v4: SocketAddr = "10.77.0.1:51820".parse().expect("addr");
    let v6: SocketAddr = "[fd77::1]:51820".parse().expect("addr");
    let other_port: SocketAddr = "10.77.0.1:51821".parse().expect("addr");
    send_all(&peer, "0.0.0.0:0", v4, &valid);
    send_all(&peer, "0.0.0.0:0", v4, &invalid);
    send_all(&peer, "[::]:0", v6, &valid);
    send_all(&peer, "[::]:0", v6, &invalid);
    send_all(&peer, "0.0.0.0:0", v4, &big);
    send_all(&peer, "0.0.0.0:0", other_port, &valid);

    // XDP counts synchronously on receive; wait until the last datagram
    // has been seen rather than sleeping a guessed time.
    wait_until(
        Duration::from_secs(5),
        "wan_rx to count every datagram",
        || {
            dp.counters()
                .map(|c| c.since(&before).get(PassNotWireguard) >= valid.len() as u64)
                .unwrap_or(false)
        },
    )
    .expect("counters");
    let got = drain(&sock, 2 * valid.len() + 1);
    let moved = dp.counters().expect("counters").since(&before);
    println!("counters moved:\n{moved}");

    let want: &[(Counter, u64)] = &[
        (PassHandshakeInitiation, 2),
        (PassHandshakeResponse, 2),
        (PassCookieReply, 2),
        (PassTransportData, 4),
        (DropBadType, 2),
        (DropBadReserved, 2),
        (DropBadHandshakeLength, 2),
        (DropBadDataLength, 2),
        (DropTooShort, 2),
        (PassFragmentFirst, 1),
        (PassFragmentOther, 2),
    ];
    for (c, n) in want {
        assert_eq!(
            moved.get(*c),
            *n,
            "counter {} (all moved:\n{moved})",
            c.name()
        );
    }
    // Our sends plus whatever the kernel itself emitted (IPv6 neighbour
    // discovery, router solicitations): those are not WireGuard, so they
    // can only add to pass_not_wireguard.
    assert!(moved.get(PassNotWireguard) >= valid.len() as u64, "{moved}");
    let ours: u64 = want.iter().map(|(_, n)| n).sum::<u64>() + valid.len() as u64;
    assert!(
        moved.get(RxPackets) >= ours,
        "rx {} < {ours}",
        moved.get(RxPackets)
    );

    // Only the valid messages (both families) and the reassembled big
    // datagram reach the socket: every drop really dropped.
    let mut expect_lens: Vec<usize> = valid
        .iter()
        .chain(valid.iter())
        .chain(big.iter())
        .map(Vec::len)
        .collect();
    let mut got_sorted = got.clone();
    expect_lens.sort_unstable();
    got_sorted.sort_unstable();
    assert_eq!(
        got_sorted, expect_lens,
        "datagrams delivered to the socket behind XDP"
    );
}

#[test]
fn attach_to_missing_interface_names_the_interface() {
    if let Some(why) = netns_unavailable() {
        skip("attach_to_missing_interface_names_the_interface", &why);
        return;
    }
    let ns = Netns::new().expect("namespace");
    let mut dp = Datapath::load(PORT).expect("load");
    let err = ns
        .enter(|| dp.attach_wan("nosuchif0", ModePolicy::Auto))
        .expect("enter")
        .expect_err("attach to a missing interface must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("nosuchif0") && msg.contains("ip link show"),
        "unhelpful error: {msg}"
    );
    assert!(dp.attached().is_empty());
}
