//! Return routing, forwarding and masquerade around a tunnel interface,
//! opt-in from `[Appliance]` (`ReturnRouting`, `ForwardIP`, `Masquerade`).
//!
//! - Return routing: a connection that comes in through the tunnel gets a
//!   conntrack mark; its replies (from the LAN, or from this host) carry
//!   that mark as firewall mark, and a rule sends marked packets to a
//!   routing table whose default route is the tunnel. Replies so leave
//!   through the tunnel they came in on, whatever the main table says
//!   (asymmetric routing). The rule and routes go through rtnetlink, the
//!   marking through nftables; the interface's reverse-path filter is set
//!   to loose, which the tunnel's sources then need.
//! - Masquerade: source NAT, to the tunnel interface's address, of what
//!   leaves through the tunnel (from every source, or listed prefixes), so
//!   a LAN reaches a far side that only accepts the gateway's address.
//! - ForwardIP: IPv4 (and IPv6) forwarding on, left on at teardown, since
//!   other services of the host may rely on it.
//!
//! Invariants: all nftables state lives in one table, `inet
//! wg_appliance_<if>`, written in one `nft -f` transaction and removed as a
//! whole; [`apply`] applies everything or nothing (what it did is undone
//! when a later step fails); applying again replaces what a killed daemon
//! left (the table, the rule and the routes have fixed names and numbers).

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
};

use ipnet::IpNet;
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::config::{Masquerade, ReturnRouting};

/// Priority of the return-routing rule: before `main` (32766), after the
/// rules wg-quick adds for a default route (which use the table's number).
pub const RULE_PRIORITY: u32 = 10_900;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("nftables: {0}. Fix: install nftables (the `nft` command) and run as root; nothing of ReturnRouting/Masquerade was left applied")]
    Nft(String),
    #[error("{what}: {error}. Fix: run as root in the interface's network namespace; nothing of ReturnRouting/Masquerade/ForwardIP was left applied")]
    Netlink { what: String, error: String },
    #[error("{what}: {error}")]
    Sysctl { what: String, error: std::io::Error },
}

/// What the configuration asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub forward_ip: bool,
    pub return_routing: ReturnRouting,
    pub masquerade: Masquerade,
}

impl Settings {
    pub fn is_empty(&self) -> bool {
        !self.forward_ip
            && self.return_routing == ReturnRouting::Off
            && self.masquerade == Masquerade::Off
    }
}

/// The nftables table owned by `ifname`'s daemon.
pub fn table_name(ifname: &str) -> String {
    let safe: String = ifname
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("wg_appliance_{safe}")
}

/// The routing table (and firewall mark) of `ReturnRouting = on`: derived
/// from the interface name, so a restarted daemon finds its own, in a range
/// (0x5747_xxxx, "WG") that hand-made tables rarely use.
pub fn auto_table(ifname: &str) -> u32 {
    // FNV-1a: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in ifname.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    0x5747_0000 | (h & 0xffff)
}

/// The table/mark number in use, if return routing is on.
pub fn table_of(ifname: &str, r: ReturnRouting) -> Option<u32> {
    match r {
        ReturnRouting::Off => None,
        ReturnRouting::Auto => Some(auto_table(ifname)),
        ReturnRouting::Table(t) => Some(t),
    }
}

/// The `nft -f` script that (re)creates the table, or None when nothing
/// needs one. Adding, deleting and adding again in one transaction
/// replaces a left-over table atomically.
pub fn nft_script(ifname: &str, s: &Settings) -> Option<String> {
    let mark = table_of(ifname, s.return_routing);
    if mark.is_none() && s.masquerade == Masquerade::Off {
        return None;
    }
    let t = table_name(ifname);
    let q = format!("\"{ifname}\"");
    let mut out = format!("table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n");
    if let Some(m) = mark {
        let _ = write!(
            out,
            "  chain prerouting {{\n    type filter hook prerouting priority mangle; policy accept;\n    \
             iifname {q} ct state new ct mark set {m:#x}\n    \
             iifname != {q} ct mark {m:#x} meta mark set ct mark\n  }}\n  \
             chain output {{\n    type route hook output priority mangle; policy accept;\n    \
             ct mark {m:#x} meta mark set ct mark\n  }}\n"
        );
    }
    match &s.masquerade {
        Masquerade::Off => {}
        Masquerade::All => {
            let _ = write!(
                out,
                "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
                 oifname {q} masquerade\n  }}\n"
            );
        }
        Masquerade::Sources(nets) => {
            out.push_str(
                "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
            );
            for (fam, v6) in [("ip", false), ("ip6", true)] {
                let list: Vec<String> = nets
                    .iter()
                    .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                    .map(ToString::to_string)
                    .collect();
                if !list.is_empty() {
                    let _ = writeln!(
                        out,
                        "    oifname {q} {fam} saddr {{ {} }} masquerade",
                        list.join(", ")
                    );
                }
            }
            out.push_str("  }\n");
        }
    }
    out.push_str("}\n");
    Some(out)
}

fn nft(script: &str) -> Result<(), GatewayError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| GatewayError::Nft(format!("running nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| GatewayError::Nft(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| GatewayError::Nft(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        return Err(GatewayError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

/// Removes `ifname`'s table, if it is there.
pub fn remove_table(ifname: &str) {
    let t = table_name(ifname);
    let _ = nft(&format!("table inet {t}\ndelete table inet {t}\n"));
}

/// What [`apply`] did, for [`remove`].
#[derive(Debug, Default)]
pub struct Applied {
    ifname: String,
    /// Forwarding sysctls as they were before we turned them on.
    forwarding_before: Vec<(String, String)>,
    table: bool,
    rules: Vec<rtnetlink::packet_route::rule::RuleMessage>,
    routes: Vec<rtnetlink::packet_route::route::RouteMessage>,
}

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

fn set_sysctl(name: &str, value: &str) -> Result<String, GatewayError> {
    let path = sysctl_path(name);
    let before = std::fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .map_err(|error| GatewayError::Sysctl {
            what: format!("reading {name}"),
            error,
        })?;
    if before != value {
        std::fs::write(&path, value).map_err(|error| GatewayError::Sysctl {
            what: format!("setting {name} = {value}"),
            error,
        })?;
    }
    Ok(before)
}

fn nl<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> GatewayError + '_ {
    move |e| GatewayError::Netlink {
        what: what.to_owned(),
        error: e.to_string(),
    }
}

/// Applies `s` around `ifname` (index `ifindex`): everything or nothing.
pub async fn apply(
    handle: &Handle,
    ifname: &str,
    ifindex: u32,
    s: &Settings,
) -> Result<Applied, GatewayError> {
    let mut done = Applied {
        ifname: ifname.to_owned(),
        ..Applied::default()
    };
    let r = apply_steps(handle, ifname, ifindex, s, &mut done).await;
    match r {
        Ok(()) => Ok(done),
        Err(e) => {
            // Forwarding is put back too: nothing stays half applied.
            for (name, before) in &done.forwarding_before {
                let _ = std::fs::write(sysctl_path(name), before);
            }
            done.forwarding_before.clear();
            remove(handle, done).await;
            Err(e)
        }
    }
}

async fn apply_steps(
    handle: &Handle,
    ifname: &str,
    ifindex: u32,
    s: &Settings,
    done: &mut Applied,
) -> Result<(), GatewayError> {
    if s.forward_ip {
        for name in [
            "net.ipv4.conf.all.forwarding",
            "net.ipv6.conf.all.forwarding",
        ] {
            let before = set_sysctl(name, "1")?;
            if before != "1" {
                done.forwarding_before.push((name.to_owned(), before));
            }
        }
    }
    if let Some(script) = nft_script(ifname, s) {
        nft(&script)?;
        done.table = true;
    } else {
        // A table a killed daemon left under another configuration.
        remove_table(ifname);
    }
    if let Some(table) = table_of(ifname, s.return_routing) {
        // The tunnel's sources are routed back through the table, not the
        // main one: a strict reverse-path filter would drop them.
        set_sysctl(&format!("net.ipv4.conf.{ifname}.rp_filter"), "2")?;
        // Routes first, so the rule never points at an empty table.
        let v4 = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(ifindex)
            .table_id(table)
            .build();
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
            .output_interface(ifindex)
            .table_id(table)
            .build();
        for (route, fam) in [(v4, "IPv4"), (v6, "IPv6")] {
            let what = format!("adding the {fam} default route of table {table} through {ifname}");
            handle
                .route()
                .add(route.clone())
                .replace()
                .execute()
                .await
                .map_err(nl(&what))?;
            done.routes.push(route);
        }
        for v6 in [false, true] {
            let req = handle
                .rule()
                .add()
                .fw_mark(table)
                .table_id(table)
                // The library leaves the action unspecified, which the
                // kernel treats as "drop" at lookup time.
                .action(rtnetlink::packet_route::rule::RuleAction::ToTable)
                .priority(RULE_PRIORITY);
            let what = format!("adding the rule fwmark {table:#x} lookup {table}");
            let msg = if v6 {
                add_rule(handle, req.v6().replace(), &what).await?
            } else {
                add_rule(handle, req.v4().replace(), &what).await?
            };
            done.rules.push(msg);
        }
    }
    Ok(())
}

/// Adds a rule, first deleting the same rule a killed daemon may have left
/// (a replace matches on the priority only, so rules would pile up).
async fn add_rule<T>(
    handle: &Handle,
    mut req: rtnetlink::RuleAddRequest<T>,
    what: &str,
) -> Result<rtnetlink::packet_route::rule::RuleMessage, GatewayError> {
    let msg = req.message_mut().clone();
    let _ = handle.rule().del(msg.clone()).execute().await;
    req.execute().await.map_err(nl(what))?;
    Ok(msg)
}

/// Undoes what [`apply`] did (forwarding stays on: others may use it).
pub async fn remove(handle: &Handle, applied: Applied) {
    for r in applied.rules {
        let _ = handle.rule().del(r).execute().await;
    }
    for r in applied.routes {
        let _ = handle.route().del(r).execute().await;
    }
    if applied.table {
        remove_table(&applied.ifname);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tables_are_stable_and_safe() {
        assert_eq!(table_name("wg0"), "wg_appliance_wg0");
        assert_eq!(table_name("wg-a.1"), "wg_appliance_wg_a_1");
        assert_eq!(auto_table("wg0"), auto_table("wg0"));
        assert_ne!(auto_table("wg0"), auto_table("wg1"));
        assert_eq!(auto_table("wg0") >> 16, 0x5747);
    }

    #[test]
    fn the_script_holds_what_was_asked_in_one_table() {
        let none = Settings::default();
        assert_eq!(nft_script("wg0", &none), None);
        let s = Settings {
            forward_ip: true,
            return_routing: ReturnRouting::Table(200),
            masquerade: Masquerade::Sources(vec![
                "192.168.1.0/24".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
            ]),
        };
        let t = nft_script("wg0", &s).unwrap();
        assert!(t.starts_with("table inet wg_appliance_wg0\ndelete table inet wg_appliance_wg0\n"));
        assert!(
            t.contains("iifname \"wg0\" ct state new ct mark set 0xc8"),
            "{t}"
        );
        assert!(
            t.contains("iifname != \"wg0\" ct mark 0xc8 meta mark set ct mark"),
            "{t}"
        );
        assert!(t.contains("type route hook output"), "{t}");
        assert!(
            t.contains("oifname \"wg0\" ip saddr { 192.168.1.0/24 } masquerade"),
            "{t}"
        );
        assert!(
            t.contains("oifname \"wg0\" ip6 saddr { fd00::/64 } masquerade"),
            "{t}"
        );
        let m = Settings {
            masquerade: Masquerade::All,
            ..Settings::default()
        };
        let t = nft_script("wg0", &m).unwrap();
        assert!(
            t.contains("oifname \"wg0\" masquerade") && !t.contains("prerouting"),
            "{t}"
        );
    }
}
