//! Return routing and NAT from `[Appliance]`, in the site-to-site lab:
//!
//! - asymmetric: the gateway's main table does not route the far site into
//!   the tunnel (`Table = off`; its default route is the WAN router), so
//!   replies to the far site's connections leave by the WAN and are lost;
//!   with `ReturnRouting = on` they follow the tunnel they came in on, for
//!   the LAN host behind the gateway and for the gateway itself, ping and a
//!   checked TCP stream alike;
//! - masquerade: the far side accepts only the gateway's tunnel address,
//!   so the LAN cannot reach it; with `Masquerade = <the LAN>` (and
//!   `ForwardIP = on`, forwarding being off in this lab) it can;
//! - both leave nothing behind at `down`: no rule, no route, no table;
//! - a gateway with a second address answers a handshake sent to it from
//!   it (the far side then keeps that address as our endpoint), as an
//!   anycast gateway must.

mod ops_lab;

use std::{net::SocketAddr, time::Duration};

use ops_lab::{Lab, LabOpts, GW_TUN, LAN_GW, LAN_HOST, SITE};
use wg_appliance::gateway;
use wg_appliance_tests::{netns_unavailable, proc::tcp_exact, skip, wait_until, Netns};

fn pings(ns: &Netns, src: &str, dst: &str) -> bool {
    ns.exec("ping", &["-c", "3", "-i", "0.2", "-W", "1", "-I", src, dst])
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(" 0% packet loss"))
        .unwrap_or(false)
}

fn stdout(ns: &Netns, cmd: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&ns.exec(cmd, args).map(|o| o.stdout).unwrap_or_default()).into_owned()
}

/// Nothing of return routing or masquerade is left in the namespace.
fn assert_clean(lab: &Lab, what: &str) {
    let table = gateway::table_name(&lab.ifname);
    let tables = stdout(&lab.gw, "nft", &["list", "tables"]);
    assert!(
        !tables.contains(&table),
        "{what}: nftables table {table} left behind:\n{tables}"
    );
    let rules = stdout(&lab.gw, "ip", &["rule", "show"]);
    assert!(
        !rules.contains("fwmark"),
        "{what}: a fwmark rule left behind:\n{rules}"
    );
}

#[test]
fn return_routing_makes_an_asymmetric_topology_work() {
    if let Some(why) = netns_unavailable() {
        skip("return_routing_makes_an_asymmetric_topology_work", &why);
        return;
    }
    let mut o = LabOpts {
        forwarding: true,
        interface_extra: "Table = off".into(),
        ..LabOpts::default()
    };
    let mut lab = Lab::new(o.clone()).expect("lab");
    // The far side reaches the LAN from its site address.
    lab.peer
        .ip(&[
            "route",
            "replace",
            "10.90.0.0/24",
            "dev",
            &lab.tp.ifname,
            "src",
            SITE,
        ])
        .expect("far route");
    // The tunnel itself works (the gateway's own tunnel address is routed).
    wg_appliance_tests::wait_until(Duration::from_secs(20), "the tunnel", || {
        pings(&lab.peer, ops_lab::PEER_TUN, ops_lab::GW_TUN)
    })
    .expect("tunnel up");

    // Without return routing: replies to 10.97.0.1 follow the main table
    // (the WAN's default route) and are lost.
    assert!(
        !pings(&lab.peer, SITE, LAN_HOST),
        "asymmetric, the LAN host's replies must be lost"
    );
    assert!(
        !pings(&lab.peer, SITE, LAN_GW),
        "asymmetric, the gateway's own replies must be lost"
    );
    let (code, report) = lab.doctor(&[]).expect("doctor");
    assert_eq!(
        code, 1,
        "doctor must see the far site routed out of the WAN:\n{report}"
    );
    assert!(report.contains("asymmetric"), "{report}");

    // With it: replies go back through the tunnel.
    o.appliance_extra = "ReturnRouting = on".into();
    lab.restart(&o).expect("restart with ReturnRouting");
    lab.peer
        .ip(&[
            "route",
            "replace",
            "10.90.0.0/24",
            "dev",
            &lab.tp.ifname,
            "src",
            SITE,
        ])
        .expect("far route");
    wg_appliance_tests::wait_until(Duration::from_secs(20), "the LAN host's replies", || {
        pings(&lab.peer, SITE, LAN_HOST)
    })
    .expect("return routing: far site ↔ LAN host");
    assert!(
        pings(&lab.peer, SITE, LAN_GW),
        "return routing: replies of the gateway itself"
    );
    let dst: SocketAddr = format!("{LAN_HOST}:5403").parse().expect("addr");
    let got =
        tcp_exact(&lab.peer, &lab.lan, dst, 20 << 20, Duration::from_secs(30)).expect("stream");
    assert_eq!(
        got,
        20 << 20,
        "a TCP stream from the far site to the LAN, every byte"
    );
    // Doctor: the return path is there; the main table's route is only a
    // warning now.
    let (code, report) = lab.doctor(&[]).expect("doctor");
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("return routing: connections from"),
        "{report}"
    );
    let t = gateway::auto_table(&lab.ifname);
    let rules = stdout(&lab.gw, "ip", &["rule", "show"]);
    assert!(
        rules.contains(&format!("fwmark {t:#x} lookup {t}")),
        "{rules}"
    );

    // down removes the rule, the table and the nftables table.
    let bin = lab.bin.display().to_string();
    lab.gw.exec(&bin, &["down", &lab.ifname]).expect("down");
    assert_clean(&lab, "after down");
    let routes = stdout(&lab.gw, "ip", &["route", "show", "table", &t.to_string()]);
    assert!(
        routes.trim().is_empty(),
        "routes of table {t} left behind: {routes}"
    );
}

#[test]
fn masquerade_lets_a_lan_host_reach_the_far_site() {
    if let Some(why) = netns_unavailable() {
        skip("masquerade_lets_a_lan_host_reach_the_far_site", &why);
        return;
    }
    // Forwarding off in the namespace: ForwardIP turns it on.
    let mut o = LabOpts {
        far_knows_no_lan: true,
        appliance_extra: "ForwardIP = on".into(),
        ..LabOpts::default()
    };
    let mut lab = Lab::new(o.clone()).expect("lab");
    wg_appliance_tests::wait_until(Duration::from_secs(20), "the tunnel", || {
        pings(&lab.lan, LAN_HOST, ops_lab::GW_TUN)
    })
    .expect("LAN → gateway");
    assert_eq!(
        stdout(&lab.gw, "sysctl", &["-n", "net.ipv4.conf.all.forwarding"]).trim(),
        "1",
        "ForwardIP = on"
    );
    // The far side drops the LAN's source (not in its AllowedIPs).
    assert!(
        !pings(&lab.lan, LAN_HOST, SITE),
        "without masquerade the far side must drop the LAN"
    );

    o.appliance_extra = "ForwardIP = on\nMasquerade = 10.90.0.0/24".into();
    lab.restart(&o).expect("restart with Masquerade");
    wg_appliance_tests::wait_until(
        Duration::from_secs(20),
        "the LAN to reach the far site",
        || pings(&lab.lan, LAN_HOST, SITE),
    )
    .expect("masquerade: LAN → far site");
    let dst: SocketAddr = format!("{SITE}:5404").parse().expect("addr");
    let got =
        tcp_exact(&lab.lan, &lab.peer, dst, 20 << 20, Duration::from_secs(30)).expect("stream");
    assert_eq!(
        got,
        20 << 20,
        "a TCP stream from the LAN to the far site, every byte"
    );
    let table = stdout(
        &lab.gw,
        "nft",
        &["list", "table", "inet", &gateway::table_name(&lab.ifname)],
    );
    assert!(
        table.contains("masquerade") && table.contains("10.90.0.0/24"),
        "{table}"
    );
    let (code, report) = lab.doctor(&[]).expect("doctor");
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("masquerade of what leaves through"),
        "{report}"
    );

    let bin = lab.bin.display().to_string();
    lab.gw.exec(&bin, &["down", &lab.ifname]).expect("down");
    assert_clean(&lab, "after down");
}

/// The far side (wireguard-go) is told to reach us at a second address of
/// our WAN link and starts a fresh handshake there: our response must
/// leave from that address, since wireguard-go takes the source of every
/// authenticated handshake message as our endpoint. Answered from the
/// link's first address (the FIB's choice), it would move to that one; an
/// anycast gateway would lose its clients to one box's own address.
#[test]
fn handshake_answers_leave_from_the_address_the_peer_wrote_to() {
    if let Some(why) = netns_unavailable() {
        skip(
            "handshake_answers_leave_from_the_address_the_peer_wrote_to",
            &why,
        );
        return;
    }
    let lab = Lab::new(LabOpts {
        forwarding: true,
        ..LabOpts::default()
    })
    .expect("lab");
    lab.warm_up(Duration::from_secs(20)).expect("tunnel up");
    let second = "10.96.0.100";
    lab.gw
        .ip(&[
            "addr",
            "add",
            &format!("{second}/24"),
            "dev",
            &lab.wan_link.a,
        ])
        .expect("second address");
    let tp_if = lab.tp.ifname.clone();
    let gw_pub = lab.gw_key.public_key().to_base64();
    let endpoints = || stdout(&lab.peer, "wg", &["show", &tp_if, "endpoints"]);
    assert!(
        endpoints().contains(&format!("{}:51820", ops_lab::GW_WAN)),
        "{}",
        endpoints()
    );
    // A fresh peer entry on the far side: its keepalive starts a handshake
    // to the second address at once.
    let t = std::time::SystemTime::now();
    lab.peer
        .exec("wg", &["set", &tp_if, "peer", &gw_pub, "remove"])
        .expect("remove");
    lab.peer
        .exec(
            "wg",
            &[
                "set",
                &tp_if,
                "peer",
                &gw_pub,
                "endpoint",
                &format!("{second}:51820"),
                "allowed-ips",
                &format!("{GW_TUN}/32,10.90.0.0/24"),
                "persistent-keepalive",
                "1",
            ],
        )
        .expect("re-add");
    wait_until(
        Duration::from_secs(15),
        "a handshake at the second address",
        || {
            wg_appliance::uapi_client::Client::new(&lab.ifname)
                .and_then(|c| c.get())
                .is_ok_and(|d| {
                    d.peers
                        .iter()
                        .any(|p| p.last_handshake.is_some_and(|h| h > t))
                })
        },
    )
    .expect("handshake");
    // Traffic both ways, then the far side's idea of our endpoint.
    assert!(
        pings(&lab.lan, LAN_HOST, SITE),
        "LAN → far site after the handshake"
    );
    assert_eq!(
        endpoints().trim(),
        format!("{gw_pub}\t{second}:51820"),
        "the far side moved off the address it wrote to"
    );
}
