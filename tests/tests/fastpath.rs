//! The AF_XDP fast path (issue #13) end to end: both directions on the
//! fast path against wireguard-go and against another wg-appliance
//! (fast path on one end, BPF on the other), the packets-by-path counters
//! moving only on the path in use, and the switch-over: a kill -9 of the
//! daemon under traffic hands the tunnel to the BPF path and a restarted
//! daemon takes it back, with no counter value sent twice and no replay or
//! authentication drop.
//!
//! The rest of the matrix runs on the fast path with
//! `WG_TEST_DATA_PATH=afxdp cargo test -p wg-appliance-tests` (tunnel_*,
//! rekey_messages, impairment, secrets, monitoring).

use std::{
    collections::HashSet,
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use wg_appliance::{config::DataPathSetting, keys::PrivateKey};
use wg_appliance_tests::{
    appliance_bin,
    daemon::{write_secret, ForegroundDaemon},
    netns_unavailable,
    peers::{Impl, ThirdParty},
    proc::{iperf3, tcp_exact, Proto},
    skip,
    topo::{PeerKind, Tunnel, GW_IN4, PEER_IN4},
    unique_name, wait_until, Netns, Veth,
};
use wg_ebpf_common::Counter;

/// Receive direction (peer → gateway) over the fast path, then the
/// counters: delivered by the workers, nothing steered to `crypt_rx`.
fn receive_on(gw_path: DataPathSetting, kind: PeerKind) -> wg_appliance_tests::appliance::Report {
    let mut t = Tunnel::new(
        kind,
        false,
        |s| s.data_path = gw_path,
        |s| s.data_path = DataPathSetting::Bpf,
    )
    .expect("topology");
    t.warm_up().expect("handshake");
    let r = iperf3(
        &t.peer_ns,
        &t.gw,
        PEER_IN4,
        Proto::Tcp,
        &["-n", "8M"],
        Duration::from_secs(30),
    )
    .expect("iperf3 peer→gw");
    assert!(r.received >= 8 << 20, "received {}", r.received);
    let dst: SocketAddr = format!("{GW_IN4}:7200").parse().expect("addr");
    let got = tcp_exact(&t.peer_ns, &t.gw, dst, 1 << 20, Duration::from_secs(15)).expect("exact");
    assert_eq!(got, 1 << 20, "exact bytes peer→gw");
    let dst: SocketAddr = format!("{PEER_IN4}:7201").parse().expect("addr");
    let got = tcp_exact(&t.gw, &t.peer_ns, dst, 1 << 20, Duration::from_secs(15)).expect("exact");
    assert_eq!(got, 1 << 20, "exact bytes gw→peer");
    let report = t.stop_gw().expect("stop");
    println!("gateway counters ({gw_path:?}):\n{}", report.counters);
    let c = &report.counters;
    for drop in [
        Counter::DropAuthFailed,
        Counter::DropReplay,
        Counter::DropAllowedIps,
        Counter::DropUnknownIndex,
        Counter::DropInternal,
    ] {
        assert_eq!(c.get(drop), 0, "{drop:?}");
    }
    if kind == PeerKind::Appliance {
        let r = t.stop_remote().expect("stop remote");
        assert_eq!(r.counters.get(Counter::DropAuthFailed), 0);
        assert_eq!(r.counters.get(Counter::DropReplay), 0);
        assert_eq!(
            r.counters.get(Counter::RxFastPath),
            0,
            "the remote runs BPF"
        );
        assert!(r.counters.get(Counter::RxSteered) > 500);
    }
    report
}

fn require() -> bool {
    if let Some(why) = netns_unavailable() {
        skip("fastpath", &why);
        return false;
    }
    true
}

#[test]
fn fastpath_receive_with_wireguard_go_counts_only_on_its_path() {
    if !require() {
        return;
    }
    let r = receive_on(DataPathSetting::Afxdp, PeerKind::WireguardGo);
    let c = &r.counters;
    // 8 MiB + 1 MiB of TCP alone is > 6,000 full-size packets.
    assert!(c.get(Counter::RxFastPath) > 6_000, "rx_fast_path");
    assert_eq!(
        c.get(Counter::RxSteered),
        0,
        "nothing on the BPF receive path"
    );
    // The send direction too, once the worker heard from the peer (the
    // first packets before that, and keepalives, go through crypt_tx).
    assert!(c.get(Counter::TxFastPath) > 1_000, "tx_fast_path");
    assert!(
        c.get(Counter::TxSteered) <= 10,
        "tx_steered {}",
        c.get(Counter::TxSteered)
    );
    // Every packet handed to the worker is accounted for: delivered, a
    // keepalive, dropped by the worker with a reason, or dropped by the
    // kernel before the worker saw it (no free frame or a full rx ring;
    // copy mode under load). The counters are read while the worker runs:
    // a packet or two (a late keepalive) may be between wan_rx and it.
    let sd = r.fast_socket_drops;
    println!("socket drops: {sd:?}");
    let dropped: u64 = [
        Counter::DropReplay,
        Counter::DropAuthFailed,
        Counter::DropSessionExpired,
        Counter::DropBadInner,
        Counter::DropAllowedIps,
        Counter::DropUnknownIndex,
        Counter::DropInternal,
    ]
    .iter()
    .map(|d| c.get(*d))
    .sum();
    let accounted = c.get(Counter::RxDelivered)
        + c.get(Counter::RxKeepalive)
        + dropped
        + sd.rx_ring_full
        + sd.rx_no_frame;
    let handed = c.get(Counter::RxFastPath);
    assert!(
        accounted <= handed && handed - accounted <= 2,
        "fast-path packets unaccounted for: {accounted} of {handed}"
    );
}

#[test]
fn fastpath_bpf_only_never_touches_the_fast_path() {
    if !require() {
        return;
    }
    let r = receive_on(DataPathSetting::Bpf, PeerKind::WireguardGo);
    let c = &r.counters;
    assert_eq!(c.get(Counter::RxFastPath), 0, "rx_fast_path");
    assert_eq!(c.get(Counter::TxFastPath), 0, "tx_fast_path");
    assert!(c.get(Counter::RxSteered) > 6_000, "rx_steered");
}

#[test]
fn fastpath_one_end_each_appliance() {
    if !require() {
        return;
    }
    let r = receive_on(DataPathSetting::Afxdp, PeerKind::Appliance);
    assert!(r.counters.get(Counter::RxFastPath) > 6_000);
    assert_eq!(r.counters.get(Counter::RxSteered), 0);
}

/// The BPF counters from the pinned STATS map (they outlive a daemon).
fn bpf_counters(ns: &Netns, ifname: &str) -> wg_appliance::datapath::Counters {
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata(format!("/var/run/netns/{}", ns.name()))
        .expect("netns")
        .ino();
    let pin = wg_appliance::persist::bpffs_dir()
        .join(ino.to_string())
        .join(ifname)
        .join("map_STATS");
    let data =
        aya::maps::MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    let stats: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(aya::maps::Map::from_map_data(data).expect("map"))
            .expect("per-cpu array");
    wg_appliance::datapath::Counters(
        Counter::ALL
            .iter()
            .map(|c| {
                let v = stats.get(&(*c as u32), 0).expect("counter");
                (*c, v.iter().sum())
            })
            .collect(),
    )
}

/// (receiver index, counter) of every WireGuard data message in a pcap
/// file of Ethernet frames carrying IPv4/UDP.
fn data_counters(pcap: &[u8]) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl = u32::from_le_bytes(pcap[off + 8..off + 12].try_into().expect("4")) as usize;
        let f = &pcap[off + 16..(off + 16 + incl).min(pcap.len())];
        off += 16 + incl;
        if f.len() < 14 + 20 + 8 + 16 || f[12..14] != [8, 0] {
            continue;
        }
        let udp = 14 + ((f[14] & 0x0f) as usize) * 4;
        let wg = udp + 8;
        if f.len() < wg + 16 || f[wg] != 4 {
            continue;
        }
        let r = u32::from_le_bytes(f[wg + 4..wg + 8].try_into().expect("4"));
        let c = u64::from_le_bytes(f[wg + 8..wg + 16].try_into().expect("8"));
        out.push((r, c));
    }
    out
}

#[test]
fn fastpath_kill_9_falls_back_to_bpf_and_comes_back() {
    if !require() {
        return;
    }
    let gw = Netns::new().expect("ns");
    let peer_ns = Netns::new().expect("ns");
    let veth = Veth::new(&gw, &["10.121.0.1/24"], &peer_ns, &["10.121.0.2/24"]).expect("veth");
    peer_ns
        .exec("ethtool", &["-K", &veth.b, "gro", "on"])
        .expect("gro");
    let gw_key = PrivateKey::generate();
    let peer_key = PrivateKey::generate();
    let ifname = unique_name("f");
    let dir = std::env::temp_dir().join(format!("wgt-fastpath-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let conf = dir.join(format!("{ifname}.conf"));
    let text = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = 10.122.0.1/24\n\n[Appliance]\nMetrics = off\nWAN = {}\nDataPath = afxdp\n\n[Peer]\nPublicKey = {}\nEndpoint = 10.121.0.2:51821\nAllowedIPs = 10.122.0.2/32\n",
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
        "10.122.0.2/24",
    )
    .expect("peer");
    tp.add_peer(&peer_ns, &gw_key.public_key(), None, "10.122.0.1/32")
        .expect("peer config");

    let first = ForegroundDaemon::up(
        &gw,
        &[],
        &appliance_bin().expect("binary"),
        &conf,
        &dir.join("first.log"),
    )
    .expect("start");
    wait_until(Duration::from_secs(15), "a first handshake", || {
        gw.exec("ping", &["-c", "1", "-W", "1", "10.122.0.2"])
            .is_ok()
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", first.log()));
    assert!(
        first.log().contains("AF_XDP fast path"),
        "the fast path did not start; log:\n{}",
        first.log()
    );

    // What the gateway sends, as the peer's veth receives it.
    let pcap = dir.join("gw-sent.pcap");
    let mut cap = Command::new("ip")
        .args(["netns", "exec", peer_ns.name(), "timeout", "20", "tcpdump"])
        .args(["-i", &veth.b, "-U", "-s", "96", "-w"])
        .arg(&pcap)
        .args(["udp", "and", "src", "port", "51820"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(800));

    // iperf3 peer → gateway for 8 s (the receive direction is the fast
    // path's); the daemon is SIGKILLed at 2.5 s and restarted at 4.5 s.
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            gw.name(),
            "timeout",
            "30",
            "iperf3",
            "-s",
            "-1",
            "-p",
            "5311",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let peer_name = peer_ns.name().to_owned();
    let client = std::thread::spawn(move || {
        Command::new("ip")
            .args(["netns", "exec", &peer_name, "timeout", "30", "iperf3"])
            .args(["-c", "10.122.0.1", "-p", "5311", "-t", "8", "-i", "1", "-J"])
            .output()
            .expect("iperf3 client")
    });
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(2400));
    let c1 = bpf_counters(&gw, &ifname);
    drop(first); // SIGKILL: the kernel closes the workers' sockets.
    std::thread::sleep(Duration::from_millis(300));
    let c2 = bpf_counters(&gw, &ifname);
    std::thread::sleep(Duration::from_millis(1500));
    let c3 = bpf_counters(&gw, &ifname);
    let second = ForegroundDaemon::up(
        &gw,
        &[],
        &appliance_bin().expect("binary"),
        &conf,
        &dir.join("second.log"),
    )
    .expect("start");
    wait_until(
        Duration::from_secs(10),
        "the new daemon's fast path",
        || second.log().contains("AF_XDP fast path"),
    )
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", second.log()));
    let out = client.join().expect("iperf3 thread");
    let _ = server.wait_with_output();
    let c4 = bpf_counters(&gw, &ifname);
    println!("switch-over done after {:?}", t0.elapsed());
    let _ = cap.kill();
    let _ = cap.wait();

    let d = |a: &wg_appliance::datapath::Counters, b: &wg_appliance::datapath::Counters, c| {
        b.get(c) - a.get(c)
    };
    println!(
        "fast path / BPF path packets: before the kill {} / {}, daemon dead {} / {}, after the restart {} / {}",
        c1.get(Counter::RxFastPath),
        c1.get(Counter::RxSteered),
        d(&c2, &c3, Counter::RxFastPath),
        d(&c2, &c3, Counter::RxSteered),
        d(&c3, &c4, Counter::RxFastPath),
        d(&c3, &c4, Counter::RxSteered),
    );
    println!(
        "sent: fast path / BPF path: before the kill {} / {}, daemon dead {} / {}, after the restart {} / {}",
        c1.get(Counter::TxFastPath),
        c1.get(Counter::TxSteered),
        d(&c2, &c3, Counter::TxFastPath),
        d(&c2, &c3, Counter::TxSteered),
        d(&c3, &c4, Counter::TxFastPath),
        d(&c3, &c4, Counter::TxSteered),
    );
    assert!(
        c1.get(Counter::TxFastPath) > 1_000,
        "sending on the fast path before the kill"
    );
    assert!(
        d(&c2, &c3, Counter::TxSteered) > 100,
        "sending on BPF while the daemon is dead"
    );
    assert!(
        d(&c3, &c4, Counter::TxFastPath) > 1_000,
        "sending on the fast path again"
    );
    assert!(
        c1.get(Counter::RxFastPath) > 1_000,
        "fast path before the kill"
    );
    assert!(
        d(&c2, &c3, Counter::RxSteered) > 500,
        "BPF path while the daemon is dead"
    );
    assert_eq!(
        d(&c2, &c3, Counter::RxFastPath),
        0,
        "no fast path without a daemon"
    );
    assert!(
        d(&c3, &c4, Counter::RxFastPath) > 1_000,
        "back on the fast path"
    );
    for c in [Counter::DropReplay, Counter::DropAuthFailed] {
        assert_eq!(c4.get(c), 0, "{c:?} on the BPF path");
    }
    assert!(
        !second.log().contains("drop_replay") && !second.log().contains("panicked"),
        "{}",
        second.log()
    );

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
        assert!(bytes > 0, "interval {i}: no bytes moved");
    }

    // Every data message the gateway sent, across both daemons and both
    // paths: no (session, counter) twice.
    let sent = data_counters(&std::fs::read(&pcap).expect("pcap"));
    assert!(sent.len() > 1_000, "captured {} data messages", sent.len());
    let mut seen = HashSet::new();
    for s in &sent {
        assert!(
            seen.insert(*s),
            "counter {} of session {:#x} sent twice",
            s.1,
            s.0
        );
    }
    println!(
        "{} data messages from the gateway, every counter once",
        sent.len()
    );

    let _ = gw.exec(
        appliance_bin().expect("bin").to_str().expect("utf-8"),
        &["down", &ifname],
    );
    drop(second);
    let _ = std::fs::remove_file(format!("/var/run/wireguard/{ifname}.sock"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The bench lab brings each end up empty (`-f`) and configures it over
/// UAPI with `wg` (listen port, peers, endpoints): the workers must follow
/// (a listen port set after the start once left them sending from the old
/// one). One second of TCP through a pair of fast-path appliances.
#[test]
fn fastpath_interface_configured_over_uapi_carries_traffic() {
    if !require() {
        return;
    }
    use wg_appliance::bench::{self, BenchArgs};
    let out = std::env::temp_dir().join(format!("wg-fastpath-bench-{}", std::process::id()));
    let args = BenchArgs {
        rounds: 1,
        duration: 1,
        warmup: 0,
        variants: vec!["appliance-afxdp".into()],
        workloads: vec!["tcp1".into()],
        out: Some(out.clone()),
        appliance_bin: Some(appliance_bin().expect("binary")),
        ..BenchArgs::new()
    };
    let outcome = bench::run(&args).expect("bench run");
    let _ = std::fs::remove_dir_all(&out);
    assert_eq!(outcome.samples.len(), 1, "{:?}", outcome.samples);
    let s = &outcome.samples[0];
    assert!(s.error.is_none(), "failed: {:?}", s.error);
    assert!(s.value.unwrap_or(0.0) > 0.0, "no throughput: {s:?}");
}

/// CPU time (user + system, clock ticks) of the daemon's thread named
/// `name`, from /proc.
fn thread_ticks(pid: u32, name: &str) -> Option<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the command's closing parenthesis: state is field 3,
        // utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        return Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?);
    }
    None
}

/// A tunnel device that takes no frames (`wg0x` set down under traffic:
/// `sendto` on its socket says ENETDOWN and the frames stay queued) must
/// not make the worker spin: it sleeps while blocked, and the tunnel
/// carries traffic again once the device is back.
#[test]
fn fastpath_stuck_tunnel_device_does_not_spin_the_worker() {
    if !require() {
        return;
    }
    let gw = Netns::new().expect("ns");
    let peer_ns = Netns::new().expect("ns");
    let veth = Veth::new(&gw, &["10.123.0.1/24"], &peer_ns, &["10.123.0.2/24"]).expect("veth");
    peer_ns
        .exec("ethtool", &["-K", &veth.b, "gro", "on"])
        .expect("gro");
    let gw_key = PrivateKey::generate();
    let peer_key = PrivateKey::generate();
    let ifname = unique_name("s");
    let dir = std::env::temp_dir().join(format!("wgt-fastpath-stuck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let conf = dir.join(format!("{ifname}.conf"));
    let text = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = 10.124.0.1/24\n\n[Appliance]\nMetrics = off\nWAN = {}\nDataPath = afxdp\n\n[Peer]\nPublicKey = {}\nEndpoint = 10.123.0.2:51821\nAllowedIPs = 10.124.0.2/32\n",
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
        "10.124.0.2/24",
    )
    .expect("peer");
    tp.add_peer(&peer_ns, &gw_key.public_key(), None, "10.124.0.1/32")
        .expect("peer config");
    let bin = appliance_bin().expect("binary");
    let daemon =
        ForegroundDaemon::up(&gw, &[], &bin, &conf, &dir.join("daemon.log")).expect("start");
    let ping = |ns: &Netns, to: &str| ns.exec("ping", &["-c", "1", "-W", "1", to]).is_ok();
    wait_until(Duration::from_secs(15), "a first handshake", || {
        ping(&gw, "10.124.0.2")
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", daemon.log()));
    assert!(
        daemon.log().contains("AF_XDP fast path"),
        "the fast path did not start; log:\n{}",
        daemon.log()
    );
    let worker = "wg-fast-0";
    let pid = daemon.pid();
    assert!(thread_ticks(pid, worker).is_some(), "no thread {worker}");

    // The tunnel device down, then 6 s of datagrams from the peer into the
    // tunnel: the worker's queue to wg0x fills (192 frames) and stays full.
    let partner = format!("{ifname}x");
    gw.exec("ip", &["link", "set", &partner, "down"])
        .expect("partner down");
    let flood = Command::new("ip")
        .args([
            "netns",
            "exec",
            peer_ns.name(),
            "timeout",
            "10",
            "python3",
            "-c",
        ])
        .arg(
            "import socket, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             end = time.time() + 6\n\
             while time.time() < end:\n\
             \x20   try: s.sendto(b'x' * 512, ('10.124.0.1', 9))\n\
             \x20   except OSError: time.sleep(0.001)\n",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("flood");
    std::thread::sleep(Duration::from_secs(2));
    let t0 = thread_ticks(pid, worker).expect("worker ticks");
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let t1 = thread_ticks(pid, worker).expect("worker ticks");
    let wall = w0.elapsed().as_secs_f64();
    let hz = 100.0; // USER_HZ on Linux
    let share = (t1 - t0) as f64 / hz / wall;
    let mut flood = flood;
    let _ = flood.wait();
    println!(
        "worker CPU while its tunnel device was down: {:.0}% of a core",
        share * 100.0
    );
    assert!(
        share < 0.25,
        "the worker spun at {:.0}% of a core on a device that takes nothing",
        share * 100.0
    );

    // Back up: the tunnel carries traffic again, both ways.
    gw.exec("ip", &["link", "set", &partner, "up"])
        .expect("partner up");
    wait_until(
        Duration::from_secs(10),
        "traffic after the device came back",
        || ping(&gw, "10.124.0.2") && ping(&peer_ns, "10.124.0.1"),
    )
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", daemon.log()));
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());

    let _ = gw.exec(bin.to_str().expect("utf-8"), &["down", &ifname]);
    drop(daemon);
    let _ = std::fs::remove_file(format!("/var/run/wireguard/{ifname}.sock"));
    let _ = std::fs::remove_dir_all(&dir);
}
