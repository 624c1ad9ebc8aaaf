//! `wg-appliance doctor`: the layered troubleshooting walk, top to bottom.
//!
//! Layers (the alert runbooks in dist/ name them by number):
//! 1. links and XDP: the interface pair up, addresses, XDP attached and in
//!    which mode, the data path in use;
//! 2. listen port: the socket bound, nothing in nftables or iptables
//!    dropping it, every endpoint routed out of a WAN interface;
//! 3. handshakes and keys: the latest handshake per peer, AllowedIPs that
//!    overlap or are too broad, the clock;
//! 4. routing and NAT: a route into the tunnel for every AllowedIPs prefix,
//!    the return path of the peers' sources (rp_filter, asymmetric routes),
//!    forwarding, masquerade where the configuration asks for it;
//! 5. MTU and MSS: the path MTU to each endpoint (probed with DF set), the
//!    tunnel MTU it allows, the MSS clamp.
//!
//! Each check gives a line and, when it fails, the fix. The walk reads the
//! daemon through its UAPI socket and the kernel through `ip -j`, `nft -j`,
//! /proc and raw ICMP probes; it changes nothing but the kernel's path MTU
//! cache (which the probes refresh). No key material reaches its output.
//!
//! Invariants: every check of every layer runs even when an earlier one
//! failed (the report is the whole picture); a layer's status is its worst
//! check; the report fails iff some check fails, and warnings never fail it.

mod checks;
mod nft;
mod pmtu;
pub mod sys;
#[cfg(test)]
mod tests;

use std::{fmt::Write as _, path::PathBuf};

use serde::Serialize;

/// How one check came out. Ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Ok,
    /// Could not be checked here (said why).
    Skip,
    /// Works, but deserves a look.
    Warn,
    /// Broken: the fix says what to do.
    Fail,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Skip => "skip",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// 1 to 5.
    pub layer: u8,
    /// A short stable name (`xdp`, `nftables`, `route`...), for scripts.
    pub check: &'static str,
    pub status: Level,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The layers' names, by number: the alert runbooks in dist/ name them
/// the same way (tests/tests/alert_rules.rs holds them to it).
pub const LAYERS: [(u8, &str); 5] = [
    (1, "links/XDP"),
    (2, "listen port"),
    (3, "handshakes/keys"),
    (4, "routing/NAT"),
    (5, "MTU/MSS"),
];

/// One interface's walk.
#[derive(Clone, Debug)]
pub struct Report {
    pub interface: String,
    pub checks: Vec<Check>,
}

/// What to walk.
#[derive(Clone, Debug)]
pub struct Options {
    pub ifname: String,
    /// The configuration file, for what only it knows (DNS names of
    /// endpoints, duplicate prefixes, [Appliance] settings); default
    /// /etc/wireguard/<if>.conf when readable.
    pub config: Option<PathBuf>,
    /// Probe the path MTU to each endpoint (ICMP echo with DF set).
    pub probe_mtu: bool,
}

/// Walks the five layers for one interface.
pub fn run(opts: &Options) -> Report {
    Report {
        interface: opts.ifname.clone(),
        checks: checks::walk(opts),
    }
}

impl Report {
    /// The worst status of `layer`'s checks (Ok when it has none).
    pub fn layer_status(&self, layer: u8) -> Level {
        self.checks
            .iter()
            .filter(|c| c.layer == layer)
            .map(|c| c.status)
            .max()
            .unwrap_or(Level::Ok)
    }

    /// Whether some check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Level::Fail)
    }

    /// The layers that failed, in order.
    pub fn failed_layers(&self) -> Vec<u8> {
        LAYERS
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| self.layer_status(*n) == Level::Fail)
            .collect()
    }

    /// The report for people: a header per layer, a line per check, the
    /// fix under each failure.
    pub fn human(&self) -> String {
        let mut out = format!("wg-appliance doctor: {}\n", self.interface);
        for (n, name) in LAYERS {
            let status = self.layer_status(n);
            let title = format!("[{n}] {name} ");
            let _ = writeln!(out, "{title:.<58} {}", status.label());
            for c in self.checks.iter().filter(|c| c.layer == n) {
                let _ = writeln!(out, "    {:<5} {}", c.status.label(), c.detail);
                if let Some(fix) = &c.fix {
                    if c.status >= Level::Warn {
                        for (i, line) in fix.lines().enumerate() {
                            let lead = if i == 0 { "fix:" } else { "" };
                            let _ = writeln!(out, "          {lead:<4} {line}");
                        }
                    }
                }
            }
        }
        let failed = self.failed_layers();
        if failed.is_empty() {
            let warns = self
                .checks
                .iter()
                .filter(|c| c.status == Level::Warn)
                .count();
            if warns == 0 {
                out.push_str("result: every layer passed\n");
            } else {
                let _ = writeln!(
                    out,
                    "result: every layer passed ({warns} warning{})",
                    if warns == 1 { "" } else { "s" }
                );
            }
        } else {
            let names: Vec<String> = failed
                .iter()
                .map(|n| format!("{n} ({})", LAYERS[usize::from(*n) - 1].1))
                .collect();
            let _ = writeln!(
                out,
                "result: layer {} failed. Fix the lowest failing layer first, then run doctor again",
                names.join(", ")
            );
        }
        out
    }

    /// The report for scripts.
    pub fn json(&self) -> serde_json::Value {
        let layers: Vec<serde_json::Value> = LAYERS
            .iter()
            .map(|(n, name)| {
                let checks: Vec<&Check> = self.checks.iter().filter(|c| c.layer == *n).collect();
                serde_json::json!({
                    "layer": n,
                    "name": name,
                    "status": self.layer_status(*n),
                    "checks": checks,
                })
            })
            .collect();
        serde_json::json!({
            "interface": self.interface,
            "ok": !self.failed(),
            "failed_layers": self.failed_layers(),
            "layers": layers,
        })
    }
}
