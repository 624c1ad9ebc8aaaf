//! Hitless control-plane restart: `kill -9` of the daemon in the middle of
//! an iperf3 run does not stop the traffic (programs, links and maps are
//! pinned); a new daemon adopts the data path and its sessions and rekeys
//! on time; `down` then removes everything (pins, state, links).

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use wg_appliance::keys::PrivateKey;
use wg_appliance_tests::{
    appliance_bin, netns_unavailable,
    peers::{Impl, ThirdParty},
    skip, unique_name, wait_until, Netns, Veth,
};

/// A foreground daemon whose stderr goes to a file; SIGKILLed on drop.
struct Daemon {
    child: Child,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(
        ns: &Netns,
        bin: &std::path::Path,
        conf: &std::path::Path,
        log: std::path::PathBuf,
    ) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                "env",
                "WG_APPLIANCE_TEST_REKEY_AFTER_SECS=5",
            ])
            .arg(bin)
            .args(["up", "--foreground"])
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start wg-appliance");
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the UAPI socket on drop, which stops any daemon of `ifname`.
struct SocketGuard(String);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.0));
    }
}

#[test]
fn kill_9_keeps_traffic_and_restart_adopts() {
    if let Some(why) = netns_unavailable() {
        skip("kill_9_keeps_traffic_and_restart_adopts", &why);
        return;
    }
    let bin = appliance_bin().expect("binary");
    let gw = Netns::new().expect("ns");
    let peer_ns = Netns::new().expect("ns");
    let veth = Veth::new(&gw, &["10.101.0.1/24"], &peer_ns, &["10.101.0.2/24"]).expect("veth");
    peer_ns
        .exec("ethtool", &["-K", &veth.b, "gro", "on"])
        .expect("gro");
    let gw_key = PrivateKey::generate();
    let peer_key = PrivateKey::generate();
    let ifname = unique_name("k");
    let _sock = SocketGuard(ifname.clone());
    let dir = std::env::temp_dir().join(format!("wgt-hitless-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let conf = dir.join(format!("{ifname}.conf"));
    let text = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = 10.102.0.1/24\n\n[Appliance]\nMetrics = off\nWAN = {}\n\n[Peer]\nPublicKey = {}\nEndpoint = 10.101.0.2:51821\nAllowedIPs = 10.102.0.2/32\n",
        &*gw_key.to_base64(),
        veth.a,
        peer_key.public_key().to_base64()
    );
    {
        use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&conf)
            .expect("conf");
        f.write_all(text.as_bytes()).expect("write");
    }
    let tp = ThirdParty::start(
        Impl::WireguardGo,
        &peer_ns,
        &peer_key,
        51821,
        "10.102.0.2/24",
    )
    .expect("peer");
    tp.add_peer(&peer_ns, &gw_key.public_key(), None, "10.102.0.1/32")
        .expect("peer config");

    let first = Daemon::start(&gw, &bin, &conf, dir.join("first.log"));
    wait_until(Duration::from_secs(15), "the interface", || {
        gw.ip(&["link", "show", &ifname]).is_ok()
    })
    .expect("up");
    wait_until(Duration::from_secs(15), "a first handshake", || {
        gw.exec("ping", &["-c", "1", "-W", "1", "10.102.0.2"])
            .is_ok()
    })
    .expect("tunnel up");

    // iperf3 for 8 s; the daemon is SIGKILLed at 2.5 s and restarted at 4 s.
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            peer_ns.name(),
            "timeout",
            "30",
            "iperf3",
            "-s",
            "-1",
            "-p",
            "5301",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let gw_name = gw.name().to_owned();
    let client = std::thread::spawn(move || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &gw_name,
                "timeout",
                "30",
                "iperf3",
                "-c",
                "10.102.0.2",
                "-p",
                "5301",
                "-t",
                "8",
                "-i",
                "1",
                "-J",
            ])
            .output()
            .expect("iperf3 client")
    });
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    drop(first); // SIGKILL: nothing of ours runs its cleanup.
    std::thread::sleep(Duration::from_millis(1500));
    let second = Daemon::start(&gw, &bin, &conf, dir.join("second.log"));
    wait_until(
        Duration::from_secs(10),
        "the new daemon to adopt the data path",
        || second.log().contains("adopted the running data path"),
    )
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", second.log()));
    let out = client.join().expect("iperf3 thread");
    drop(server);
    println!("restart adopted after {:?}", t0.elapsed());
    let json = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("iperf3 JSON: {e}\n{json}"));
    let intervals = v["intervals"].as_array().expect("intervals");
    assert!(
        intervals.len() >= 7,
        "iperf3 ran {} intervals",
        intervals.len()
    );
    for (i, iv) in intervals.iter().enumerate() {
        let bytes = iv["sum"]["bytes"].as_u64().unwrap_or(0);
        assert!(bytes > 0, "interval {i}: no bytes moved (the tunnel stopped while the daemon was dead or restarting)");
    }
    let received = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(received > 10_000_000, "only {received} bytes received");

    // The adopted session is rekeyed on its real age (test hook: 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !second.log().contains("handshake completed (initiator)") {
        assert!(
            Instant::now() < deadline,
            "no rekey after the restart; log:\n{}",
            second.log()
        );
        let _ = gw.exec("ping", &["-c", "1", "-W", "1", "10.102.0.2"]);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        gw.exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", "10.102.0.2"])
            .is_ok(),
        "traffic after the rekey"
    );

    // `down` removes everything: link, pins, state.
    let b = bin.to_str().expect("bin");
    gw.exec(b, &["down", &ifname]).expect("down");
    let leftovers = |root: &str| -> Vec<String> {
        let mut found = Vec::new();
        for ns in std::fs::read_dir(root).into_iter().flatten().flatten() {
            for e in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&ifname) {
                    found.push(e.path().display().to_string());
                }
            }
        }
        found
    };
    wait_until(Duration::from_secs(5), "pins and state to go", || {
        leftovers("/run/wg-appliance/bpf").is_empty()
            && leftovers("/run/wg-appliance/state").is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", leftovers("/run/wg-appliance/bpf")));
    // The namespace's own directories go with its last interface.
    {
        use std::os::unix::fs::MetadataExt as _;
        let ino = std::fs::metadata(format!("/var/run/netns/{}", gw.name()))
            .expect("netns")
            .ino();
        for root in ["/run/wg-appliance/bpf", "/run/wg-appliance/state"] {
            let d = format!("{root}/{ino}");
            assert!(
                !std::path::Path::new(&d).exists(),
                "{d} left behind after down"
            );
        }
    }
    let wan = String::from_utf8_lossy(&gw.ip(&["link", "show", &veth.a]).expect("wan").stdout)
        .into_owned();
    assert!(
        !wan.contains("xdp"),
        "XDP still attached after down:\n{wan}"
    );
    drop(second);
    drop(tp);
    let _ = std::fs::remove_dir_all(&dir);
}
