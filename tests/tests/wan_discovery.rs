//! Without WAN interfaces named, wg-appliance attaches its receive program
//! where traffic to the peers leaves (or, lacking routes, to every
//! interface with an address), and follows changes: a new uplink gets
//! `wan_rx` within seconds.

use std::time::Duration;

use wg_appliance::{config::PeerSpec, daemon::DeviceSpec, datapath::ModePolicy, keys::PrivateKey};
use wg_appliance_tests::{
    appliance::Appliance, netns_unavailable, skip, unique_name, wait_until, Netns, Veth,
};

fn has_xdp(ns: &Netns, dev: &str) -> bool {
    ns.ip(&["link", "show", dev])
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("prog/xdp"))
        .unwrap_or(false)
}

#[test]
fn wan_follows_new_uplinks() {
    if let Some(why) = netns_unavailable() {
        skip("wan_follows_new_uplinks", &why);
        return;
    }
    let gw = Netns::new().expect("ns");
    let far = Netns::new().expect("ns");
    let first = Veth::new(&gw, &["10.111.0.1/24"], &far, &["10.111.0.2/24"]).expect("veth");
    let spec = DeviceSpec {
        ifname: unique_name("d"),
        private_key: PrivateKey::generate(),
        listen_port: 51820,
        peers: vec![PeerSpec {
            public_key: PrivateKey::generate().public_key(),
            preshared_key: None,
            endpoint: Some("10.111.0.2:51820".parse().expect("ep")),
            allowed_ips: vec!["10.112.0.2/32".parse().expect("net")],
            persistent_keepalive: None,
        }],
        addresses: vec!["10.112.0.1/24".parse().expect("net")],
        mtu: 1420,
        wan: vec![],
        xdp_mode: ModePolicy::Auto,
        per_packet: false,
        cpus: None,
        mss: None,
        rekey_after_time: None,
        data_path: Default::default(),
    };
    let app = Appliance::start(&gw, spec).expect("up");
    assert!(
        has_xdp(&gw, &first.a),
        "wan_rx not on the interface routing to the peer's endpoint"
    );
    // A second uplink with the default route appears later.
    let second = Veth::new(&gw, &["10.113.0.1/24"], &far, &["10.113.0.2/24"]).expect("veth");
    gw.ip(&["route", "add", "default", "via", "10.113.0.2"])
        .expect("default route");
    wait_until(Duration::from_secs(12), "wan_rx on the new uplink", || {
        has_xdp(&gw, &second.a)
    })
    .expect("re-evaluated");
    app.stop().expect("stop");
    assert!(
        !has_xdp(&gw, &first.a) && !has_xdp(&gw, &second.a),
        "XDP left attached after stop"
    );
}
