//! The tunnel MTU when the configuration leaves it out: derived from the
//! WAN's MTU and the underlay family (1500 → 1440 over IPv4, 1420 over
//! IPv6, less on a narrower WAN), the MSS clamp following it unless `Mss`
//! overrides it; an explicit `MTU` still wins. Then a full 1440-byte packet
//! crosses a real IPv4 tunnel to wireguard-go, and one byte more is refused
//! with the MTU named.

mod ops_lab;

use std::{process::Command, time::Duration};

use ops_lab::{write_secret, Lab, LabOpts, SITE};
use wg_appliance::{keys::PrivateKey, uapi_client::Client};
use wg_appliance_tests::{appliance_bin, netns_unavailable, skip, unique_name, Netns, Veth};

#[test]
fn mtu_left_out_follows_the_wan_and_the_underlay_family() {
    if let Some(why) = netns_unavailable() {
        skip("mtu_left_out_follows_the_wan_and_the_underlay_family", &why);
        return;
    }
    let bin = appliance_bin().expect("binary");
    let gw = Netns::new().expect("ns");
    let far = Netns::new().expect("ns");
    let veth = Veth::new(
        &gw,
        &["10.93.0.1/24", "fd93::1/64"],
        &far,
        &["10.93.0.2/24", "fd93::2/64"],
    )
    .expect("veth");
    let key = PrivateKey::generate();
    let peer = PrivateKey::generate().public_key();
    // (endpoint, WAN MTU, [Interface] extra, [Appliance] extra, MTU, MSS)
    type Case = (
        Option<&'static str>,
        u32,
        &'static str,
        &'static str,
        u32,
        &'static str,
    );
    let cases: &[Case] = &[
        (Some("10.93.0.2:51821"), 1500, "", "", 1440, "1400 1380"),
        (Some("[fd93::2]:51821"), 1500, "", "", 1420, "1380 1360"),
        (Some("10.93.0.2:51821"), 1400, "", "", 1340, "1300 1280"),
        (Some("[fd93::2]:51821"), 1492, "", "", 1412, "1372 1352"),
        (None, 1500, "", "", 1420, "1380 1360"),
        (
            Some("10.93.0.2:51821"),
            1500,
            "MTU = 1380\n",
            "",
            1380,
            "1340 1320",
        ),
        (
            Some("10.93.0.2:51821"),
            1500,
            "",
            "Mss = 1200\n",
            1440,
            "1200 1180",
        ),
    ];
    for (endpoint, wan_mtu, iface_extra, app_extra, want_mtu, want_mss) in cases {
        for (ns, dev) in [(&gw, &veth.a), (&far, &veth.b)] {
            ns.ip(&["link", "set", dev, "mtu", &wan_mtu.to_string()])
                .expect("wan mtu");
        }
        let ifname = unique_name("m");
        let conf = format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = 10.95.0.1/24\n{iface_extra}\n[Appliance]\nWAN = {}\nMetrics = off\n{app_extra}\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.95.0.2/32\n{}",
            &*key.to_base64(),
            veth.a,
            peer.to_base64(),
            endpoint.map(|e| format!("Endpoint = {e}\n")).unwrap_or_default()
        );
        let path = write_secret(&format!("{ifname}.conf"), &conf).expect("conf");
        let _guard = ops_lab::DaemonGuard {
            ifname: ifname.clone(),
            ns: gw.name().to_owned(),
        };
        gw.exec(
            bin.to_str().expect("bin"),
            &["up", path.to_str().expect("path")],
        )
        .expect("wg-appliance up");
        let link: serde_json::Value = serde_json::from_slice(
            &gw.ip(&["-j", "link", "show", &ifname])
                .expect("ip link")
                .stdout,
        )
        .expect("json");
        let case =
            format!("endpoint {endpoint:?}, WAN MTU {wan_mtu}, {iface_extra:?} {app_extra:?}");
        assert_eq!(link[0]["mtu"], *want_mtu, "{case}: MTU of the interface");
        let app = Client::new(&ifname)
            .and_then(|c| c.appliance())
            .expect("appliance=1");
        assert_eq!(
            app.get("mtu"),
            Some(want_mtu.to_string().as_str()),
            "{case}: the data path's MTU"
        );
        assert_eq!(app.get("mss"), Some(*want_mss), "{case}: the MSS clamp");
        let log = std::fs::read_to_string(format!("/var/log/wg-appliance/{ifname}.log"))
            .unwrap_or_default();
        if iface_extra.is_empty() {
            assert!(
                log.contains("tunnel MTU derived") && log.contains(&format!("MTU {wan_mtu}")),
                "{case}: the log says where the MTU came from:\n{log}"
            );
        }
        gw.exec(bin.to_str().expect("bin"), &["down", &ifname])
            .expect("down");
        let _ = std::fs::remove_file(&path);
    }
}

/// `ping -M do -s <payload>` from `ns` to `dst`: (answered, output).
fn ping_df(ns: &Netns, dst: &str, payload: u32) -> (bool, String) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "ping",
            "-M",
            "do",
            "-c",
            "2",
            "-W",
            "2",
            "-s",
        ])
        .arg(payload.to_string())
        .arg(dst)
        .output()
        .expect("ping");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_1440_byte_packet_crosses_an_ipv4_underlay_and_1441_is_refused() {
    if let Some(why) = netns_unavailable() {
        skip(
            "a_1440_byte_packet_crosses_an_ipv4_underlay_and_1441_is_refused",
            &why,
        );
        return;
    }
    let lab = Lab::new(LabOpts {
        forwarding: true,
        ..LabOpts::default()
    })
    .expect("lab");
    // The far side takes the same MTU (wireguard-go's default is 1420).
    lab.peer
        .ip(&["link", "set", &lab.tp.ifname, "mtu", "1440"])
        .expect("far mtu");
    lab.warm_up(Duration::from_secs(20)).expect("tunnel up");
    let app = Client::new(&lab.ifname)
        .and_then(|c| c.appliance())
        .expect("appliance=1");
    assert_eq!(app.get("mtu"), Some("1440"), "IPv4 endpoint, 1500-byte WAN");
    // 1412 bytes of ICMP payload + 28 of headers = 1440.
    let (ok, out) = ping_df(&lab.lan, SITE, 1412);
    assert!(ok, "a 1440-byte packet through the tunnel:\n{out}");
    let (ok, out) = ping_df(&lab.lan, SITE, 1413);
    assert!(
        !ok && out.contains("mtu = 1440"),
        "1441 bytes must be refused naming the MTU:\n{out}"
    );
    let (code, report) = lab.doctor(&[]).expect("doctor");
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("allows a tunnel MTU of 1440 over IPv4"),
        "{report}"
    );
}
