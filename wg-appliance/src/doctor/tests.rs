use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use serde_json::json;

use super::{
    checks::{duplicates, judge_handshake, overlaps, sample_addr, site_prefixes, too_broad},
    nft::{walk, walk_iptables, Place, Probe, Verdict},
    sys::udp_table_has_port,
    Check, Level, Report,
};
use crate::{keys::PrivateKey, uapi_client::PeerInfo};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ruleset(chain_policy: &str, rules: &[serde_json::Value]) -> serde_json::Value {
    let mut items = vec![
        json!({"table": {"family": "inet", "name": "fw", "handle": 1}}),
        json!({"chain": {"family": "inet", "table": "fw", "name": "input", "handle": 1,
                          "type": "filter", "hook": "input", "prio": 0, "policy": chain_policy}}),
        json!({"chain": {"family": "inet", "table": "fw", "name": "sub", "handle": 2}}),
        json!({"set": {"family": "inet", "table": "fw", "name": "wgports", "type": "inet_service",
                        "elem": [51820, {"range": [60000, 60010]}]}}),
    ];
    for (i, r) in rules.iter().enumerate() {
        let mut r = r.clone();
        r["family"] = json!("inet");
        r["table"] = json!("fw");
        if r.get("chain").is_none() {
            r["chain"] = json!("input");
        }
        r["handle"] = json!(10 + i);
        items.push(json!({ "rule": r }));
    }
    json!({ "nftables": items })
}

fn dport(right: serde_json::Value) -> serde_json::Value {
    json!({"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": right}})
}

fn place(handle: Option<u64>) -> Place {
    Place {
        family: "inet".into(),
        table: "fw".into(),
        chain: "input".into(),
        handle,
    }
}

fn probe(wan: &[String]) -> Probe<'_> {
    Probe {
        port: 51820,
        v6: false,
        iifs: wan,
    }
}

#[test]
fn nftables_drops_are_found_with_their_rule() {
    let wan = vec!["eth0".to_owned()];
    let p = probe(&wan);
    // udp dport 51820 drop
    let rs = ruleset(
        "accept",
        &[json!({"expr": [dport(json!(51820)), {"drop": null}]})],
    );
    assert_eq!(walk(&rs, &p), Verdict::Dropped(place(Some(10))));
    // Another port: passes.
    let rs = ruleset(
        "accept",
        &[json!({"expr": [dport(json!(53)), {"drop": null}]})],
    );
    assert_eq!(walk(&rs, &p), Verdict::Passes);
    // A TCP rule never matches UDP.
    let tcp = json!({"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 51820}});
    let rs = ruleset("accept", &[json!({"expr": [tcp, {"drop": null}]})]);
    assert_eq!(walk(&rs, &p), Verdict::Passes);
    // Sets, ranges, named sets, interface names.
    let iif =
        |n: &str| json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": n}});
    for right in [
        json!({"set": [53, 51820]}),
        json!({"range": [51000, 52000]}),
        json!("@wgports"),
    ] {
        let rs = ruleset(
            "accept",
            &[json!({"expr": [iif("eth0"), dport(right.clone()), {"reject": {}}]})],
        );
        assert_eq!(walk(&rs, &p), Verdict::Dropped(place(Some(10))), "{right}");
    }
    let rs = ruleset(
        "accept",
        &[json!({"expr": [iif("eth1"), dport(json!(51820)), {"drop": null}]})],
    );
    assert_eq!(walk(&rs, &p), Verdict::Passes, "another interface");
    let rs = ruleset(
        "accept",
        &[json!({"expr": [iif("eth*"), dport(json!(51820)), {"drop": null}]})],
    );
    assert_eq!(walk(&rs, &p), Verdict::Dropped(place(Some(10))), "wildcard");
    // != inverts.
    let ne = json!({"match": {"op": "!=", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 51820}});
    let rs = ruleset("accept", &[json!({"expr": [ne, {"drop": null}]})]);
    assert_eq!(walk(&rs, &p), Verdict::Passes);
}

#[test]
fn nftables_policies_accepts_and_jumps() {
    let wan = vec!["eth0".to_owned()];
    let p = probe(&wan);
    // Policy drop without an accept: dropped by the policy.
    let rs = ruleset(
        "drop",
        &[json!({"expr": [dport(json!(22)), {"accept": null}]})],
    );
    assert_eq!(walk(&rs, &p), Verdict::Dropped(place(None)));
    // ... with an accept for the port: passes.
    let rs = ruleset(
        "drop",
        &[json!({"expr": [dport(json!(51820)), {"accept": null}]})],
    );
    assert_eq!(walk(&rs, &p), Verdict::Passes);
    // An accept behind an undecidable match (ct state): maybe.
    let ct = json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}});
    let rs = ruleset("drop", &[json!({"expr": [ct, {"accept": null}]})]);
    assert_eq!(walk(&rs, &p), Verdict::MaybeDropped(place(None)));
    // A drop behind a source address match: maybe.
    let saddr = json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "192.0.2.1"}});
    let rs = ruleset(
        "accept",
        &[json!({"expr": [saddr, dport(json!(51820)), {"drop": null}]})],
    );
    assert_eq!(walk(&rs, &p), Verdict::MaybeDropped(place(Some(10))));
    // A jump to a chain that drops.
    let rs = ruleset(
        "accept",
        &[
            json!({"expr": [dport(json!(51820)), {"jump": {"target": "sub"}}]}),
            json!({"chain": "sub", "expr": [{"drop": null}]}),
        ],
    );
    let mut sub = place(Some(11));
    sub.chain = "sub".into();
    assert_eq!(walk(&rs, &p), Verdict::Dropped(sub));
    // A verdict map.
    let vmap = json!({"vmap": {"key": {"payload": {"protocol": "udp", "field": "dport"}},
                               "data": {"set": [[53, {"accept": null}], [51820, {"drop": null}]]}}});
    let rs = ruleset("accept", &[json!({"expr": [vmap]})]);
    assert_eq!(walk(&rs, &p), Verdict::Dropped(place(Some(10))));
    // An IPv6 table does not see IPv4.
    let rs = json!({"nftables": [
        {"chain": {"family": "ip6", "table": "t", "name": "in", "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
    ]});
    assert_eq!(walk(&rs, &p), Verdict::Passes);
    // Garbage is not a panic.
    assert_eq!(walk(&json!({"x": 1}), &p), Verdict::Passes);
    assert_eq!(
        walk(&json!({"nftables": [{"rule": 5}, {"chain": []}]}), &p),
        Verdict::Passes
    );
}

#[test]
fn iptables_save_is_read() {
    let wan = vec!["eth0".to_owned()];
    let p = probe(&wan);
    let save = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\n-A INPUT -i eth0 -p udp -m udp --dport 51820 -j DROP\nCOMMIT\n";
    assert!(matches!(
        walk_iptables(save, &p),
        Verdict::Dropped(Place {
            handle: Some(2),
            ..
        })
    ));
    let save =
        "*filter\n:INPUT DROP [0:0]\n-A INPUT -p udp --dport 51000:52000 -j ACCEPT\nCOMMIT\n";
    assert_eq!(walk_iptables(save, &p), Verdict::Passes);
    let save = "*filter\n:INPUT DROP [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n";
    assert!(matches!(
        walk_iptables(save, &p),
        Verdict::Dropped(Place { handle: None, .. })
    ));
    let save = "*filter\n:INPUT DROP [0:0]\n-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT\nCOMMIT\n";
    assert!(matches!(walk_iptables(save, &p), Verdict::MaybeDropped(_)));
    assert!(place(Some(3))
        .fix(51820)
        .contains("nft delete rule inet fw input handle 3"));
}

#[test]
fn allowed_ips_overlaps_duplicates_and_default_routes() {
    let peers = vec![
        ("a".to_owned(), vec![net("10.0.0.0/16"), net("0.0.0.0/0")]),
        ("b".to_owned(), vec![net("10.0.1.0/24")]),
        ("c".to_owned(), vec![net("10.1.0.0/16")]),
    ];
    let o = overlaps(&peers);
    assert_eq!(o.len(), 1);
    assert_eq!(
        (o[0].0.as_str(), o[0].1, o[0].2.as_str(), o[0].3),
        ("a", net("10.0.0.0/16"), "b", net("10.0.1.0/24"))
    );
    assert_eq!(too_broad(&peers), vec![("a".to_owned(), net("0.0.0.0/0"))]);
    assert!(
        too_broad(&peers[..1]).is_empty(),
        "one peer with a default route is a client, not too broad"
    );

    let (k1, k2) = (
        PrivateKey::generate().public_key(),
        PrivateKey::generate().public_key(),
    );
    let text = format!(
        "[Interface]\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.5.0.0/24\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.5.0.0/24, 10.6.0.0/24\n",
        k1.to_base64(),
        k2.to_base64()
    );
    let c = crate::config::parse(&text, "t.conf").unwrap();
    let d = duplicates(&c);
    assert_eq!(d, vec![(net("10.5.0.0/24"), k1.short(), k2.short())]);
}

fn peer(endpoint: Option<&str>, keepalive: u16, hs_age: Option<u64>, tx: u64) -> PeerInfo {
    PeerInfo {
        public_key: PrivateKey::generate().public_key(),
        has_psk: false,
        endpoint: endpoint.map(|e| e.parse().unwrap()),
        allowed_ips: vec![],
        last_handshake: hs_age.map(|a| SystemTime::now() - Duration::from_secs(a)),
        rx_bytes: 0,
        tx_bytes: tx,
        persistent_keepalive: keepalive,
    }
}

#[test]
fn handshakes_are_judged_by_age_keepalive_and_endpoint() {
    let now = SystemTime::now();
    assert_eq!(
        judge_handshake(&peer(Some("1.2.3.4:5"), 25, Some(10), 0), now).0,
        Level::Ok
    );
    assert_eq!(
        judge_handshake(&peer(Some("1.2.3.4:5"), 25, Some(600), 0), now).0,
        Level::Fail
    );
    assert_eq!(
        judge_handshake(&peer(Some("1.2.3.4:5"), 0, Some(600), 0), now).0,
        Level::Ok
    );
    assert_eq!(
        judge_handshake(&peer(Some("1.2.3.4:5"), 25, None, 0), now).0,
        Level::Fail
    );
    assert_eq!(
        judge_handshake(&peer(Some("1.2.3.4:5"), 0, None, 148), now).0,
        Level::Fail
    );
    assert_eq!(
        judge_handshake(&peer(Some("1.2.3.4:5"), 0, None, 0), now).0,
        Level::Warn
    );
    assert_eq!(judge_handshake(&peer(None, 0, None, 0), now).0, Level::Ok);
}

#[test]
fn sample_addresses_and_site_prefixes() {
    assert_eq!(sample_addr(&net("10.97.0.0/24")).to_string(), "10.97.0.1");
    assert_eq!(sample_addr(&net("10.97.0.7/32")).to_string(), "10.97.0.7");
    assert_eq!(sample_addr(&net("fd00::/64")).to_string(), "fd00::1");
    let mut p = peer(None, 0, None, 0);
    p.allowed_ips = vec![net("10.95.0.2/32"), net("10.97.0.0/24")];
    assert_eq!(
        site_prefixes(&[p], &[net("10.95.0.1/24")]),
        vec![net("10.97.0.0/24")]
    );
}

#[test]
fn udp_tables_are_read() {
    let t = "  sl  local_address rem_address   st\n   0: 00000000000000000000000000000000:CAAC 00000000000000000000000000000000:0000 07\n";
    assert!(udp_table_has_port(t, 51884));
    assert!(!udp_table_has_port(t, 51820));
    assert!(!udp_table_has_port("garbage", 1));
}

#[test]
fn the_report_fails_on_a_failure_not_a_warning() {
    let c = |layer, status| Check {
        layer,
        check: "x",
        status,
        detail: "d".into(),
        fix: Some("do this".into()),
    };
    let r = Report {
        interface: "wg0".into(),
        checks: vec![c(1, Level::Ok), c(3, Level::Warn)],
    };
    assert!(!r.failed());
    assert!(r.human().contains("every layer passed (1 warning)"));
    let r = Report {
        interface: "wg0".into(),
        checks: vec![c(1, Level::Ok), c(2, Level::Fail), c(5, Level::Fail)],
    };
    assert!(r.failed());
    assert_eq!(r.failed_layers(), vec![2, 5]);
    let h = r.human();
    assert!(h.contains("FAIL") && h.contains("fix: do this"), "{h}");
    let j = r.json();
    assert_eq!(j["ok"], false);
    assert_eq!(j["layers"][1]["status"], "fail");
    assert_eq!(j["layers"][1]["checks"][0]["fix"], "do this");
}

#[test]
fn tunnel_mtu_follows_the_wan_and_the_family() {
    use crate::config::tunnel_mtu;
    assert_eq!(tunnel_mtu(1500, false), 1440);
    assert_eq!(tunnel_mtu(1500, true), 1420);
    assert_eq!(tunnel_mtu(1492, false), 1432);
    assert_eq!(tunnel_mtu(1492, true), 1412);
    assert_eq!(tunnel_mtu(9000, false), 1440, "the data path's ceiling");
    assert_eq!(tunnel_mtu(1400, false), 1340);
    assert_eq!(tunnel_mtu(100, false), 576, "never below the smallest MTU");
}
