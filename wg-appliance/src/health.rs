//! `wg-appliance health <ifname>`: one line and an exit status, for routing
//! daemons (BIRD, FRR: announce an anycast address only while it passes)
//! and load balancers.
//!
//! Healthy means this box can terminate tunnels now: the daemon answers on
//! its UAPI socket, it has a private key, the tunnel interface is up, XDP
//! is attached on every WAN interface the daemon runs on (checked in the
//! kernel, not taken from the daemon's word), and, when asked, it has at
//! least `--min-peers` peers and a handshake younger than
//! `--max-handshake-age`. Every failed check is named, each with its fix,
//! on the one line; a check never waits longer than the UAPI client's
//! timeout, so a hung daemon reads as unhealthy, not as a hung probe.
//!
//! [`judge`] is the decision from what was read (unit-tested); [`check`]
//! reads it.

use std::time::{Duration, SystemTime};

use crate::{
    doctor::sys::{links, Link},
    uapi_client::{ApplianceInfo, Client, DeviceInfo},
};

/// What to require beyond a working daemon and data path.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub ifname: String,
    /// At least this many peers (a fleet member fed from a peer source
    /// that loaded nothing should not attract traffic).
    pub min_peers: usize,
    /// At least one peer with a handshake this recent.
    pub max_handshake_age: Option<Duration>,
}

/// The verdict: the one line to print, and whether it passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: bool,
    pub line: String,
}

/// What [`check`] read, for [`judge`].
#[derive(Clone, Debug)]
pub struct Observed {
    /// The `get` answer, or why there is none.
    pub device: Result<DeviceInfo, String>,
    pub appliance: ApplianceInfo,
    /// The links of this namespace, or why they could not be read.
    pub links: Result<Vec<Link>, String>,
    pub now: SystemTime,
}

/// Reads the daemon and the kernel, then judges.
pub fn check(opts: &Options) -> Verdict {
    let client = Client::new(&opts.ifname);
    let device = client
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|c| c.get().map_err(|e| e.to_string()));
    let appliance = client
        .ok()
        .and_then(|c| c.appliance().ok())
        .unwrap_or_default();
    judge(
        opts,
        &Observed {
            device,
            appliance,
            links: links(),
            now: SystemTime::now(),
        },
    )
}

/// The decision. Pure: the same observation gives the same verdict.
pub fn judge(opts: &Options, seen: &Observed) -> Verdict {
    let ifname = &opts.ifname;
    let dev = match &seen.device {
        Ok(d) => d,
        Err(e) => {
            return Verdict {
                healthy: false,
                line: format!(
                    "unhealthy: {ifname}: no daemon answers ({e}); fix: start it (`wg-appliance up {ifname}` or `systemctl start wg-appliance@{ifname}`)"
                ),
            }
        }
    };
    let mut problems: Vec<String> = Vec::new();
    if dev.public_key.is_none() {
        problems.push(format!(
            "no private key; fix: `wg set {ifname} private-key <file>`"
        ));
    }
    let wan: Vec<(&str, &str)> = seen
        .appliance
        .all("wan_xdp")
        .filter_map(|v| v.split_once(' '))
        .collect();
    let mut xdp_modes = Vec::new();
    match &seen.links {
        Err(e) => problems.push(format!(
            "cannot read the links ({e}); fix: run health in the interface's network namespace, with iproute2 installed"
        )),
        Ok(links) => {
            match links.iter().find(|l| l.name == *ifname) {
                None => problems.push(format!(
                    "no link {ifname} in this namespace; fix: run health where the daemon runs (`ip netns exec <ns> wg-appliance health {ifname}`)"
                )),
                Some(l) if !l.up => problems.push(format!(
                    "{ifname} is down; fix: `ip link set {ifname} up`"
                )),
                Some(_) => {}
            }
            for (name, _) in &wan {
                match links.iter().find(|l| l.name == *name) {
                    Some(Link { xdp: Some(mode), .. }) => {
                        xdp_modes.push(format!("XDP {mode} on {name}"));
                    }
                    Some(_) => problems.push(format!(
                        "XDP is not attached on {name} (the data path is gone); fix: `wg-appliance down {ifname}` and up again"
                    )),
                    None => problems.push(format!(
                        "WAN interface {name} is gone; fix: bring it back, then restart {ifname}"
                    )),
                }
            }
        }
    }
    let peers = dev.peers.len();
    if peers < opts.min_peers {
        problems.push(format!(
            "{peers} peer{}, fewer than --min-peers {}; fix: check the peer source (`wg show {ifname} peers`)",
            if peers == 1 { "" } else { "s" },
            opts.min_peers
        ));
    }
    let recent = |max: Duration| {
        dev.peers
            .iter()
            .filter(|p| {
                p.last_handshake
                    .and_then(|t| seen.now.duration_since(t).ok())
                    .is_some_and(|age| age <= max)
            })
            .count()
    };
    let window = opts.max_handshake_age.unwrap_or(Duration::from_secs(180));
    let fresh = recent(window);
    if opts.max_handshake_age.is_some() && fresh == 0 {
        problems.push(format!(
            "no handshake in the last {} s; fix: `wg-appliance doctor {ifname}`",
            window.as_secs()
        ));
    }
    if !problems.is_empty() {
        return Verdict {
            healthy: false,
            line: format!("unhealthy: {ifname}: {}", problems.join("; ")),
        };
    }
    let mut parts = vec![format!(
        "{peers} peer{} ({fresh} with a handshake in the last {} s)",
        if peers == 1 { "" } else { "s" },
        window.as_secs()
    )];
    parts.extend(xdp_modes);
    if let Some(p) = seen.appliance.get("data_path") {
        parts.push(format!("data path {p}"));
    }
    Verdict {
        healthy: true,
        line: format!("healthy: {ifname}: {}", parts.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{keys::PrivateKey, uapi_client::PeerInfo};

    fn link(name: &str, up: bool, xdp: Option<&'static str>) -> Link {
        Link {
            name: name.into(),
            up,
            lower_up: up,
            mtu: 1500,
            xdp,
        }
    }

    fn peer(handshake_ago: Option<u64>, now: SystemTime) -> PeerInfo {
        PeerInfo {
            public_key: PrivateKey::generate().public_key(),
            has_psk: false,
            endpoint: None,
            allowed_ips: Vec::new(),
            last_handshake: handshake_ago.map(|s| now - Duration::from_secs(s)),
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: 0,
        }
    }

    fn seen(peers: Vec<PeerInfo>, links: Vec<Link>, now: SystemTime) -> Observed {
        Observed {
            device: Ok(DeviceInfo {
                public_key: Some(PrivateKey::generate().public_key()),
                listen_port: 51820,
                fwmark: 0,
                peers,
            }),
            appliance: ApplianceInfo(vec![
                ("data_path".into(), "bpf".into()),
                ("wan_xdp".into(), "eth0 native".into()),
            ]),
            links: Ok(links),
            now,
        }
    }

    fn opts() -> Options {
        Options {
            ifname: "wg0".into(),
            ..Options::default()
        }
    }

    #[test]
    fn healthy_names_peers_xdp_and_path() {
        let now = SystemTime::now();
        let s = seen(
            vec![peer(Some(30), now), peer(None, now)],
            vec![link("wg0", true, None), link("eth0", true, Some("native"))],
            now,
        );
        assert_eq!(
            judge(&opts(), &s),
            Verdict {
                healthy: true,
                line: "healthy: wg0: 2 peers (1 with a handshake in the last 180 s), XDP native on eth0, data path bpf".into()
            }
        );
    }

    #[test]
    fn each_failure_is_named_with_its_fix() {
        let now = SystemTime::now();
        // No daemon.
        let mut s = seen(Vec::new(), Vec::new(), now);
        s.device = Err("connecting to /var/run/wireguard/wg0.sock: No such file".into());
        let v = judge(&opts(), &s);
        assert!(!v.healthy);
        assert!(
            v.line.starts_with("unhealthy: wg0: no daemon answers"),
            "{}",
            v.line
        );
        assert!(v.line.contains("wg-appliance up wg0"), "{}", v.line);

        // XDP gone from the WAN, the tunnel down, too few peers, no recent
        // handshake: all four on one line.
        let s = seen(
            vec![peer(Some(600), now)],
            vec![link("wg0", false, None), link("eth0", true, None)],
            now,
        );
        let o = Options {
            min_peers: 2,
            max_handshake_age: Some(Duration::from_secs(120)),
            ..opts()
        };
        let v = judge(&o, &s);
        assert!(!v.healthy);
        for want in [
            "wg0 is down; fix: `ip link set wg0 up`",
            "XDP is not attached on eth0",
            "1 peer, fewer than --min-peers 2",
            "no handshake in the last 120 s",
        ] {
            assert!(v.line.contains(want), "want {want:?} in {}", v.line);
        }

        // No key; the WAN interface gone.
        let mut s = seen(Vec::new(), vec![link("wg0", true, None)], now);
        if let Ok(d) = &mut s.device {
            d.public_key = None;
        }
        let v = judge(&opts(), &s);
        assert!(v.line.contains("no private key"), "{}", v.line);
        assert!(v.line.contains("WAN interface eth0 is gone"), "{}", v.line);
    }

    #[test]
    fn a_recent_handshake_passes_the_age_check() {
        let now = SystemTime::now();
        let s = seen(
            vec![peer(Some(10), now)],
            vec![link("wg0", true, None), link("eth0", true, Some("generic"))],
            now,
        );
        let o = Options {
            min_peers: 1,
            max_handshake_age: Some(Duration::from_secs(60)),
            ..opts()
        };
        let v = judge(&o, &s);
        assert!(v.healthy, "{}", v.line);
        assert!(
            v.line.contains("1 with a handshake in the last 60 s"),
            "{}",
            v.line
        );
    }
}
