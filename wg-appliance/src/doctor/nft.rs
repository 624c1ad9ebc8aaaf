//! Would the firewall drop a handshake to our listen port? The ruleset of
//! `nft -j list ruleset` (and `iptables-save`, when that is installed) is
//! walked the way netfilter walks it for one probe packet: UDP to the
//! listen port, arriving on a WAN interface, IPv4 or IPv6.
//!
//! Handshake messages are the only WireGuard traffic netfilter sees (XDP
//! takes transport data before the stack), so a drop here stops every new
//! session while the running ones carry on.
//!
//! Matches the walk cannot decide (source addresses, conntrack state,
//! marks, rate limits...) count as "maybe": a drop behind them is a
//! warning, a drop behind only certain matches a failure. Pure code: the
//! ruleset comes in as JSON or text.

use serde_json::Value;

/// The packet the walk follows.
#[derive(Clone, Debug)]
pub struct Probe<'a> {
    pub port: u16,
    pub v6: bool,
    /// The interfaces it may arrive on (the WAN interfaces).
    pub iifs: &'a [String],
}

/// Where a drop is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub family: String,
    pub table: String,
    pub chain: String,
    /// None: the chain's policy.
    pub handle: Option<u64>,
}

impl Place {
    /// `inet filter input, handle 4` or `inet filter input, policy drop`.
    pub fn describe(&self) -> String {
        match self.handle {
            Some(h) => format!("{} {} {}, handle {h}", self.family, self.table, self.chain),
            None => format!("{} {} {}, policy drop", self.family, self.table, self.chain),
        }
    }

    /// The command that lets the probe through: delete the rule, or
    /// accept the port before the policy.
    pub fn fix(&self, port: u16) -> String {
        let (f, t, c) = (&self.family, &self.table, &self.chain);
        if f == "iptables" || f == "ip6tables" {
            return match self.handle {
                Some(n) => format!(
                    "{f} -D {c} {n}   (or let the port through before it: {f} -I {c} -p udp --dport {port} -j ACCEPT)"
                ),
                None => format!("{f} -I {c} -p udp --dport {port} -j ACCEPT"),
            };
        }
        match self.handle {
            Some(h) => format!(
                "nft delete rule {f} {t} {c} handle {h}   (or let the port through before it: nft insert rule {f} {t} {c} udp dport {port} accept)"
            ),
            None => format!("nft insert rule {f} {t} {c} udp dport {port} accept"),
        }
    }
}

/// The walk's verdict for one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing drops it (for certain).
    Passes,
    /// This rule or policy drops it.
    Dropped(Place),
    /// This rule or policy drops it if matches we cannot decide hold.
    MaybeDropped(Place),
}

/// Three-valued truth of a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Maybe,
}

fn and(a: Tri, b: Tri) -> Tri {
    match (a, b) {
        (Tri::No, _) | (_, Tri::No) => Tri::No,
        (Tri::Yes, Tri::Yes) => Tri::Yes,
        _ => Tri::Maybe,
    }
}

/// How a chain walk ended.
#[derive(Clone, Debug)]
enum End {
    Accept,
    Drop(Place),
    /// Fell off the end (or returned), with a possible drop seen on the way
    /// and whether some uncertain accept may have taken the packet earlier.
    Continue {
        maybe: Option<Place>,
        uncertain: bool,
    },
}

struct Ruleset<'a> {
    items: Vec<&'a Value>,
}

impl<'a> Ruleset<'a> {
    fn rules(&self, family: &str, table: &str, chain: &str) -> Vec<&'a Value> {
        self.items
            .iter()
            .filter_map(|i| i.get("rule"))
            .filter(|r| r["family"] == family && r["table"] == table && r["chain"] == chain)
            .collect()
    }

    fn set_elems(&self, family: &str, table: &str, name: &str) -> Option<&'a Vec<Value>> {
        self.items
            .iter()
            .filter_map(|i| i.get("set").or_else(|| i.get("map")))
            .find(|s| s["family"] == family && s["table"] == table && s["name"] == name)
            .and_then(|s| s["elem"].as_array())
    }
}

/// Walks `ruleset` (the JSON of `nft -j list ruleset`) for `probe`.
pub fn walk(ruleset: &Value, probe: &Probe) -> Verdict {
    let items: Vec<&Value> = ruleset["nftables"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let rs = Ruleset { items };
    // Base chains that see an arriving packet, in the order netfilter runs
    // them: netdev ingress, then prerouting, then input, by priority.
    let mut bases: Vec<(u8, i64, &Value)> = rs
        .items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter_map(|c| {
            let fam = c["family"].as_str()?;
            let fam_ok = match fam {
                "inet" | "netdev" => true,
                "ip" => !probe.v6,
                "ip6" => probe.v6,
                _ => false,
            };
            if !fam_ok || c["type"].as_str() != Some("filter") {
                return None;
            }
            let stage = match (fam, c["hook"].as_str()?) {
                ("netdev", "ingress") => {
                    let dev = c["dev"].as_str()?;
                    if !probe.iifs.iter().any(|i| i == dev) {
                        return None;
                    }
                    0
                }
                (_, "prerouting") => 1,
                (_, "input") => 2,
                _ => return None,
            };
            Some((stage, c["prio"].as_i64().unwrap_or(0), c))
        })
        .collect();
    bases.sort_by_key(|(stage, prio, _)| (*stage, *prio));
    let mut maybe: Option<Place> = None;
    for (_, _, chain) in bases {
        let family = chain["family"].as_str().unwrap_or_default();
        let table = chain["table"].as_str().unwrap_or_default();
        let name = chain["name"].as_str().unwrap_or_default();
        match walk_chain(&rs, probe, family, table, name, 0) {
            End::Accept => {}
            End::Drop(p) => return Verdict::Dropped(p),
            End::Continue {
                maybe: m,
                uncertain,
            } => {
                if maybe.is_none() {
                    maybe = m;
                }
                if chain["policy"].as_str() == Some("drop") {
                    let p = Place {
                        family: family.to_owned(),
                        table: table.to_owned(),
                        chain: name.to_owned(),
                        handle: None,
                    };
                    if uncertain {
                        maybe.get_or_insert(p);
                    } else {
                        return Verdict::Dropped(p);
                    }
                }
            }
        }
    }
    match maybe {
        Some(p) => Verdict::MaybeDropped(p),
        None => Verdict::Passes,
    }
}

fn walk_chain(
    rs: &Ruleset,
    probe: &Probe,
    family: &str,
    table: &str,
    chain: &str,
    depth: u32,
) -> End {
    let mut maybe = None;
    let mut uncertain = false;
    if depth > 16 {
        // Deeper than any sane ruleset: do not pretend to know.
        return End::Continue {
            maybe,
            uncertain: true,
        };
    }
    for rule in rs.rules(family, table, chain) {
        let place = Place {
            family: family.to_owned(),
            table: table.to_owned(),
            chain: chain.to_owned(),
            handle: rule["handle"].as_u64(),
        };
        let mut truth = Tri::Yes;
        let mut verdict: Option<(&str, Option<String>)> = None;
        for e in rule["expr"].as_array().into_iter().flatten() {
            if let Some(m) = e.get("match") {
                truth = and(truth, eval_match(rs, probe, family, table, m));
            } else if e.get("limit").is_some() || e.get("quota").is_some() {
                truth = and(truth, Tri::Maybe);
            } else if let Some(vm) = e.get("vmap") {
                match eval_vmap(probe, vm) {
                    Some((v, t)) => {
                        truth = and(truth, t);
                        verdict = Some((v, None));
                    }
                    None => truth = Tri::No,
                }
            } else if e.get("drop").is_some() || e.get("reject").is_some() {
                verdict = Some(("drop", None));
            } else if e.get("accept").is_some() {
                verdict = Some(("accept", None));
            } else if e.get("return").is_some() {
                verdict = Some(("return", None));
            } else if let Some(j) = e.get("jump") {
                verdict = Some(("jump", j["target"].as_str().map(str::to_owned)));
            } else if let Some(g) = e.get("goto") {
                verdict = Some(("goto", g["target"].as_str().map(str::to_owned)));
            } else if e.get("xt").is_some() {
                // iptables-nft's own matches: opaque here.
                truth = and(truth, Tri::Maybe);
            }
            if truth == Tri::No {
                break;
            }
        }
        if truth == Tri::No {
            continue;
        }
        match verdict {
            Some(("drop", _)) if truth == Tri::Yes => return End::Drop(place),
            Some(("drop", _)) => {
                maybe.get_or_insert(place);
            }
            Some(("accept", _)) if truth == Tri::Yes => return End::Accept,
            Some(("accept", _)) => uncertain = true,
            Some(("return", _)) if truth == Tri::Yes => {
                return End::Continue { maybe, uncertain };
            }
            Some(("return", _)) => uncertain = true,
            Some((kind @ ("jump" | "goto"), Some(target))) => {
                let end = walk_chain(rs, probe, family, table, &target, depth + 1);
                match (end, truth) {
                    (End::Accept, Tri::Yes) => return End::Accept,
                    (End::Accept, _) => uncertain = true,
                    (End::Drop(p), Tri::Yes) => return End::Drop(p),
                    (End::Drop(p), _) => {
                        maybe.get_or_insert(p);
                    }
                    (
                        End::Continue {
                            maybe: m,
                            uncertain: u,
                        },
                        t,
                    ) => {
                        if maybe.is_none() {
                            maybe = m;
                        }
                        uncertain |= u;
                        // A goto does not come back: the chain that jumped
                        // ends with it.
                        if kind == "goto" && t == Tri::Yes {
                            return End::Continue { maybe, uncertain };
                        }
                        if kind == "goto" {
                            uncertain = true;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    End::Continue { maybe, uncertain }
}

/// What the probe has for a match's left side.
enum Field {
    Port,
    L4,
    Nfproto,
    Iif,
    Unknown,
    /// A header of another protocol: never present in the probe.
    Absent,
}

fn field_of(probe: &Probe, left: &Value) -> Field {
    if let Some(p) = left.get("payload") {
        let proto = p["protocol"].as_str().unwrap_or_default();
        let field = p["field"].as_str().unwrap_or_default();
        return match (proto, field) {
            ("udp" | "th", "dport") => Field::Port,
            ("udp" | "th", _) => Field::Unknown,
            ("ip", "protocol") if !probe.v6 => Field::L4,
            ("ip6", "nexthdr") if probe.v6 => Field::L4,
            ("ip", _) if !probe.v6 => Field::Unknown,
            ("ip6", _) if probe.v6 => Field::Unknown,
            ("ether" | "vlan", _) => Field::Unknown,
            (_, _) if p.get("base").is_some() => Field::Unknown,
            _ => Field::Absent,
        };
    }
    if let Some(m) = left.get("meta") {
        return match m["key"].as_str().unwrap_or_default() {
            "l4proto" => Field::L4,
            "nfproto" => Field::Nfproto,
            "iifname" => Field::Iif,
            _ => Field::Unknown,
        };
    }
    Field::Unknown
}

/// Whether value `v` (a number, a name, a range, a prefix) covers `x`.
fn covers(v: &Value, x: &Value) -> Tri {
    if let Some(r) = v.get("range").and_then(Value::as_array) {
        return match (
            r.first().and_then(as_num),
            r.get(1).and_then(as_num),
            as_num(x),
        ) {
            (Some(lo), Some(hi), Some(x)) => tri(lo <= x && x <= hi),
            _ => Tri::Maybe,
        };
    }
    if let Some(e) = v.get("elem") {
        return covers(&e["val"], x);
    }
    match (v, x) {
        (Value::String(a), Value::String(b)) => {
            if let Some(prefix) = a.strip_suffix('*') {
                tri(b.starts_with(prefix))
            } else {
                tri(a == b)
            }
        }
        _ => match (as_num(v), as_num(x)) {
            (Some(a), Some(b)) => tri(a == b),
            _ => Tri::Maybe,
        },
    }
}

fn as_num(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => match s.as_str() {
            "udp" => Some(17),
            "tcp" => Some(6),
            "icmp" => Some(1),
            "ipv6-icmp" | "icmpv6" => Some(58),
            "ipv4" => Some(2),
            "ipv6" => Some(10),
            _ => s.parse().ok(),
        },
        _ => None,
    }
}

fn tri(b: bool) -> Tri {
    if b {
        Tri::Yes
    } else {
        Tri::No
    }
}

fn any_of(values: &[Value], x: &Value) -> Tri {
    let mut out = Tri::No;
    for v in values {
        match covers(v, x) {
            Tri::Yes => return Tri::Yes,
            Tri::Maybe => out = Tri::Maybe,
            Tri::No => {}
        }
    }
    out
}

fn eval_match(rs: &Ruleset, probe: &Probe, family: &str, table: &str, m: &Value) -> Tri {
    let field = field_of(probe, &m["left"]);
    let xs: Vec<Value> = match field {
        Field::Port => vec![Value::from(probe.port)],
        Field::L4 => vec![Value::from(17u64)],
        Field::Nfproto => vec![Value::from(if probe.v6 { 10u64 } else { 2 })],
        Field::Iif if !probe.iifs.is_empty() => {
            probe.iifs.iter().map(|i| Value::from(i.as_str())).collect()
        }
        Field::Absent => return Tri::No,
        Field::Iif | Field::Unknown => return Tri::Maybe,
    };
    let right = &m["right"];
    let candidates: Option<Vec<Value>> = if let Some(set) = right.get("set") {
        set.as_array().cloned()
    } else if let Some(name) = right.as_str().and_then(|s| s.strip_prefix('@')) {
        rs.set_elems(family, table, name).cloned()
    } else {
        Some(vec![right.clone()])
    };
    let Some(candidates) = candidates else {
        return Tri::Maybe;
    };
    // With several possible arrival interfaces, one match is enough for
    // "maybe", all of them for "yes".
    let results: Vec<Tri> = xs.iter().map(|x| any_of(&candidates, x)).collect();
    let truth = if results.iter().all(|t| *t == Tri::Yes) {
        Tri::Yes
    } else if results.iter().all(|t| *t == Tri::No) {
        Tri::No
    } else {
        Tri::Maybe
    };
    match m["op"].as_str().unwrap_or("==") {
        "==" | "in" => truth,
        "!=" => match truth {
            Tri::Yes => Tri::No,
            Tri::No => Tri::Yes,
            Tri::Maybe => Tri::Maybe,
        },
        _ => Tri::Maybe,
    }
}

/// A verdict map on the port: the verdict for our port, if it has one.
fn eval_vmap<'v>(probe: &Probe, vm: &'v Value) -> Option<(&'v str, Tri)> {
    if !matches!(field_of(probe, &vm["key"]), Field::Port) {
        return Some(("unknown", Tri::Maybe));
    }
    let port = Value::from(probe.port);
    for pair in vm["data"]["set"].as_array()? {
        let (k, v) = (pair.get(0)?, pair.get(1)?);
        if covers(k, &port) == Tri::Yes {
            let verdict = ["drop", "reject", "accept"]
                .into_iter()
                .find(|name| v.get(*name).is_some())
                .map(|name| if name == "reject" { "drop" } else { name })
                .unwrap_or("unknown");
            return Some((verdict, Tri::Yes));
        }
    }
    None
}

/// iptables: the INPUT chain of the filter table in `iptables-save`
/// output. Only rules without jumps to user chains are followed; a jump
/// makes the rest uncertain.
pub fn walk_iptables(save: &str, probe: &Probe) -> Verdict {
    let mut in_filter = false;
    let mut policy_drop = false;
    let mut maybe: Option<Place> = None;
    let mut uncertain = false;
    let place = |n: Option<u64>| Place {
        family: if probe.v6 { "ip6tables" } else { "iptables" }.to_owned(),
        table: "filter".to_owned(),
        chain: "INPUT".to_owned(),
        handle: n,
    };
    let mut n = 0u64;
    for line in save.lines() {
        let line = line.trim();
        if let Some(t) = line.strip_prefix('*') {
            in_filter = t == "filter";
            continue;
        }
        if !in_filter {
            continue;
        }
        if let Some(rest) = line.strip_prefix(":INPUT ") {
            policy_drop = rest.starts_with("DROP");
            continue;
        }
        let Some(rule) = line.strip_prefix("-A INPUT ") else {
            continue;
        };
        n += 1;
        let words: Vec<&str> = rule.split_whitespace().collect();
        let mut truth = Tri::Yes;
        let mut target = "";
        let mut i = 0;
        while i < words.len() {
            let arg = words.get(i + 1).copied().unwrap_or_default();
            let negated = i > 0 && words[i - 1] == "!";
            let t = match words[i] {
                "-p" => tri(arg == "udp" || arg == "17"),
                "--dport" | "--dports" => tri(arg.split(',').any(|p| match p.split_once(':') {
                    Some((lo, hi)) => {
                        lo.parse().unwrap_or(0) <= probe.port
                            && probe.port <= hi.parse().unwrap_or(u16::MAX)
                    }
                    None => p.parse() == Ok(probe.port),
                })),
                "-i" => {
                    if probe.iifs.is_empty() {
                        Tri::Maybe
                    } else {
                        any_of(
                            &[Value::from(arg.replace('+', "*"))],
                            &Value::from(probe.iifs[0].as_str()),
                        )
                    }
                }
                "-j" => {
                    target = arg;
                    i += 2;
                    continue;
                }
                "-m" | "-c" => {
                    i += 2;
                    continue;
                }
                w if w.starts_with("--") || w.starts_with('-') && w.len() == 2 => Tri::Maybe,
                _ => {
                    i += 1;
                    continue;
                }
            };
            let t = if negated {
                match t {
                    Tri::Yes => Tri::No,
                    Tri::No => Tri::Yes,
                    Tri::Maybe => Tri::Maybe,
                }
            } else {
                t
            };
            truth = and(truth, t);
            i += 2;
        }
        if truth == Tri::No {
            continue;
        }
        match (target, truth) {
            ("DROP" | "REJECT", Tri::Yes) => return Verdict::Dropped(place(Some(n))),
            ("DROP" | "REJECT", _) => {
                maybe.get_or_insert(place(Some(n)));
            }
            ("ACCEPT", Tri::Yes) => return Verdict::Passes,
            _ => uncertain = true,
        }
    }
    if policy_drop {
        if uncertain || maybe.is_some() {
            return Verdict::MaybeDropped(maybe.unwrap_or(place(None)));
        }
        return Verdict::Dropped(place(None));
    }
    match maybe {
        Some(p) => Verdict::MaybeDropped(p),
        None => Verdict::Passes,
    }
}
