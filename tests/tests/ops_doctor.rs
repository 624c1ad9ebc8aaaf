//! `wg-appliance doctor` against a real site-to-site lab (gateway running
//! from a wg-quick file, a router, wireguard-go on the far side): it passes
//! the healthy lab, and for each layer broken on purpose it fails that
//! layer, exits 1, and prints the fix that repairs it: a missing route
//! (4), the port blocked with nftables (2), a wrong key (3), rp_filter
//! dropping the far site's packets (4), an MTU too big for the path (5).
//! Each breakage is undone before the next, and the repaired lab passes
//! again.

mod ops_lab;

use std::time::Duration;

use ops_lab::{checks_with, Lab, LabOpts, PEER_WAN};
use wg_appliance::keys::PrivateKey;
use wg_appliance_tests::{netns_unavailable, skip, wait_until};

fn hex(k: &[u8; 32]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first failed check of `layer` named `check`, with its fix.
fn failed(report: &serde_json::Value, layer: u64, check: &str) -> (String, String) {
    let c = checks_with(report, layer, "fail")
        .into_iter()
        .find(|c| c["check"] == check)
        .unwrap_or_else(|| panic!("layer {layer} has no failed `{check}` check:\n{report:#}"));
    (
        c["detail"].as_str().unwrap_or_default().to_owned(),
        c["fix"].as_str().unwrap_or_default().to_owned(),
    )
}

fn assert_healthy(lab: &Lab, when: &str) {
    let (code, out) = lab.doctor(&[]).expect("doctor");
    assert_eq!(code, 0, "doctor fails the {when} lab:\n{out}");
    assert!(out.contains("every layer passed"), "{when}:\n{out}");
    for n in 1..=5 {
        assert!(
            out.contains(&format!("[{n}] ")),
            "layer {n} missing:\n{out}"
        );
    }
}

#[test]
fn doctor_passes_a_healthy_lab_and_finds_each_broken_layer_with_its_fix() {
    if let Some(why) = netns_unavailable() {
        skip(
            "doctor_passes_a_healthy_lab_and_finds_each_broken_layer_with_its_fix",
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
    let ifname = lab.ifname.clone();

    // Healthy: exit 0, every layer passes; JSON says the same.
    assert_healthy(&lab, "healthy");
    let (code, j) = lab.doctor_json().expect("doctor --json");
    assert_eq!(code, 0);
    assert_eq!(j["ok"], true, "{j:#}");
    assert_eq!(j["interface"], ifname.as_str());
    assert_eq!(j["layers"].as_array().map(Vec::len), Some(5));
    let (_, text) = lab.doctor(&[]).expect("doctor");
    eprintln!("doctor on the healthy lab:\n{text}");
    for k in [&lab.gw_key, &lab.peer_key] {
        assert!(
            !text.contains(k.to_base64().as_str()) && !text.contains(&hex(k.as_bytes())),
            "a private key in doctor's output"
        );
    }
    assert!(
        text.contains("far-site"),
        "friendly name from the config:\n{text}"
    );

    // (4) A missing route: the far site's prefix is not routed into the
    // tunnel any more.
    lab.gw
        .ip(&["route", "del", "10.97.0.0/24", "dev", &ifname])
        .expect("route del");
    let (code, j) = lab.doctor_json().expect("doctor");
    assert_eq!(code, 1, "{j:#}");
    assert!(j["failed_layers"]
        .as_array()
        .is_some_and(|a| a.contains(&4.into())));
    let (detail, fix) = failed(&j, 4, "route");
    assert!(detail.contains("10.97.0.0/24"), "{detail}");
    assert_eq!(
        fix.split("   ").next(),
        Some(format!("ip route replace 10.97.0.0/24 dev {ifname}").as_str())
    );
    // The fix as printed repairs it.
    let cmd: Vec<&str> = fix
        .split("   ")
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    lab.gw
        .exec(cmd[0], &cmd[1..])
        .expect("the printed fix runs");
    assert_healthy(&lab, "route repaired");

    // (2) The listen port blocked with nftables.
    let table = format!("wgt{}", std::process::id());
    lab.gw
        .exec("nft", &["add", "table", "inet", &table])
        .expect("nft table");
    lab.gw
        .exec(
            "nft",
            &[
                "add",
                "chain",
                "inet",
                &table,
                "input",
                "{ type filter hook input priority 0; policy accept; }",
            ],
        )
        .expect("nft chain");
    lab.gw
        .exec(
            "nft",
            &[
                "add", "rule", "inet", &table, "input", "udp", "dport", "51820", "drop",
            ],
        )
        .expect("nft rule");
    let (code, j) = lab.doctor_json().expect("doctor");
    assert_eq!(code, 1, "{j:#}");
    let (detail, fix) = failed(&j, 2, "nftables");
    assert!(
        detail.contains(&table) && detail.contains("udp dport 51820 drop"),
        "{detail}"
    );
    assert!(
        fix.starts_with(&format!("nft delete rule inet {table} input handle ")),
        "{fix}"
    );
    let cmd: Vec<&str> = fix
        .split("   ")
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    lab.gw
        .exec(cmd[0], &cmd[1..])
        .expect("the printed fix runs");
    assert_healthy(&lab, "port unblocked");
    lab.gw
        .exec("nft", &["delete", "table", "inet", &table])
        .expect("nft cleanup");

    // (4) rp_filter: the far site's prefix routed back out of the LAN
    // (asymmetric), strict reverse-path filtering drops what the tunnel
    // brings from it.
    lab.gw
        .ip(&[
            "route",
            "replace",
            "10.97.0.0/24",
            "via",
            ops_lab::LAN_HOST,
            "dev",
            &lab.lan_link.a,
        ])
        .expect("asymmetric route");
    lab.gw
        .exec("sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=1"])
        .expect("rp_filter");
    let (code, j) = lab.doctor_json().expect("doctor");
    assert_eq!(code, 1, "{j:#}");
    let (detail, fix) = failed(&j, 4, "rp_filter");
    assert!(
        detail.contains("10.97.0.0/24") && detail.contains("rp_filter"),
        "{detail}"
    );
    assert!(
        fix.contains(&format!("net.ipv4.conf.{ifname}.rp_filter=2")),
        "{fix}"
    );
    let (detail, _) = failed(&j, 4, "route");
    assert!(
        detail.contains("asymmetric") && detail.contains(&lab.lan_link.a),
        "{detail}"
    );
    lab.gw
        .exec("sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=0"])
        .expect("rp_filter off");
    lab.gw
        .ip(&["route", "replace", "10.97.0.0/24", "dev", &ifname])
        .expect("route back");
    assert_healthy(&lab, "rp_filter repaired");

    // (3) A wrong key: the far site's peer replaced by one with a key the
    // far side does not have.
    let right = lab.peer_key.public_key().to_base64();
    let wrong = PrivateKey::generate().public_key().to_base64();
    let peer_args = |key: &str| -> Vec<String> {
        [
            "set",
            &ifname,
            "peer",
            key,
            "allowed-ips",
            "10.95.0.2/32,10.97.0.0/24",
            "endpoint",
            &format!("{PEER_WAN}:{}", ops_lab::PEER_PORT),
            "persistent-keepalive",
            "10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    lab.gw
        .exec("wg", &["set", &ifname, "peer", &right, "remove"])
        .expect("remove peer");
    let a = peer_args(&wrong);
    lab.gw
        .exec("wg", &a.iter().map(String::as_str).collect::<Vec<_>>())
        .expect("wrong peer");
    std::thread::sleep(Duration::from_secs(1));
    let (code, j) = lab.doctor_json().expect("doctor");
    assert_eq!(code, 1, "{j:#}");
    let (detail, fix) = failed(&j, 3, "handshake");
    assert!(
        detail.contains(&wrong[..8]) && detail.contains("never completed a handshake"),
        "{detail}"
    );
    assert!(
        fix.contains("the keys do not match") && fix.contains(&lab.gw_key.public_key().to_base64()),
        "{fix}"
    );
    lab.gw
        .exec("wg", &["set", &ifname, "peer", &wrong, "remove"])
        .expect("remove wrong");
    let a = peer_args(&right);
    lab.gw
        .exec("wg", &a.iter().map(String::as_str).collect::<Vec<_>>())
        .expect("right peer");
    lab.warm_up(Duration::from_secs(30))
        .expect("tunnel back with the right key");
    assert_healthy(&lab, "key repaired");

    // (5) An MTU too big for the path: the router's link to the far side
    // takes 1400 bytes, so a 1420-byte tunnel MTU does not fit (1340 does,
    // over IPv4).
    for (ns, dev) in [(&lab.router, &lab.far_link.a), (&lab.peer, &lab.far_link.b)] {
        ns.ip(&["link", "set", dev, "mtu", "1400"]).expect("mtu");
    }
    let (code, j) = lab.doctor_json().expect("doctor");
    assert_eq!(code, 1, "{j:#}");
    let (detail, fix) = failed(&j, 5, "pmtu");
    assert!(detail.contains("path MTU to 10.98.0.2 is 1400"), "{detail}");
    assert!(fix.starts_with("MTU = 1340 in [Interface]"), "{fix}");
    // Without probing, doctor cannot see the narrow link behind the router.
    let (code, out) = lab.doctor(&["--no-probe"]).expect("doctor");
    assert_eq!(code, 0, "--no-probe trusts the egress MTU:\n{out}");
    for (ns, dev) in [(&lab.router, &lab.far_link.a), (&lab.peer, &lab.far_link.b)] {
        ns.ip(&["link", "set", dev, "mtu", "1500"])
            .expect("mtu back");
    }
    lab.gw.ip(&["route", "flush", "cache"]).expect("flush");
    wait_until(Duration::from_secs(10), "doctor to pass again", || {
        lab.doctor(&[]).is_ok_and(|(c, _)| c == 0)
    })
    .expect("healthy after the MTU repair");
}

#[test]
fn doctor_without_a_daemon_fails_layer_1_with_the_fix() {
    if let Some(why) = netns_unavailable() {
        skip("doctor_without_a_daemon_fails_layer_1_with_the_fix", &why);
        return;
    }
    let bin = wg_appliance_tests::appliance_bin().expect("binary");
    let name = wg_appliance_tests::unique_name("n");
    let out = std::process::Command::new(&bin)
        .args(["doctor", &name, "--json"])
        .output()
        .expect("doctor");
    assert_eq!(out.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let (detail, fix) = failed(&j, 1, "daemon");
    assert!(detail.contains(&name), "{detail}");
    assert!(fix.contains("wg-appliance up"), "{fix}");
    for n in 2..=5 {
        assert!(
            !checks_with(&j, n, "skip").is_empty(),
            "layer {n} says it was not checked"
        );
    }
}
