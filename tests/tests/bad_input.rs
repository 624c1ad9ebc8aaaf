//! Bad operator input, path by path: every configuration and command-line
//! error names the problem and the fix, never shows a key, and leaves
//! nothing half-applied (no interface, XDP program, route, pin, state file
//! or UAPI socket).

use std::{os::unix::fs::MetadataExt as _, path::PathBuf, time::Duration};

use wg_appliance::keys::PrivateKey;
use wg_appliance_tests::{
    appliance_bin, netns_unavailable, proc::Bg, skip, unique_name, Netns, Veth,
};

struct Case {
    what: &'static str,
    /// The configuration, with `{key}`, `{pub}` and `{wan}` substituted.
    conf: &'static str,
    /// What the message must name (all of them).
    names: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        what: "a truncated private key",
        conf: "[Interface]\nPrivateKey = abc\n",
        names: &[":2:", "PrivateKey", "44 characters", "wg genkey"],
    },
    Case {
        what: "a preshared key that is not one",
        conf: "[Interface]\nPrivateKey = {key}\n[Peer]\nPublicKey = {pub}\nPresharedKey = xyz\n",
        names: &[":5:", "PresharedKey", "wg genpsk"],
    },
    Case {
        what: "a prefix length past 32",
        conf: "[Interface]\nPrivateKey = {key}\n[Peer]\nPublicKey = {pub}\nAllowedIPs = 10.0.0.0/33\n",
        names: &[":5:", "10.0.0.0/33", "prefix length"],
    },
    Case {
        what: "an unknown section",
        conf: "[Interface]\nPrivateKey = {key}\n[Peers]\nPublicKey = {pub}\n",
        names: &[":3:", "[Peers]", "[Peer]"],
    },
    Case {
        what: "a misspelt key",
        conf: "[Interface]\nPrivateKey = {key}\nListenPrt = 5\n",
        names: &[":3:", "ListenPrt", "ListenPort"],
    },
    Case {
        what: "a listen port out of range",
        conf: "[Interface]\nPrivateKey = {key}\nListenPort = 70000\n",
        names: &[":3:", "ListenPort"],
    },
    Case {
        what: "the same peer twice",
        conf: "[Interface]\nPrivateKey = {key}\n[Peer]\nPublicKey = {pub}\n[Peer]\nPublicKey = {pub}\n",
        names: &[":6:", "line 4", "merge"],
    },
    Case {
        what: "an endpoint without a port",
        conf: "[Interface]\nPrivateKey = {key}\n[Peer]\nPublicKey = {pub}\nEndpoint = nohost\n",
        names: &[":5:", "nohost", "port"],
    },
    Case {
        what: "an MTU out of range",
        conf: "[Interface]\nPrivateKey = {key}\nMTU = 70000\n",
        names: &[":3:", "MTU", "1420"],
    },
    Case {
        what: "an address that is not one",
        conf: "[Interface]\nPrivateKey = {key}\nAddress = 10.0.0.300/24\n",
        names: &[":3:", "10.0.0.300/24", "CIDR"],
    },
    Case {
        what: "an unknown XDP mode",
        conf: "[Interface]\nPrivateKey = {key}\n[Appliance]\nXdpMode = turbo\n",
        names: &[":4:", "turbo", "auto, native or generic"],
    },
    Case {
        what: "an unknown steering policy",
        conf: "[Interface]\nPrivateKey = {key}\n[Appliance]\nSteering = sideways\n",
        names: &[":4:", "sideways", "per-peer"],
    },
    Case {
        what: "a metrics address with a bad port",
        conf: "[Interface]\nPrivateKey = {key}\n[Appliance]\nMetrics = 1.2.3.4:99999\n",
        names: &[":4:", "Metrics", "127.0.0.1:9586"],
    },
    Case {
        what: "steering CPUs that do not exist",
        conf: "[Interface]\nPrivateKey = {key}\n[Appliance]\nCPUs = 0-99\nMetrics = off\nWAN = {wan}\n",
        names: &["CPU", "/sys/devices/system/cpu/online"],
    },
    Case {
        what: "a WAN interface that does not exist",
        conf: "[Interface]\nPrivateKey = {key}\n[Appliance]\nWAN = nosuchif0\nMetrics = off\n",
        names: &["nosuchif0", "ip link show nosuchif0"],
    },
    Case {
        what: "a listen port in use",
        conf: "[Interface]\nPrivateKey = {key}\nListenPort = 5555\n[Appliance]\nMetrics = off\nWAN = {wan}\n",
        names: &["5555", "in use", "ss -lunp"],
    },
    Case {
        what: "a PostUp hook that fails",
        conf: "[Interface]\nPrivateKey = {key}\nAddress = 10.66.0.1/24\nPostUp = false\n[Appliance]\nMetrics = off\nWAN = {wan}\n[Peer]\nPublicKey = {pub}\nAllowedIPs = 10.67.0.0/24\n",
        names: &["PostUp", "false"],
    },
];

fn stderr_of(ns: &Netns, what: &str, bin: &str, args: &[&str]) -> (bool, String) {
    let mut full = vec![bin];
    full.extend_from_slice(args);
    let f = Bg::spawn(ns, full[0], &full[1..])
        .expect("spawn")
        .finish(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    (f.status.success(), f.stderr)
}

/// Nothing of `ifname` is left in `ns`: no link, no XDP on the WAN, no
/// route through it, no pins, no state, no UAPI socket.
fn nothing_left(ns: &Netns, ifname: &str, wan: &str, what: &str) {
    let links =
        String::from_utf8_lossy(&ns.ip(&["-br", "link"]).expect("links").stdout).into_owned();
    assert!(
        !links.contains(ifname),
        "{what}: interface left behind:\n{links}"
    );
    let wan_link =
        String::from_utf8_lossy(&ns.ip(&["link", "show", wan]).expect("wan").stdout).into_owned();
    assert!(
        !wan_link.contains("xdp"),
        "{what}: XDP left on the WAN:\n{wan_link}"
    );
    let routes = String::from_utf8_lossy(&ns.ip(&["route"]).expect("routes").stdout).into_owned();
    assert!(!routes.contains(ifname), "{what}: route left:\n{routes}");
    let ino = std::fs::metadata(format!("/var/run/netns/{}", ns.name()))
        .expect("netns")
        .ino();
    let run = wg_appliance::persist::run_dir();
    for p in [
        run.join("bpf").join(ino.to_string()).join(ifname),
        run.join("state")
            .join(ino.to_string())
            .join(format!("{ifname}.state")),
        PathBuf::from(format!("/var/run/wireguard/{ifname}.sock")),
    ] {
        assert!(!p.exists(), "{what}: {} left behind", p.display());
    }
}

#[test]
fn bad_configurations_name_the_problem_and_the_fix_and_leave_nothing() {
    if let Some(why) = netns_unavailable() {
        skip(
            "bad_configurations_name_the_problem_and_the_fix_and_leave_nothing",
            &why,
        );
        return;
    }
    let bin = appliance_bin().expect("binary");
    let b = bin.to_str().expect("bin");
    let ns = Netns::new().expect("ns");
    let other = Netns::new().expect("ns");
    let veth = Veth::new(&ns, &["10.65.0.1/24"], &other, &["10.65.0.2/24"]).expect("veth");
    // Something holds UDP port 5555 for the port-in-use case.
    let _holder = ns
        .enter(|| std::net::UdpSocket::bind("0.0.0.0:5555"))
        .expect("enter")
        .expect("hold port 5555");
    let dir = std::env::temp_dir().join(format!("wgt-badinput-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = PrivateKey::generate();
    let key_b64 = key.to_base64().to_string();
    let peer = PrivateKey::generate().public_key().to_base64();
    for case in CASES {
        let ifname = unique_name("i");
        let path = dir.join(format!("{ifname}.conf"));
        let text = case
            .conf
            .replace("{key}", &key_b64)
            .replace("{pub}", &peer)
            .replace("{wan}", &veth.a);
        {
            use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .expect("conf");
            f.write_all(text.as_bytes()).expect("write");
        }
        let (ok, err) = stderr_of(
            &ns,
            case.what,
            b,
            &["up", "--foreground", path.to_str().expect("p")],
        );
        assert!(!ok, "{}: accepted", case.what);
        for n in case.names {
            assert!(
                err.contains(n),
                "{}: the message does not name {n:?}:\n{err}",
                case.what
            );
        }
        assert!(
            err.contains("Fix"),
            "{}: the message gives no fix:\n{err}",
            case.what
        );
        assert!(
            !err.contains(&key_b64),
            "{}: the message shows the private key",
            case.what
        );
        nothing_left(&ns, &ifname, &veth.a, case.what);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_commands_name_the_problem_and_the_fix() {
    if let Some(why) = netns_unavailable() {
        skip("bad_commands_name_the_problem_and_the_fix", &why);
        return;
    }
    let bin = appliance_bin().expect("binary");
    let b = bin.to_str().expect("bin");
    let ns = Netns::new().expect("ns");
    let missing = unique_name("m");
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "down of an interface not run here",
            vec!["down", &missing],
            vec![&missing, "not run by wg-appliance"],
        ),
        (
            "show of an interface not run here",
            vec!["show", &missing],
            vec![&missing, "not run by wg-appliance"],
        ),
        (
            "a configuration file that does not exist",
            vec!["up", "/nonexistent/wgx9.conf"],
            vec!["/nonexistent/wgx9.conf", "cannot read"],
        ),
        (
            "a CPU list that is not one",
            vec!["run", "--cpus", "abc", "wgx9"],
            vec!["--cpus abc", "0-3,6"],
        ),
        (
            "an interface name too long",
            vec!["run", "this-name-is-too-long"],
            vec!["this-name-is-too-long", "1 to 14 characters"],
        ),
        (
            "an interface name with a slash",
            vec!["run", "bad/name"],
            vec!["bad/name"],
        ),
    ];
    for (what, args, names) in cases {
        let (ok, err) = stderr_of(&ns, what, b, &args);
        assert!(!ok, "{what}: accepted");
        for n in names {
            assert!(
                err.contains(n),
                "{what}: the message does not name {n:?}:\n{err}"
            );
        }
        assert!(
            err.contains("Fix"),
            "{what}: the message gives no fix:\n{err}"
        );
        let links =
            String::from_utf8_lossy(&ns.ip(&["-br", "link"]).expect("links").stdout).into_owned();
        assert_eq!(links.lines().count(), 1, "{what}: links left:\n{links}");
    }
    // A private key that is not one, on stdin.
    let mut child = std::process::Command::new(&bin)
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("pubkey");
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"garbage\n")
            .expect("write");
    }
    let out = child.wait_with_output().expect("pubkey");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("private key") && err.contains("wg genkey") && err.contains("Fix"),
        "pubkey of garbage:\n{err}"
    );
}
