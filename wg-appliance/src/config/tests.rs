//! Tests for `config`: the full fixture, every error message, the round
//! trip and the key-file permission check.

use super::*;

const FULL: &str = include_str!("../../tests/fixtures/config/full.conf");
const PRIV: &str = "qJr/LfLwlzc07fkHwNpCnpuw2OUYC08DCWCMIvWXB3g=";
const PUB1: &str = "ylLYnMk+IwoFAcIJ1uTck3Cje0Jbm6N88+3xBNavw1c=";
const PUB2: &str = "wgJ2K0g8dFRJjybnT4X1ltl8x2hTyepuTZV5D+4oBnY=";
const PSK: &str = "grUDYUrB6qsvj4pQb1i0SDDJeKNO2LxKxeU+Ou6avD4=";

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Parse `text` expecting an error; return its message.
fn err(text: &str) -> String {
    match parse(text, "wg0.conf") {
        Ok(c) => panic!("expected an error, parsed {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn iface(body: &str) -> String {
    format!("[Interface]\n{body}\n")
}

fn peer(body: &str) -> String {
    format!("[Interface]\n\n[Peer]\nPublicKey = {PUB1}\n{body}\n")
}

fn appliance(body: &str) -> String {
    format!("[Appliance]\n{body}\n")
}

#[test]
fn full_fixture_parses_every_key() {
    let c = parse(FULL, "full.conf").unwrap();
    let i = &c.interface;
    assert_eq!(i.private_key, Some(PRIV.parse().unwrap()));
    assert_eq!(i.listen_port, Some(51820));
    assert_eq!(i.fwmark, Some(0xca6c));
    assert_eq!(
        i.addresses,
        vec![
            net("10.8.0.1/24"),
            net("fd00:8::1/64"),
            net("192.168.77.1/32")
        ]
    );
    assert_eq!(i.dns, vec!["10.8.0.53", "example.lan"]);
    assert_eq!(i.mtu, Some(1420));
    assert_eq!(i.table.as_deref(), Some("off"));
    assert_eq!(i.pre_up, vec!["echo pre-up"]);
    assert_eq!(
        i.post_up,
        vec!["iptables -A FORWARD -i %i -j ACCEPT", "echo second"]
    );
    assert_eq!(i.pre_down, vec!["echo pre-down"]);
    assert_eq!(i.post_down, vec!["iptables -D FORWARD -i %i -j ACCEPT"]);
    assert!(i.save_config);

    assert_eq!(c.peers.len(), 2);
    let p = &c.peers[0];
    assert_eq!(p.public_key, PUB1.parse().unwrap());
    assert_eq!(p.preshared_key, Some(PSK.parse().unwrap()));
    // Host bits masked, repeated key accumulated.
    assert_eq!(
        p.allowed_ips,
        vec![net("10.8.0.2/32"), net("10.9.0.0/24"), net("fd00:8::2/128")]
    );
    assert_eq!(
        p.endpoint,
        Some(Endpoint {
            host: "fd00::1".into(),
            port: 51820
        })
    );
    assert_eq!(p.persistent_keepalive, Some(25));
    assert_eq!(p.friendly_name.as_deref(), Some("laptop"));

    let p = &c.peers[1];
    assert_eq!(p.public_key, PUB2.parse().unwrap());
    assert_eq!(p.preshared_key, None);
    assert_eq!(
        p.endpoint,
        Some(Endpoint {
            host: "vpn.example.com".into(),
            port: 51821
        })
    );
    assert_eq!(p.persistent_keepalive, None);
    assert_eq!(p.friendly_name.as_deref(), Some("Phone of Ana"));

    let a = &c.appliance;
    assert_eq!(a.wan, vec!["eth0", "eth1"]);
    assert_eq!(a.xdp_mode, XdpModeSetting::Native);
    assert_eq!(a.steering, Steering::PerPacket);
    assert_eq!(a.cpus, Some(vec![0, 1, 2, 3, 6]));
    assert_eq!(a.mss, MssSetting::Value(1360));
    assert_eq!(a.handshake_rate, Some(20));
    assert_eq!(
        a.metrics,
        MetricsSetting::Listen("[::1]:9586".parse().unwrap())
    );
}

#[test]
fn defaults_and_minimal_file() {
    let c = parse(
        &format!("[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\n"),
        "x",
    )
    .unwrap();
    assert_eq!(c.appliance, ApplianceConfig::default());
    assert_eq!(
        c.appliance.metrics,
        MetricsSetting::Listen("127.0.0.1:9586".parse().unwrap())
    );
    assert_eq!(c.interface.listen_port, None);
    assert!(!c.interface.save_config);
    assert!(c.peers[0].allowed_ips.is_empty());
    assert_eq!(parse("", "x").unwrap(), Config::default());
}

#[test]
fn wg_value_forms() {
    let c = parse(&iface("FwMark = off\nListenPort = 0"), "x").unwrap();
    assert_eq!(c.interface.fwmark, None);
    assert_eq!(c.interface.listen_port, None);
    let c = parse(&iface("FwMark = 51820"), "x").unwrap();
    assert_eq!(c.interface.fwmark, Some(51820));
    let c = parse(
        &peer("PersistentKeepalive = 0\nEndpoint = 192.0.2.1:51820"),
        "x",
    )
    .unwrap();
    assert_eq!(c.peers[0].persistent_keepalive, None);
    assert_eq!(
        c.peers[0].endpoint.as_ref().unwrap().to_string(),
        "192.0.2.1:51820"
    );
    let c = parse(
        &appliance("Mss = off\nMetrics = off\nSteering = PER_PEER"),
        "x",
    )
    .unwrap();
    assert_eq!(c.appliance.mss, MssSetting::Off);
    assert_eq!(c.appliance.metrics, MetricsSetting::Off);
    assert_eq!(c.appliance.steering, Steering::PerPeer);
}

#[test]
fn friendly_name_inside_and_before_peer() {
    let text = format!(
        "[Interface]\n[Peer]\nPublicKey = {PUB1}\n# friendly_name = inside-after-key\n\n\
         # friendly_name=above\n[Peer]\nPublicKey = {PUB2}\n"
    );
    let c = parse(&text, "x").unwrap();
    assert_eq!(
        c.peers[0].friendly_name.as_deref(),
        Some("inside-after-key")
    );
    assert_eq!(c.peers[1].friendly_name.as_deref(), Some("above"));
    // Not directly preceding (blank line between): not attached.
    let text = format!("# friendly_name = lost\n\n[Peer]\nPublicKey = {PUB1}\n");
    assert_eq!(parse(&text, "x").unwrap().peers[0].friendly_name, None);
}

#[test]
fn round_trip() {
    let c = parse(FULL, "full.conf").unwrap();
    let text = c.to_wg_quick();
    let back = parse(&text, "saved.conf").unwrap();
    assert_eq!(back, c, "saved text:\n{text}");
    // And a second trip yields the same text.
    assert_eq!(back.to_wg_quick(), text);
    // The default appliance section is not written at all.
    let minimal = parse(&format!("[Peer]\nPublicKey = {PUB1}\n"), "x").unwrap();
    assert!(!minimal.to_wg_quick().contains("[Appliance]"));
    assert_eq!(parse(&minimal.to_wg_quick(), "x").unwrap(), minimal);
}

#[test]
fn debug_hides_keys() {
    let c = parse(FULL, "full.conf").unwrap();
    let d = format!("{c:?}");
    assert!(
        !d.contains(PRIV) && !d.contains(PSK) && !d.contains(PUB1),
        "{d}"
    );
}

#[test]
fn error_bad_port() {
    assert_eq!(
        err("[Interface]\n\n\n\n\n\nListenPort = 70000\n"),
        "wg0.conf:7: ListenPort = 70000: not a UDP port (expected 1-65535). Fix: choose a port such as 51820"
    );
    assert!(err(&iface("ListenPort = +5")).contains("not a UDP port"));
}

#[test]
fn error_unknown_key_suggests() {
    assert_eq!(
        err(&peer("Endpiont = 192.0.2.1:51820")),
        "wg0.conf:5: unknown key \"Endpiont\" in [Peer] (did you mean \"Endpoint\"?). \
         Fix: use one of the keys of [Peer]: PublicKey, PresharedKey, AllowedIPs, Endpoint, PersistentKeepalive"
    );
    let m = err(&peer("Address = 10.0.0.1/24"));
    assert!(m.contains("\"Address\" belongs in [Interface]"), "{m}");
    let m = err(&iface("Frobnicate = 1"));
    assert!(
        m.starts_with("wg0.conf:2: unknown key \"Frobnicate\" in [Interface]. Fix: use one of"),
        "{m}"
    );
}

#[test]
fn error_unknown_section() {
    assert_eq!(
        err("[Interface]\n[Peeer]\n"),
        "wg0.conf:2: unknown section [Peeer] (did you mean [Peer]?) \
         (expected [Interface], [Peer] or [Appliance]). Fix: rename or remove the section"
    );
    assert!(err("[Interface\n").contains("wg0.conf:1: section header does not end with `]`"));
}

#[test]
fn error_bad_key_never_echoes_it() {
    let bad = &PRIV[..43];
    let m = err(&iface(&format!("PrivateKey = {bad}")));
    assert_eq!(
        m,
        "wg0.conf:2: PrivateKey: private key has 43 characters (expected 44 characters of base64 \
         ending in `=`). Fix: paste the whole key printed by `wg genkey`"
    );
    assert!(!m.contains(bad));
    let bad = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LC*=";
    let m = err(&format!("[Peer]\nPublicKey = {bad}\n"));
    assert!(
        m.contains("wg0.conf:2: PublicKey: public key is not valid base64"),
        "{m}"
    );
    assert!(!m.contains(bad));
    let m = err(&peer("PresharedKey = short"));
    assert!(
        m.contains("PresharedKey: preshared key has 5 characters") && m.contains("wg genpsk"),
        "{m}"
    );
    assert!(!m.contains("short"));
}

#[test]
fn error_bad_cidr() {
    assert_eq!(
        err(&peer("AllowedIPs = 10.0.0.0/24, 10.0.0.0/33")),
        "wg0.conf:5: AllowedIPs = 10.0.0.0/33: not a CIDR prefix (expected prefixes such as \
         10.0.0.0/24 or fd00::/64, comma-separated). Fix: check the address and the prefix length \
         (0-32 for IPv4, 0-128 for IPv6)"
    );
    let m = err(&iface("Address = 10.0.0.300/24"));
    assert!(
        m.starts_with("wg0.conf:2: Address = 10.0.0.300/24: not an address with prefix length"),
        "{m}"
    );
}

#[test]
fn error_bad_endpoint() {
    let cases = [
        (
            "Endpoint = fd00::1:51820",
            "is an IPv6 address without brackets",
            "[fd00::1]:51820",
        ),
        ("Endpoint = 192.0.2.1", "has no port", "add the port"),
        ("Endpoint = 192.0.2.1:0", "port is not 1-65535", "51820"),
        (
            "Endpoint = [fd00::1]51820",
            "has no `:port` after `]`",
            "add the port",
        ),
        (
            "Endpoint = [nope]:1",
            "not an IPv6 address",
            "brackets only",
        ),
        (
            "Endpoint = bad host:1",
            "neither an IP address nor a DNS name",
            "check the spelling",
        ),
    ];
    for (line, problem, fix) in cases {
        let m = err(&peer(line));
        assert!(m.starts_with("wg0.conf:5: Endpoint = "), "{m}");
        assert!(
            m.contains(problem) && m.contains(fix) && m.contains("(expected host:port"),
            "{m}"
        );
    }
    let e: Endpoint = "[fe80::1%eth0]:51820".parse().unwrap();
    assert_eq!(e.host, "fe80::1%eth0");
    assert_eq!(e.to_string(), "[fe80::1%eth0]:51820");
}

#[test]
fn endpoint_resolves_literals() {
    let e: Endpoint = "[::1]:51820".parse().unwrap();
    assert_eq!(e.resolve().unwrap(), "[::1]:51820".parse().unwrap());
    let e: Endpoint = "127.0.0.1:9".parse().unwrap();
    assert_eq!(e.resolve().unwrap(), "127.0.0.1:9".parse().unwrap());
}

#[test]
fn error_bad_keepalive() {
    assert_eq!(
        err(&peer("PersistentKeepalive = 70000")),
        "wg0.conf:5: PersistentKeepalive = 70000: not a keepalive interval (expected off or \
         1-65535 seconds). Fix: use 25 behind NAT, or `off`"
    );
    assert!(err(&peer("PersistentKeepalive = -1")).contains("not a keepalive interval"));
}

#[test]
fn error_duplicate_key() {
    assert_eq!(
        err(&iface("MTU = 1420\nmtu = 1400")),
        "wg0.conf:3: MTU given twice in [Interface] (first on line 2; expected at most once). \
         Fix: delete one of the two lines"
    );
    assert!(err(&peer("Endpoint = a:1\nEndpoint = b:1")).contains("Endpoint given twice in [Peer]"));
    assert!(err(&appliance("Mss = auto\nMSS = off")).contains("Mss given twice in [Appliance]"));
    // Reopening [Interface] does not reset the count.
    assert!(
        err("[Interface]\nMTU = 1420\n[Appliance]\n[Interface]\nMTU = 1420\n")
            .contains("wg0.conf:5: MTU given twice")
    );
}

#[test]
fn error_missing_public_key_and_duplicate_peer() {
    assert_eq!(
        err("[Interface]\n[Peer]\nAllowedIPs = 10.0.0.0/24\n[Peer]\n"),
        "wg0.conf:2: [Peer] has no PublicKey (expected `PublicKey = <44 base64 characters>` in \
         every [Peer]). Fix: add the peer's public key, as printed by `wg pubkey`"
    );
    let dup = format!("[Peer]\nPublicKey = {PUB1}\n[Peer]\nPublicKey = {PUB1}\n");
    let m = err(&dup);
    assert_eq!(
        m,
        "wg0.conf:4: PublicKey repeats the peer on line 2 (expected each peer once). \
         Fix: merge the two [Peer] sections into one"
    );
    assert!(!m.contains(PUB1));
}

#[test]
fn error_bad_mtu() {
    assert_eq!(
        err(&iface("MTU = 100")),
        "wg0.conf:2: MTU = 100: not a usable MTU (expected 576-9000). Fix: use 1420 (the \
         WireGuard default) or delete the line to let wg-appliance choose"
    );
    assert!(err(&iface("MTU = big")).contains("not a usable MTU"));
}

#[test]
fn error_other_interface_values() {
    assert!(err(&iface("FwMark = 0xZZ")).contains("FwMark = 0xZZ: not a firewall mark"));
    assert!(err(&iface("FwMark = 4294967296")).contains("not a firewall mark"));
    assert!(err(&iface("SaveConfig = yes"))
        .contains("SaveConfig = yes: not a boolean (expected true or false)"));
    assert!(err(&iface("Table = my table")).contains("not a routing table"));
    assert!(err(&iface("DNS = 1.1.1.1 8.8.8.8")).contains("contains a space"));
    assert!(err(&iface("PostUp =")).contains("PostUp: is empty"));
}

#[test]
fn error_bad_appliance_values() {
    let cases = [
        (
            "XdpMode = turbo",
            "XdpMode = turbo: not an XDP mode (expected auto, native or generic)",
        ),
        (
            "Steering = random",
            "Steering = random: not a steering policy (expected per-peer or per-packet)",
        ),
        ("Cpus = 3-1", "Cpus = 3-1: range 3-1 runs backwards"),
        ("Cpus = 0-99999", "CPU 99999 is above 8191"),
        ("Cpus = a", "\"a\" is not a CPU number or range"),
        ("Cpus =", "\"\" is not a CPU number or range"),
        (
            "Mss = 100",
            "Mss = 100: not an MSS (expected auto, off or 536-9000)",
        ),
        ("HandshakeRate = 0", "HandshakeRate = 0: not a rate"),
        (
            "Metrics = localhost",
            "Metrics = localhost: not a listen address",
        ),
        ("Metrics = 127.0.0.1:0", "not a listen address"),
        (
            "WAN = eth0, way-too-long-ifname0",
            "WAN = way-too-long-ifname0: not an interface name",
        ),
    ];
    for (line, want) in cases {
        let m = err(&appliance(line));
        assert!(
            m.starts_with("wg0.conf:2: ") && m.contains(want) && m.contains(". Fix: "),
            "{line}: {m}"
        );
    }
}

#[test]
fn error_structure() {
    assert_eq!(
        err("PrivateKey = x\n"),
        "wg0.conf:1: PrivateKey is outside any section (expected it under [Interface], [Peer] or \
         [Appliance]). Fix: add the right section header above it"
    );
    let m = err("[Interface]\nthis is not a key\n");
    assert!(m.starts_with("wg0.conf:2: line has no `=`"), "{m}");
    assert!(!m.contains("this is not"));
    assert!(err("[Interface]\n = 3\n").contains("line has no key before `=`"));
    let m = err(&format!(
        "[Peer]\nPublicKey = {PUB1}\n# friendly_name = a\n# friendly_name = b\n"
    ));
    assert!(
        m.contains("wg0.conf:4: friendly_name given twice in [Peer] (first on line 3"),
        "{m}"
    );
}

#[test]
fn values_in_messages_are_cut_short() {
    let long = "x".repeat(500);
    let m = err(&appliance(&format!("XdpMode = {long}")));
    assert!(m.len() < 300, "{m}");
}

#[test]
fn arbitrary_text_never_panics() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::default();
    let strat = proptest::collection::vec(
        prop_oneof![
            Just("[Interface]".to_string()),
            Just("[Peer]".to_string()),
            Just("[Appliance]".to_string()),
            Just(format!("PublicKey = {PUB1}")),
            Just("# friendly_name = n".to_string()),
            "[A-Za-z]{1,12} ?= ?[ -~]{0,30}",
            "[ -~]{0,40}",
            "\\PC{0,20}",
        ],
        0..12,
    );
    runner
        .run(&strat, |lines| {
            let text = lines.join("\n");
            if let Ok(c) = parse(&text, "fuzz") {
                // Whatever parses, round-trips.
                prop_assert_eq!(parse(&c.to_wg_quick(), "fuzz").unwrap(), c);
            }
            Ok(())
        })
        .unwrap();
}

#[cfg(unix)]
mod files {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// A temporary file removed on drop, even when the test fails.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(tag: &str, text: &str, mode: u32) -> Self {
            let path = std::env::temp_dir().join(format!(
                "wg-appliance-config-{}-{tag}.conf",
                std::process::id()
            ));
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn load_refuses_world_readable_key_file() {
        let f = TempFile::new("open", FULL, 0o644);
        let m = load(&f.0).unwrap_err().to_string();
        let p = f.0.display();
        assert_eq!(
            m,
            format!(
                "{p}: holds a PrivateKey but has mode 0644, so other users can access it \
                 (expected 0600). Fix: chmod 600 {p}"
            )
        );
        // Group-readable is refused too.
        let f = TempFile::new("group", FULL, 0o640);
        assert!(matches!(
            load(&f.0),
            Err(ConfigError::InsecurePermissions { mode: 0o640, .. })
        ));
    }

    #[test]
    fn load_accepts_private_file_and_keyless_public_file() {
        let f = TempFile::new("private", FULL, 0o600);
        assert_eq!(load(&f.0).unwrap(), parse(FULL, "x").unwrap());
        let text = format!("[Interface]\nListenPort = 1\n[Peer]\nPublicKey = {PUB1}\n");
        let f = TempFile::new("nokey", &text, 0o644);
        assert!(load(&f.0).is_ok());
        // Errors from a loaded file name the path.
        let f = TempFile::new("bad", "[Interface]\nMTU = 1\n", 0o600);
        let m = load(&f.0).unwrap_err().to_string();
        assert!(
            m.starts_with(&format!("{}:2: MTU = 1", f.0.display())),
            "{m}"
        );
    }

    #[test]
    fn load_missing_file_names_it() {
        let m = load(Path::new("/nonexistent/wg9.conf"))
            .unwrap_err()
            .to_string();
        assert!(
            m.starts_with("/nonexistent/wg9.conf: cannot read:") && m.contains("Fix:"),
            "{m}"
        );
    }
}

#[test]
fn messages_match_range_constants() {
    // Messages spell the ranges out as literals; keep them in step.
    let range = |r: &std::ops::RangeInclusive<u16>| format!("{}-{}", r.start(), r.end());
    assert_eq!(range(&MTU_RANGE), "576-9000");
    assert_eq!(range(&MSS_RANGE), "536-9000");
    assert_eq!(MAX_CPU, 8191);
}

#[test]
fn mtu_left_out_comes_from_the_wan_and_the_underlay_family() {
    let wan = |m: u32| vec![("eth0".to_owned(), m)];
    let v4: Vec<SocketAddr> = vec!["192.0.2.1:51820".parse().unwrap()];
    let v6: Vec<SocketAddr> = vec!["[2001:db8::1]:51820".parse().unwrap()];
    let both: Vec<SocketAddr> = v4.iter().chain(&v6).copied().collect();
    assert_eq!(auto_mtu(&wan(1500), &v4).mtu, 1440);
    assert_eq!(auto_mtu(&wan(1500), &v6).mtu, 1420);
    assert_eq!(
        auto_mtu(&wan(1500), &both).mtu,
        1420,
        "one IPv6 peer decides"
    );
    assert_eq!(
        auto_mtu(&wan(1500), &[]).mtu,
        1420,
        "no endpoint: either family may come"
    );
    assert_eq!(auto_mtu(&wan(1492), &v4).mtu, 1432, "PPPoE");
    assert_eq!(auto_mtu(&wan(1400), &v6).mtu, 1320);
    let a = auto_mtu(&wan(9000), &v4);
    assert_eq!(a.mtu, DATAPATH_MAX_MTU);
    assert!(a.reason.contains("capped"), "{}", a.reason);
    let two = vec![("eth0".to_owned(), 1500), ("ppp0".to_owned(), 1492)];
    let a = auto_mtu(&two, &v4);
    assert_eq!(a.mtu, 1432, "the narrowest WAN");
    assert!(
        a.reason.contains("ppp0") && a.reason.contains("IPv4"),
        "{}",
        a.reason
    );
    assert_eq!(
        auto_mtu(&[], &v4).mtu,
        1420,
        "nothing known: WireGuard's default"
    );
}

#[test]
fn forwarding_return_routing_and_masquerade_parse_and_round_trip() {
    let c = parse(
        "[Appliance]\nForwardIP = on\nReturnRouting = 200\nMasquerade = 192.168.1.7/24, fd00::/64\n",
        "wg0.conf",
    )
    .unwrap();
    let a = &c.appliance;
    assert!(a.forward_ip);
    assert_eq!(a.return_routing, ReturnRouting::Table(200));
    assert_eq!(
        a.masquerade,
        Masquerade::Sources(vec![net("192.168.1.0/24"), net("fd00::/64")])
    );
    assert_eq!(parse(&c.to_wg_quick(), "x").unwrap(), c);
    let c = parse(
        "[Appliance]\nReturnRouting = on\nMasquerade = on\nForwardIP = off\n",
        "wg0.conf",
    )
    .unwrap();
    assert_eq!(c.appliance.return_routing, ReturnRouting::Auto);
    assert_eq!(c.appliance.masquerade, Masquerade::All);
    assert!(!c.appliance.forward_ip);
    assert_eq!(parse(&c.to_wg_quick(), "x").unwrap(), c);
    for (text, needle) in [
        ("ReturnRouting = 254", "a table number other than"),
        ("ReturnRouting = maybe", "Fix:"),
        ("Masquerade = 10.0.0.0/33", "not on, off or a source prefix"),
        ("Masquerade = ,", "is empty"),
        ("ForwardIP = 2", "on or off"),
    ] {
        let m = err(&format!("[Appliance]\n{text}\n"));
        assert!(
            m.contains(needle) && m.contains("wg0.conf:2"),
            "{text}: {m}"
        );
    }
}

#[test]
fn peer_source_parses_round_trips_and_names_what_is_wrong() {
    let c = parse(
        "[Appliance]\nPeerSource = etcd://10.0.0.5:2379,[fd00::5]:2379,etcd3/wg-fleet/\nPeerSourceCa = /etc/wireguard/ca.pem\nPeerSourceCert = /etc/wireguard/c.pem\nPeerSourceKey = /etc/wireguard/c.key\nPeerSourceUser = gw\nPeerSourcePasswordFile = /etc/wireguard/etcd.pass\nPeerSourceName = wg0\n",
        "wg0.conf",
    )
    .unwrap();
    let src = c.appliance.peer_source.clone().expect("a peer source");
    assert_eq!(
        src.endpoints,
        ["10.0.0.5:2379", "[fd00::5]:2379", "etcd3:2379"]
    );
    assert_eq!(src.prefix, "/wg-fleet");
    assert_eq!(src.peers_prefix("wgx"), "/wg-fleet/wg0/peers/");
    assert_eq!(parse(&c.to_wg_quick(), "x").unwrap(), c);
    let bare = parse("[Appliance]\nPeerSource = etcd://h\n", "wg0.conf").unwrap();
    assert_eq!(
        bare.appliance.peer_source.unwrap().peers_prefix("wg1"),
        "/wg1/peers/"
    );
    for (text, needle) in [
        ("PeerSource = http://h:2379/x", "not an etcd:// URL"),
        (
            "PeerSource = etcd://u:p@h:2379/x",
            "credentials do not go in the URL",
        ),
        ("PeerSource = etcd://h:99999/x", "bad port"),
        ("PeerSource = etcd://,h/x", "an empty host"),
        ("PeerSource = etcd://fd00::1/x", "goes in brackets"),
        ("PeerSourceCa = ca.pem", "not an absolute path"),
        ("PeerSourceName = a/b", "not an interface name"),
        ("PeerSourceUser = gw", "is given without PeerSource"),
    ] {
        let m = err(&format!("[Appliance]\n{text}\n"));
        assert!(m.contains(needle) && m.contains("Fix:"), "{text}: {m}");
    }
    for (text, needle) in [
        ("PeerSourceCert = /c.pem", "needs its partner"),
        (
            "PeerSourceCert = /c.pem\nPeerSourceKey = /c.key",
            "PeerSourceCa is missing",
        ),
        ("PeerSourceUser = gw", "in clear: PeerSourceCa is missing"),
        (
            "PeerSourceCa = /ca.pem\nPeerSourceUser = gw",
            "needs its partner",
        ),
    ] {
        let m = err(&format!("[Appliance]\nPeerSource = etcd://h/x\n{text}\n"));
        assert!(m.contains(needle) && m.contains("Fix:"), "{text}: {m}");
    }
}

#[test]
fn text_before_the_equals_sign_that_is_no_key_name_is_never_shown() {
    let psk = "aGVsbG8gd29ybGQgdGhpcyBpcyBhIHByZXNoYXJlZCBrZXk";
    for text in [
        format!("[Peer]\nPresharedKey: {psk}=\n"),
        format!("PresharedKey {psk}=\n"),
    ] {
        let m = err(&text);
        assert!(!m.contains(psk), "{m}");
        assert!(m.contains("not a key name") && m.contains("Fix:"), "{m}");
    }
}
