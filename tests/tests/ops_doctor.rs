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
use wg_appliance_tests::{netns_unavailable, proc::Bg, skip, wait_until};

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

/// `health`: one line and exit 0 on a working gateway; each requirement it
/// is given, XDP torn off the WAN and a stopped daemon each turn it to
/// exit 1 with the problem and its fix named.
#[test]
fn health_passes_a_working_gateway_and_names_what_fails() {
    if let Some(why) = netns_unavailable() {
        skip("health_passes_a_working_gateway_and_names_what_fails", &why);
        return;
    }
    let lab = Lab::new(LabOpts {
        forwarding: true,
        ..LabOpts::default()
    })
    .expect("lab");
    lab.warm_up(Duration::from_secs(20)).expect("tunnel up");
    let ifname = lab.ifname.clone();
    let wan = lab.wan_link.a.clone();
    let health = |extra: &[&str]| {
        let mut args = vec!["health", ifname.as_str()];
        args.extend_from_slice(extra);
        let f = lab.run(&args).expect("health");
        (f.status.code(), f.stdout.trim_end().to_owned())
    };

    let (code, line) = health(&[]);
    assert_eq!(code, Some(0), "{line}");
    assert!(
        line.starts_with(&format!(
            "healthy: {ifname}: 1 peer (1 with a handshake in the last 180 s), XDP native on {wan}, data path "
        )),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    let (code, line) = health(&["--min-peers", "1", "--max-handshake-age", "60"]);
    assert_eq!(code, Some(0), "{line}");

    let (code, line) = health(&["--min-peers", "2"]);
    assert_eq!(code, Some(1), "{line}");
    assert_eq!(
        line,
        format!(
            "unhealthy: {ifname}: 1 peer, fewer than --min-peers 2; fix: check the peer source (`wg show {ifname} peers`)"
        )
    );

    // --announce holds an address on lo while healthy and takes it away
    // on SIGTERM (a service stopping withdraws the route).
    let anycast = "198.18.99.1";
    let held = || {
        lab.gw
            .ip(&["-o", "addr", "show", "dev", "lo"])
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{anycast}/32")))
            .unwrap_or(false)
    };
    let bin = lab.bin.display().to_string();
    let announce = |what: &str| {
        let a = Bg::spawn(
            &lab.gw,
            &bin,
            &[
                "health",
                &ifname,
                "--announce",
                &format!("{anycast}/32"),
                "--interval",
                "1",
            ],
        )
        .expect("announcer");
        wait_until(Duration::from_secs(10), what, held).expect("announced");
        a
    };
    let a = announce("the anycast address on lo");
    a.signal(libc::SIGTERM).expect("SIGTERM");
    let f = a.finish(Duration::from_secs(10)).expect("announcer exits");
    assert_eq!(f.status.code(), Some(0), "{} {}", f.stdout, f.stderr);
    assert!(!held(), "the address outlived the announcer:\n{}", f.stdout);
    assert!(
        f.stdout.starts_with(&format!(
            "announced {anycast}/32 on lo: healthy: {ifname}: "
        )) && f
            .stdout
            .contains(&format!("withdrawn {anycast}/32 on lo: stopping")),
        "{}",
        f.stdout
    );
    let a = announce("the anycast address on lo again");

    // XDP gone from the WAN (as a crashed attach or a stray `ip link`
    // would leave it): the kernel's word, not the daemon's, decides, and
    // the announcer withdraws.
    detach_xdp(&lab.gw, &wan);
    wait_until(Duration::from_secs(10), "the address withdrawn", || !held())
        .expect("withdrawn when unhealthy");
    drop(a);
    let (code, line) = health(&[]);
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.contains(&format!("XDP is not attached on {wan} (the data path is gone); fix: `wg-appliance down {ifname}` and up again")),
        "{line}"
    );

    lab.gw
        .exec(&lab.bin.display().to_string(), &["down", &ifname])
        .expect("down");
    let (code, line) = health(&[]);
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.starts_with(&format!("unhealthy: {ifname}: no daemon answers"))
            && line.contains(&format!("wg-appliance up {ifname}")),
        "{line}"
    );
}

/// Detaches the XDP program of `dev` (in `ns`) the way a crash of the
/// attaching code or a stray tool would leave it: the daemon attached it
/// through a BPF link, which `ip link set … xdp off` cannot replace, so
/// the link itself is detached (found by the program it holds).
fn detach_xdp(ns: &wg_appliance_tests::Netns, dev: &str) {
    let json = |out: std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).expect("bpftool JSON")
    };
    let net = json(
        ns.exec("bpftool", &["-j", "net", "show", "dev", dev])
            .expect("bpftool net show"),
    );
    let prog = net[0]["xdp"][0]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no XDP program on {dev}: {net}"));
    let links = json(
        ns.exec("bpftool", &["-j", "link", "show"])
            .expect("bpftool link show"),
    );
    let link = links
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["prog_id"].as_u64() == Some(prog) && l["type"] == "xdp")
        .and_then(|l| l["id"].as_u64())
        .unwrap_or_else(|| panic!("no XDP link holds program {prog}"));
    ns.exec("bpftool", &["link", "detach", "id", &link.to_string()])
        .expect("bpftool link detach");
}
