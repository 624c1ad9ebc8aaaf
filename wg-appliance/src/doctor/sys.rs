//! What the doctor reads from the kernel: links, addresses and route
//! lookups through `ip -j` (iproute2 is on every gateway, and its route
//! lookups are the kernel's own answer, rp_filter included), sysctls and
//! sockets through /proc.

use std::{net::IpAddr, process::Command};

use ipnet::IpNet;
use serde_json::Value;

/// `ip -j <args>`: the parsed JSON, or ip's error message.
pub fn ip_json(args: &[&str]) -> Result<Value, String> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e} (install iproute2)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(err
            .strip_prefix("RTNETLINK answers: ")
            .unwrap_or(&err)
            .to_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&text).map_err(|e| format!("ip -j {}: {e}", args.join(" ")))
}

/// One link as `ip -d link` shows it.
#[derive(Clone, Debug, Default)]
pub struct Link {
    pub name: String,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Carrier (IFF_LOWER_UP).
    pub lower_up: bool,
    pub mtu: u32,
    /// XDP attach mode when a program is attached: native, generic, offload.
    pub xdp: Option<&'static str>,
}

/// Every link of this network namespace.
pub fn links() -> Result<Vec<Link>, String> {
    let v = ip_json(&["-d", "link", "show"])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let flags: Vec<&str> = l["flags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            Link {
                name: l["ifname"].as_str().unwrap_or_default().to_owned(),
                up: flags.contains(&"UP"),
                lower_up: flags.contains(&"LOWER_UP"),
                mtu: l["mtu"].as_u64().unwrap_or(0) as u32,
                xdp: xdp_mode(&l["xdp"]),
            }
        })
        .collect())
}

/// The mode in `ip -j link`'s `xdp` object (XDP_ATTACHED_*: 1 driver,
/// 2 skb, 3 hardware, 4 several).
fn xdp_mode(x: &Value) -> Option<&'static str> {
    if x.is_null() {
        return None;
    }
    match x["mode"].as_u64() {
        Some(1) => Some("native"),
        Some(2) => Some("generic"),
        Some(3) => Some("offload"),
        Some(4) => {
            // Several: name the first of them.
            let first = x["attached"].as_array()?.first()?["mode"].as_u64();
            match first {
                Some(1) => Some("native"),
                Some(2) => Some("generic"),
                _ => Some("offload"),
            }
        }
        _ => None,
    }
}

/// The addresses of `dev` (with their prefix lengths).
pub fn addresses(dev: &str) -> Vec<IpNet> {
    let Ok(v) = ip_json(&["addr", "show", "dev", dev]) else {
        return Vec::new();
    };
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| {
            let ip: IpAddr = a["local"].as_str()?.parse().ok()?;
            let len = a["prefixlen"].as_u64()? as u8;
            IpNet::new(ip, len).ok()
        })
        .collect()
}

/// The kernel's route for a destination.
#[derive(Clone, Debug, Default)]
pub struct Route {
    /// Egress device (`lo` for a local address).
    pub dev: String,
    pub gateway: Option<String>,
    /// `local`, `unicast`...
    pub kind: String,
    /// A cached path MTU, when the kernel holds one.
    pub mtu: Option<u32>,
}

/// `ip route get <dst> [extra...]` (extra: `from S iif wg0`, `mark N`).
pub fn route_get(dst: IpAddr, extra: &[&str]) -> Result<Route, String> {
    let d = dst.to_string();
    let mut args = vec!["route", "get", d.as_str()];
    args.extend_from_slice(extra);
    let v = ip_json(&args)?;
    let r = v
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| "no route".to_owned())?;
    Ok(Route {
        dev: r["dev"].as_str().unwrap_or_default().to_owned(),
        gateway: r["gateway"].as_str().map(str::to_owned),
        kind: r["type"].as_str().unwrap_or("unicast").to_owned(),
        mtu: r["mtu"].as_u64().map(|m| m as u32),
    })
}

/// A sysctl by its dotted name, trimmed.
pub fn sysctl(name: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// A numeric sysctl (None when absent or not a number).
pub fn sysctl_num(name: &str) -> Option<i64> {
    sysctl(name).and_then(|s| s.parse().ok())
}

/// Whether a UDP socket of this namespace is bound to `port` (IPv4 or
/// IPv6, any address).
pub fn udp_bound(port: u16) -> bool {
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .map(|text| udp_table_has_port(&text, port))
            .unwrap_or(false)
    })
}

/// Whether a /proc/net/udp{,6} table lists a local `port`.
pub fn udp_table_has_port(table: &str, port: u16) -> bool {
    let want = format!("{port:04X}");
    table.lines().skip(1).any(|l| {
        l.split_whitespace()
            .nth(1)
            .and_then(|local| local.rsplit(':').next())
            .is_some_and(|p| p.eq_ignore_ascii_case(&want))
    })
}

/// Whether the system clock is kept by NTP (adjtimex: not TIME_ERROR).
/// None when the kernel would not say.
pub fn clock_synchronised() -> Option<bool> {
    // SAFETY: a zeroed timex with modes 0 only reads.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a timex.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return None;
    }
    Some(state != libc::TIME_ERROR)
}

/// Runs a program and returns its stdout when it succeeds.
pub fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
