//! The tunnel end to end: wg-appliance in one namespace, a real third-party
//! WireGuard in another, joined by a veth; handshake, then traffic both ways
//! through the XDP data path.

use std::time::Duration;

use wg_appliance::{config::PeerSpec, keys::PrivateKey};
use wg_appliance_tests::{
    appliance::Appliance,
    netns_unavailable,
    peers::{Impl, ThirdParty},
    skip,
    topo::gw_spec,
    unique_name, Netns, Veth,
};
use wg_ebpf_common::Counter;

/// Every one of 5 echo requests answered (`ping -c` alone succeeds on one).
fn ping_ok(ns: &Netns, addr: &str) -> bool {
    match ns.exec("ping", &["-c", "5", "-i", "0.2", "-W", "2", addr]) {
        Ok(out) => String::from_utf8_lossy(&out.stdout).contains(" 0% packet loss"),
        Err(_) => false,
    }
}

fn interop(which: Impl) {
    wg_appliance_tests::init_logging();
    let name = format!("tunnel_with_{which:?}");
    if let Some(why) = netns_unavailable() {
        skip(&name, &why);
        return;
    }
    let gw = Netns::new().expect("gateway ns");
    let peer_ns = Netns::new().expect("peer ns");
    let veth = Veth::new(
        &gw,
        &["10.91.0.1/24", "fd91::1/64"],
        &peer_ns,
        &["10.91.0.2/24", "fd91::2/64"],
    )
    .expect("veth");
    // Redirected frames out of a veth need GRO (or XDP) on the receiving
    // end; real NICs need nothing (docs/architecture.md, veth facts).
    peer_ns
        .exec("ethtool", &["-K", &veth.b, "gro", "on"])
        .expect("gro on");

    let gw_key = PrivateKey::generate();
    let peer_key = PrivateKey::generate();
    let tp = ThirdParty::start(which, &peer_ns, &peer_key, 51821, "10.92.0.2/24")
        .expect("third-party peer");
    peer_ns
        .ip(&["addr", "add", "fd92::2/64", "dev", &tp.ifname, "nodad"])
        .expect("v6 addr");
    tp.add_peer(
        &peer_ns,
        &gw_key.public_key(),
        Some("10.91.0.1:51820"),
        "10.92.0.1/32,fd92::1/128",
    )
    .expect("configure peer");

    let ifname = unique_name("w");
    let peer = PeerSpec {
        public_key: peer_key.public_key(),
        preshared_key: None,
        endpoint: None,
        allowed_ips: vec![
            "10.92.0.2/32".parse().expect("cidr"),
            "fd92::2/128".parse().expect("cidr"),
        ],
        persistent_keepalive: None,
    };
    let app =
        Appliance::start(&gw, gw_spec(&ifname, gw_key, peer, &veth.a)).expect("wg-appliance up");

    // The third party initiates (it has our endpoint); ICMP both families;
    // then requests from our side.
    if let Some(secs) = std::env::var("WG_TEST_PAUSE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        eprintln!(
            "pausing {secs} s: namespaces {} (gw) {} (peer)",
            gw.name(),
            peer_ns.name()
        );
        std::thread::sleep(Duration::from_secs(secs));
    }
    let v4_in = ping_ok(&peer_ns, "10.92.0.1");
    let v6_in = ping_ok(&peer_ns, "fd92::1");
    let v4_out = ping_ok(&gw, "10.92.0.2");
    let transfer = tp.transfer(&peer_ns);
    let report = app.stop().expect("stop");
    let c = &report.counters;
    println!("counters:\n{c}");
    assert!(
        v4_in,
        "{which:?} → wg-appliance: IPv4 ping through the tunnel failed"
    );
    assert!(
        v6_in,
        "{which:?} → wg-appliance: IPv6 ping through the tunnel failed"
    );
    assert!(v4_out, "wg-appliance → {which:?}: IPv4 ping failed");
    let (rx, tx) = transfer.expect("wg show transfer");
    assert!(
        rx > 0 && tx > 0,
        "{which:?} saw no traffic: rx {rx} tx {tx}"
    );
    // Exactly the pings: 5 requests in over IPv4, 5 over IPv6, and the 5
    // replies to ours; as many sent the other way (keepalives apart).
    assert_eq!(
        c.get(Counter::RxDelivered),
        15,
        "decrypted packets delivered"
    );
    assert_eq!(
        c.get(Counter::TxSent) - c.get(Counter::TxKeepalive),
        15,
        "encrypted packets sent (keepalives apart)"
    );
    assert_eq!(c.get(Counter::DropAuthFailed), 0);
    let p = &report.peers[0];
    assert!(
        p.last_handshake.is_some() && p.rx_bytes > 0 && p.tx_bytes > 0,
        "peer status: {p:?}"
    );
    drop(tp);
    std::thread::sleep(Duration::from_millis(50));
}

#[test]
fn tunnel_with_wireguard_go() {
    interop(Impl::WireguardGo);
}

#[test]
fn tunnel_with_boringtun() {
    interop(Impl::Boringtun);
}
