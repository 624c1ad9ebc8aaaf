//! `cargo xtask demo`: a lab in network namespaces.
//!
//! Today's lab: a gateway namespace running `wg-appliance classify` (the XDP
//! `wan_rx` classifier, native mode on a veth), and a peer namespace with a
//! real wireguard-go interface whose handshake initiations cross the
//! classifier, plus a bounded burst of malformed WireGuard junk and ordinary
//! traffic. The user sees the counters: handshakes passed, junk dropped by
//! reason, other traffic untouched. Everything is torn down at the end, on
//! error, and on Ctrl-C.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    net::UdpSocket,
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{path_env, root, sh};

const PORT: u16 = 51820;
const GW_ADDR: &str = "10.99.0.1";
const PEER_ADDR: &str = "10.99.0.2";

/// Namespaces and processes of the lab; removed on drop.
struct Lab {
    gw: String,
    peer: String,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.gw, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        println!(
            "==> lab torn down (namespaces {} and {} removed)",
            self.gw, self.peer
        );
    }
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip")?;
    if !out.status.success() {
        bail!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn in_ns(ns: &str, cmd: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", ns, cmd];
    full.extend_from_slice(args);
    ip(&full)
}

fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn run() -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    let check = |stop: &AtomicBool| -> Result<()> {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    };

    println!("==> [1/6] building wg-appliance (release, with its BPF programs)");
    sh(
        "cargo",
        &["build", "--release", "--package", "wg-appliance"],
    )?;
    let bin = root().join("target/release/wg-appliance");

    let pid = std::process::id();
    let lab = &mut Lab {
        gw: format!("wgdemo{pid}gw"),
        peer: format!("wgdemo{pid}pe"),
        children: vec![],
    };
    println!(
        "==> [2/6] creating namespaces {} (gateway) and {} (remote peer)",
        lab.gw, lab.peer
    );
    ip(&["netns", "add", &lab.gw])?;
    ip(&["netns", "add", &lab.peer])?;
    let (wan, wan_peer) = (format!("wgd{pid}w"), format!("wgd{pid}p"));
    ip(&[
        "link", "add", &wan, "netns", &lab.gw, "type", "veth", "peer", "name", &wan_peer, "netns",
        &lab.peer,
    ])?;
    for (ns, dev, addr) in [(&lab.gw, &wan, GW_ADDR), (&lab.peer, &wan_peer, PEER_ADDR)] {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    check(&stop)?;

    println!(
        "==> [3/6] attaching the XDP classifier wan_rx to {wan} in {}",
        lab.gw
    );
    let mut classify = Command::new("ip")
        .args(["netns", "exec", &lab.gw])
        .arg(&bin)
        .args([
            "classify",
            "--interface",
            &wan,
            "--port",
            &PORT.to_string(),
            "--seconds",
            "14",
            "--interval",
            "2",
        ])
        .env("PATH", path_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting wg-appliance classify")?;
    // Echo the classifier's output and keep it, to read the final counters.
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = classify.stdout.take().context("classify stdout")?;
    let echo = {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("      {line}");
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        })
    };
    lab.children.push(classify);
    wait_for(Duration::from_secs(10), "wan_rx to be attached", || {
        ip(&["-n", &lab.gw, "link", "show", &wan]).is_ok_and(|s| s.contains("xdp"))
    })?;
    check(&stop)?;

    println!(
        "==> [4/6] starting a real wireguard-go peer in {} pointed at {GW_ADDR}:{PORT}",
        lab.peer
    );
    let wgif = format!("wgd{pid}g");
    let wggo = Command::new("ip")
        .args(["netns", "exec", &lab.peer, "wireguard-go", "-f", &wgif])
        .env("PATH", path_env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting wireguard-go (cargo xtask setup installs it)")?;
    lab.children.push(wggo);
    wait_for(
        Duration::from_secs(10),
        "the wireguard-go interface",
        || ip(&["-n", &lab.peer, "link", "show", &wgif]).is_ok(),
    )?;
    let key_file = root().join("target").join(format!("demo-{pid}.key"));
    let gen = Command::new("wg")
        .arg("genkey")
        .output()
        .context("wg genkey")?;
    write_secret(&key_file, &gen.stdout)?;
    let gw_pub = {
        let k = Command::new("wg").arg("genkey").output()?.stdout;
        let mut p = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        use std::io::Write as _;
        p.stdin.take().context("stdin")?.write_all(&k)?;
        String::from_utf8_lossy(&p.wait_with_output()?.stdout)
            .trim()
            .to_owned()
    };
    let key_path = key_file.display().to_string();
    let endpoint = format!("{GW_ADDR}:{PORT}");
    let set = in_ns(
        &lab.peer,
        "wg",
        &[
            "set",
            &wgif,
            "private-key",
            &key_path,
            "peer",
            &gw_pub,
            "endpoint",
            &endpoint,
            "allowed-ips",
            "10.100.0.0/24",
        ],
    );
    let _ = std::fs::remove_file(&key_file);
    set?;
    ip(&[
        "-n",
        &lab.peer,
        "addr",
        "add",
        "10.100.0.2/24",
        "dev",
        &wgif,
    ])?;
    ip(&["-n", &lab.peer, "link", "set", &wgif, "up"])?;
    // Traffic into the tunnel makes wireguard-go send handshake initiations.
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.peer,
            "ping",
            "-c",
            "2",
            "-W",
            "1",
            "10.100.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    check(&stop)?;

    println!(
        "==> [5/6] sending a bounded burst of junk and plain traffic from {}",
        lab.peer
    );
    let sent = send_junk(&lab.peer)?;
    println!("      sent {sent} malformed WireGuard datagrams to port {PORT}");
    let ping = Command::new("ip")
        .args([
            "netns", "exec", &lab.peer, "ping", "-c", "3", "-i", "0.2", "-W", "1", GW_ADDR,
        ])
        .output()?;
    let ping_ok = ping.status.success();
    println!(
        "      ping {GW_ADDR} (ICMP, not WireGuard): {}",
        if ping_ok {
            "answered: untouched by XDP"
        } else {
            "FAILED"
        }
    );
    check(&stop)?;

    println!("==> [6/6] waiting for the classifier's final counters");
    let classify = &mut lab.children[0];
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = classify.try_wait()? {
            break s;
        }
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-INT", &classify.id().to_string()])
                .status();
            bail!("interrupted while waiting for wg-appliance classify");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        bail!("wg-appliance classify exited with {status}");
    }
    let _ = echo.join();
    let lines = lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // The final table prints "<name>   <value>" lines; the last one wins.
    let counter = |name: &str| -> u64 {
        lines
            .iter()
            .rev()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(name))
                    .then(|| w.next().and_then(|v| v.parse().ok()))
                    .flatten()
            })
            .unwrap_or(0)
    };
    let handshakes = counter("pass_handshake_initiation");
    let dropped: u64 = [
        "drop_bad_type",
        "drop_bad_reserved",
        "drop_bad_handshake_length",
        "drop_bad_data_length",
    ]
    .iter()
    .map(|n| counter(n))
    .sum();
    let still_attached =
        ip(&["-n", &lab.gw, "link", "show", &wan]).is_ok_and(|s| s.contains("xdp"));
    println!("\n================ demo summary ================");
    println!("  XDP wan_rx on {wan}: {handshakes} handshake initiations from wireguard-go passed to the stack,");
    println!(
        "  {dropped} of {sent} junk datagrams dropped in XDP, each with a reason (counters above),"
    );
    println!(
        "  ICMP to the gateway {}.",
        if ping_ok { "untouched" } else { "NOT answered" }
    );
    println!(
        "  program detached on exit: {}",
        if still_attached { "NO (bug)" } else { "yes" }
    );
    println!(
        "  Next in this lab: tunnels carrying traffic, metrics and an A/B result (see README)."
    );
    println!("==============================================");
    if !ping_ok || still_attached || handshakes == 0 || dropped != sent as u64 {
        bail!("demo found a problem (see summary)");
    }
    Ok(())
}

fn write_secret(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// Sends 4 × 50 malformed WireGuard datagrams from inside `ns`.
fn send_junk(ns: &str) -> Result<usize> {
    let file = File::open(format!("/var/run/netns/{ns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<usize> {
            // SAFETY: setns on this thread only, with a valid namespace fd.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {ns}: {}", std::io::Error::last_os_error());
            }
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            let dst = format!("{GW_ADDR}:{PORT}");
            let junk: [Vec<u8>; 4] = [
                vec![7, 0, 0, 0, 1, 2, 3, 4],              // unknown type
                [vec![1, 0, 9, 0], vec![0; 144]].concat(), // reserved not zero
                [vec![1, 0, 0, 0], vec![0; 100]].concat(), // initiation of the wrong size
                [vec![4, 0, 0, 0], vec![0; 16]].concat(),  // data shorter than 32 bytes
            ];
            let mut n = 0;
            for _ in 0..50 {
                for j in &junk {
                    sock.send_to(j, &dst)?;
                    n += 1;
                }
            }
            Ok(n)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("junk sender panicked"))?
    })
}
