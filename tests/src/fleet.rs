//! A fleet of wg-appliance gateways in namespaces, as an operator builds
//! one: the same interface key and port on every gateway, peers from one
//! etcd, one anycast address announced by BIRD over BGP only while
//! `wg-appliance health` passes, and a router that spreads the clients'
//! flows over the gateways with an ECMP route (L4 hash).
//!
//! ```text
//!  client i (wireguard-go) 10.61.i.2 ── 10.61.i.1 ┐
//!                                                 │ router: etcd 10.59.0.1:2379, BIRD (AS 65000),
//!                                                 │ 203.0.113.10/32 ECMP over the gateways
//!  gateway g: wg-appliance, BIRD (AS 65001),      │
//!    health --announce 203.0.113.10/32 10.60.g.2 ─┘ 10.60.g.1
//! ```
//!
//! [`run`] brings it up, has every client ping the tunnel address every
//! 100 ms, cuts the router's link to the first gateway (the box died) and
//! measures each client's longest silence from then on; then it stops the
//! second gateway's announcer and checks that BGP withdraws the route. The
//! suite's test (`tests/fleet.rs`) asserts on the report;
//! `cargo xtask demo --fleet` prints it.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use wg_appliance::keys::PrivateKey;

use crate::{
    etcd::Etcd,
    peers::{Impl, ThirdParty},
    proc::Bg,
    unique_name, wait_until, Netns, Veth,
};

pub const ANYCAST: &str = "203.0.113.10";
const ETCD_IP: &str = "10.59.0.1";
const TUNNEL_GW: &str = "10.99.0.1";
/// The interface name in etcd's keys (each lab gateway's own name is
/// unique: UAPI sockets are shared by all namespaces).
const FLEET_IF: &str = "wg0";

/// What to build and how long to watch.
pub struct FleetOpts {
    /// The wg-appliance binary.
    pub bin: PathBuf,
    pub clients: usize,
    /// How long to watch after the first gateway dies.
    pub watch: Duration,
    /// Print each step.
    pub verbose: bool,
}

/// One client's view of the failover.
#[derive(Debug, Clone)]
pub struct ClientOutcome {
    pub index: usize,
    /// The gateway it had a session with before (0 is the one killed).
    pub gateway: Option<usize>,
    /// The longest time without a reply, from the last reply before the
    /// kill on; `None`: no reply at all since.
    pub silence: Option<Duration>,
}

/// What [`run`] saw.
#[derive(Debug, Clone)]
pub struct FleetReport {
    pub clients: Vec<ClientOutcome>,
    /// Peers with a handshake on the surviving gateway at the end, as its
    /// /metrics shows them (`wireguard_latest_handshake_seconds` > 0).
    pub survivor_peers_with_handshake: usize,
    /// Peers the survivors' metrics list (all of etcd's).
    pub survivor_peers: usize,
    /// Time from the second gateway's announcer stopping to the route
    /// leaving the router's table.
    pub withdraw: Duration,
    /// Time from both daemons up to the router's two-path route.
    pub announce: Duration,
    /// Paths of the router's route at the end of the watch (BGP's hold
    /// timer has withdrawn the dead gateway's by then).
    pub paths_after_kill: usize,
}

struct Gateway {
    ns: Netns,
    ifname: String,
    bin: PathBuf,
    announcer: Option<Bg>,
    _bird: Option<Bg>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.announcer = None;
        let _ = self
            .ns
            .exec(&self.bin.display().to_string(), &["down", &self.ifname]);
    }
}

fn say(o: &FleetOpts, what: &str) {
    if o.verbose {
        println!("==> {what}");
    }
}

fn bird(ns: &Netns, dir: &Path, name: &str, conf: &str) -> Result<Bg> {
    let c = dir.join(format!("{name}.conf"));
    std::fs::write(&c, conf)?;
    let sock = dir.join(format!("{name}.ctl"));
    let bg = Bg::spawn(
        ns,
        "bird",
        &[
            "-f",
            "-c",
            &c.display().to_string(),
            "-s",
            &sock.display().to_string(),
        ],
    )?;
    Ok(bg)
}

/// Lines of `ip -n <router> route show <anycast>` with a next hop.
fn paths(router: &Netns) -> usize {
    router
        .ip(&["route", "show", &format!("{ANYCAST}/32")])
        .map(|o| {
            let t = String::from_utf8_lossy(&o.stdout).into_owned();
            let n = t.matches("nexthop via").count();
            if n > 0 {
                n
            } else {
                t.lines().filter(|l| l.contains(" via ")).count()
            }
        })
        .unwrap_or(0)
}

/// Builds the fleet, fails the first gateway, and reports.
pub fn run(o: &FleetOpts) -> Result<FleetReport> {
    let dir = std::env::temp_dir().join(format!(
        "wgt-fleet-{}-{}",
        std::process::id(),
        unique_name("")
    ));
    std::fs::create_dir_all(&dir)?;
    let r = run_in(o, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn run_in(o: &FleetOpts, dir: &Path) -> Result<FleetReport> {
    say(o, "router: forwarding, L4 multipath hash, etcd and BIRD");
    let router = Netns::new()?;
    router.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    router.exec("sysctl", &["-qw", "net.ipv4.fib_multipath_hash_policy=1"])?;
    router.exec(
        "sysctl",
        &["-qw", "net.ipv4.conf.all.ignore_routes_with_linkdown=1"],
    )?;
    router.ip(&["addr", "add", &format!("{ETCD_IP}/32"), "dev", "lo"])?;
    let etcd = Etcd::start(&router, ETCD_IP, 2379, None)?;

    let gw_key = PrivateKey::generate();
    let client_keys: Vec<PrivateKey> = (0..o.clients).map(|_| PrivateKey::generate()).collect();
    say(
        o,
        &format!(
            "etcd: {} client peers under /fleet/{FLEET_IF}/peers/",
            o.clients
        ),
    );
    let kvs: Vec<(String, String)> = client_keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                format!("/fleet/{FLEET_IF}/peers/client-{}", i + 1),
                format!(
                    "[Peer]\nPublicKey = {}\nAllowedIPs = 10.99.0.{}/32\n",
                    k.public_key().to_base64(),
                    11 + i
                ),
            )
        })
        .collect();
    etcd.put_many(&kvs)?;

    let mut router_bird = String::from(
        "router id 10.59.0.1;\nprotocol device { scan time 1; }\nprotocol kernel { ipv4 { import none; export all; }; merge paths on; }\n",
    );
    let mut gateways = Vec::new();
    let mut links = Vec::new();
    for g in 0..2 {
        let ns = Netns::new()?;
        let link = Veth::new(
            &router,
            &[&format!("10.60.{g}.1/24")],
            &ns,
            &[&format!("10.60.{g}.2/24")],
        )?;
        // A veth takes frames an XDP program sends it only with GRO on
        // its other end (docs/architecture.md, veth facts).
        router.exec("ethtool", &["-K", &link.a, "gro", "on"])?;
        ns.ip(&["route", "add", "default", "via", &format!("10.60.{g}.1")])?;
        let ifname = unique_name("f");
        let conf = dir.join(format!("{ifname}.conf"));
        let text = format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = {TUNNEL_GW}/24\n\n[Appliance]\nWAN = {}\nMetrics = 127.0.0.1:9586\nPeerSource = etcd://{ETCD_IP}:2379/fleet\nPeerSourceName = {FLEET_IF}\n",
            &*gw_key.to_base64(),
            link.b
        );
        crate::daemon::write_secret(&conf, &text)?;
        say(o, &format!("gateway {}: wg-appliance up (peers from etcd), BIRD, health --announce {ANYCAST}/32", g + 1));
        ns.exec(
            &o.bin.display().to_string(),
            &["up", &conf.display().to_string()],
        )
        .context("wg-appliance up")?;
        let bird_conf = format!(
            "router id 10.60.{g}.2;\nprotocol device {{ scan time 1; }}\nprotocol direct {{ ipv4; interface \"lo\"; }}\nprotocol bgp up {{\n  local 10.60.{g}.2 as 65001;\n  neighbor 10.60.{g}.1 as 65000;\n  hold time 3; keepalive time 1; connect retry time 1;\n  ipv4 {{ import none; export where net = {ANYCAST}/32; }};\n}}\n"
        );
        let b = bird(&ns, dir, &format!("gw{g}"), &bird_conf)?;
        router_bird.push_str(&format!(
            "protocol bgp g{g} {{\n  local 10.60.{g}.1 as 65000;\n  neighbor 10.60.{g}.2 as 65001;\n  hold time 3; keepalive time 1; connect retry time 1;\n  ipv4 {{ import all; export none; }};\n}}\n"
        ));
        gateways.push(Gateway {
            ns,
            ifname,
            bin: o.bin.clone(),
            announcer: None,
            _bird: Some(b),
        });
        links.push(link);
    }
    let _router_bird = bird(&router, dir, "router", &router_bird)?;
    for gw in &gateways {
        wait_until(
            Duration::from_secs(20),
            "every etcd peer on the gateway",
            || peer_count(gw) == o.clients,
        )?;
    }
    let up_at = Instant::now();
    for gw in &mut gateways {
        gw.announcer = Some(Bg::spawn(
            &gw.ns,
            &o.bin.display().to_string(),
            &[
                "health",
                &gw.ifname,
                "--announce",
                &format!("{ANYCAST}/32"),
                "--interval",
                "1",
            ],
        )?);
    }
    wait_until(
        Duration::from_secs(30),
        "the router's route over both gateways",
        || paths(&router) == 2,
    )
    .with_context(|| {
        format!(
            "router route: {}",
            router
                .ip(&["route", "show", &format!("{ANYCAST}/32")])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        )
    })?;
    let announce = up_at.elapsed();
    say(
        o,
        &format!(
            "router: {ANYCAST}/32 over 2 paths, {:.1} s after the announcers started",
            announce.as_secs_f64()
        ),
    );

    say(
        o,
        &format!(
            "{} wireguard-go clients, each pinging {TUNNEL_GW} every 100 ms through the tunnel",
            o.clients
        ),
    );
    let gw_pub = gw_key.public_key();
    let mut clients = Vec::new();
    for (i, key) in client_keys.iter().enumerate() {
        let n = i + 1;
        let ns = Netns::new()?;
        let _link = Veth::new(
            &router,
            &[&format!("10.61.{n}.1/24")],
            &ns,
            &[&format!("10.61.{n}.2/24")],
        )?;
        ns.ip(&["route", "add", "default", "via", &format!("10.61.{n}.1")])?;
        let tp = ThirdParty::start(
            Impl::WireguardGo,
            &ns,
            key,
            40000 + n as u16,
            &format!("10.99.0.{}/24", 10 + n),
        )?;
        tp.add_peer(
            &ns,
            &gw_pub,
            Some(&format!("{ANYCAST}:51820")),
            "10.99.0.0/24",
        )?;
        let ping = Bg::spawn(&ns, "ping", &["-D", "-i", "0.1", "-W", "1", TUNNEL_GW])?;
        clients.push((tp, ping, ns, _link));
    }
    std::thread::sleep(Duration::from_secs(4));
    let on: Vec<Option<usize>> = client_keys
        .iter()
        .map(|k| {
            let pk = k.public_key().to_base64();
            (0..2).find(|&g| handshake_with(&gateways[g], &pk))
        })
        .collect();
    for g in 0..2 {
        let list: Vec<String> = on
            .iter()
            .enumerate()
            .filter(|(_, x)| **x == Some(g))
            .map(|(i, _)| (i + 1).to_string())
            .collect();
        say(
            o,
            &format!("clients on gateway {}: {}", g + 1, list.join(" ")),
        );
    }

    let kill = unix_now();
    router.ip(&["link", "set", &links[0].a, "down"])?;
    say(
        o,
        &format!(
            "gateway 1's link cut (the box died); watching for {} s",
            o.watch.as_secs()
        ),
    );
    std::thread::sleep(o.watch);
    let mut outcomes = Vec::new();
    let paths_after_kill = paths(&router);
    for (i, (tp, ping, ns, link)) in clients.into_iter().enumerate() {
        ping.signal(libc::SIGINT)?;
        let out = ping.finish(Duration::from_secs(5))?;
        // wireguard-go before its namespace.
        drop(tp);
        drop(link);
        drop(ns);
        let silence = longest_silence(&out.stdout, kill);
        outcomes.push(ClientOutcome {
            index: i + 1,
            gateway: on[i],
            silence,
        });
    }
    let text = scrape(&gateways[1])?;
    let hs: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("wireguard_latest_handshake_seconds{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    let survivor_peers = hs.len();
    let survivor_peers_with_handshake = hs.iter().filter(|v| **v > 0.0).count();

    say(
        o,
        "gateway 2's announcer stopped (SIGTERM): BGP withdraws the route",
    );
    let t = Instant::now();
    if let Some(a) = gateways[1].announcer.take() {
        a.signal(libc::SIGTERM)?;
        a.finish(Duration::from_secs(10))?;
    }
    wait_until(Duration::from_secs(15), "the route withdrawn", || {
        paths(&router) == 0
    })?;
    let withdraw = t.elapsed();
    drop(etcd);
    Ok(FleetReport {
        clients: outcomes,
        survivor_peers_with_handshake,
        survivor_peers,
        withdraw,
        announce,
        paths_after_kill,
    })
}

impl FleetReport {
    /// The report as the demo prints it.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for c in &self.clients {
            let on = match c.gateway {
                Some(0) => "gateway 1 (killed)",
                Some(_) => "gateway 2",
                None => "no handshake seen",
            };
            match c.silence {
                Some(d) => s.push_str(&format!(
                    "client {} on {on}: longest silence {:.2} s\n",
                    c.index,
                    d.as_secs_f64()
                )),
                None => s.push_str(&format!(
                    "client {} on {on}: no reply since the kill\n",
                    c.index
                )),
            }
        }
        s.push_str(&format!(
            "gateway 2's metrics: {} of {} peers with a handshake\nBGP: route over both gateways {:.1} s after the announcers started; {} path(s) after the kill; withdrawn {:.2} s after gateway 2's announcer stopped\n",
            self.survivor_peers_with_handshake,
            self.survivor_peers,
            self.announce.as_secs_f64(),
            self.paths_after_kill,
            self.withdraw.as_secs_f64()
        ));
        s
    }
}

fn peer_count(gw: &Gateway) -> usize {
    gw.ns
        .exec("wg", &["show", &gw.ifname, "peers"])
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0)
}

fn handshake_with(gw: &Gateway, pk: &str) -> bool {
    gw.ns
        .exec("wg", &["show", &gw.ifname, "latest-handshakes"])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).lines().any(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(pk) && w.next().is_some_and(|t| t != "0")
            })
        })
        .unwrap_or(false)
}

fn scrape(gw: &Gateway) -> Result<String> {
    let out = gw.ns.exec(
        "curl",
        &["-sf", "--max-time", "5", "http://127.0.0.1:9586/metrics"],
    )?;
    if !out.status.success() {
        bail!("scraping the survivor's /metrics failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// From `ping -D` output: the longest gap between replies from the last
/// reply before `kill` (or `kill` itself) on.
fn longest_silence(ping: &str, kill: f64) -> Option<Duration> {
    let times: Vec<f64> = ping
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let before = times.iter().copied().rfind(|t| *t <= kill);
    let after: Vec<f64> = times.iter().copied().filter(|t| *t > kill).collect();
    if after.is_empty() {
        return None;
    }
    let mut seq = vec![before.unwrap_or(kill)];
    seq.extend(after);
    let gap = seq.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    Some(Duration::from_secs_f64(gap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_the_longest_gap_from_the_last_reply_before_the_kill() {
        let log = "[100.0] 64 bytes from x\n[100.1] 64 bytes from x\n[115.6] 64 bytes from x\n[115.7] 64 bytes from x\n";
        let s = longest_silence(log, 100.05).unwrap();
        assert!((s.as_secs_f64() - 15.5).abs() < 1e-6, "{s:?}");
        assert_eq!(longest_silence("[99.0] 64 bytes from x\n", 100.0), None);
    }
}
