//! Hitless control-plane restart: `kill -9` of the daemon in the middle of
//! an iperf3 run does not stop the traffic (programs, links and maps are
//! pinned); a new daemon adopts the data path and its sessions and rekeys
//! on time; `down` then removes everything (pins, state, links).

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use wg_appliance::keys::PrivateKey;
use wg_appliance_tests::{
    appliance_bin,
    daemon::{write_secret, ForegroundDaemon},
    netns_unavailable,
    peers::{Impl, ThirdParty},
    skip, unique_name, wait_until, Netns, Veth,
};

/// The daemon rekeys 5 s after a handshake (test hook).
const REKEY: &str = "WG_APPLIANCE_TEST_REKEY_AFTER_SECS=5";

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
    write_secret(&conf, &text).expect("conf");
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

    let t_start = Instant::now();
    let first =
        ForegroundDaemon::up(&gw, &[REKEY], &bin, &conf, &dir.join("first.log")).expect("start");
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
    let second =
        ForegroundDaemon::up(&gw, &[REKEY], &bin, &conf, &dir.join("second.log")).expect("start");
    wait_until(
        Duration::from_secs(10),
        "the new daemon to adopt the data path",
        || second.log().contains("adopted the running data path"),
    )
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", second.log()));
    // The interface key's age goes on from the first daemon's (saved
    // state), not from the restart: the first one set it 4 s ago or more.
    // (The log line comes before the UAPI socket listens: wait for it.)
    let age = || {
        wg_appliance::uapi_client::Client::new(&ifname)
            .and_then(|c| c.appliance())
            .ok()
            .and_then(|a| a.get("private_key_age").and_then(|v| v.parse::<u64>().ok()))
    };
    wait_until(Duration::from_secs(10), "the key age over UAPI", || {
        age().is_some()
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", second.log()));
    let key_age = age().unwrap_or_default();
    assert!(
        key_age >= 3 && key_age <= t_start.elapsed().as_secs(),
        "the key age after the restart is {key_age} s; the key was set {:?} ago",
        t_start.elapsed()
    );
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

/// A scratch run directory (`WG_APPLIANCE_RUN_DIR`) that starts with nothing
/// mounted; whatever gets mounted below it is detached on drop.
struct ScratchRunDir(std::path::PathBuf);

impl ScratchRunDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("wgt-run-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("run dir");
        assert!(
            !wg_appliance::persist::is_bpffs(&p.join("bpf")),
            "scratch run dir already mounted"
        );
        Self(p)
    }

    fn env(&self) -> String {
        format!(
            "{}={}",
            wg_appliance::persist::RUN_DIR_ENV,
            self.0.display()
        )
    }
}

impl Drop for ScratchRunDir {
    fn drop(&mut self) {
        let bpf = self.0.join("bpf");
        if let Ok(c) = std::ffi::CString::new(bpf.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2 with a valid path; failure (nothing mounted
            // here) is fine.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where pins can outlive the daemon and where they cannot, each from a
/// state with nothing mounted: a daemon started under `ip netns exec`
/// (whose mount namespace dies with it; PID 1's cannot be entered here)
/// - with the pin file system mounted on the host side first, as setup, the
///   systemd unit and the test harness do: it says its restart is hitless,
///   and after kill -9 a new daemon adopts the running tunnel;
/// - with nothing mounted: it mounts its own, says loudly (log, `show`,
///   metric) that a restart will not be hitless, and after kill -9 a new
///   daemon finds the interface without pins, removes it and starts clean
///   instead of refusing.
#[test]
fn pins_outlive_the_daemon_or_it_says_so() {
    if let Some(why) = netns_unavailable() {
        skip("pins_outlive_the_daemon_or_it_says_so", &why);
        return;
    }
    for host_mounted in [true, false] {
        pins_case(host_mounted);
    }
}

fn pins_case(host_mounted: bool) {
    let what = if host_mounted {
        "host-mounted pins"
    } else {
        "pins private to the daemon"
    };
    let run = ScratchRunDir::new(if host_mounted { "h" } else { "p" });
    if host_mounted {
        wg_appliance::persist::mount_bpffs(&run.0.join("bpf")).expect("host-side bpffs");
    }
    let env = run.env();
    let bin = appliance_bin().expect("binary");
    let b = bin.to_str().expect("bin");
    let gw = Netns::new().expect("ns");
    let peer_ns = Netns::new().expect("ns");
    let veth = Veth::new(&gw, &["10.103.0.1/24"], &peer_ns, &["10.103.0.2/24"]).expect("veth");
    peer_ns
        .exec("ethtool", &["-K", &veth.b, "gro", "on"])
        .expect("gro");
    let gw_key = PrivateKey::generate();
    let peer_key = PrivateKey::generate();
    let ifname = unique_name("p");
    let _sock = SocketGuard(ifname.clone());
    let conf = run.0.join(format!("{ifname}.conf"));
    let text = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = 10.104.0.1/24\n\n[Appliance]\nMetrics = 127.0.0.1:9597\nWAN = {}\n\n[Peer]\nPublicKey = {}\nEndpoint = 10.103.0.2:51821\nAllowedIPs = 10.104.0.2/32\n",
        &*gw_key.to_base64(),
        veth.a,
        peer_key.public_key().to_base64()
    );
    write_secret(&conf, &text).expect("conf");
    let tp = ThirdParty::start(
        Impl::WireguardGo,
        &peer_ns,
        &peer_key,
        51821,
        "10.104.0.2/24",
    )
    .expect("peer");
    tp.add_peer(&peer_ns, &gw_key.public_key(), None, "10.104.0.1/32")
        .expect("peer config");
    let ping = |n: &str| {
        gw.exec("ping", &["-c", n, "-i", "0.2", "-W", "2", "10.104.0.2"])
            .is_ok()
    };

    let first = ForegroundDaemon::up(&gw, &[REKEY, &env], &bin, &conf, &run.0.join("first.log"))
        .expect("start");
    wait_until(Duration::from_secs(15), "the tunnel", || ping("1"))
        .unwrap_or_else(|e| panic!("{what}: {e}; log:\n{}", first.log()));
    // Where PID 1's mount namespace can be entered, the daemon mounts its
    // pin file system there, and its pins outlive it either way.
    let hitless = host_mounted || std::fs::File::open("/proc/1/ns/mnt").is_ok();
    let warned = first.log().contains("will NOT be hitless");
    assert_eq!(
        warned,
        !hitless,
        "{what}: the start-up warning; log:\n{}",
        first.log()
    );
    let shown = String::from_utf8_lossy(
        &gw.exec("env", &[&env, b, "show", &ifname])
            .expect("show")
            .stdout,
    )
    .into_owned();
    let pins_line = shown
        .lines()
        .find(|l| l.trim_start().starts_with("pins:"))
        .unwrap_or_else(|| panic!("{what}: no pins line in show:\n{shown}"))
        .to_owned();
    assert_eq!(
        pins_line.contains("NOT be hitless"),
        !hitless,
        "{what}: {pins_line}"
    );
    let metrics = String::from_utf8_lossy(
        &gw.exec(
            "curl",
            &["-sf", "--max-time", "5", "http://127.0.0.1:9597/metrics"],
        )
        .expect("scrape")
        .stdout,
    )
    .into_owned();
    let ready = format!(
        "wg_appliance_hitless_restart_ready{{interface=\"{ifname}\"}} {}",
        u8::from(hitless)
    );
    assert!(
        metrics.contains(&ready),
        "{what}: want `{ready}` in:\n{metrics}"
    );

    drop(first); // SIGKILL
    let second = ForegroundDaemon::up(&gw, &[REKEY, &env], &bin, &conf, &run.0.join("second.log"))
        .expect("start");
    let expect = if hitless {
        "adopted the running data path"
    } else {
        "starting it afresh"
    };
    wait_until(Duration::from_secs(15), expect, || {
        second.log().contains(expect)
    })
    .unwrap_or_else(|e| panic!("{what}: {e}; log:\n{}", second.log()));
    wait_until(Duration::from_secs(15), "traffic after the restart", || {
        ping("3")
    })
    .unwrap_or_else(|e| panic!("{what}: {e}; log:\n{}", second.log()));
    gw.exec("env", &[&env, b, "down", &ifname]).expect("down");
    assert!(
        gw.ip(&["link", "show", &ifname]).is_err(),
        "{what}: interface still there after down"
    );
    drop(second);
    drop(tp);
}
