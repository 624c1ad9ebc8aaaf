//! Per-packet policy of the data path, end to end against wireguard-go:
//! source validation against AllowedIPs, TCP MSS clamping in both
//! directions, and the CPU steering policies.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use wg_appliance::{config::PeerSpec, keys::PrivateKey};
use wg_appliance_tests::{
    proc::{iperf3, mss_of, Capture, Proto},
    require_netns, skip,
    topo::{ping_all, PeerKind, Tunnel, GW_IN4, GW_IN6, PEER_IN4, PEER_IN6},
    Netns, Veth,
};
use wg_ebpf_common::Counter;

/// Echo replies received for `count` requests from `src` (bounded: `-w`).
fn ping_received(ns: &Netns, src: &str, dst: &str, count: u32) -> u32 {
    let c = count.to_string();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "ping", "-c", &c, "-i", "0.2"])
        .args(["-W", "1", "-w", "3", "-I", src, dst])
        .output()
        .expect("ping");
    let s = String::from_utf8_lossy(&out.stdout);
    s.split(',')
        .find_map(|f| f.trim().strip_suffix(" received"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A packet from the peer whose inner source is not in that peer's
/// AllowedIPs is dropped after decryption and counted: both a source that
/// belongs to no peer and one that belongs to another peer.
#[test]
fn tunnel_drops_inner_sources_outside_allowed_ips() {
    wg_appliance_tests::init_logging();
    require_netns!("tunnel_drops_inner_sources_outside_allowed_ips");
    let other = PrivateKey::generate().public_key();
    let mut t = Tunnel::new(
        PeerKind::WireguardGo,
        false,
        |spec| {
            spec.peers.push(PeerSpec {
                public_key: other,
                preshared_key: None,
                endpoint: None,
                allowed_ips: vec![
                    "10.93.0.0/24".parse().expect("cidr"),
                    "fd93::/64".parse().expect("cidr"),
                ],
                persistent_keepalive: None,
            });
        },
        |_| {},
    )
    .expect("topology");
    let tp_if = t.peer_if().to_owned();
    // Extra sources on the third party's interface: 10.93.0.2 belongs to
    // the other peer at the gateway, 10.94.0.2 to nobody.
    for a in ["10.93.0.2/32", "10.94.0.2/32"] {
        t.peer_ns
            .ip(&["addr", "add", a, "dev", &tp_if])
            .expect("addr");
    }
    for a in ["fd93::2/128", "fd94::2/128"] {
        t.peer_ns
            .ip(&["addr", "add", a, "dev", &tp_if, "nodad"])
            .expect("addr");
    }
    t.warm_up().expect("handshake");
    assert!(
        ping_all(&t.peer_ns, Some(PEER_IN4), GW_IN4, 3, "0.2"),
        "pings from the peer's own address must pass"
    );
    let (_, tx_before) = t.third_party().transfer(&t.peer_ns).expect("transfer");
    let mut replies = Vec::new();
    for (src, dst) in [
        ("10.93.0.2", GW_IN4),
        ("10.94.0.2", GW_IN4),
        ("fd93::2", GW_IN6),
        ("fd94::2", GW_IN6),
    ] {
        replies.push((src, ping_received(&t.peer_ns, src, dst, 3)));
    }
    let (_, tx_after) = t.third_party().transfer(&t.peer_ns).expect("transfer");
    let report = t.stop_gw().expect("stop");
    let c = &report.counters;
    println!("counters:\n{c}");
    for (src, n) in &replies {
        assert_eq!(*n, 0, "{src}: spoofed source got {n} replies");
    }
    // wireguard-go did encrypt and send them (its AllowedIPs for us cover
    // the destination): the drop is ours.
    assert!(
        tx_after > tx_before + 12 * 84,
        "the peer sent {} bytes",
        tx_after - tx_before
    );
    assert!(
        c.get(Counter::DropAllowedIps) >= 12,
        "drop_allowed_ips {}",
        c.get(Counter::DropAllowedIps)
    );
    assert_eq!(c.get(Counter::DropAuthFailed), 0);
}

/// SYN and SYN-ACK seen in a capture: (IPv6?, SYN-ACK?, MSS).
fn syns(lines: &[String]) -> Vec<(bool, bool, u16)> {
    lines
        .iter()
        .filter_map(|l| {
            let v6 = l.contains(" IP6 ");
            let synack = l.contains("Flags [S.]");
            let syn = synack || l.contains("Flags [S]");
            syn.then(|| (v6, synack, mss_of(l).unwrap_or(0)))
        })
        .collect()
}

/// Opens a TCP connection from `client` to `listen` (a listener bound in
/// `server`), both bounded.
fn connect_once(server: &Netns, client: &Netns, listen: SocketAddr) {
    let l = server
        .enter(|| TcpListener::bind(listen))
        .expect("enter")
        .expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let s = client
        .enter(|| TcpStream::connect_timeout(&listen, Duration::from_secs(3)))
        .expect("enter")
        .unwrap_or_else(|e| panic!("connect to {listen}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match l.accept() {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "accept on {listen} timed out");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    drop(s);
}

/// A LAN host (MTU 1500) behind the gateway opens TCP connections to the
/// far side, whose route back advertises a large MSS too (`advmss`): the
/// SYN the far side receives and the SYN-ACK the LAN host receives both
/// carry the clamp, for IPv4 and IPv6.
fn mss_clamp(mss: Option<u16>) {
    wg_appliance_tests::init_logging();
    require_netns!(&format!("tunnel_mss_clamp {mss:?}"));
    let clamp4 = mss.unwrap_or(1420 - 40);
    let clamp6 = clamp4 - 20;
    let mut t =
        Tunnel::new(PeerKind::WireguardGo, false, |s| s.mss = mss, |_| {}).expect("topology");
    let lan = Netns::new().expect("lan ns");
    let lv = Veth::new(
        &lan,
        &["10.95.0.2/24", "fd95::2/64"],
        &t.gw,
        &["10.95.0.1/24", "fd95::1/64"],
    )
    .expect("lan veth");
    lan.ip(&["route", "add", "default", "via", "10.95.0.1"])
        .expect("route");
    lan.ip(&["-6", "route", "add", "default", "via", "fd95::1"])
        .expect("route");
    t.gw.exec(
        "sysctl",
        &[
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ],
    )
    .expect("forwarding");
    let tp_if = t.peer_if().to_owned();
    t.third_party()
        .add_peer(
            &t.peer_ns,
            &t.gw_public,
            None,
            &format!("{GW_IN4}/32,{GW_IN6}/128,10.95.0.0/24,fd95::/64"),
        )
        .expect("peer allowed-ips");
    t.peer_ns
        .ip(&[
            "route",
            "add",
            "10.95.0.0/24",
            "dev",
            &tp_if,
            "advmss",
            "1460",
        ])
        .expect("route");
    t.peer_ns
        .ip(&[
            "-6",
            "route",
            "add",
            "fd95::/64",
            "dev",
            &tp_if,
            "advmss",
            "1440",
        ])
        .expect("route");
    t.warm_up().expect("handshake");

    // SYNs and SYN-ACKs only (IPv4 flags via tcp[13]; IPv6 without
    // extension headers has them at ip6[53]).
    let filter = [
        "tcp", "and", "(", "tcp[13]", "&", "2", "!=", "0", "or", "ip6[53]", "&", "2", "!=", "0",
        ")",
    ];
    let far = Capture::start(&t.peer_ns, &tp_if, 4, &filter).expect("tcpdump far");
    let near = Capture::start(&lan, &lv.a, 4, &filter).expect("tcpdump lan");
    connect_once(
        &t.peer_ns,
        &lan,
        format!("{PEER_IN4}:7001").parse().expect("addr"),
    );
    connect_once(
        &t.peer_ns,
        &lan,
        format!("[{PEER_IN6}]:7002").parse().expect("addr"),
    );
    let far = far.finish(Duration::from_secs(5)).expect("far capture");
    let near = near.finish(Duration::from_secs(5)).expect("lan capture");
    println!(
        "far side:\n{}\nLAN side:\n{}",
        far.join("\n"),
        near.join("\n")
    );
    let report = t.stop_gw().expect("stop");
    let c = &report.counters;

    // (v6, synack) → MSS, as each side saw it.
    let far = syns(&far);
    let near = syns(&near);
    let want_far = [
        (false, false, clamp4),
        (false, true, 1460),
        (true, false, clamp6),
        (true, true, 1440),
    ];
    let want_near = [
        (false, false, 1460),
        (false, true, clamp4),
        (true, false, 1440),
        (true, true, clamp6),
    ];
    assert_eq!(
        far, want_far,
        "far side: (ipv6, syn-ack, mss) of the handshakes"
    );
    assert_eq!(
        near, want_near,
        "LAN side: (ipv6, syn-ack, mss) of the handshakes"
    );
    // The two SYNs and two SYN-ACKs above, each clamped once.
    assert_eq!(c.get(Counter::MssClamped), 4, "mss_clamped");
    drop(lan);
}

#[test]
fn tunnel_mss_clamp_from_mtu() {
    mss_clamp(None);
}

#[test]
fn tunnel_mss_clamp_configured() {
    mss_clamp(Some(1300));
}

/// One TCP stream from the peer; returns the gateway's per-CPU count of
/// decrypted packets delivered.
fn steering(per_packet: bool) -> Option<Vec<u64>> {
    wg_appliance_tests::init_logging();
    let name = format!("tunnel_steering per_packet={per_packet}");
    if let Some(why) = wg_appliance_tests::netns_unavailable() {
        skip(&name, &why);
        return None;
    }
    if wg_appliance::datapath::online_cpus().len() < 2 {
        skip(&name, "needs two online CPUs");
        return None;
    }
    let mut t = Tunnel::new(
        PeerKind::WireguardGo,
        false,
        |s| {
            s.per_packet = per_packet;
            s.cpus = Some(vec![0, 1]);
            // CPUMAP steering is the BPF path's (the fast path has one
            // worker per queue).
            s.data_path = wg_appliance::config::DataPathSetting::Bpf;
        },
        |_| {},
    )
    .expect("topology");
    t.warm_up().expect("handshake");
    let r = iperf3(
        &t.peer_ns,
        &t.gw,
        PEER_IN4,
        Proto::Tcp,
        &["-n", "8M"],
        Duration::from_secs(20),
    )
    .expect("iperf3");
    println!(
        "per_packet={per_packet}: {} B at {:.1} Mbit/s, {} retransmits",
        r.received, r.mbit_s, r.retransmits
    );
    // iperf3 3.12 can count one block past `-n`: at least is what is sure.
    assert!(
        r.received >= 8 << 20,
        "received {} of {}",
        r.received,
        8 << 20
    );
    let report = t.stop_gw().expect("stop");
    let per_cpu = report.per_cpu[&Counter::RxDelivered].clone();
    println!(
        "rx_delivered per CPU: {per_cpu:?}, rx_steered per CPU: {:?}",
        report.per_cpu[&Counter::RxSteered]
    );
    Some(per_cpu)
}

#[test]
fn tunnel_steering_per_packet_uses_both_cpus() {
    let Some(per_cpu) = steering(true) else {
        return;
    };
    let total: u64 = per_cpu.iter().sum();
    assert!(total > 5_000, "{per_cpu:?}");
    for (cpu, n) in per_cpu.iter().enumerate().take(2) {
        assert!(
            *n > total / 10,
            "CPU {cpu} decrypted {n} of {total} packets: {per_cpu:?}"
        );
    }
}

#[test]
fn tunnel_steering_per_peer_uses_one_cpu() {
    let Some(per_cpu) = steering(false) else {
        return;
    };
    let busy: Vec<usize> = (0..per_cpu.len()).filter(|&c| per_cpu[c] > 0).collect();
    assert_eq!(
        busy.len(),
        1,
        "per-peer steering spread a peer: {per_cpu:?}"
    );
    assert!(per_cpu[busy[0]] > 5_000, "{per_cpu:?}");
}
