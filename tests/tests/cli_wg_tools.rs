//! wg-appliance driven the way operators drive WireGuard: `wg-quick` with
//! `WG_QUICK_USERSPACE_IMPLEMENTATION`, `wg set/show/syncconf`, our own
//! `up/show/down`, a real HTTP scrape of /metrics, and no key material in
//! any log or metric.

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::PathBuf, time::Duration};

use wg_appliance::keys::{PrivateKey, PublicKey};
use wg_appliance_tests::{
    appliance_bin, netns_unavailable,
    peers::{Impl, ThirdParty},
    skip, unique_name, wait_until, Netns, Veth,
};

fn write_conf(name: &str, text: &str, mode: u32) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgt-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("conf dir");
    let path = dir.join(format!("{name}.conf"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&path)
        .expect("conf");
    f.write_all(text.as_bytes()).expect("write conf");
    path
}

fn stdout(o: std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn hex(k: &[u8; 32]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fails if `text` holds either private key, in base64 or hex.
fn assert_no_keys(what: &str, text: &str, keys: &[&PrivateKey]) {
    for k in keys {
        let b64 = k.to_base64();
        assert!(
            !text.contains(b64.as_str()),
            "{what} contains a private key (base64)"
        );
        assert!(
            !text.contains(&hex(k.as_bytes())),
            "{what} contains a private key (hex)"
        );
    }
}

/// The value of the first sample of `metric` whose labels contain `label`.
fn sample(metrics: &str, metric: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Stops a daemon we started even when the test fails: removing its UAPI
/// socket is how `wg-quick down` stops userspace implementations, and it
/// works even after the namespace is gone.
struct DaemonGuard(String);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.0));
    }
}

struct Lab {
    gw: Netns,
    peer_ns: Netns,
    veth: Veth,
}

fn lab() -> Lab {
    let gw = Netns::new().expect("gw ns");
    let peer_ns = Netns::new().expect("peer ns");
    let veth = Veth::new(&gw, &["10.96.0.1/24"], &peer_ns, &["10.96.0.2/24"]).expect("veth");
    peer_ns
        .exec("ethtool", &["-K", &veth.b, "gro", "on"])
        .expect("gro");
    Lab { gw, peer_ns, veth }
}

fn ping_all(ns: &Netns, addr: &str) -> bool {
    ns.exec("ping", &["-c", "5", "-i", "0.2", "-W", "2", addr])
        .map(|o| stdout(o).contains(" 0% packet loss"))
        .unwrap_or(false)
}

#[test]
fn wg_quick_and_wg_drive_wg_appliance() {
    if let Some(why) = netns_unavailable() {
        skip("wg_quick_and_wg_drive_wg_appliance", &why);
        return;
    }
    let bin = appliance_bin().expect("binary");
    let l = lab();
    let ifname = unique_name("q");
    let gw_key = PrivateKey::generate();
    let peer_key = PrivateKey::generate();
    let conf = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = 10.95.0.1/24\n\n# friendly_name = branch-office\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.95.0.2/32\n",
        &*gw_key.to_base64(),
        peer_key.public_key().to_base64()
    );
    let path = write_conf(&ifname, &conf, 0o600);
    let _guard = DaemonGuard(ifname.clone());
    let quick = |verb: &str| {
        l.gw.exec(
            "env",
            &[
                &format!("WG_QUICK_USERSPACE_IMPLEMENTATION={}", bin.display()),
                "wg-quick",
                verb,
                path.to_str().expect("path"),
            ],
        )
    };
    quick("up").expect("wg-quick up");
    let show = stdout(l.gw.exec("wg", &["show", &ifname]).expect("wg show"));
    assert!(show.contains("listening port: 51820"), "wg show:\n{show}");
    assert!(
        show.contains(&peer_key.public_key().to_base64()),
        "wg show:\n{show}"
    );

    let tp = ThirdParty::start(
        Impl::WireguardGo,
        &l.peer_ns,
        &peer_key,
        51821,
        "10.95.0.2/24",
    )
    .expect("wireguard-go");
    tp.add_peer(
        &l.peer_ns,
        &gw_key.public_key(),
        Some("10.96.0.1:51820"),
        "10.95.0.1/32",
    )
    .expect("peer config");
    assert!(
        ping_all(&l.peer_ns, "10.95.0.1"),
        "ping through wg-quick's interface"
    );

    // `wg show dump`: handshake and transfer as wg reads them over UAPI.
    let dump = stdout(l.gw.exec("wg", &["show", &ifname, "dump"]).expect("dump"));
    let peer_line = dump.lines().nth(1).expect("peer line");
    let f: Vec<&str> = peer_line.split('\t').collect();
    assert_eq!(f[0], peer_key.public_key().to_base64());
    assert_eq!(
        f[2], "10.96.0.2:51821",
        "endpoint learnt from the handshake"
    );
    assert!(
        f[4].parse::<u64>().expect("handshake") > 0,
        "latest handshake: {peer_line}"
    );
    let rx: u64 = f[5].parse().expect("rx");
    let tx: u64 = f[6].parse().expect("tx");
    assert!(rx > 5 * 84 && tx > 5 * 84, "transfer rx {rx} tx {tx}");

    // wg set / syncconf / remove.
    let pk = peer_key.public_key().to_base64();
    l.gw.exec(
        "wg",
        &["set", &ifname, "peer", &pk, "persistent-keepalive", "25"],
    )
    .expect("wg set");
    let ka = stdout(
        l.gw.exec("wg", &["show", &ifname, "persistent-keepalive"])
            .expect("show ka"),
    );
    assert!(ka.contains("\t25"), "persistent keepalive: {ka}");
    let other = PrivateKey::generate().public_key();
    let sync = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\n\n[Peer]\nPublicKey = {pk}\nAllowedIPs = 10.95.0.2/32\nPersistentKeepalive = 25\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.95.0.3/32\n",
        &*gw_key.to_base64(),
        other.to_base64()
    );
    let sync_path = write_conf(&format!("{ifname}-sync"), &sync, 0o600);
    l.gw.exec(
        "wg",
        &["syncconf", &ifname, sync_path.to_str().expect("path")],
    )
    .expect("wg syncconf");
    let peers = stdout(l.gw.exec("wg", &["show", &ifname, "peers"]).expect("peers"));
    assert_eq!(peers.lines().count(), 2, "peers after syncconf: {peers}");
    l.gw.exec(
        "wg",
        &["set", &ifname, "peer", &other.to_base64(), "remove"],
    )
    .expect("remove");
    let peers = stdout(l.gw.exec("wg", &["show", &ifname, "peers"]).expect("peers"));
    assert_eq!(peers.lines().collect::<Vec<_>>(), vec![pk.as_str()]);
    assert!(
        ping_all(&l.peer_ns, "10.95.0.1"),
        "traffic after reconfiguration"
    );
    // Bad UAPI input: an error reply, and the daemon keeps running.
    let bad = l.gw.exec(
        "wg",
        &["set", &ifname, "peer", &pk, "allowed-ips", "10.95.0.300/32"],
    );
    assert!(bad.is_err(), "wg set with a bad address must fail");
    assert!(
        ping_all(&l.peer_ns, "10.95.0.1"),
        "daemon still forwarding after a bad request"
    );

    // A real scrape of /metrics, checked against wg's figures.
    let dump = stdout(l.gw.exec("wg", &["show", &ifname, "dump"]).expect("dump"));
    let f: Vec<String> = dump
        .lines()
        .nth(1)
        .expect("peer")
        .split('\t')
        .map(str::to_owned)
        .collect();
    let (rx_wg, tx_wg): (f64, f64) = (f[5].parse().expect("rx"), f[6].parse().expect("tx"));
    let metrics = stdout(
        l.gw.exec(
            "curl",
            &["-sf", "--max-time", "5", "http://127.0.0.1:9586/metrics"],
        )
        .expect("scrape /metrics"),
    );
    let label = format!("public_key=\"{pk}\"");
    let sent = sample(&metrics, "wireguard_sent_bytes_total", &label).expect("sent bytes metric");
    let recv =
        sample(&metrics, "wireguard_received_bytes_total", &label).expect("received bytes metric");
    assert!(
        sent >= tx_wg && sent < tx_wg + 1000.0,
        "metrics sent {sent} vs wg {tx_wg}"
    );
    assert!(
        recv >= rx_wg && recv < rx_wg + 1000.0,
        "metrics received {recv} vs wg {rx_wg}"
    );
    let hs =
        sample(&metrics, "wireguard_latest_handshake_seconds", &label).expect("handshake metric");
    assert!(hs > 1.0e9, "latest handshake {hs}");
    assert!(
        sample(
            &metrics,
            "wg_appliance_handshakes_total",
            "completed_responder"
        )
        .expect("hs")
            >= 1.0
    );
    assert!(
        sample(
            &metrics,
            "wg_appliance_datapath_packets_total",
            "rx_delivered"
        )
        .expect("rx")
            >= 10.0
    );
    assert!(
        metrics.contains("wg_appliance_xdp_attached{"),
        "xdp mode metric"
    );

    // No private key in the metrics or the daemon's log.
    assert_no_keys("metrics", &metrics, &[&gw_key, &peer_key]);
    let log =
        std::fs::read_to_string(format!("/var/log/wg-appliance/{ifname}.log")).unwrap_or_default();
    assert!(
        log.contains("handshake completed"),
        "daemon log has no handshake line:\n{log}"
    );
    assert_no_keys("daemon log", &log, &[&gw_key, &peer_key]);

    quick("down").expect("wg-quick down");
    wait_until(
        Duration::from_secs(5),
        "the interface and socket to go",
        || {
            l.gw.ip(&["link", "show", &ifname]).is_err()
                && !std::path::Path::new(&format!("/var/run/wireguard/{ifname}.sock")).exists()
        },
    )
    .expect("down");
    let wan = stdout(l.gw.ip(&["link", "show", &l.veth.a]).expect("wan link"));
    assert!(!wan.contains("xdp"), "XDP left attached after down:\n{wan}");
    let _ = std::fs::remove_file(format!("/var/log/wg-appliance/{ifname}.log"));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&sync_path);
}

#[test]
fn up_show_down_from_a_config_file() {
    if let Some(why) = netns_unavailable() {
        skip("up_show_down_from_a_config_file", &why);
        return;
    }
    let bin = appliance_bin().expect("binary");
    let l = lab();
    let ifname = unique_name("u");
    let gw_key = PrivateKey::generate();
    let peer_key = PrivateKey::generate();
    let conf = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = 10.95.0.1/24\nPostUp = touch /tmp/{ifname}.postup\n\n[Appliance]\nMetrics = 127.0.0.1:9587\nWAN = {}\nHandshakeRate = 7\n\n# friendly_name = branch-office\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.95.0.2/32, 10.97.0.0/24\n",
        &*gw_key.to_base64(),
        l.veth.a,
        peer_key.public_key().to_base64()
    );
    let path = write_conf(&ifname, &conf, 0o600);
    let _guard = DaemonGuard(ifname.clone());
    let b = bin.to_str().expect("bin");
    l.gw.exec(b, &["up", path.to_str().expect("path")])
        .expect("wg-appliance up");
    assert!(
        std::path::Path::new(&format!("/tmp/{ifname}.postup")).exists(),
        "PostUp hook ran"
    );
    let routes = stdout(l.gw.ip(&["route"]).expect("routes"));
    assert!(
        routes.contains(&format!("10.97.0.0/24 dev {ifname}")),
        "route for AllowedIPs: {routes}"
    );
    let tp = ThirdParty::start(
        Impl::WireguardGo,
        &l.peer_ns,
        &peer_key,
        51821,
        "10.95.0.2/24",
    )
    .expect("wireguard-go");
    tp.add_peer(
        &l.peer_ns,
        &gw_key.public_key(),
        Some("10.96.0.1:51820"),
        "10.95.0.1/32",
    )
    .expect("peer");
    assert!(
        ping_all(&l.peer_ns, "10.95.0.1"),
        "ping through `wg-appliance up`"
    );
    let shown = stdout(l.gw.exec(b, &["show", &ifname]).expect("show"));
    assert!(
        shown.contains("endpoint: 10.96.0.2:51821") && shown.contains("private key: (hidden)"),
        "{shown}"
    );
    assert_no_keys("wg-appliance show", &shown, &[&gw_key]);
    // [Appliance] HandshakeRate reached the XDP limiter (read back from the
    // pinned CONFIG map).
    {
        use std::os::unix::fs::MetadataExt as _;
        let ino = std::fs::metadata(format!("/var/run/netns/{}", l.gw.name()))
            .expect("netns")
            .ino();
        let pin = format!("/run/wg-appliance/bpf/{ino}/{ifname}/map_CONFIG");
        let data = aya::maps::MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{pin}: {e}"));
        let config: aya::maps::Array<_, wg_ebpf_common::DatapathConfig> =
            aya::maps::Array::try_from(aya::maps::Map::from_map_data(data).expect("map"))
                .expect("array");
        assert_eq!(config.get(&0, 0).expect("config").hs_rate, 7);
    }
    let metrics = stdout(
        l.gw.exec(
            "curl",
            &["-sf", "--max-time", "5", "http://127.0.0.1:9587/metrics"],
        )
        .expect("scrape"),
    );
    assert!(
        metrics.contains("friendly_name=\"branch-office\""),
        "friendly name label missing:\n{metrics}"
    );
    l.gw.exec(b, &["down", &ifname]).expect("down");
    assert!(
        l.gw.ip(&["link", "show", &ifname]).is_err(),
        "interface still there after down"
    );
    let _ = std::fs::remove_file(format!("/tmp/{ifname}.postup"));
    let _ = std::fs::remove_file(format!("/var/log/wg-appliance/{ifname}.log"));
}

/// Two peers claiming one AllowedIPs prefix: as in kernel WireGuard the
/// later one gets it, from a configuration file and over UAPI alike, and
/// the daemon warns, naming the prefix and both peers (by short public
/// key, never a private one).
#[test]
fn an_allowed_ip_claimed_twice_moves_to_the_later_peer_with_a_warning() {
    if let Some(why) = netns_unavailable() {
        skip(
            "an_allowed_ip_claimed_twice_moves_to_the_later_peer_with_a_warning",
            &why,
        );
        return;
    }
    let bin = appliance_bin().expect("binary");
    let l = lab();
    let ifname = unique_name("o");
    let gw_key = PrivateKey::generate();
    let (a, b) = (
        PrivateKey::generate().public_key(),
        PrivateKey::generate().public_key(),
    );
    let conf = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\n\n[Appliance]\nWAN = {}\nMetrics = off\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.95.0.5/32, 10.95.0.6/32\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.95.0.5/32\n",
        &*gw_key.to_base64(),
        l.veth.a,
        a.to_base64(),
        b.to_base64()
    );
    let path = write_conf(&ifname, &conf, 0o600);
    let _guard = DaemonGuard(ifname.clone());
    let bin = bin.to_str().expect("bin");
    l.gw.exec(bin, &["up", path.to_str().expect("path")])
        .expect("wg-appliance up");
    let allowed = |who: &PublicKey| -> String {
        let out = stdout(
            l.gw.exec("wg", &["show", &ifname, "allowed-ips"])
                .expect("wg show allowed-ips"),
        );
        let line = out
            .lines()
            .find(|l| l.starts_with(&who.to_base64()))
            .unwrap_or_else(|| panic!("no line for a peer in:\n{out}"));
        line.split('\t').nth(1).unwrap_or_default().to_owned()
    };
    assert_eq!(
        allowed(&a),
        "10.95.0.6/32",
        "the first peer lost the prefix"
    );
    assert_eq!(allowed(&b), "10.95.0.5/32", "the later peer has it");

    // Over UAPI, back to the first peer.
    l.gw.exec(
        "wg",
        &[
            "set",
            &ifname,
            "peer",
            &a.to_base64(),
            "allowed-ips",
            "10.95.0.5/32,10.95.0.6/32",
        ],
    )
    .expect("wg set");
    assert_eq!(allowed(&b), "(none)");
    assert!(allowed(&a).contains("10.95.0.5/32"));

    let log_path = format!("/var/log/wg-appliance/{ifname}.log");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("AllowedIPs overlap") && l.contains("prefix=10.95.0.5/32"))
        .collect();
    let (sa, sb) = (a.short(), b.short());
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&format!("from_peer={sa}")) && w.contains(&format!("to_peer={sb}"))),
        "no warning for the file's overlap in the log:\n{log}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&format!("from_peer={sb}")) && w.contains(&format!("to_peer={sa}"))),
        "no warning for the UAPI move in the log:\n{log}"
    );
    assert_eq!(warnings.len(), 2, "one warning per move:\n{log}");
    assert_no_keys("daemon log", &log, &[&gw_key]);

    l.gw.exec(bin, &["down", &ifname]).expect("down");
    let _ = std::fs::remove_file(&log_path);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn bad_configs_are_refused_with_the_fix() {
    if let Some(why) = netns_unavailable() {
        skip("bad_configs_are_refused_with_the_fix", &why);
        return;
    }
    let bin = appliance_bin().expect("binary");
    let key = PrivateKey::generate();
    let name = unique_name("c");
    let bad = write_conf(
        &name,
        &format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 70000\n",
            &*key.to_base64()
        ),
        0o600,
    );
    let out = std::process::Command::new(&bin)
        .args(["up", bad.to_str().expect("p")])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("{name}.conf:3"))
            && err.contains("ListenPort")
            && err.contains("Fix"),
        "{err}"
    );
    assert_no_keys("error message", &err, &[&key]);
    let open = write_conf(
        &format!("{name}o"),
        &format!("[Interface]\nPrivateKey = {}\n", &*key.to_base64()),
        0o644,
    );
    let out = std::process::Command::new(&bin)
        .args(["up", open.to_str().expect("p")])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("chmod 600"), "{err}");
    // genkey/pubkey agree with wg.
    let k = stdout(
        std::process::Command::new(&bin)
            .arg("genkey")
            .output()
            .expect("genkey"),
    );
    let parsed: PrivateKey = k.trim().parse().expect("genkey output parses");
    let mut child = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(k.as_bytes())
        .expect("write");
    let wg_pub = stdout(child.wait_with_output().expect("wg pubkey"));
    let ours: PublicKey = wg_pub.trim().parse().expect("wg pubkey output");
    assert_eq!(ours, parsed.public_key());
    let _ = std::fs::remove_file(&bad);
    let _ = std::fs::remove_file(&open);
}

/// The Debian package `cargo xtask package` built (`$WG_TEST_DEB`, else the
/// newest in target/debian).
fn packaged_deb() -> PathBuf {
    if let Some(p) = std::env::var_os("WG_TEST_DEB") {
        return PathBuf::from(p);
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| {
            panic!(
                "no .deb in {}. Fix: cargo xtask package (cargo xtask test builds it first)",
                dir.display()
            )
        })
}

/// What an operator gets from the .deb: unpacked into a scratch root (as
/// `dpkg -i` would lay it out), the packaged binary brings a tunnel up from a
/// wg-quick file against wireguard-go and carries traffic; the unit, the man
/// page, the completions and the config directory are where Debian expects
/// them.
#[test]
fn debian_package_unpacks_and_runs_against_wireguard_go() {
    if let Some(why) = netns_unavailable() {
        skip("debian_package_unpacks_and_runs_against_wireguard_go", &why);
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let deb = packaged_deb();
    let scratch = std::env::temp_dir().join(format!("wgt-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("scratch root");
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(scratch.clone());
    let deb_s = deb.to_str().expect("deb path");
    wg_appliance_tests::run("dpkg-deb", &["-x", deb_s, scratch.to_str().expect("path")])
        .expect("dpkg-deb -x");
    let field = |f: &str| {
        stdout(wg_appliance_tests::run("dpkg-deb", &["-f", deb_s, f]).expect("dpkg-deb -f"))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "wg-appliance");
    assert_eq!(field("Version"), wg_appliance::build_info::VERSION);
    assert!(field("Depends").contains("libc6"), "{}", field("Depends"));

    let mode = |rel: &str| {
        std::fs::metadata(scratch.join(rel))
            .unwrap_or_else(|e| panic!("{rel} missing from the package: {e}"))
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("usr/bin/wg-appliance"), 0o755);
    assert_eq!(
        mode("etc/wireguard"),
        0o700,
        "config directory is root-only"
    );
    let unit = std::fs::read_to_string(scratch.join("lib/systemd/system/wg-appliance@.service"))
        .expect("systemd unit");
    let exec_start = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let exe = exec_start
        .split_whitespace()
        .next()
        .expect("ExecStart binary");
    assert!(
        scratch.join(exe.trim_start_matches('/')).exists(),
        "the unit runs {exe}, which the package does not ship"
    );
    assert!(
        unit.contains("mount -t bpf"),
        "the unit mounts the pin file system on the host side"
    );
    let man = wg_appliance_tests::run(
        "gzip",
        &[
            "-dc",
            scratch
                .join("usr/share/man/man8/wg-appliance.8.gz")
                .to_str()
                .expect("path"),
        ],
    )
    .expect("man page");
    let man = stdout(man);
    assert!(
        man.contains(".TH") && man.contains("genkey"),
        "man page: {man:.300}"
    );
    assert!(
        scratch
            .join("usr/share/man/man8/wg-appliance-up.8.gz")
            .exists(),
        "a page per command"
    );
    for (rel, needle) in [
        (
            "usr/share/bash-completion/completions/wg-appliance",
            "wg-appliance",
        ),
        (
            "usr/share/zsh/vendor-completions/_wg-appliance",
            "#compdef wg-appliance",
        ),
        (
            "usr/share/fish/vendor_completions.d/wg-appliance.fish",
            "complete -c wg-appliance",
        ),
    ] {
        let text = std::fs::read_to_string(scratch.join(rel)).expect(rel);
        assert!(text.contains(needle), "{rel}");
    }

    let bin = scratch.join("usr/bin/wg-appliance");
    let b = bin.to_str().expect("bin");
    let version = stdout(wg_appliance_tests::run(b, &["--version"]).expect("--version"));
    assert!(
        version.contains(wg_appliance::build_info::VERSION)
            && version.contains("commit ")
            && version.contains("BPF object "),
        "{version}"
    );

    let l = lab();
    let ifname = unique_name("d");
    let gw_key = PrivateKey::generate();
    let peer_key = PrivateKey::generate();
    let conf = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = 10.95.0.1/24\n\n[Appliance]\nMetrics = off\nWAN = {}\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.95.0.2/32\n",
        &*gw_key.to_base64(),
        l.veth.a,
        peer_key.public_key().to_base64()
    );
    let path = write_conf(&ifname, &conf, 0o600);
    let _guard = DaemonGuard(ifname.clone());
    l.gw.exec(b, &["up", path.to_str().expect("path")])
        .expect("packaged wg-appliance up");
    let tp = ThirdParty::start(
        Impl::WireguardGo,
        &l.peer_ns,
        &peer_key,
        51821,
        "10.95.0.2/24",
    )
    .expect("wireguard-go");
    tp.add_peer(
        &l.peer_ns,
        &gw_key.public_key(),
        Some("10.96.0.1:51820"),
        "10.95.0.1/32",
    )
    .expect("peer");
    assert!(
        ping_all(&l.peer_ns, "10.95.0.1"),
        "ping through the packaged binary"
    );
    l.gw.exec(b, &["down", &ifname]).expect("down");
    assert!(
        l.gw.ip(&["link", "show", &ifname]).is_err(),
        "interface still there after down"
    );
    let _ = std::fs::remove_file(format!("/var/log/wg-appliance/{ifname}.log"));
}
