//! Bulk traffic through the XDP data path with iperf3: wg-appliance against
//! wireguard-go, boringtun-cli and another wg-appliance; TCP and UDP, both
//! directions, IPv4 and IPv6 inside, over IPv4 and IPv6 outside.
//!
//! TCP runs move a fixed amount (`-n`) and must deliver exactly that; UDP
//! runs must deliver something (loss is allowed: UDP at a fixed rate). With
//! IPv6 outside, the UDP checksum `crypt_tx` computes is checked twice: by
//! tcpdump on the receiving veth (`[udp sum ok]`) and, for third parties, by
//! the receiving kernel (`Udp6InCsumErrors` stays 0 while the datagrams are
//! delivered to the peer's socket).

use std::{net::SocketAddr, time::Duration};

use wg_appliance_tests::{
    proc::{iperf3, tcp_exact, Capture, Proto},
    require_netns,
    topo::{PeerKind, Tunnel, GW_IN4, GW_IN6, PEER_IN4, PEER_IN6},
    Netns,
};
use wg_ebpf_common::Counter;

const TCP_BYTES: u64 = 4 << 20;
const EXACT_BYTES: u64 = 2 << 20;

/// `/proc/net/snmp6` of the namespace: (Udp6InDatagrams, Udp6InCsumErrors).
fn udp6_stats(ns: &Netns) -> (u64, u64) {
    let out = ns.exec("cat", &["/proc/net/snmp6"]).expect("snmp6");
    let s = String::from_utf8_lossy(&out.stdout);
    let get = |k: &str| {
        s.lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(k)).then(|| f.next().and_then(|v| v.parse().ok()))
            })
            .flatten()
            .unwrap_or(0)
    };
    (get("Udp6InDatagrams"), get("Udp6InCsumErrors"))
}

fn traffic(kind: PeerKind, outer_v6: bool) {
    wg_appliance_tests::init_logging();
    require_netns!(&format!("tunnel_traffic {kind:?} outer_v6={outer_v6}"));
    let mut t = Tunnel::new(kind, outer_v6, |_| {}, |_| {}).expect("topology");
    t.warm_up().expect("handshake");

    // With IPv6 outside, check the encrypted packets from the gateway as
    // the far side's veth receives them: tcpdump verifies the UDP checksum.
    // Not against a remote appliance: its XDP program takes the packets
    // before any tap sees them (and does not look at the checksum).
    if outer_v6 && kind != PeerKind::Appliance {
        let cap = Capture::start(
            &t.peer_ns,
            &t.veth.b,
            4,
            &["-vv", "ip6", "and", "udp", "and", "src", "port", "51820"],
        )
        .expect("tcpdump");
        let udp6_before = udp6_stats(&t.peer_ns);
        let _ =
            t.gw.exec("ping", &["-c", "4", "-i", "0.1", "-W", "2", PEER_IN4]);
        let lines = cap.finish(Duration::from_secs(5)).expect("capture");
        println!("outer IPv6 capture:\n{}", lines.join("\n"));
        assert_eq!(lines.len(), 4, "captured {lines:?}");
        for l in &lines {
            assert!(
                l.contains("[udp sum ok]"),
                "IPv6 UDP checksum from crypt_tx is wrong: {l}"
            );
        }
        let (dgrams, csum_errs) = udp6_stats(&t.peer_ns);
        assert_eq!(
            csum_errs, udp6_before.1,
            "the peer's kernel saw bad UDP checksums"
        );
        assert!(
            dgrams >= udp6_before.0 + 4,
            "the peer's socket got {} datagrams over IPv6",
            dgrams - udp6_before.0
        );
    }

    let mut runs = 0u64;
    for (family, gw_addr, peer_addr) in [("v4", GW_IN4, PEER_IN4), ("v6", GW_IN6, PEER_IN6)] {
        for proto in [Proto::Tcp, Proto::Udp] {
            for (dir, sender, receiver, dst) in [
                ("gw→peer", &t.gw, &t.peer_ns, gw_addr),
                ("peer→gw", &t.peer_ns, &t.gw, peer_addr),
            ] {
                let extra: &[&str] = match proto {
                    Proto::Tcp => &["-n", "4M"],
                    Proto::Udp => &["-b", "50M", "-n", "1M", "-l", "1200"],
                };
                let what = format!(
                    "{kind:?} outer {} inner {family} {proto:?} {dir}",
                    if outer_v6 { "v6" } else { "v4" }
                );
                let r = iperf3(sender, receiver, dst, proto, extra, Duration::from_secs(20))
                    .unwrap_or_else(|e| panic!("{what}: {e:#}"));
                println!(
                    "{what}: received {} B of {} B, {:.1} Mbit/s, lost {} retransmits {}",
                    r.received, r.sent, r.mbit_s, r.lost_packets, r.retransmits
                );
                assert!(r.received > 0, "{what}: nothing received");
                if proto == Proto::Tcp {
                    // iperf3 3.12 in reverse mode may send (and count) one
                    // block past -n; exact counts are tcp_exact's job below.
                    assert!(
                        r.received >= TCP_BYTES && r.received <= r.sent,
                        "{what}: TCP byte count {} of {}",
                        r.received,
                        r.sent
                    );
                }
                runs += 1;
            }
        }
    }
    assert_eq!(runs, 8);
    // Exact byte counts and content: one 2 MiB stream each way per family.
    for (family, gw_addr, peer_addr) in [("v4", GW_IN4, PEER_IN4), ("v6", GW_IN6, PEER_IN6)] {
        for (dir, sender, receiver, dst) in [
            ("gw→peer", &t.gw, &t.peer_ns, peer_addr),
            ("peer→gw", &t.peer_ns, &t.gw, gw_addr),
        ] {
            let dst: SocketAddr = if family == "v6" {
                format!("[{dst}]:7100")
            } else {
                format!("{dst}:7100")
            }
            .parse()
            .expect("addr");
            let got = tcp_exact(sender, receiver, dst, EXACT_BYTES, Duration::from_secs(15))
                .unwrap_or_else(|e| panic!("{kind:?} inner {family} {dir}: {e:#}"));
            assert_eq!(
                got, EXACT_BYTES,
                "{kind:?} inner {family} {dir}: bytes delivered"
            );
        }
    }
    // Where TCP retransmissions come from, for the log: the far side's UDP
    // receive buffer and its veth.
    if kind != PeerKind::Appliance {
        let snmp = t.peer_ns.exec("cat", &["/proc/net/snmp"]).expect("snmp");
        let snmp = String::from_utf8_lossy(&snmp.stdout).into_owned();
        let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
        println!("far side {}", udp.join(" / "));
        if let Ok(o) = t.peer_ns.exec("ethtool", &["-S", &t.veth.b]) {
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            let drops: Vec<&str> = s
                .lines()
                .filter(|l| l.contains("drop") || l.contains("err") || l.contains("full"))
                .map(str::trim)
                .filter(|l| !l.ends_with(": 0"))
                .collect();
            println!("far side veth: {drops:?}");
        }
    }

    let report = t.stop_gw().expect("stop gateway");
    let c = &report.counters;
    println!("gateway counters:\n{c}");
    assert_eq!(c.get(Counter::DropAuthFailed), 0);
    assert_eq!(c.get(Counter::DropReplay), 0);
    assert_eq!(c.get(Counter::DropAllowedIps), 0);
    // Each way: 2 × 4 MiB (iperf3) + 2 × 2 MiB (exact) of TCP data alone
    // is ~9,000 full-size packets.
    assert!(c.get(Counter::RxDelivered) > 8_000, "rx_delivered");
    assert!(c.get(Counter::TxSent) > 8_000, "tx_sent");
    let p = &report.peers[0];
    assert!(
        p.handshakes >= 1 && p.rx_bytes > 0 && p.tx_bytes > 0,
        "{p:?}"
    );
    if kind == PeerKind::Appliance {
        let r = t.stop_remote().expect("stop remote");
        println!("remote counters:\n{}", r.counters);
        assert_eq!(r.counters.get(Counter::DropAuthFailed), 0);
        assert!(r.counters.get(Counter::RxDelivered) > 8_000);
    }
}

#[test]
fn tunnel_traffic_wireguard_go_outer_v4() {
    traffic(PeerKind::WireguardGo, false);
}

#[test]
fn tunnel_traffic_wireguard_go_outer_v6() {
    traffic(PeerKind::WireguardGo, true);
}

#[test]
fn tunnel_traffic_boringtun_outer_v4() {
    traffic(PeerKind::Boringtun, false);
}

#[test]
fn tunnel_traffic_boringtun_outer_v6() {
    traffic(PeerKind::Boringtun, true);
}

#[test]
fn tunnel_traffic_appliance_outer_v4() {
    traffic(PeerKind::Appliance, false);
}

#[test]
fn tunnel_traffic_appliance_outer_v6() {
    traffic(PeerKind::Appliance, true);
}
