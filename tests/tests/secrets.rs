//! Secrets never leave where they belong: with a preshared key configured
//! and the daemon logging at trace level through a handshake, a rekey, a
//! kill -9 and an adopting restart, and `down`, no private key, preshared
//! key or session key (read from the data path's own session map) appears
//! in any log, `show` output, metrics scrape or error, in base64, hex or as
//! a Rust byte list; key-holding files are 0600 in root-only directories.

use std::{
    collections::BTreeSet,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use wg_appliance::keys::{PresharedKey, PrivateKey};
use wg_appliance_tests::{
    appliance_bin,
    daemon::{write_secret, CliCleanup, ForegroundDaemon},
    netns_unavailable,
    peers::{Impl, ThirdParty},
    proc::Bg,
    skip, unique_name, wait_until, Netns, Veth,
};
use wg_ebpf_common::maps::Session;

/// The daemon at trace level, rekeying after 4 s.
const ENV: &[&str] = &["RUST_LOG=trace", "WG_APPLIANCE_TEST_REKEY_AFTER_SECS=4"];

/// Every way a 32-byte secret could be printed.
fn renderings(k: &[u8; 32]) -> Vec<String> {
    use base64::Engine as _;
    let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
    let dec: Vec<String> = k[..8].iter().map(u8::to_string).collect();
    vec![
        base64::engine::general_purpose::STANDARD.encode(k),
        hex.clone(),
        hex.to_uppercase(),
        // `{:?}` of the array: "[12, 200, 7, ...": the first 8 bytes.
        format!("[{}", dec.join(", ")),
    ]
}

fn session_keys(gw: &Netns, ifname: &str) -> Vec<[u8; 32]> {
    let ino = std::fs::metadata(format!("/var/run/netns/{}", gw.name()))
        .expect("netns")
        .ino();
    let pin = wg_appliance::persist::bpffs_dir()
        .join(ino.to_string())
        .join(ifname)
        .join("map_SESSIONS");
    let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    let sessions: HashMap<_, u32, Session> =
        HashMap::try_from(Map::from_map_data(data).expect("map")).expect("hash map");
    sessions
        .iter()
        .map(|r| r.expect("entry").1)
        .flat_map(|s| [s.recv_key, s.send_key])
        .collect()
}

#[test]
fn no_secret_in_any_output_at_trace_level() {
    if let Some(why) = netns_unavailable() {
        skip("no_secret_in_any_output_at_trace_level", &why);
        return;
    }
    let bin = appliance_bin().expect("binary");
    let b = bin.to_str().expect("bin");
    let gw = Netns::new().expect("ns");
    let peer_ns = Netns::new().expect("ns");
    let veth = Veth::new(&gw, &["10.105.0.1/24"], &peer_ns, &["10.105.0.2/24"]).expect("veth");
    peer_ns
        .exec("ethtool", &["-K", &veth.b, "gro", "on"])
        .expect("gro");
    let gw_key = PrivateKey::generate();
    let peer_key = PrivateKey::generate();
    let psk = PresharedKey::generate();
    let ifname = unique_name("s");
    let dir = std::env::temp_dir().join(format!("wgt-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let _cleanup = CliCleanup {
        ifname: ifname.clone(),
        dir: dir.clone(),
    };
    let conf = dir.join(format!("{ifname}.conf"));
    let text = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = 10.106.0.1/24\n\n[Appliance]\nMetrics = 127.0.0.1:9598\nWAN = {}\n\n[Peer]\nPublicKey = {}\nPresharedKey = {}\nEndpoint = 10.105.0.2:51821\nAllowedIPs = 10.106.0.2/32\n",
        &*gw_key.to_base64(),
        veth.a,
        peer_key.public_key().to_base64(),
        &*psk.to_base64(),
    );
    write_secret(&conf, &text).expect("conf");
    let tp = ThirdParty::start(
        Impl::WireguardGo,
        &peer_ns,
        &peer_key,
        51821,
        "10.106.0.2/24",
    )
    .expect("peer");
    tp.add_peer(&peer_ns, &gw_key.public_key(), None, "10.106.0.1/32")
        .expect("peer config");
    let psk_file = dir.join("psk");
    std::fs::write(&psk_file, format!("{}\n", &*psk.to_base64())).expect("psk file");
    peer_ns
        .exec(
            "wg",
            &[
                "set",
                &tp.ifname,
                "peer",
                &gw_key.public_key().to_base64(),
                "preshared-key",
                psk_file.to_str().expect("p"),
            ],
        )
        .expect("peer psk");
    let ping = || {
        gw.exec("ping", &["-c", "1", "-W", "1", "10.106.0.2"])
            .is_ok()
    };

    let mut outputs: Vec<(String, String)> = Vec::new();
    let mut session: BTreeSet<[u8; 32]> = BTreeSet::new();
    let first = ForegroundDaemon::up(&gw, ENV, &bin, &conf, &dir.join("first.log")).expect("start");
    wait_until(Duration::from_secs(15), "the tunnel (with a PSK)", &ping)
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", first.log()));
    session.extend(session_keys(&gw, &ifname));
    // A rekey (test hook: after 4 s), under traffic.
    let deadline = Instant::now() + Duration::from_secs(20);
    while first.log().matches("handshake completed").count() < 2 {
        assert!(Instant::now() < deadline, "no rekey; log:\n{}", first.log());
        let _ = ping();
        std::thread::sleep(Duration::from_millis(300));
    }
    session.extend(session_keys(&gw, &ifname));
    let shown = gw.exec(b, &["show", &ifname]).expect("show");
    outputs.push((
        "show".into(),
        String::from_utf8_lossy(&shown.stdout).into_owned(),
    ));
    let scrape = gw
        .exec(
            "curl",
            &["-sf", "--max-time", "5", "http://127.0.0.1:9598/metrics"],
        )
        .expect("scrape");
    outputs.push((
        "metrics".into(),
        String::from_utf8_lossy(&scrape.stdout).into_owned(),
    ));
    drop(first); // kill -9
    outputs.push((
        "first daemon's log".into(),
        std::fs::read_to_string(dir.join("first.log")).expect("log"),
    ));
    let second =
        ForegroundDaemon::up(&gw, ENV, &bin, &conf, &dir.join("second.log")).expect("start");
    wait_until(Duration::from_secs(15), "adoption", || {
        second.log().contains("adopted the running data path")
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", second.log()));
    wait_until(Duration::from_secs(15), "traffic after the restart", &ping).expect("ping");
    session.extend(session_keys(&gw, &ifname));
    // A refused command that touches the key: the error must not show it.
    // Bounded: were the running daemon gone, this `up` would start one in
    // the foreground and never return.
    let conf_s = conf.to_str().expect("conf path");
    let o = Bg::spawn(&gw, b, &["up", "--foreground", conf_s])
        .and_then(|p| p.finish(Duration::from_secs(30)))
        .unwrap_or_else(|e| {
            panic!(
                "a second `up` of a running interface was not refused: {e}\nthe running daemon's log:\n{}",
                second.log()
            )
        });
    assert!(!o.status.success(), "a second `up` of a running interface");
    outputs.push(("error of a second `up`".into(), o.stderr.clone()));
    let down = gw.exec(b, &["down", &ifname]).expect("down");
    outputs.push((
        "down".into(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&down.stdout),
            String::from_utf8_lossy(&down.stderr)
        ),
    ));
    wait_until(Duration::from_secs(10), "the daemon to exit", || {
        gw.ip(&["link", "show", &ifname]).is_err()
    })
    .expect("down");
    drop(second);
    outputs.push((
        "second daemon's log".into(),
        std::fs::read_to_string(dir.join("second.log")).expect("log"),
    ));

    let trace_lines: usize = outputs
        .iter()
        .filter(|(w, _)| w.contains("log"))
        .map(|(_, t)| t.matches("TRACE").count() + t.matches("DEBUG").count())
        .sum();
    assert!(
        trace_lines > 0,
        "the daemon did not log at trace/debug level: the test would prove nothing"
    );
    assert!(
        session.len() >= 4,
        "{} session keys collected: the rekey did not happen",
        session.len()
    );
    let mut secrets: Vec<(String, [u8; 32])> = vec![
        ("the gateway's private key".into(), *gw_key.as_bytes()),
        ("the peer's private key".into(), *peer_key.as_bytes()),
        ("the preshared key".into(), *psk.as_bytes()),
    ];
    for (i, k) in session.iter().enumerate() {
        secrets.push((format!("session key {i}"), *k));
    }
    for (what, text) in &outputs {
        for (name, k) in &secrets {
            for r in renderings(k) {
                assert!(
                    !text.contains(&r),
                    "{name} appears in the {what} (as {r:.12}...)"
                );
            }
        }
    }

    // Files that may hold keys: root-only.
    let run = wg_appliance::persist::run_dir();
    let state_root = run.join("state");
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    if let Ok(m) = mode(&state_root) {
        assert_eq!(m & 0o077, 0, "{} is mode {m:o}", state_root.display());
    }
    for log in std::fs::read_dir("/var/log/wg-appliance")
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        for (name, k) in &secrets {
            assert!(
                !text.contains(&renderings(k)[0]),
                "{name} in {}",
                log.path().display()
            );
        }
    }
    drop(tp);
}
