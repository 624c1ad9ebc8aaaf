//! `cargo xtask demo`: the lab in network namespaces.
//!
//! ```text
//!  [lan] 192.168.10.10 ── 192.168.10.1 [gw: wg-appliance, wg 10.200.0.1] 203.0.113.1 ─┐
//!                                                                                     │ [inet]
//!  [remote: wireguard-go, wg 10.200.0.2, site LAN 192.168.20.1] 203.0.113.2 ─────────┤ bridge
//!  [rw: boringtun-cli road warrior, wg 10.200.0.3]                203.0.113.3 ─────────┘
//! ```
//!
//! It brings everything up, shows the handshakes (`wg show` over our UAPI
//! socket), sends traffic LAN → remote site and back and from the road
//! warrior, throws a bounded burst of junk at the gateway, scrapes
//! `/metrics`, runs a short A/B, prints a summary, and tears everything
//! down: at the end, on error, and on Ctrl-C.

use std::{
    fs::File,
    io::Write as _,
    net::UdpSocket,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{path_env, root, sh};

const STEPS: usize = 9;

/// Namespaces, processes and files of the lab; all removed on drop.
struct Lab {
    tag: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    gw_if: String,
    bin: PathBuf,
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.tag)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let gw = self.ns("gw");
        let _ = Command::new("ip")
            .args(["netns", "exec", &gw])
            .arg(&self.bin)
            .args(["down", &self.gw_if])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        println!("==> lab torn down (namespaces removed, daemons stopped)");
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .env("PATH", path_env())
        .output()
        .with_context(|| format!("cannot run {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn in_ns(ns: &str, cmd: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", ns, cmd];
    full.extend_from_slice(args);
    run("ip", &full)
}

fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full)
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

fn keypair() -> Result<(String, String)> {
    let private = run("wg", &["genkey"])?.trim().to_owned();
    let mut p = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    p.stdin
        .take()
        .context("stdin")?
        .write_all(private.as_bytes())?;
    let public = String::from_utf8_lossy(&p.wait_with_output()?.stdout)
        .trim()
        .to_owned();
    Ok((private, public))
}

fn secret_file(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn step(n: usize, what: &str) {
    println!("\n==> [{n}/{STEPS}] {what}");
}

/// iperf3 for `secs` from `client_ns` to `server_addr` (server in
/// `server_ns`); returns Mbit/s received.
fn iperf(
    client_ns: &str,
    server_ns: &str,
    server_addr: &str,
    port: u16,
    secs: u32,
    reverse: bool,
) -> Result<f64> {
    let p = port.to_string();
    let mut server = Command::new("ip")
        .args(["netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", &p])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (cargo xtask setup installs it)")?;
    std::thread::sleep(Duration::from_millis(300));
    let t = secs.to_string();
    let mut args = vec!["-c", server_addr, "-p", &p, "-t", &t, "-J"];
    if reverse {
        args.push("-R");
    }
    let out = Command::new("timeout")
        .arg((secs + 10).to_string())
        .args(["ip", "netns", "exec", client_ns, "iperf3"])
        .args(&args)
        .output();
    let _ = server.kill();
    let _ = server.wait();
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The receiver's figure: "sum_received" ... "bits_per_second": N
    let rx = text
        .find("\"sum_received\"")
        .context("iperf3 produced no result (see its JSON)")?;
    let bps = text[rx..]
        .split("\"bits_per_second\":")
        .nth(1)
        .and_then(|s| s.split([',', '}']).next())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .context("no bits_per_second in iperf3 output")?;
    Ok(bps / 1e6)
}

/// `cargo xtask demo --fleet`: builds the release binary and the fleet lab
/// (tests/src/fleet.rs, the same lab the suite's fleet test measures), and
/// runs it with six clients.
pub fn run_fleet() -> Result<()> {
    println!("==> building wg-appliance (release) and the fleet lab");
    sh(
        "cargo",
        &["build", "--release", "--package", "wg-appliance"],
    )?;
    sh(
        "cargo",
        &[
            "build",
            "--package",
            "wg-appliance-tests",
            "--bin",
            "fleet-demo",
        ],
    )?;
    let bin = root().join("target/release/wg-appliance");
    sh(
        &root().join("target/debug/fleet-demo").display().to_string(),
        &[&bin.display().to_string(), "6", "25"],
    )
}

pub fn run_demo() -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    let check = |stop: &AtomicBool| -> Result<()> {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    };
    let started = Instant::now();

    step(1, "building wg-appliance (release, with its BPF programs)");
    sh(
        "cargo",
        &["build", "--release", "--package", "wg-appliance"],
    )?;
    let bin = root().join("target/release/wg-appliance");

    let pid = std::process::id();
    let tag = format!("wgd{pid}");
    let mut lab = Lab {
        tag: tag.clone(),
        namespaces: vec![],
        children: vec![],
        dirs: vec![],
        files: vec![],
        gw_if: format!("wgd{pid}"),
        bin: bin.clone(),
    };
    let (lan, gw, inet, remote, rw) = (
        lab.ns("lan"),
        lab.ns("gw"),
        lab.ns("inet"),
        lab.ns("rem"),
        lab.ns("rw"),
    );

    step(2, "creating the lab: site LAN, gateway, internet, remote site (wireguard-go), road warrior (boringtun-cli)");
    for ns in [&lan, &gw, &inet, &remote, &rw] {
        run("ip", &["netns", "add", ns])?;
        lab.namespaces.push(ns.clone());
        ip(ns, &["link", "set", "lo", "up"])?;
    }
    // LAN leg.
    let (l_host, l_gw) = (format!("{tag}l0"), format!("{tag}l1"));
    run(
        "ip",
        &[
            "link", "add", &l_host, "netns", &lan, "type", "veth", "peer", "name", &l_gw, "netns",
            &gw,
        ],
    )?;
    ip(&lan, &["addr", "add", "192.168.10.10/24", "dev", &l_host])?;
    ip(&gw, &["addr", "add", "192.168.10.1/24", "dev", &l_gw])?;
    ip(&lan, &["link", "set", &l_host, "up"])?;
    ip(&gw, &["link", "set", &l_gw, "up"])?;
    ip(&lan, &["route", "add", "default", "via", "192.168.10.1"])?;
    // A host's socket leaves only a partial checksum on veth; the tunnel
    // must see full packets (a real NIC's frames are complete).
    in_ns(&lan, "ethtool", &["-K", &l_host, "tx", "off"])?;
    in_ns(&gw, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    // Internet: a bridge with three legs.
    let br = format!("{tag}br");
    ip(&inet, &["link", "add", &br, "type", "bridge"])?;
    ip(&inet, &["link", "set", &br, "up"])?;
    let mut wan_if = String::new();
    for (ns, addr, n) in [
        (&gw, "203.0.113.1/24", 0),
        (&remote, "203.0.113.2/24", 1),
        (&rw, "203.0.113.3/24", 2),
    ] {
        let (a, b) = (format!("{tag}w{n}"), format!("{tag}i{n}"));
        run(
            "ip",
            &[
                "link", "add", &a, "netns", ns, "type", "veth", "peer", "name", &b, "netns", &inet,
            ],
        )?;
        ip(ns, &["addr", "add", addr, "dev", &a])?;
        ip(ns, &["link", "set", &a, "up"])?;
        ip(&inet, &["link", "set", &b, "master", &br, "up"])?;
        // Frames the gateway redirects out of XDP need GRO on the far end.
        in_ns(&inet, "ethtool", &["-K", &b, "gro", "on"])?;
        if n == 0 {
            wan_if = a;
        }
    }
    // The remote site's LAN (an address on its loopback: this kernel has
    // no dummy interfaces).
    ip(&remote, &["addr", "add", "192.168.20.1/24", "dev", "lo"])?;
    check(&stop)?;

    step(
        3,
        "starting wg-appliance on the gateway from a wg-quick file",
    );
    let (gw_priv, gw_pub) = keypair()?;
    let (rem_priv, rem_pub) = keypair()?;
    let (rw_priv, rw_pub) = keypair()?;
    let conf = root().join("target").join(format!("{}.conf", lab.gw_if));
    secret_file(
        &conf,
        &format!(
            "[Interface]\nPrivateKey = {gw_priv}\nListenPort = 51820\nAddress = 10.200.0.1/24\n\n\
             [Appliance]\nWAN = {wan_if}\nMetrics = 127.0.0.1:9586\n\n\
             # friendly_name = remote-site\n[Peer]\nPublicKey = {rem_pub}\nEndpoint = 203.0.113.2:51820\nAllowedIPs = 10.200.0.2/32, 192.168.20.0/24\n\n\
             # friendly_name = road-warrior\n[Peer]\nPublicKey = {rw_pub}\nAllowedIPs = 10.200.0.3/32\n"
        ),
    )?;
    lab.files.push(conf.clone());
    run(
        "ip",
        &[
            "netns",
            "exec",
            &gw,
            bin.to_str().context("path")?,
            "up",
            conf.to_str().context("path")?,
        ],
    )?;
    println!("{}", in_ns(&gw, "ip", &["-br", "link", "show"])?.trim_end());
    start_prometheus(&mut lab, &gw)?;
    println!("      Prometheus scrapes 127.0.0.1:9586/metrics every 1 s inside the gateway's namespace (alert rules loaded)");

    step(
        4,
        "starting the remote site (wireguard-go) and the road warrior (boringtun-cli)",
    );
    for (ns, ifn, prog) in [
        (&remote, "wgrem", "wireguard-go"),
        (&rw, "wgrw", "boringtun-cli"),
    ] {
        let ifname = format!("{tag}{}", &ifn[2..]);
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, prog, "-f"]);
        if prog == "boringtun-cli" {
            c.arg("--disable-drop-privileges");
        }
        let child = c
            .arg(&ifname)
            .env("PATH", path_env())
            .env("WG_SUDO", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {prog}"))?;
        lab.children.push(child);
        wait_for(Duration::from_secs(10), prog, || {
            Path::new(&format!("/var/run/wireguard/{ifname}.sock")).exists()
        })?;
        lab.files
            .push(PathBuf::from(format!("/var/run/wireguard/{ifname}.sock")));
        let (key, addr, allowed) = if prog == "wireguard-go" {
            (&rem_priv, "10.200.0.2/24", "10.200.0.1/32,192.168.10.0/24")
        } else {
            (&rw_priv, "10.200.0.3/24", "10.200.0.1/32")
        };
        let kf = root().join("target").join(format!("{ifname}.key"));
        secret_file(&kf, key)?;
        lab.files.push(kf.clone());
        let kfs = kf.to_str().context("path")?;
        in_ns(
            ns,
            "wg",
            &[
                "set",
                &ifname,
                "private-key",
                kfs,
                "listen-port",
                "51820",
                "peer",
                &gw_pub,
                "endpoint",
                "203.0.113.1:51820",
                "allowed-ips",
                allowed,
            ],
        )?;
        ip(ns, &["addr", "add", addr, "dev", &ifname])?;
        ip(ns, &["link", "set", &ifname, "up"])?;
        if prog == "wireguard-go" {
            ip(ns, &["route", "add", "192.168.10.0/24", "dev", &ifname])?;
        }
        println!("      {prog} up in {ns} as {ifname}");
    }
    check(&stop)?;

    step(
        5,
        "traffic: LAN host → remote site LAN, road warrior → gateway",
    );
    let lan_ping = in_ns(
        &lan,
        "ping",
        &["-c", "5", "-i", "0.2", "-W", "2", "192.168.20.1"],
    )
    .is_ok_and(|o| o.contains(" 0% packet loss"));
    println!(
        "      ping 192.168.10.10 → 192.168.20.1 through the tunnel: {}",
        if lan_ping {
            "5/5 answered"
        } else {
            "LOST PACKETS"
        }
    );
    let rw_ping = in_ns(
        &rw,
        "ping",
        &["-c", "5", "-i", "0.2", "-W", "2", "10.200.0.1"],
    )
    .is_ok_and(|o| o.contains(" 0% packet loss"));
    println!(
        "      ping road warrior → 10.200.0.1: {}",
        if rw_ping {
            "5/5 answered"
        } else {
            "LOST PACKETS"
        }
    );
    let up = iperf(&lan, &remote, "192.168.20.1", 5201, 3, false).unwrap_or(0.0);
    let down = iperf(&lan, &remote, "192.168.20.1", 5202, 3, true).unwrap_or(0.0);
    println!(
        "      iperf3 TCP LAN → remote: {up:.0} Mbit/s; remote → LAN: {down:.0} Mbit/s (3 s each)"
    );
    check(&stop)?;

    step(
        6,
        "handshakes as `wg show` sees them on the gateway (over wg-appliance's UAPI socket)",
    );
    let show = in_ns(&gw, "wg", &["show", &lab.gw_if])?;
    for line in show.lines() {
        println!("      {line}");
    }
    let handshakes = show.matches("latest handshake").count();

    step(
        7,
        "a bounded burst of junk at the gateway's WireGuard port, from the road warrior's network",
    );
    let sent = send_junk(&rw, "203.0.113.1:51820")?;
    println!("      sent {sent} malformed or unknown-session WireGuard datagrams");
    std::thread::sleep(Duration::from_millis(300));

    step(
        8,
        "scraping http://127.0.0.1:9586/metrics on the gateway, and one dashboard query through Prometheus",
    );
    let metrics = in_ns(
        &gw,
        "curl",
        &["-sf", "--max-time", "5", "http://127.0.0.1:9586/metrics"],
    )?;
    // The junk's own reasons, compared alone (MLD reports and the like
    // count under other reasons).
    let mut dropped = 0.0;
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let interesting = line.starts_with("wireguard_")
            || line.starts_with("wg_appliance_handshakes_total")
            || line.starts_with("wg_appliance_xdp_attached")
            || line.starts_with("wg_appliance_cpu_packets_total");
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if line.starts_with("wg_appliance_dropped_packets_total") && value > 0.0 {
            if JUNK_REASONS
                .iter()
                .any(|r| line.contains(&format!("reason=\"{r}\"")))
            {
                dropped += value;
            }
            println!("      {line}");
        } else if interesting && value > 0.0 {
            println!("      {line}");
        }
    }
    let expr = dashboard_query("wg_appliance_dropped_packets_total", &lab.gw_if)?;
    println!("      the dashboard's drops-by-reason panel, asked of Prometheus:\n        {expr}");
    let mut answer = Vec::new();
    // The junk went out in step 7: wait (bounded) for a scrape that saw it.
    let prom_ok = wait_for(
        Duration::from_secs(15),
        "Prometheus to see the junk",
        || {
            answer = prom_query(&gw, &expr).unwrap_or_default();
            answer.iter().any(|(_, v)| *v > 0.0)
        },
    )
    .is_ok();
    for (labels, v) in answer.iter().filter(|(_, v)| *v > 0.0) {
        println!("        {labels} => {v:.2} packets/s");
    }
    println!("        ({} reasons in all; the others at 0)", answer.len());
    check(&stop)?;

    step(
        9,
        "A/B: wg-appliance vs wireguard-go vs boringtun-cli, one tunnel, TCP (quick preset)",
    );
    let ab = Command::new(&bin)
        .args(["bench", "--quick"])
        .env("PATH", path_env())
        .status();
    let ab_ok = match ab {
        Ok(s) if s.success() => true,
        Ok(s) => {
            println!("      bench exited with {s}");
            false
        }
        Err(e) => {
            println!("      bench did not run: {e}");
            false
        }
    };

    println!("\n================ demo summary ================");
    println!("  handshakes on the gateway (wg show):   {handshakes} of 2 peers");
    println!(
        "  LAN ↔ remote site through the tunnel:  {}",
        if lan_ping { "ok" } else { "FAILED" }
    );
    println!(
        "  road warrior → gateway:                {}",
        if rw_ping { "ok" } else { "FAILED" }
    );
    println!("  iperf3 TCP, LAN → remote / back:       {up:.0} / {down:.0} Mbit/s (in a busy VM, with the lab's other daemons)");
    println!("  junk dropped in XDP, by reason:         {dropped:.0} of {sent} (metrics above)");
    println!(
        "  dashboard query through Prometheus:     {}",
        if prom_ok {
            "drops by reason answered"
        } else {
            "NO ANSWER"
        }
    );
    println!(
        "  A/B run:                                {}",
        if ab_ok {
            "see the table above"
        } else {
            "did not complete"
        }
    );
    println!(
        "  total time:                             {:.0?}",
        started.elapsed()
    );
    println!("==============================================");
    if !(lan_ping
        && rw_ping
        && handshakes == 2
        && up > 0.0
        && down > 0.0
        && dropped == sent as f64
        && prom_ok
        && ab_ok)
    {
        bail!("the demo found a problem (see the summary)");
    }
    drop(lab);
    Ok(())
}

/// The drop reasons [`send_junk`]'s datagrams count under, 50 each.
const JUNK_REASONS: [&str; 5] = [
    "bad_type",
    "bad_reserved",
    "bad_handshake_length",
    "bad_data_length",
    "unknown_index",
];

const PROMETHEUS: &str = "/usr/bin/prometheus";
/// Inside the gateway's namespace, which only the demo uses.
const PROM_PORT: u16 = 9090;

/// Debian's Prometheus in the gateway's namespace, scraping the appliance's
/// /metrics every second with the project's alert rules loaded. Started
/// before the traffic so its rates cover it; killed with the lab.
fn start_prometheus(lab: &mut Lab, gw: &str) -> Result<()> {
    if !Path::new(PROMETHEUS).exists() {
        bail!("{PROMETHEUS} is missing. Fix: cargo xtask setup (installs Debian's prometheus package)");
    }
    let dir = root().join("target").join(format!("{}prometheus", lab.tag));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    lab.dirs.push(dir.clone());
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: wg-appliance\n    static_configs:\n      - targets: ['127.0.0.1:9586']\n",
            root().join("dist/wg-appliance.rules.yml").display()
        ),
    )?;
    let log = File::create(dir.join("prometheus.log"))?;
    let child = Command::new("ip")
        .args(["netns", "exec", gw, PROMETHEUS])
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{PROM_PORT}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting prometheus")?;
    lab.children.push(child);
    wait_for(Duration::from_secs(30), "Prometheus to be ready", || {
        in_ns(
            gw,
            "curl",
            &[
                "-sf",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{PROM_PORT}/-/ready"),
            ],
        )
        .is_ok()
    })
    .with_context(|| format!("see {}", dir.join("prometheus.log").display()))?;
    Ok(())
}

/// The dashboard's query of `metric`, for one interface (`$interface` as
/// Grafana fills it when one interface is selected).
fn dashboard_query(metric: &str, ifname: &str) -> Result<String> {
    let dash = std::fs::read_to_string(root().join("dist/grafana-dashboard.json"))?;
    let line = dash
        .lines()
        .filter_map(|l| l.trim().strip_prefix("\"expr\": \""))
        .find(|e| e.contains(metric))
        .with_context(|| format!("no query of {metric} in dist/grafana-dashboard.json"))?;
    let expr = line
        .strip_suffix("\",")
        .or_else(|| line.strip_suffix('"'))
        .context("unexpected expr line")?;
    Ok(expr.replace("\\\"", "\"").replace("$interface", ifname))
}

/// An instant query through Prometheus's HTTP API; promtool prints one
/// `{labels} => value @[time]` line per series.
fn prom_query(gw: &str, expr: &str) -> Result<Vec<(String, f64)>> {
    let out = in_ns(
        gw,
        "promtool",
        &[
            "query",
            "instant",
            &format!("http://127.0.0.1:{PROM_PORT}"),
            expr,
        ],
    )?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (labels, rest) = l.split_once(" => ")?;
            Some((labels.to_owned(), rest.split(" @").next()?.parse().ok()?))
        })
        .collect())
}

/// Malformed WireGuard datagrams and transport data for sessions that do
/// not exist, 50 of each kind, from inside `ns`.
fn send_junk(ns: &str, dst: &str) -> Result<usize> {
    let file = File::open(format!("/var/run/netns/{ns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<usize> {
            // SAFETY: setns on this thread only, with a valid namespace fd.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {ns}: {}", std::io::Error::last_os_error());
            }
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            let junk: [Vec<u8>; 5] = [
                vec![7, 0, 0, 0, 1, 2, 3, 4],                          // unknown type
                [vec![1, 0, 9, 0], vec![0; 144]].concat(),             // reserved not zero
                [vec![1, 0, 0, 0], vec![0; 100]].concat(), // initiation of the wrong size
                [vec![4, 0, 0, 0], vec![0; 16]].concat(),  // data shorter than 32 bytes
                [vec![4, 0, 0, 0, 9, 9, 9, 9], vec![0; 120]].concat(), // unknown receiver index
            ];
            let mut n = 0;
            for _ in 0..50 {
                for j in &junk {
                    sock.send_to(j, dst)?;
                    n += 1;
                }
            }
            Ok(n)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("junk sender panicked"))?
    })
}
