//! The checks of the five layers. Each reads what it needs (the daemon's
//! answers gathered once in [`Ctx`], the kernel through `sys`) and pushes
//! lines; the judgements that need no kernel are plain functions, unit
//! tested in `tests.rs`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;

use super::{
    nft::{self, Verdict},
    pmtu::{self, PathMtu},
    sys, Check, Level, Options,
};
use crate::{
    config::{self, Config},
    keys::PublicKey,
    uapi_client::{ApplianceInfo, Client, DeviceInfo, PeerInfo},
};

/// REJECT_AFTER_TIME: a session older than this carries nothing, so a
/// handshake at least this old means the peer is idle or unreachable.
const STALE: Duration = Duration::from_secs(180);

/// What the walk knows before it starts judging.
struct Ctx {
    ifname: String,
    dev: DeviceInfo,
    app: ApplianceInfo,
    links: Vec<sys::Link>,
    config: Option<(PathBuf, Config)>,
    /// WAN interfaces as the daemon reports them, with the mode it got.
    wan: Vec<(String, String)>,
    /// Friendly names from the configuration, by public key.
    names: BTreeMap<PublicKey, String>,
}

struct Out(Vec<Check>);

impl Out {
    fn push(&mut self, layer: u8, check: &'static str, status: Level, detail: String) {
        self.0.push(Check {
            layer,
            check,
            status,
            detail,
            fix: None,
        });
    }

    fn fix(&mut self, layer: u8, check: &'static str, status: Level, detail: String, fix: String) {
        self.0.push(Check {
            layer,
            check,
            status,
            detail,
            fix: Some(fix),
        });
    }
}

pub fn walk(opts: &Options) -> Vec<Check> {
    let mut out = Out(Vec::new());
    let Some(ctx) = gather(opts, &mut out) else {
        for (n, _) in super::LAYERS.iter().skip(1) {
            out.push(
                *n,
                "daemon",
                Level::Skip,
                "not checked: the daemon does not answer (layer 1)".into(),
            );
        }
        return out.0;
    };
    layer1(&ctx, &mut out);
    layer2(&ctx, &mut out);
    layer3(&ctx, &mut out);
    layer4(&ctx, &mut out);
    layer5(&ctx, opts, &mut out);
    out.0
}

fn gather(opts: &Options, out: &mut Out) -> Option<Ctx> {
    let ifname = opts.ifname.clone();
    let answered = Client::new(&ifname).and_then(|c| Ok((c.get()?, c.appliance()?)));
    let (dev, app) = match answered {
        Ok(v) => v,
        Err(e) => {
            out.fix(
                1,
                "daemon",
                Level::Fail,
                format!("the daemon of {ifname} does not answer: {e}"),
                format!("start it (`wg-appliance up /etc/wireguard/{ifname}.conf`, or `systemctl start wg-appliance@{ifname}`); its log is /var/log/wg-appliance/{ifname}.log or `journalctl -u wg-appliance@{ifname}`"),
            );
            return None;
        }
    };
    out.push(
        1,
        "daemon",
        Level::Ok,
        format!(
            "the daemon answers on its UAPI socket ({})",
            app.get("version").unwrap_or("version unknown")
        ),
    );
    let links = match sys::links() {
        Ok(l) => l,
        Err(e) => {
            out.push(1, "links", Level::Skip, format!("cannot list links: {e}"));
            Vec::new()
        }
    };
    let config_path = opts.config.clone().or_else(|| {
        let p = PathBuf::from(format!("/etc/wireguard/{ifname}.conf"));
        p.exists().then_some(p)
    });
    let config = match config_path {
        Some(p) => match config::load(&p) {
            Ok(c) => Some((p, c)),
            Err(e) => {
                out.push(
                    1,
                    "config",
                    Level::Warn,
                    format!("configuration not read, so the checks that need it are left out: {e}"),
                );
                None
            }
        },
        None => None,
    };
    let wan = app
        .all("wan_xdp")
        .filter_map(|v| v.split_once(' '))
        .map(|(d, m)| (d.to_owned(), m.to_owned()))
        .collect();
    let names = config
        .as_ref()
        .map(|(_, c)| {
            c.peers
                .iter()
                .filter_map(|p| Some((p.public_key, p.friendly_name.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    Some(Ctx {
        ifname,
        dev,
        app,
        links,
        config,
        wan,
        names,
    })
}

impl Ctx {
    fn link(&self, name: &str) -> Option<&sys::Link> {
        self.links.iter().find(|l| l.name == name)
    }

    fn peer_name(&self, p: &PeerInfo) -> String {
        match self.names.get(&p.public_key) {
            Some(n) => format!("peer {} ({n})", p.public_key.short()),
            None => format!("peer {}", p.public_key.short()),
        }
    }

    fn mtu(&self) -> Option<u16> {
        self.app
            .get("mtu")
            .and_then(|m| m.parse().ok())
            .or_else(|| self.link(&self.ifname).map(|l| l.mtu as u16))
    }

    fn wan_names(&self) -> Vec<String> {
        self.wan.iter().map(|(d, _)| d.clone()).collect()
    }
}

// ---------------------------------------------------------------- layer 1

fn layer1(ctx: &Ctx, out: &mut Out) {
    let ifname = &ctx.ifname;
    let peer_if = crate::link::peer_name(ifname);
    let restart = format!(
        "restart the daemon: `wg-appliance down {ifname}`, then `wg-appliance up /etc/wireguard/{ifname}.conf` (or `systemctl restart wg-appliance@{ifname}`)"
    );
    // The interface pair.
    let mut pair_ok = true;
    for name in [ifname.as_str(), peer_if.as_str()] {
        match ctx.link(name) {
            None => {
                pair_ok = false;
                out.fix(
                    1,
                    "links",
                    Level::Fail,
                    format!("{name} does not exist"),
                    restart.clone(),
                );
            }
            Some(l) if !l.up => {
                pair_ok = false;
                out.fix(
                    1,
                    "links",
                    Level::Fail,
                    format!("{name} is down"),
                    format!("ip link set {name} up"),
                );
            }
            Some(l) if !l.lower_up => {
                pair_ok = false;
                out.fix(
                    1,
                    "links",
                    Level::Fail,
                    format!("{name} is up but has no carrier (its other end is down)"),
                    format!("ip link set {ifname} up; ip link set {peer_if} up"),
                );
            }
            Some(_) => {}
        }
    }
    if pair_ok {
        out.push(
            1,
            "links",
            Level::Ok,
            format!(
                "{ifname} and {peer_if} are up, MTU {}",
                ctx.mtu().map_or("?".to_owned(), |m| m.to_string())
            ),
        );
    }
    // Addresses.
    let addrs = sys::addresses(ifname);
    if addrs.is_empty() {
        out.fix(
            1,
            "addresses",
            Level::Warn,
            format!("{ifname} has no address: routed traffic still flows, but this host has no address inside the tunnel"),
            format!("Address = 10.0.0.1/24 in [Interface] (or `ip addr add <address>/<len> dev {ifname}`)"),
        );
    } else {
        let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        out.push(
            1,
            "addresses",
            Level::Ok,
            format!("{ifname} has {}", list.join(", ")),
        );
    }
    // XDP on the pair.
    let on = |name: &str| ctx.link(name).and_then(|l| l.xdp);
    match (on(&peer_if), on(ifname)) {
        (Some(tx), Some(pass)) => out.push(
            1,
            "xdp",
            Level::Ok,
            format!("XDP tun_tx on {peer_if} ({tx}), wg_pass on {ifname} ({pass})"),
        ),
        (tx, pass) => {
            let missing: Vec<&str> = [
                (tx.is_none(), "tun_tx on the appliance's side"),
                (pass.is_none(), "wg_pass on the tunnel interface"),
            ]
            .into_iter()
            .filter_map(|(m, what)| m.then_some(what))
            .collect();
            out.fix(
                1,
                "xdp",
                Level::Fail,
                format!(
                    "XDP program missing: {} (detached by hand, or by another tool?)",
                    missing.join(", ")
                ),
                restart.clone(),
            );
        }
    }
    // XDP on the WAN.
    if ctx.wan.is_empty() {
        out.fix(
            1,
            "wan",
            Level::Fail,
            "no WAN interface has the XDP receive program: nothing arrives through the fast path".into(),
            "name the interface towards the peers with WAN = <dev> in [Appliance] (or --wan), then restart the daemon".into(),
        );
    }
    for (dev, mode) in &ctx.wan {
        match ctx.link(dev) {
            None => out.fix(
                1,
                "wan",
                Level::Fail,
                format!("WAN interface {dev} does not exist any more"),
                format!("bring {dev} back, or name the right interface with WAN = in [Appliance] and restart the daemon"),
            ),
            Some(l) if !l.up || !l.lower_up => out.fix(
                1,
                "wan",
                Level::Fail,
                format!("WAN interface {dev} is down or has no carrier"),
                format!("ip link set {dev} up, and check its cable or its other end"),
            ),
            Some(l) if l.xdp.is_none() => out.fix(
                1,
                "wan",
                Level::Fail,
                format!("WAN interface {dev}: the daemon attached wan_rx ({mode}), but no XDP program is there now"),
                restart.clone(),
            ),
            Some(l) if l.xdp == Some("generic") => out.fix(
                1,
                "wan",
                Level::Warn,
                format!("WAN interface {dev}: wan_rx attached in generic mode (slower: the driver has no native XDP, or XdpMode = generic)"),
                format!("use a NIC whose driver supports native XDP; `ethtool -i {dev}` names the driver. If generic is intended, silence WgApplianceXdpGeneric for {dev}"),
            ),
            Some(l) => out.push(
                1,
                "wan",
                Level::Ok,
                format!(
                    "WAN interface {dev} is up, wan_rx attached ({})",
                    l.xdp.unwrap_or("?")
                ),
            ),
        }
    }
    // Data path and restarts.
    out.push(
        1,
        "datapath",
        Level::Ok,
        format!(
            "data path in use: {}",
            ctx.app
                .get("data_path")
                .unwrap_or("unknown (an older daemon)")
        ),
    );
    match ctx.app.get("hitless_restart") {
        Some("1") => out.push(
            1,
            "pins",
            Level::Ok,
            "pins outlive the daemon: a restart keeps the tunnel up".into(),
        ),
        Some(_) => out.fix(
            1,
            "pins",
            Level::Warn,
            format!(
                "a restart of the daemon will take the tunnel down: {}",
                ctx.app.get("pins").unwrap_or("pins do not outlive it")
            ),
            "mount the pin file system from the host side before the daemon starts: mkdir -p -m 0700 /run/wg-appliance/bpf && mount -t bpf -o mode=0700 bpf /run/wg-appliance/bpf".into(),
        ),
        None => {}
    }
}

// ---------------------------------------------------------------- layer 2

fn layer2(ctx: &Ctx, out: &mut Out) {
    let ifname = &ctx.ifname;
    let port = ctx.dev.listen_port;
    if port == 0 {
        out.fix(
            2,
            "port",
            Level::Fail,
            "no listen port: peers cannot reach us".into(),
            format!("ListenPort = 51820 in [Interface] (or `wg set {ifname} listen-port 51820`)"),
        );
    } else if sys::udp_bound(port) {
        out.push(2, "port", Level::Ok, format!("UDP port {port} is bound"));
    } else {
        out.fix(
            2,
            "port",
            Level::Fail,
            format!("the daemon says it listens on UDP port {port}, but no socket is bound to it"),
            format!("restart the daemon; `ss -lunp 'sport = :{port}'` shows what holds the port"),
        );
    }
    if port != 0 {
        firewall(ctx, port, out);
    }
    endpoints(ctx, out);
}

/// The families the handshakes arrive in: those of the peers' endpoints,
/// both when none is known.
fn families(ctx: &Ctx) -> Vec<bool> {
    let eps: Vec<SocketAddr> = ctx.dev.peers.iter().filter_map(|p| p.endpoint).collect();
    if eps.is_empty() {
        return vec![false, true];
    }
    let mut f: Vec<bool> = eps.iter().map(|e| e.is_ipv6()).collect();
    f.sort();
    f.dedup();
    f
}

fn firewall(ctx: &Ctx, port: u16, out: &mut Out) {
    let iifs = ctx.wan_names();
    let fams = families(ctx);
    match sys::output("nft", &["-j", "list", "ruleset"]) {
        None => out.push(
            2,
            "nftables",
            Level::Skip,
            "nftables not checked (`nft -j list ruleset` did not run: not installed, or not root)"
                .into(),
        ),
        Some(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            Err(e) => out.push(
                2,
                "nftables",
                Level::Skip,
                format!("nftables not checked: its JSON does not parse ({e})"),
            ),
            Ok(rs) => {
                let mut worst = Verdict::Passes;
                for v6 in &fams {
                    let probe = nft::Probe {
                        port,
                        v6: *v6,
                        iifs: &iifs,
                    };
                    match nft::walk(&rs, &probe) {
                        d @ Verdict::Dropped(_) => {
                            worst = d;
                            break;
                        }
                        m @ Verdict::MaybeDropped(_) if worst == Verdict::Passes => worst = m,
                        _ => {}
                    }
                }
                report_verdict(out, "nftables", port, worst, rule_text);
            }
        },
    }
    for (tool, v6) in [("iptables-save", false), ("ip6tables-save", true)] {
        if !fams.contains(&v6) {
            continue;
        }
        let Some(save) = sys::output(tool, &[]) else {
            continue;
        };
        let probe = nft::Probe {
            port,
            v6,
            iifs: &iifs,
        };
        let v = nft::walk_iptables(&save, &probe);
        report_verdict(out, "iptables", port, v, |_| String::new());
    }
}

fn report_verdict(
    out: &mut Out,
    check: &'static str,
    port: u16,
    v: Verdict,
    text: impl Fn(&nft::Place) -> String,
) {
    match v {
        Verdict::Passes => out.push(
            2,
            check,
            Level::Ok,
            format!("{check}: nothing drops UDP port {port} on its way in"),
        ),
        Verdict::Dropped(p) => out.fix(
            2,
            check,
            Level::Fail,
            format!(
                "{check} drops handshakes to UDP port {port}: {}{}",
                p.describe(),
                text(&p)
            ),
            p.fix(port),
        ),
        Verdict::MaybeDropped(p) => out.fix(
            2,
            check,
            Level::Warn,
            format!(
                "{check} may drop handshakes to UDP port {port} (depending on source, state or rate): {}{}",
                p.describe(),
                text(&p)
            ),
            p.fix(port),
        ),
    }
}

/// ` (udp dport 51820 drop)`: the rule as `nft -a list chain` prints it.
fn rule_text(p: &nft::Place) -> String {
    let Some(h) = p.handle else {
        return String::new();
    };
    let Some(listing) = sys::output(
        "nft",
        &["-a", "list", "chain", &p.family, &p.table, &p.chain],
    ) else {
        return String::new();
    };
    let tag = format!("# handle {h}");
    listing
        .lines()
        .find(|l| l.trim_end().ends_with(&tag))
        .map(|l| format!(" ({})", l.trim().trim_end_matches(&tag).trim()))
        .unwrap_or_default()
}

fn endpoints(ctx: &Ctx, out: &mut Out) {
    if let Some((path, c)) = &ctx.config {
        for p in &c.peers {
            let Some(e) = &p.endpoint else { continue };
            if e.host.parse::<IpAddr>().is_ok() {
                continue;
            }
            match e.resolve() {
                Ok(a) => out.push(
                    2,
                    "resolve",
                    Level::Ok,
                    format!("endpoint {e} resolves to {}", a.ip()),
                ),
                Err(err) => out.fix(
                    2,
                    "resolve",
                    Level::Fail,
                    format!("endpoint {e} of peer {} (in {}) does not resolve: {err}", p.public_key.short(), path.display()),
                    "check the name and /etc/resolv.conf; a daemon started while DNS was down keeps the address it had (or none)".into(),
                ),
            }
        }
    }
    let wans = ctx.wan_names();
    for p in &ctx.dev.peers {
        let Some(ep) = p.endpoint else { continue };
        let who = ctx.peer_name(p);
        match sys::route_get(ep.ip(), &[]) {
            Err(e) => out.fix(
                2,
                "endpoint",
                Level::Fail,
                format!("{who}: no route to its endpoint {ep}: {e}"),
                format!("add a route to {} (a default route via your uplink, usually)", ep.ip()),
            ),
            Ok(r) if r.dev == ctx.ifname => out.fix(
                2,
                "endpoint",
                Level::Fail,
                format!("{who}: its endpoint {ep} routes into the tunnel itself (a loop)"),
                format!("route {} out of the WAN (e.g. `ip route add {}/{} via <your gateway>`), or narrow the AllowedIPs that cover it", ep.ip(), ep.ip(), if ep.is_ipv6() { 128 } else { 32 }),
            ),
            Ok(r) if !wans.contains(&r.dev) => out.fix(
                2,
                "endpoint",
                Level::Fail,
                format!("{who}: its endpoint {ep} routes via {}, which has no wan_rx: the data path sends encrypted packets only through WAN interfaces (drop_no_route)", r.dev),
                format!("add WAN = {} in [Appliance] (or --wan {}), or route {} through a WAN interface", r.dev, r.dev, ep.ip()),
            ),
            Ok(r) => out.push(
                2,
                "endpoint",
                Level::Ok,
                format!(
                    "{who}: endpoint {ep} routes via WAN {}{}",
                    r.dev,
                    r.gateway.map(|g| format!(" (next hop {g})")).unwrap_or_default()
                ),
            ),
        }
    }
}

// ---------------------------------------------------------------- layer 3

/// Layer 3's first check: where the peers come from, when etcd feeds them.
fn peer_source(ctx: &Ctx, out: &mut Out) {
    let Some(url) = ctx.app.get("peer_source") else {
        return;
    };
    let state = ctx.app.get("peer_source_state").unwrap_or("");
    let mut words = state.split(' ');
    let (kind, secs) = (words.next().unwrap_or(""), words.next().unwrap_or("0"));
    let rest: Vec<&str> = words.collect();
    let field = |name: &str| {
        rest.iter()
            .position(|w| *w == name)
            .and_then(|i| rest.get(i + 1))
            .copied()
    };
    let invalid: u64 = field("invalid").and_then(|v| v.parse().ok()).unwrap_or(0);
    // The error is last on the line and may hold spaces.
    let why = rest
        .iter()
        .position(|w| *w == "error")
        .map(|i| rest[i + 1..].join(" "))
        .unwrap_or_default();
    if kind == "connected" && invalid > 0 {
        out.fix(
            3,
            "peer_source",
            Level::Warn,
            format!("peers from {url}: {invalid} key(s) hold a value that is not one valid [Peer]; their peers were left as they were"),
            "the daemon's log names each key and what is wrong (`etcd value ignored`); correct the value with etcdctl put".into(),
        );
    } else if kind == "connected" && field("error").is_some() {
        out.fix(
            3,
            "peer_source",
            Level::Warn,
            format!("peers from {url}: the daemon refused part of etcd's peers ({why}); it tries again every 5 s"),
            "see the daemon's log for the refused change (e.g. more peers than an interface holds)".into(),
        );
    } else if kind == "connected" {
        out.push(
            3,
            "peer_source",
            Level::Ok,
            format!(
                "peers from {url}: watched for {secs} s ({})",
                rest.join(" ")
            ),
        );
    } else {
        out.fix(
            3,
            "peer_source",
            Level::Warn,
            format!("peers from {url}: etcd unreachable for {secs} s ({why}); the tunnels go on with the last known peers, changes in etcd wait"),
            "check etcd itself (`etcdctl --endpoints <member> endpoint health`), the route and firewall to it, and PeerSourceCa/Cert/Key/User if it uses TLS or auth; the daemon retries every 5 s and resyncs once back".into(),
        );
    }
}

fn layer3(ctx: &Ctx, out: &mut Out) {
    let ifname = &ctx.ifname;
    peer_source(ctx, out);
    // Counters now, against those the walk started with.
    let now_app = Client::new(ifname)
        .and_then(|c| c.appliance())
        .unwrap_or_else(|_| ctx.app.clone());
    let hs_then = ctx.app.numbers("handshakes");
    let hs_now = now_app.numbers("handshakes");
    let rejected = hs_now.get("rejected").copied().unwrap_or(0);
    let rejected_new = rejected.saturating_sub(hs_then.get("rejected").copied().unwrap_or(0));
    let sent = hs_now.get("initiation_sent").copied().unwrap_or(0);
    let our_key = ctx
        .dev
        .public_key
        .map(|k| k.to_base64())
        .unwrap_or_else(|| "(none: set PrivateKey)".into());
    if ctx.dev.public_key.is_none() {
        out.fix(
            3,
            "key",
            Level::Fail,
            format!("{ifname} has no private key: no handshake can complete"),
            format!("PrivateKey = <`wg genkey`> in [Interface] (or `wg set {ifname} private-key <file>`)"),
        );
    }
    if ctx.dev.peers.is_empty() {
        out.fix(
            3,
            "handshake",
            Level::Warn,
            "no peers configured".into(),
            "add a [Peer] section (or `wg set`)".into(),
        );
    }
    let now = SystemTime::now();
    for p in &ctx.dev.peers {
        let who = ctx.peer_name(p);
        let judged = judge_handshake(p, now);
        let fix = match judged.0 {
            Level::Fail => Some(format!(
                "{}\n(this daemon sent {sent} handshake initiations and rejected {rejected} handshake messages since it started, {rejected_new} during this check)",
                key_fix(ifname, &our_key, p)
            )),
            Level::Warn => Some(format!(
                "send something to an address in its AllowedIPs (e.g. ping) and run doctor again; if it does not come up: {}",
                key_fix(ifname, &our_key, p)
            )),
            _ => None,
        };
        match fix {
            Some(f) => out.fix(3, "handshake", judged.0, format!("{who}: {}", judged.1), f),
            None => out.push(3, "handshake", judged.0, format!("{who}: {}", judged.1)),
        }
    }
    // AllowedIPs between peers.
    let peers: Vec<(String, Vec<IpNet>)> = ctx
        .dev
        .peers
        .iter()
        .map(|p| (ctx.peer_name(p), p.allowed_ips.clone()))
        .collect();
    let overlaps = overlaps(&peers);
    for (a, na, b, nb) in &overlaps {
        out.fix(
            3,
            "allowed-ips",
            Level::Warn,
            format!("{na} of {a} contains {nb} of {b}: the longer prefix wins, so {b} gets {nb} and {a} the rest"),
            "if that is not intended, give each prefix to one peer only".into(),
        );
    }
    if let Some((path, c)) = &ctx.config {
        for (net, first, second) in duplicates(c) {
            out.fix(
                3,
                "allowed-ips",
                Level::Fail,
                format!("{net} is given to two peers in {}: {first} and then {second}, which takes it (the first loses it)", path.display()),
                format!("give {net} to one peer only in {}", path.display()),
            );
        }
    }
    for (who, net) in too_broad(&peers) {
        out.fix(
            3,
            "allowed-ips",
            Level::Warn,
            format!("{who} has {net} among several peers: it takes every destination no other peer claims, and any source address from the tunnel"),
            "for a site peer, list the site's prefixes instead; keep a default route only on a hub or internet-exit peer".into(),
        );
    }
    if overlaps.is_empty() && too_broad(&peers).is_empty() && !peers.is_empty() {
        out.push(
            3,
            "allowed-ips",
            Level::Ok,
            "AllowedIPs: no prefix shared or nested between peers".into(),
        );
    }
    // Clock.
    let future: Vec<String> = ctx
        .dev
        .peers
        .iter()
        .filter(|p| {
            p.last_handshake
                .is_some_and(|t| t > now + Duration::from_secs(60))
        })
        .map(|p| ctx.peer_name(p))
        .collect();
    if !future.is_empty() {
        out.fix(
            3,
            "clock",
            Level::Fail,
            format!("the clock went back: the latest handshake of {} lies in the future", future.join(", ")),
            "peers reject initiations whose timestamp is not newer than the last one they saw (TAI64N): keep the clock synchronised (chrony or systemd-timesyncd) and never step it back".into(),
        );
    }
    match sys::clock_synchronised() {
        Some(true) => out.push(3, "clock", Level::Ok, "the clock is synchronised".into()),
        Some(false) => out.fix(
            3,
            "clock",
            Level::Warn,
            "the clock is not synchronised by NTP: stepped back, it makes peers reject our initiations (their timestamps must grow)".into(),
            "enable chrony or systemd-timesyncd (`timedatectl set-ntp true`)".into(),
        ),
        None => out.push(3, "clock", Level::Skip, "clock state unknown".into()),
    }
}

/// How a peer's latest handshake looks, and why.
pub(super) fn judge_handshake(p: &PeerInfo, now: SystemTime) -> (Level, String) {
    match p.last_handshake {
        Some(t) => {
            let age = now.duration_since(t).unwrap_or_default();
            let secs = age.as_secs();
            if age < STALE {
                (Level::Ok, format!("latest handshake {secs} s ago"))
            } else if p.persistent_keepalive > 0 {
                (
                    Level::Fail,
                    format!("latest handshake {secs} s ago although keepalives every {} s should keep it fresh: the handshakes fail now", p.persistent_keepalive),
                )
            } else {
                (
                    Level::Ok,
                    format!("latest handshake {secs} s ago (idle: no traffic, no keepalive)"),
                )
            }
        }
        None => match p.endpoint {
            None => (
                Level::Ok,
                "no handshake yet; no endpoint known, so it has to reach us first".into(),
            ),
            Some(ep) if p.persistent_keepalive > 0 || p.tx_bytes > 0 => (
                Level::Fail,
                format!("never completed a handshake with {ep}, although we tried"),
            ),
            Some(ep) => (
                Level::Warn,
                format!("no handshake with {ep} yet (nothing has been sent to it)"),
            ),
        },
    }
}

fn key_fix(ifname: &str, our_key: &str, p: &PeerInfo) -> String {
    format!(
        "the keys do not match, or the peer does not hear us. Check: (1) this peer's PublicKey here, {}, is what `wg show <if> public-key` prints on the peer; (2) the peer lists ours, {our_key} (`wg show {ifname} public-key`); (3) the PresharedKey{} is the same on both sides; (4) layer 2: the peer reaches our port and we its endpoint",
        p.public_key.to_base64(),
        if p.has_psk { "" } else { " (none here)" }
    )
}

/// Pairs of prefixes of different peers where one contains the other
/// (equal ones included): (peer a, prefix of a, peer b, prefix of b), the
/// containing one first.
pub(super) fn overlaps(peers: &[(String, Vec<IpNet>)]) -> Vec<(String, IpNet, String, IpNet)> {
    let mut out = Vec::new();
    for (i, (a, nets_a)) in peers.iter().enumerate() {
        for (b, nets_b) in peers.iter().skip(i + 1) {
            for na in nets_a {
                for nb in nets_b {
                    if na.prefix_len() == 0 || nb.prefix_len() == 0 {
                        continue; // said by too_broad
                    }
                    if na.contains(nb) {
                        out.push((a.clone(), *na, b.clone(), *nb));
                    } else if nb.contains(na) {
                        out.push((b.clone(), *nb, a.clone(), *na));
                    }
                }
            }
        }
    }
    out
}

/// Default routes on one of several peers.
pub(super) fn too_broad(peers: &[(String, Vec<IpNet>)]) -> Vec<(String, IpNet)> {
    if peers.len() < 2 {
        return Vec::new();
    }
    peers
        .iter()
        .flat_map(|(who, nets)| {
            nets.iter()
                .filter(|n| n.prefix_len() == 0)
                .map(move |n| (who.clone(), *n))
        })
        .collect()
}

/// Prefixes a configuration file gives to more than one peer: (prefix,
/// first peer, the later one that takes it).
pub(super) fn duplicates(c: &Config) -> Vec<(IpNet, String, String)> {
    let mut owner: BTreeMap<IpNet, String> = BTreeMap::new();
    let mut out = Vec::new();
    for p in &c.peers {
        let who = match &p.friendly_name {
            Some(n) => format!("{} ({n})", p.public_key.short()),
            None => p.public_key.short(),
        };
        for net in &p.allowed_ips {
            if let Some(first) = owner.insert(*net, who.clone()) {
                if first != who {
                    out.push((*net, first, who.clone()));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------- layer 4

/// The address a route lookup for `net` uses: its first host.
pub(super) fn sample_addr(net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let base = u32::from(n.network());
            IpAddr::V4(Ipv4Addr::from(if n.prefix_len() <= 30 {
                base + 1
            } else {
                base
            }))
        }
        IpNet::V6(n) => {
            let base = u128::from(n.network());
            IpAddr::V6(Ipv6Addr::from(if n.prefix_len() <= 126 {
                base + 1
            } else {
                base
            }))
        }
    }
}

/// A source to test a default route's return path with (TEST-NET-2 /
/// documentation prefix, routed nowhere in particular).
fn default_sample(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))
    }
}

fn layer4(ctx: &Ctx, out: &mut Out) {
    let ifname = &ctx.ifname;
    let own = sys::addresses(ifname);
    let local4 = own.iter().find(|a| a.addr().is_ipv4()).map(IpNet::addr);
    // Routes into the tunnel, and the return path of the peers' sources.
    let all_rp = sys::sysctl_num("net.ipv4.conf.all.rp_filter").unwrap_or(0);
    let if_rp = sys::sysctl_num(&format!("net.ipv4.conf.{ifname}.rp_filter")).unwrap_or(0);
    let rp = all_rp.max(if_rp);
    let mut routes_ok = 0;
    let settings = ctx
        .config
        .as_ref()
        .map(|(_, c)| (c.appliance.return_routing, c.appliance.masquerade.clone()));
    let return_routing = settings
        .as_ref()
        .is_some_and(|(r, _)| *r != config::ReturnRouting::Off);
    for p in &ctx.dev.peers {
        let who = ctx.peer_name(p);
        for net in &p.allowed_ips {
            if net.prefix_len() == 0 {
                out.push(
                    4,
                    "route",
                    Level::Ok,
                    format!("{who}: {net} is not routed into {ifname} by doctor's standard (a default route through the tunnel needs policy routing: check it by hand)"),
                );
            } else {
                let a = sample_addr(net);
                match sys::route_get(a, &[]) {
                    Ok(r) if r.dev == *ifname => routes_ok += 1,
                    Ok(r) if r.kind == "local" => routes_ok += 1,
                    Ok(r) if return_routing => out.fix(
                        4,
                        "route",
                        Level::Warn,
                        format!(
                            "{who}: {net} is not routed into {ifname} (it goes via {}): replies to its connections follow the tunnel (ReturnRouting), but connections from this side to it leave elsewhere",
                            r.dev
                        ),
                        format!("ip route replace {net} dev {ifname}, if this side should reach {net} too"),
                    ),
                    Ok(r) => out.fix(
                        4,
                        "route",
                        Level::Fail,
                        format!(
                            "{who}: {net} is not routed into {ifname}: traffic for it leaves via {}{} (asymmetric: the peer's packets arrive through the tunnel, the replies go elsewhere)",
                            r.dev,
                            r.gateway.map(|g| format!(" (next hop {g})")).unwrap_or_default()
                        ),
                        format!("ip route replace {net} dev {ifname}   (wg-quick and `wg-appliance up` add these unless Table = off; with [Appliance] ReturnRouting the replies follow the tunnel anyway)"),
                    ),
                    Err(e) => out.fix(
                        4,
                        "route",
                        Level::Fail,
                        format!("{who}: no route for {net} ({e})"),
                        format!("ip route add {net} dev {ifname}"),
                    ),
                }
            }
            // Reverse path: would the kernel accept a packet from this
            // prefix arriving on the tunnel? (IPv4: rp_filter.)
            let v4_src = match net {
                IpNet::V4(_) if net.prefix_len() == 0 => Some(default_sample(false)),
                IpNet::V4(_) => Some(sample_addr(net)),
                IpNet::V6(_) => None,
            };
            if let (Some(src), Some(dst)) = (v4_src, local4) {
                let s = src.to_string();
                if let Err(e) = sys::route_get(dst, &["from", &s, "iif", ifname]) {
                    let why = if rp == 0 {
                        format!("the kernel refuses it ({e})")
                    } else {
                        format!(
                            "rp_filter drops it ({} reverse-path filter: net.ipv4.conf.all.rp_filter = {all_rp}, net.ipv4.conf.{ifname}.rp_filter = {if_rp}; the larger applies) because the route back to {src} does not go into {ifname}",
                            if rp == 1 { "strict" } else { "loose" }
                        )
                    };
                    out.fix(
                        4,
                        "rp_filter",
                        Level::Fail,
                        format!("{who}: a packet from {net} arriving on {ifname} is dropped: {why}"),
                        format!("route {net} into {ifname} (`ip route replace {net} dev {ifname}`), or loosen the filter: sysctl -w net.ipv4.conf.{ifname}.rp_filter=2 net.ipv4.conf.all.rp_filter=2 (persist it in /etc/sysctl.d/)"),
                    );
                }
            }
        }
    }
    if routes_ok > 0 {
        out.push(
            4,
            "route",
            Level::Ok,
            format!("{routes_ok} AllowedIPs prefix(es) route into {ifname}"),
        );
    }
    if !out.0.iter().any(|c| c.check == "rp_filter") && local4.is_some() {
        out.push(
            4,
            "rp_filter",
            Level::Ok,
            format!("packets from the peers' IPv4 prefixes pass the reverse-path check on {ifname} (rp_filter {rp})"),
        );
    }
    forwarding(ctx, &own, out);
    if let Some((rr, masq)) = settings {
        gateway_checks(ctx, rr, &masq, out);
    }
}

/// What `ReturnRouting` and `Masquerade` put in place, still in place.
fn gateway_checks(ctx: &Ctx, rr: config::ReturnRouting, masq: &config::Masquerade, out: &mut Out) {
    let ifname = &ctx.ifname;
    let table = crate::gateway::table_name(ifname);
    let restart = format!("restart the daemon (`wg-appliance down {ifname}`, then `up`): it applies ReturnRouting and Masquerade at start; if it refuses, its log says why");
    let nft_text = sys::output("nft", &["list", "table", "inet", &table]);
    if let Some(t) = crate::gateway::table_of(ifname, rr) {
        let rule = sys::ip_json(&["rule", "show"])
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|r| {
                r["fwmark"]
                    .as_str()
                    .and_then(|m| u32::from_str_radix(m.trim_start_matches("0x"), 16).ok())
                    == Some(t)
                    && (r["table"].as_str() == Some(&t.to_string())
                        || r["table"].as_u64() == Some(u64::from(t)))
            });
        let t_s = t.to_string();
        let route = sys::ip_json(&["route", "show", "table", &t_s])
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|r| r["dst"] == "default" && r["dev"].as_str() == Some(ifname.as_str()));
        let marks = nft_text
            .as_deref()
            .is_some_and(|n| n.contains("ct mark set"));
        if rule && route && marks {
            out.push(
                4,
                "return-routing",
                Level::Ok,
                format!("return routing: connections from {ifname} are marked ({table}), marked replies use table {t} (default dev {ifname})"),
            );
        } else {
            let missing: Vec<&str> = [
                (!rule, "the fwmark rule"),
                (!route, "the table's default route"),
                (!marks, "the nftables marking"),
            ]
            .into_iter()
            .filter_map(|(m, w)| m.then_some(w))
            .collect();
            out.fix(
                4,
                "return-routing",
                Level::Fail,
                format!(
                    "ReturnRouting is on but {} is missing (table {t})",
                    missing.join(", ")
                ),
                restart.clone(),
            );
        }
    }
    if *masq != config::Masquerade::Off {
        if nft_text
            .as_deref()
            .is_some_and(|n| n.contains("masquerade"))
        {
            out.push(
                4,
                "masquerade",
                Level::Ok,
                format!("masquerade of what leaves through {ifname} is in place (nftables table {table})"),
            );
        } else {
            out.fix(
                4,
                "masquerade",
                Level::Fail,
                format!("Masquerade is configured but nftables table inet {table} has no masquerade rule"),
                restart,
            );
        }
    }
}

/// Site prefixes: AllowedIPs beyond the tunnel's own subnets, which only
/// forwarding reaches.
pub(super) fn site_prefixes(peers: &[PeerInfo], own: &[IpNet]) -> Vec<IpNet> {
    peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter())
        .filter(|n| !own.iter().any(|o| o.trunc().contains(*n)))
        .copied()
        .collect()
}

fn forwarding(ctx: &Ctx, own: &[IpNet], out: &mut Out) {
    let sites = site_prefixes(&ctx.dev.peers, own);
    for (v6, fam, key) in [
        (false, "IPv4", "net.ipv4.conf.all.forwarding"),
        (true, "IPv6", "net.ipv6.conf.all.forwarding"),
    ] {
        let fam_sites: Vec<&IpNet> = sites.iter().filter(|n| n.addr().is_ipv6() == v6).collect();
        if fam_sites.is_empty() {
            continue;
        }
        match sys::sysctl_num(key) {
            Some(1) => out.push(
                4,
                "forwarding",
                Level::Ok,
                format!("{fam} forwarding is on ({} site prefix(es) behind the peers)", fam_sites.len()),
            ),
            Some(_) => out.fix(
                4,
                "forwarding",
                Level::Fail,
                format!(
                    "{fam} forwarding is off ({key} = 0), so traffic from this host's LAN never enters the tunnel towards {}",
                    fam_sites.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                ),
                format!("sysctl -w {key}=1 (persist it in /etc/sysctl.d/), or ForwardIP = on in [Appliance]"),
            ),
            None => out.push(4, "forwarding", Level::Skip, format!("{fam} forwarding unknown")),
        }
    }
}

// ---------------------------------------------------------------- layer 5

fn layer5(ctx: &Ctx, opts: &Options, out: &mut Out) {
    let ifname = &ctx.ifname;
    let Some(mtu) = ctx.mtu() else {
        out.push(5, "mtu", Level::Skip, format!("MTU of {ifname} unknown"));
        return;
    };
    if mtu > config::DATAPATH_MAX_MTU {
        out.fix(
            5,
            "mtu",
            Level::Fail,
            format!("{ifname} has MTU {mtu}, more than the BPF data path carries ({}): larger packets are dropped", config::DATAPATH_MAX_MTU),
            format!("MTU = {} in [Interface], or leave MTU out to have it derived from the WAN", config::DATAPATH_MAX_MTU),
        );
    }
    let mut probed = 0;
    for p in &ctx.dev.peers {
        let Some(ep) = p.endpoint else { continue };
        let who = ctx.peer_name(p);
        let v6 = ep.is_ipv6();
        let fam = if v6 { "IPv6" } else { "IPv4" };
        let Ok(route) = sys::route_get(ep.ip(), &[]) else {
            continue; // said in layer 2
        };
        let dev_mtu = ctx
            .link(&route.dev)
            .map(|l| l.mtu)
            .unwrap_or(1500)
            .min(u32::from(u16::MAX)) as u16;
        let (path, how) = if !opts.probe_mtu {
            (
                route.mtu.map(|m| m as u16).unwrap_or(dev_mtu),
                "not probed (--no-probe): the egress MTU".to_owned(),
            )
        } else {
            probed += 1;
            match pmtu::probe(ep.ip(), dev_mtu) {
                PathMtu::Full(m) => (
                    m,
                    format!("probed: {m}-byte packets with DF set get through"),
                ),
                PathMtu::Reported(m) => (
                    m,
                    format!("probed: a router on the way takes at most {m} bytes"),
                ),
                PathMtu::Silent(m) => {
                    out.fix(
                        5,
                        "pmtu",
                        Level::Warn,
                        format!("{who}: packets over {m} bytes to {} vanish without an ICMP error (filtered on the way: a PMTU black hole)", ep.ip()),
                        "let ICMP type 3 code 4 (IPv4) / ICMPv6 type 2 through the firewalls on the path".into(),
                    );
                    (m, format!("probed: nothing above {m} bytes is answered"))
                }
                PathMtu::NoEcho => (
                    route.mtu.map(|m| m as u16).unwrap_or(dev_mtu),
                    format!("{} answers no ping, so the egress MTU is assumed", ep.ip()),
                ),
                PathMtu::Error(e) => (dev_mtu, format!("not probed ({e})")),
            }
        };
        let allowed = config::tunnel_mtu(u32::from(path), v6);
        let detail = format!(
            "{who}: path MTU to {} is {path} ({how}), which allows a tunnel MTU of {allowed} over {fam}; {ifname} has {mtu}",
            ep.ip()
        );
        if mtu > allowed {
            out.fix(
                5,
                "pmtu",
                Level::Fail,
                format!("{detail}: full-size packets do not fit the path"),
                format!("MTU = {allowed} in [Interface] (on the peer too), or leave MTU out and set the WAN MTU; with a smaller MTU the MSS clamp follows"),
            );
        } else {
            out.push(5, "pmtu", Level::Ok, detail);
        }
    }
    if probed == 0 && ctx.dev.peers.iter().all(|p| p.endpoint.is_none()) {
        out.push(
            5,
            "pmtu",
            Level::Skip,
            "no endpoint known yet: no path to probe".into(),
        );
    }
    // The MSS clamp.
    match ctx.app.get("mss") {
        Some("off") => out.fix(
            5,
            "mss",
            Level::Warn,
            "TCP MSS clamping is off: TCP through the tunnel depends on path MTU discovery, which firewalls often break".into(),
            "leave Mss out of [Appliance] (auto: from the MTU), or set a value".into(),
        ),
        Some(v) => {
            let mut it = v.split_whitespace().filter_map(|x| x.parse::<u16>().ok());
            let (v4, v6) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
            let max4 = mtu.saturating_sub(40);
            if v4 > max4 {
                out.fix(
                    5,
                    "mss",
                    Level::Fail,
                    format!("TCP MSS clamped to {v4}, more than MTU {mtu} allows ({max4}): full TCP segments do not fit the tunnel"),
                    format!("Mss = {max4} in [Appliance], or leave Mss out to derive it from the MTU"),
                );
            } else {
                out.push(
                    5,
                    "mss",
                    Level::Ok,
                    format!("TCP MSS clamped to {v4} (IPv4) and {v6} (IPv6) in both directions"),
                );
            }
        }
        None => out.push(5, "mss", Level::Skip, "MSS clamp unknown (an older daemon)".into()),
    }
}
