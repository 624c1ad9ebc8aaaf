//! Restart and cycle loops leave nothing behind: 100 `up`/`down` cycles,
//! then 20 kill -9/restart cycles with the kill at different moments (right
//! after start, before any configuration, mid-handshake, under traffic),
//! each followed by a start that must succeed (adopting or clearing what the
//! killed daemon left, never refusing). Before and after, the test counts
//! what a daemon can leave: XDP attachments in its namespace (bpftool net),
//! pins and saved state, links in the namespace, UAPI sockets, and its own
//! file descriptors; and a daemon restarted 20 times uses no more memory
//! than the first.
//!
//! BPF programs, maps and links outlive a daemon only through pins or
//! attachments (a killed process's descriptors close), so those counts
//! cover them; the machine-wide bpftool counts are printed too, but not
//! compared: other tests may run meanwhile.

use std::{os::unix::fs::MetadataExt as _, path::Path, process::Command, time::Duration};

use wg_appliance::keys::PrivateKey;
use wg_appliance_tests::{
    appliance_bin,
    daemon::{rss_kib, write_secret, CliCleanup, ForegroundDaemon},
    netns_unavailable,
    peers::{Impl, ThirdParty},
    skip, unique_name, wait_until, Netns, Veth,
};

#[derive(Debug, PartialEq, Eq)]
struct Resources {
    xdp_in_ns: usize,
    pins: usize,
    states: usize,
    ns_links: usize,
    sockets: usize,
    our_fds: usize,
}

fn bpftool_count(what: &str) -> usize {
    let out = Command::new("bpftool")
        .args([what, "show", "-j"])
        .output()
        .expect("bpftool");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Array(vec![]));
    v.as_array().map_or(0, Vec::len)
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                1 + count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

fn resources(ns: &Netns, ifname: &str) -> Resources {
    let ino = std::fs::metadata(format!("/var/run/netns/{}", ns.name()))
        .expect("netns")
        .ino();
    let run = wg_appliance::persist::run_dir();
    let net = ns
        .exec("bpftool", &["net", "show", "-j"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    Resources {
        xdp_in_ns: net.matches("\"prog_id\"").count(),
        pins: count_files(&run.join("bpf").join(ino.to_string()).join(ifname)),
        states: usize::from(
            run.join("state")
                .join(ino.to_string())
                .join(format!("{ifname}.state"))
                .exists(),
        ),
        ns_links: String::from_utf8_lossy(&ns.ip(&["-br", "link"]).expect("links").stdout)
            .lines()
            .count(),
        sockets: usize::from(Path::new(&format!("/var/run/wireguard/{ifname}.sock")).exists()),
        our_fds: count_files(Path::new("/proc/self/fd")),
    }
}

#[test]
fn up_down_and_kill_restart_cycles_leave_nothing() {
    if let Some(why) = netns_unavailable() {
        skip("up_down_and_kill_restart_cycles_leave_nothing", &why);
        return;
    }
    let bin = appliance_bin().expect("binary");
    let b = bin.to_str().expect("bin");
    let gw = Netns::new().expect("ns");
    let peer_ns = Netns::new().expect("ns");
    let veth = Veth::new(&gw, &["10.109.0.1/24"], &peer_ns, &["10.109.0.2/24"]).expect("veth");
    peer_ns
        .exec("ethtool", &["-K", &veth.b, "gro", "on"])
        .expect("gro");
    let gw_key = PrivateKey::generate();
    let peer_key = PrivateKey::generate();
    let ifname = unique_name("c");
    let dir = std::env::temp_dir().join(format!("wgt-cycles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let _cleanup = CliCleanup {
        ifname: ifname.clone(),
        dir: dir.clone(),
    };
    let conf = dir.join(format!("{ifname}.conf"));
    write_secret(
        &conf,
        &format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = 10.110.0.1/24\n\n[Appliance]\nMetrics = off\nWAN = {}\n\n[Peer]\nPublicKey = {}\nEndpoint = 10.109.0.2:51821\nAllowedIPs = 10.110.0.2/32\n",
            &*gw_key.to_base64(),
            veth.a,
            peer_key.public_key().to_base64()
        ),
    )
    .expect("conf");
    let c = conf.to_str().expect("conf");
    let tp = ThirdParty::start(
        Impl::WireguardGo,
        &peer_ns,
        &peer_key,
        51821,
        "10.110.0.2/24",
    )
    .expect("wireguard-go");
    tp.add_peer(&peer_ns, &gw_key.public_key(), None, "10.110.0.1/32")
        .expect("peer");
    let baseline = Resources {
        xdp_in_ns: 0,
        pins: 0,
        states: 0,
        ..resources(&gw, &ifname)
    };
    println!(
        "machine-wide before: {} programs, {} maps, {} links",
        bpftool_count("prog"),
        bpftool_count("map"),
        bpftool_count("link")
    );

    // 100 up/down cycles through the CLI (each `up` daemonizes and returns
    // once the interface is up; `down` returns once it is gone).
    for i in 0..100 {
        gw.exec(b, &["up", c])
            .unwrap_or_else(|e| panic!("up #{i}: {e:#}"));
        gw.exec(b, &["down", &ifname])
            .unwrap_or_else(|e| panic!("down #{i}: {e:#}"));
    }
    assert_eq!(
        resources(&gw, &ifname),
        baseline,
        "after 100 up/down cycles"
    );

    // 20 kill -9/restart cycles, the kill at four kinds of moment.
    let log = dir.join("daemon.log");
    let ping = |n: &str| {
        gw.exec("ping", &["-c", n, "-i", "0.2", "-W", "1", "10.110.0.2"])
            .is_ok()
    };
    let mut first_rss = 0;
    let mut last_rss = 0;
    for i in 0..20 {
        let moment = i % 4;
        let d = match moment {
            // Right after start: before the interface may even exist.
            0 => {
                let d = ForegroundDaemon::start(&gw, &[], &bin, &["up", "--foreground", c], &log)
                    .expect("start");
                std::thread::sleep(Duration::from_millis(30 * (i as u64 % 5)));
                d
            }
            // Before any configuration: an empty interface for `wg`.
            1 => {
                let d = ForegroundDaemon::start(&gw, &[], &bin, &["run", &ifname], &log)
                    .expect("start");
                wait_until(Duration::from_secs(15), "the empty interface", || {
                    gw.ip(&["link", "show", &ifname]).is_ok()
                })
                .expect("run");
                d
            }
            // Mid-handshake: the first ping starts one.
            2 => {
                let d = ForegroundDaemon::start(&gw, &[], &bin, &["up", "--foreground", c], &log)
                    .expect("start");
                wait_until(Duration::from_secs(15), "the interface", || {
                    gw.ip(&["link", "show", &ifname]).is_ok()
                })
                .expect("up");
                let _ = gw.exec("ping", &["-c", "1", "-W", "0.05", "10.110.0.2"]);
                d
            }
            // Under traffic.
            _ => {
                let d = ForegroundDaemon::start(&gw, &[], &bin, &["up", "--foreground", c], &log)
                    .expect("start");
                wait_until(Duration::from_secs(15), "traffic", || ping("1")).unwrap_or_else(|e| {
                    panic!("{e}: {}", std::fs::read_to_string(&log).unwrap_or_default())
                });
                d
            }
        };
        drop(d); // kill -9
                 // The next start must come up whatever was left, and carry traffic.
        let next = ForegroundDaemon::start(&gw, &[], &bin, &["up", "--foreground", c], &log)
            .expect("start");
        // Ready: its UAPI socket answers (the killed daemon's may still be
        // there, and an adopted data path forwards even before), and
        // traffic crosses.
        let sock = format!("/var/run/wireguard/{ifname}.sock");
        wait_until(Duration::from_secs(20), "the restarted daemon", || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok() && ping("1")
        })
        .unwrap_or_else(|e| {
            panic!(
                "cycle {i} (kill moment {moment}): {e}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        let rss = rss_kib(next.pid());
        if i == 0 {
            first_rss = rss;
        }
        last_rss = rss;
        gw.exec(b, &["down", &ifname])
            .unwrap_or_else(|e| panic!("down after cycle {i}: {e:#}"));
        drop(next);
    }
    assert_eq!(
        resources(&gw, &ifname),
        baseline,
        "after 20 kill -9/restart cycles"
    );
    println!("daemon RSS after restart: first {first_rss} KiB, last {last_rss} KiB");
    println!(
        "machine-wide after: {} programs, {} maps, {} links",
        bpftool_count("prog"),
        bpftool_count("map"),
        bpftool_count("link")
    );
    assert!(
        last_rss < first_rss + 8 * 1024,
        "a restarted daemon uses more memory each time: {first_rss} → {last_rss} KiB"
    );
    drop(tp);
}
