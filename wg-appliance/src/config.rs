//! wg-quick configuration files, as they are, plus our `[Appliance]` section.
//!
//! Job: turn the text of a `wg0.conf` into a typed [`Config`] (and back, for
//! `SaveConfig`), with errors an operator can act on. Parsing is pure; only
//! [`load`] touches the file system, and it refuses a file that holds a
//! private key but is readable by other users, as a key file must not be.
//!
//! Invariants:
//! - Syntax follows wg-quick: keys and section names are case-insensitive,
//!   `#` starts a comment anywhere on a line, values are trimmed, list keys
//!   (`Address`, `DNS`, `AllowedIPs`, `PreUp`…, `WAN`) accumulate when
//!   repeated, every other key may appear once per section.
//! - Every error names `origin:line`, the key, what was wrong, what was
//!   expected and the fix. No error ever contains key material: for a bad
//!   key we say which key and why, never its value.
//! - `AllowedIPs` are masked to their network as `wg` does; `Address` keeps
//!   its host bits because it is an interface address.
//! - Endpoints are kept as written (DNS names are not resolved here, so
//!   parsing is deterministic and offline); [`Endpoint::resolve`] resolves.
//! - `parse(&c.to_wg_quick(), _) == Ok(c)` for every config `parse` returns.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::str::FromStr;

use ipnet::IpNet;

use crate::keys::{KeyError, KeyKind, PresharedKey, PrivateKey, PublicKey};

#[cfg(test)]
mod tests;

/// A whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub interface: InterfaceConfig,
    pub peers: Vec<PeerConfig>,
    pub appliance: ApplianceConfig,
}

/// `[Interface]`: the keys `wg` knows plus the ones wg-quick adds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InterfaceConfig {
    pub private_key: Option<PrivateKey>,
    /// `None` when absent (or 0): a random port is chosen at bind time.
    pub listen_port: Option<u16>,
    /// `None` for `off` (or 0), as `wg` treats them.
    pub fwmark: Option<u32>,
    /// Interface addresses; host bits kept (`10.0.0.1/24`).
    pub addresses: Vec<IpNet>,
    /// Resolvers (IP addresses) and search domains, as wg-quick mixes them.
    pub dns: Vec<String>,
    pub mtu: Option<u16>,
    /// `off`, `auto`, a table number or a name from `rt_tables`.
    pub table: Option<String>,
    pub pre_up: Vec<String>,
    pub post_up: Vec<String>,
    pub pre_down: Vec<String>,
    pub post_down: Vec<String>,
    pub save_config: bool,
}

/// One `[Peer]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<Endpoint>,
    /// Masked to their network (`10.0.0.7/24` becomes `10.0.0.0/24`).
    pub allowed_ips: Vec<IpNet>,
    /// `None` for `off` or 0; otherwise seconds.
    pub persistent_keepalive: Option<u16>,
    /// From a `# friendly_name = X` comment, as prometheus_wireguard_exporter
    /// reads it.
    pub friendly_name: Option<String>,
}

impl PeerConfig {
    /// A peer with only its public key set.
    pub fn new(public_key: PublicKey) -> Self {
        PeerConfig {
            public_key,
            preshared_key: None,
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
            friendly_name: None,
        }
    }
}

/// One peer as the daemon runs it: a [`PeerConfig`] with its endpoint
/// resolved. The daemon's peer table and the saved state (`persist`) hold
/// these.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
}

/// A peer's endpoint as written: an IP literal or a DNS name, and a port.
/// IPv6 literals are stored without brackets (`fd00::1`, or `fe80::1%eth0`
/// with a zone).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Resolve the host now (DNS names through the system resolver). The
    /// first address returned wins, as `wg` takes the first from
    /// `getaddrinfo`.
    pub fn resolve(&self) -> io::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("endpoint {self} resolved to no address"),
                )
            })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;
    /// Parse `host:port` / `[v6]:port`; the error is a short "why".
    fn from_str(s: &str) -> Result<Self, String> {
        parse_endpoint(s).map_err(|(problem, _)| problem)
    }
}

/// `[Appliance]`: the settings that only wg-appliance has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceConfig {
    /// WAN interfaces the XDP receive program is attached to.
    pub wan: Vec<String>,
    pub xdp_mode: XdpModeSetting,
    pub steering: Steering,
    /// CPUs that run the crypto programs; `None` means all online CPUs.
    pub cpus: Option<Vec<u32>>,
    pub mss: MssSetting,
    /// Handshake messages per second per source address; `None` = built-in.
    pub handshake_rate: Option<u32>,
    pub metrics: MetricsSetting,
    /// `ForwardIP = on`: turn IP forwarding on at start (and leave it on).
    pub forward_ip: bool,
    /// `ReturnRouting`: replies leave through the tunnel their connection
    /// came in on (conntrack mark, fwmark rule, a routing table).
    pub return_routing: ReturnRouting,
    /// `Masquerade`: source NAT of traffic leaving through the tunnel.
    pub masquerade: Masquerade,
    /// Which data path carries the tunnel (`DataPath =`).
    pub data_path: DataPathSetting,
    /// Where peers come from besides this file (`PeerSource =`).
    pub peer_source: Option<PeerSourceSetting>,
}

/// `PeerSource = etcd://host:port[,host:port...]/prefix` and its companions
/// (`PeerSourceCa`, `PeerSourceCert`, `PeerSourceKey`, `PeerSourceUser`,
/// `PeerSourcePasswordFile`): peers kept in etcd, one key each under
/// `<prefix>/<interface>/peers/`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerSourceSetting {
    /// `host:port` of each etcd member (port 2379 when left out).
    pub endpoints: Vec<String>,
    /// The URL's path without its trailing `/` (`/wg-fleet`; empty for `/`).
    pub prefix: String,
    /// CA certificate (PEM) that signed the members' certificates: TLS on.
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate and its key (PEM), for `--client-cert-auth`.
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    /// etcd user; its password is read from `password_file`.
    pub user: Option<String>,
    pub password_file: Option<std::path::PathBuf>,
    /// The interface name in the keys (`PeerSourceName`): by default the
    /// interface's own; a gateway whose interface is named otherwise than
    /// the fleet's still reads the fleet's peers.
    pub name: Option<String>,
}

impl PeerSourceSetting {
    /// Parses the URL of `PeerSource` (or `--peer-source`); the error is a
    /// short "why". Credentials never go in the URL (they have their keys).
    pub fn parse_url(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("etcd://").ok_or("not an etcd:// URL")?;
        let (hosts, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if hosts.contains('@') {
            return Err("credentials do not go in the URL".into());
        }
        let mut endpoints = Vec::new();
        for h in hosts.split(',').map(str::trim) {
            if h.is_empty() {
                return Err("an empty host".into());
            }
            if !h.starts_with('[') && h.matches(':').count() > 1 {
                return Err(format!("an IPv6 address goes in brackets ([{h}]:2379)"));
            }
            let with_port = if h.ends_with(']') || !h.contains(':') {
                format!("{h}:2379")
            } else {
                h.to_owned()
            };
            let (host, port) = with_port.rsplit_once(':').ok_or("no host")?;
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("bad port in {h}"))?;
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if bare.is_empty() || bare.chars().any(|c| c.is_whitespace() || c == '/') {
                return Err(format!("bad host in {h}"));
            }
            endpoints.push(with_port);
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the prefix contains a space".into());
        }
        Ok(PeerSourceSetting {
            endpoints,
            prefix: path.trim_end_matches('/').to_owned(),
            ..Default::default()
        })
    }

    /// The URL as written back (no credentials: there are none in it).
    pub fn url(&self) -> String {
        format!("etcd://{}{}/", self.endpoints.join(","), self.prefix)
    }

    /// The keys holding `ifname`'s peers: `<prefix>/<name>/peers/`, the
    /// name being `PeerSourceName` or else `ifname`.
    pub fn peers_prefix(&self, ifname: &str) -> String {
        format!(
            "{}/{}/peers/",
            self.prefix,
            self.name.as_deref().unwrap_or(ifname)
        )
    }
}

/// Policy routing for replies (`ReturnRouting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnRouting {
    #[default]
    Off,
    /// A table (and mark) derived from the interface name.
    Auto,
    /// This routing table, and the same number as the firewall mark.
    Table(u32),
}

/// Source NAT of what leaves through the tunnel (`Masquerade`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Masquerade {
    #[default]
    Off,
    /// Every source.
    All,
    /// Only these source prefixes (a LAN behind the gateway).
    Sources(Vec<IpNet>),
}

/// `DataPath` in `[Appliance]` (and `--data-path`): the AF_XDP fast path,
/// the BPF data path, or the fast path where it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataPathSetting {
    /// AF_XDP where it starts, BPF elsewhere (saying why).
    Auto,
    /// AF_XDP; failing to start it is an error.
    Afxdp,
    /// The BPF data path only. The default while the fast path is new: the
    /// fast path is faster for TCP in every bench run (docs/performance.md),
    /// but the restart, fleet and operations tests have run on the BPF path
    /// only (docs/decisions.md).
    #[default]
    Bpf,
}

impl DataPathSetting {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().replace(['_', '-'], "").as_str() {
            "auto" => Some(Self::Auto),
            "afxdp" => Some(Self::Afxdp),
            "bpf" => Some(Self::Bpf),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Afxdp => "afxdp",
            Self::Bpf => "bpf",
        }
    }
}

impl Default for ApplianceConfig {
    fn default() -> Self {
        ApplianceConfig {
            wan: Vec::new(),
            xdp_mode: XdpModeSetting::Auto,
            steering: Steering::PerPeer,
            cpus: None,
            mss: MssSetting::Auto,
            handshake_rate: None,
            metrics: MetricsSetting::default(),
            forward_ip: false,
            return_routing: ReturnRouting::Off,
            masquerade: Masquerade::Off,
            data_path: DataPathSetting::default(),
            peer_source: None,
        }
    }
}

/// How the XDP programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpModeSetting {
    /// Native (driver) mode where the driver supports it, else generic.
    #[default]
    Auto,
    Native,
    Generic,
}

/// How data packets are spread over CPUs (CPUMAP redirect policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Steering {
    /// All packets of a peer on one CPU: keeps order.
    #[default]
    PerPeer,
    /// Round robin per packet: one tunnel uses every CPU, may reorder.
    PerPacket,
}

/// TCP MSS clamping on tunnel traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MssSetting {
    /// Derived from the tunnel MTU.
    #[default]
    Auto,
    Off,
    Value(u16),
}

/// Where Prometheus metrics are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsSetting {
    Off,
    Listen(SocketAddr),
}

/// Default metrics address: loopback only, the port
/// prometheus_wireguard_exporter uses, so existing scrape configs work.
pub const DEFAULT_METRICS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9586);

impl Default for MetricsSetting {
    fn default() -> Self {
        MetricsSetting::Listen(DEFAULT_METRICS_ADDR)
    }
}

/// Accepted MSS range: 536 is the IPv4 minimum (RFC 879); 9000 covers
/// jumbo frames.
pub const MSS_RANGE: std::ops::RangeInclusive<u16> = 536..=9000;
/// Accepted MTU range: 576 is the IPv4 minimum datagram every host must
/// take; 9000 covers jumbo frames.
pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 576..=9000;
/// What WireGuard adds to every packet over an IPv4 underlay: the outer
/// IPv4 header (20), UDP (8), the data message header (16) and the
/// Poly1305 tag (16).
pub const OVERHEAD_V4: u16 = 60;
/// The same over IPv6 (a 40-byte outer header).
pub const OVERHEAD_V6: u16 = 80;
/// The largest tunnel MTU the BPF data path carries: its AEAD seals and
/// opens payloads of at most 1,440 bytes (`wg_ebpf_common::aead::MAX_PAYLOAD`).
pub const DATAPATH_MAX_MTU: u16 = 1440;

/// The tunnel MTU a WAN MTU allows: the WAN MTU less the overhead of the
/// underlay family (1500 → 1440 over IPv4, 1420 over IPv6; 1492 (PPPoE) →
/// 1432 / 1412), at most [`DATAPATH_MAX_MTU`] and at least the smallest
/// accepted MTU (a path narrower than that cannot carry a tunnel at all).
pub fn tunnel_mtu(wan_mtu: u32, underlay_v6: bool) -> u16 {
    let overhead = u32::from(if underlay_v6 {
        OVERHEAD_V6
    } else {
        OVERHEAD_V4
    });
    let mtu = wan_mtu
        .saturating_sub(overhead)
        .min(u32::from(DATAPATH_MAX_MTU));
    (mtu as u16).max(*MTU_RANGE.start())
}

/// The tunnel MTU chosen when the configuration gives none, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoMtu {
    pub mtu: u16,
    /// For the log: which WAN MTU and family it came from.
    pub reason: String,
}

/// The tunnel MTU when `MTU` is left out: from the smallest MTU of the WAN
/// interfaces (`wan_mtus`: name and MTU) and the underlay family. IPv4 when
/// every endpoint is IPv4; IPv6 (the larger overhead) when one is IPv6 or
/// none is known yet, since peers may then come over either. Without a WAN
/// MTU, WireGuard's default of 1420.
pub fn auto_mtu(wan_mtus: &[(String, u32)], endpoints: &[SocketAddr]) -> AutoMtu {
    let Some((dev, wan)) = wan_mtus.iter().min_by_key(|(_, m)| *m) else {
        return AutoMtu {
            mtu: 1420,
            reason: "no WAN interface found, so WireGuard's default".into(),
        };
    };
    let v6 = endpoints.is_empty() || endpoints.iter().any(SocketAddr::is_ipv6);
    let why_family = if endpoints.is_empty() {
        "IPv6 (no endpoint known, so the larger overhead)"
    } else if v6 {
        "IPv6 (an endpoint is IPv6)"
    } else {
        "IPv4 (every endpoint is IPv4)"
    };
    let mtu = tunnel_mtu(*wan, v6);
    let capped = if mtu == DATAPATH_MAX_MTU
        && u32::from(mtu) + u32::from(if v6 { OVERHEAD_V6 } else { OVERHEAD_V4 }) < *wan
    {
        format!(", capped at the data path's {DATAPATH_MAX_MTU}")
    } else {
        String::new()
    };
    AutoMtu {
        mtu,
        reason: format!("WAN {dev} has MTU {wan}, underlay {why_family}{capped}"),
    }
}

/// Highest CPU number accepted in `Cpus` (the kernel's NR_CPUS ceiling); it
/// also bounds what a range like `0-4294967295` may allocate.
pub const MAX_CPU: u32 = 8191;

/// The sections a file may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    Interface,
    Peer,
    Appliance,
}

impl Section {
    const ALL: [Section; 3] = [Section::Interface, Section::Peer, Section::Appliance];

    fn name(self) -> &'static str {
        match self {
            Section::Interface => "Interface",
            Section::Peer => "Peer",
            Section::Appliance => "Appliance",
        }
    }

    /// Canonical key names, in the order `to_wg_quick` writes them.
    fn keys(self) -> &'static [&'static str] {
        match self {
            Section::Interface => &[
                "PrivateKey",
                "ListenPort",
                "FwMark",
                "Address",
                "DNS",
                "MTU",
                "Table",
                "PreUp",
                "PostUp",
                "PreDown",
                "PostDown",
                "SaveConfig",
            ],
            Section::Peer => &[
                "PublicKey",
                "PresharedKey",
                "AllowedIPs",
                "Endpoint",
                "PersistentKeepalive",
            ],
            Section::Appliance => &[
                "WAN",
                "XdpMode",
                "Steering",
                "Cpus",
                "Mss",
                "HandshakeRate",
                "Metrics",
                "ForwardIP",
                "ReturnRouting",
                "Masquerade",
                "DataPath",
                "PeerSource",
                "PeerSourceCa",
                "PeerSourceCert",
                "PeerSourceKey",
                "PeerSourceUser",
                "PeerSourcePasswordFile",
                "PeerSourceName",
            ],
        }
    }

    fn canonical_key(self, key: &str) -> Option<&'static str> {
        self.keys()
            .iter()
            .copied()
            .find(|k| k.eq_ignore_ascii_case(key))
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.name())
    }
}

/// Where in which file an error is: prints as `origin:line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Boxed to keep `ConfigError` small (it travels in every `Result`).
    pub origin: Box<str>,
    /// 1-based.
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin, self.line)
    }
}

/// Why a configuration was rejected. Each message names the place, the
/// problem, what was expected and the fix; none contains key material.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{at}: {key}{shown}: {problem} (expected {expected}). Fix: {fix}", shown = shown_value(value))]
    InvalidValue {
        at: Location,
        key: &'static str,
        /// The offending value, or `None` when it may be secret.
        value: Option<String>,
        problem: String,
        expected: &'static str,
        fix: &'static str,
    },
    #[error("{at}: unknown key \"{key}\" in {section}{hint}. Fix: {fix}", hint = paren(hint))]
    UnknownKey {
        at: Location,
        section: Section,
        key: String,
        /// `did you mean "Endpoint"?` or `"Address" belongs in [Interface]`.
        hint: Option<String>,
        fix: String,
    },
    #[error("{at}: unknown section [{name}]{hint} (expected [Interface], [Peer] or [Appliance]). Fix: rename or remove the section", hint = paren(hint))]
    UnknownSection {
        at: Location,
        name: String,
        hint: Option<String>,
    },
    #[error("{at}: {key} given twice in {section} (first on line {first_line}; expected at most once). Fix: delete one of the two lines")]
    DuplicateKey {
        at: Location,
        section: Section,
        key: &'static str,
        first_line: usize,
    },
    #[error("{at}: [Peer] has no PublicKey (expected `PublicKey = <44 base64 characters>` in every [Peer]). Fix: add the peer's public key, as printed by `wg pubkey`")]
    MissingPublicKey { at: Location },
    #[error("{at}: PublicKey repeats the peer on line {first_line} (expected each peer once). Fix: merge the two [Peer] sections into one")]
    DuplicatePeer { at: Location, first_line: usize },
    #[error("{at}: {key} is outside any section (expected it under [Interface], [Peer] or [Appliance]). Fix: add the right section header above it")]
    OutsideSection { at: Location, key: String },
    #[error("{at}: {problem} (expected `Key = Value`, a [Section] header, a comment or a blank line). Fix: {fix}")]
    Malformed {
        at: Location,
        problem: String,
        fix: String,
    },
    #[error("{path}: cannot read: {source}. Fix: check that the file exists and that this user may read it")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: holds a PrivateKey but has mode {mode:04o}, so other users can access it (expected 0600). Fix: chmod 600 {path}")]
    InsecurePermissions { path: String, mode: u32 },
}

/// Values echoed in messages are cut short: a message is not a dump.
const MAX_SHOWN: usize = 64;

fn shown_value(value: &Option<String>) -> String {
    match value {
        None => String::new(),
        Some(v) if v.chars().count() > MAX_SHOWN => {
            let cut: String = v.chars().take(MAX_SHOWN).collect();
            format!(" = {cut}…")
        }
        Some(v) => format!(" = {v}"),
    }
}

fn paren(hint: &Option<String>) -> String {
    hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
}

/// Read and parse a configuration file. Refuses (before parsing) a file that
/// contains a `PrivateKey` line and is accessible to group or others.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let io_err = |source| ConfigError::Io {
        path: shown.clone(),
        source,
    };
    // Mode and contents come from the same open file, so a swap between the
    // two checks cannot slip a readable key past us.
    let mut file = File::open(path).map_err(io_err)?;
    let mode = file_mode(&file).map_err(io_err)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io_err)?;
    if mode & 0o077 != 0 && mentions_private_key(&text) {
        return Err(ConfigError::InsecurePermissions {
            path: shown,
            mode: mode & 0o7777,
        });
    }
    parse(&text, &shown)
}

#[cfg(unix)]
fn file_mode(file: &File) -> io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(file.metadata()?.permissions().mode())
}

#[cfg(not(unix))]
fn file_mode(_file: &File) -> io::Result<u32> {
    Ok(0o600)
}

/// Cheap pre-scan so the permission check does not depend on the file
/// parsing: a broken file with a key in it is still a leaked key.
fn mentions_private_key(text: &str) -> bool {
    text.lines().any(|l| {
        let content = l.split('#').next().unwrap_or("");
        content
            .split_once('=')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("PrivateKey"))
    })
}

/// Parse the text of a configuration file. `origin` names the file in
/// error messages (`origin:line: …`).
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let mut p = Parser {
        origin,
        cfg: Config::default(),
        section: None,
        interface_seen: HashMap::new(),
        appliance_seen: HashMap::new(),
        peer: None,
        peer_lines: HashMap::new(),
        pending_name: None,
    };
    for (i, raw) in text.lines().enumerate() {
        p.line(i + 1, raw)?;
    }
    p.flush_pending_name()?;
    p.finish_peer()?;
    p.finish_appliance()?;
    Ok(p.cfg)
}

/// A `[Peer]` while its lines are being read: the public key may come last.
struct PeerDraft {
    header_line: usize,
    public_key: Option<PublicKey>,
    cfg_rest: PeerConfig,
    seen: HashMap<&'static str, usize>,
}

struct Parser<'a> {
    origin: &'a str,
    cfg: Config,
    section: Option<Section>,
    interface_seen: HashMap<&'static str, usize>,
    appliance_seen: HashMap<&'static str, usize>,
    peer: Option<PeerDraft>,
    /// Public key → line of its `PublicKey`, to reject duplicate peers.
    peer_lines: HashMap<PublicKey, usize>,
    /// A `# friendly_name = X` comment not yet attached to a peer, and its line.
    pending_name: Option<(String, usize)>,
}

/// Placeholder key for the draft; replaced before the peer is stored.
const NO_KEY: PublicKey = PublicKey::from_bytes([0; 32]);

impl Parser<'_> {
    fn at(&self, line: usize) -> Location {
        Location {
            origin: self.origin.into(),
            line,
        }
    }

    fn line(&mut self, n: usize, raw: &str) -> Result<(), ConfigError> {
        // wg-quick strips from the first '#', even inside values.
        let (content, comment) = match raw.split_once('#') {
            Some((c, comment)) => (c.trim(), Some(comment)),
            None => (raw.trim(), None),
        };
        if content.is_empty() {
            match comment {
                Some(comment) => {
                    if let Some(name) = friendly_name(comment) {
                        self.flush_pending_name()?;
                        self.pending_name = Some((name, n));
                    }
                }
                // A blank line ends "directly preceding".
                None => self.flush_pending_name()?,
            }
            return Ok(());
        }
        if content.starts_with('[') {
            return self.header(n, content);
        }
        self.flush_pending_name()?;
        let Some((key, value)) = content.split_once('=') else {
            return Err(ConfigError::Malformed {
                at: self.at(n),
                problem: "line has no `=`".into(),
                fix: "write it as `Key = Value`, or comment it out with `#`".into(),
            });
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(ConfigError::Malformed {
                at: self.at(n),
                problem: "line has no key before `=`".into(),
                fix: "write it as `Key = Value`".into(),
            });
        }
        // Key names are letters (and digits); anything else before the `=`
        // may be a key's value split at its base64 padding
        // (`PresharedKey: AbC...=`), so it is never echoed.
        if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || key.len() > 32 {
            return Err(ConfigError::Malformed {
                at: self.at(n),
                problem: "the text before the first `=` is not a key name (not shown: it may hold a key)".into(),
                fix: "write it as `Key = Value` with one of the section's key names, e.g. `PresharedKey = <base64>`".into(),
            });
        }
        let Some(section) = self.section else {
            return Err(ConfigError::OutsideSection {
                at: self.at(n),
                key: key.to_owned(),
            });
        };
        let Some(canon) = section.canonical_key(key) else {
            return Err(unknown_key(self.at(n), section, key));
        };
        match section {
            Section::Interface => self.interface_key(n, canon, value),
            Section::Peer => self.peer_key(n, canon, value),
            Section::Appliance => self.appliance_key(n, canon, value),
        }
    }

    fn header(&mut self, n: usize, content: &str) -> Result<(), ConfigError> {
        let Some(inner) = content.strip_prefix('[').and_then(|c| c.strip_suffix(']')) else {
            return Err(ConfigError::Malformed {
                at: self.at(n),
                problem: "section header does not end with `]`".into(),
                fix: "write the header alone on its line, e.g. `[Peer]`".into(),
            });
        };
        let inner = inner.trim();
        let Some(section) = Section::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(inner))
        else {
            let names: Vec<&str> = Section::ALL.iter().map(|s| s.name()).collect();
            return Err(ConfigError::UnknownSection {
                at: self.at(n),
                name: truncate(inner),
                hint: suggest(inner, &names).map(|s| format!("did you mean [{s}]?")),
            });
        };
        // A name comment right above `[Peer]` belongs to the peer below it;
        // above any other header it belongs to the section it closes.
        let carried = if section == Section::Peer {
            self.pending_name.take()
        } else {
            self.flush_pending_name()?;
            None
        };
        self.finish_peer()?;
        self.section = Some(section);
        if section == Section::Peer {
            self.peer = Some(PeerDraft {
                header_line: n,
                public_key: None,
                cfg_rest: PeerConfig::new(NO_KEY),
                seen: HashMap::new(),
            });
            self.pending_name = carried;
            if self.pending_name.is_some() {
                self.flush_pending_name()?;
            }
        }
        Ok(())
    }

    /// Attach a pending friendly name to the current peer, if in one.
    fn flush_pending_name(&mut self) -> Result<(), ConfigError> {
        let Some((name, line)) = self.pending_name.take() else {
            return Ok(());
        };
        let origin = self.origin;
        if let Some(peer) = self.peer.as_mut() {
            if let Some(&first_line) = peer.seen.get("friendly_name") {
                return Err(ConfigError::DuplicateKey {
                    at: Location {
                        origin: origin.into(),
                        line,
                    },
                    section: Section::Peer,
                    key: "friendly_name",
                    first_line,
                });
            }
            peer.seen.insert("friendly_name", line);
            peer.cfg_rest.friendly_name = Some(name);
        }
        Ok(())
    }

    fn finish_peer(&mut self) -> Result<(), ConfigError> {
        let Some(draft) = self.peer.take() else {
            return Ok(());
        };
        let Some(public_key) = draft.public_key else {
            return Err(ConfigError::MissingPublicKey {
                at: self.at(draft.header_line),
            });
        };
        let mut peer = draft.cfg_rest;
        peer.public_key = public_key;
        self.cfg.peers.push(peer);
        Ok(())
    }

    fn interface_key(&mut self, n: usize, key: &'static str, v: &str) -> Result<(), ConfigError> {
        let at = self.at(n);
        let iface = &mut self.cfg.interface;
        match key {
            "Address" => {
                for item in list_items(v) {
                    iface.addresses.push(parse_address(&at, key, item)?);
                }
                return Ok(());
            }
            "DNS" => {
                for item in list_items(v) {
                    if item.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return Err(invalid(
                            &at,
                            key,
                            Some(item),
                            "contains a space",
                            "comma-separated resolver addresses or search domains",
                            "separate entries with commas, e.g. `DNS = 10.0.0.1, example.lan`",
                        ));
                    }
                    iface.dns.push(item.to_owned());
                }
                return Ok(());
            }
            "PreUp" | "PostUp" | "PreDown" | "PostDown" => {
                if v.is_empty() {
                    return Err(invalid(
                        &at,
                        key,
                        None,
                        "is empty",
                        "a shell command",
                        "write the command after `=`, or delete the line",
                    ));
                }
                let list = match key {
                    "PreUp" => &mut iface.pre_up,
                    "PostUp" => &mut iface.post_up,
                    "PreDown" => &mut iface.pre_down,
                    _ => &mut iface.post_down,
                };
                list.push(v.to_owned());
                return Ok(());
            }
            _ => {}
        }
        once(&mut self.interface_seen, Section::Interface, key, &at)?;
        let iface = &mut self.cfg.interface;
        match key {
            "PrivateKey" => {
                iface.private_key = Some(
                    v.parse()
                        .map_err(|e| key_error(&at, key, KeyKind::Private, e))?,
                )
            }
            "ListenPort" => {
                let port = parse_dec::<u16>(v).ok_or_else(|| {
                    invalid(
                        &at,
                        key,
                        Some(v),
                        "not a UDP port",
                        "1-65535",
                        "choose a port such as 51820",
                    )
                })?;
                // 0 asks for a random port, exactly as leaving it out does.
                iface.listen_port = (port != 0).then_some(port);
            }
            "FwMark" => {
                iface.fwmark = parse_fwmark(v).ok_or_else(|| {
                    invalid(
                        &at,
                        key,
                        Some(v),
                        "not a firewall mark",
                        "off, a decimal number or 0x-prefixed hex up to 32 bits",
                        "write e.g. `FwMark = 0xca6c` or `FwMark = off`",
                    )
                })?
            }
            "MTU" => {
                let mtu = parse_dec::<u16>(v).filter(|m| MTU_RANGE.contains(m));
                iface.mtu = Some(mtu.ok_or_else(|| {
                    invalid(
                        &at,
                        key,
                        Some(v),
                        "not a usable MTU",
                        "576-9000",
                        "use 1420 (the WireGuard default) or delete the line to let wg-appliance choose",
                    )
                })?);
            }
            "Table" => {
                let ok = !v.is_empty()
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                if !ok {
                    return Err(invalid(
                        &at,
                        key,
                        Some(v),
                        "not a routing table",
                        "off, auto, a table number or a name from /etc/iproute2/rt_tables",
                        "write e.g. `Table = off` or `Table = 1234`",
                    ));
                }
                iface.table = Some(v.to_owned());
            }
            "SaveConfig" => {
                iface.save_config = parse_bool(v).ok_or_else(|| {
                    invalid(
                        &at,
                        key,
                        Some(v),
                        "not a boolean",
                        "true or false",
                        "write `SaveConfig = true` or `SaveConfig = false`",
                    )
                })?
            }
            // `Section::keys` and this match list the same names.
            _ => {}
        }
        Ok(())
    }

    fn peer_key(&mut self, n: usize, key: &'static str, v: &str) -> Result<(), ConfigError> {
        let at = self.at(n);
        let Some(peer) = self.peer.as_mut() else {
            // `section == Peer` always comes with a draft.
            return Ok(());
        };
        if key == "AllowedIPs" {
            for item in list_items(v) {
                let net = parse_net(&at, key, item)?.trunc();
                if !peer.cfg_rest.allowed_ips.contains(&net) {
                    peer.cfg_rest.allowed_ips.push(net);
                }
            }
            return Ok(());
        }
        once(&mut peer.seen, Section::Peer, key, &at)?;
        let p = &mut peer.cfg_rest;
        match key {
            "PublicKey" => {
                let pk: PublicKey = v
                    .parse()
                    .map_err(|e| key_error(&at, key, KeyKind::Public, e))?;
                if let Some(&first_line) = self.peer_lines.get(&pk) {
                    return Err(ConfigError::DuplicatePeer { at, first_line });
                }
                self.peer_lines.insert(pk, n);
                peer.public_key = Some(pk);
            }
            "PresharedKey" => {
                p.preshared_key = Some(
                    v.parse()
                        .map_err(|e| key_error(&at, key, KeyKind::Preshared, e))?,
                )
            }
            "Endpoint" => {
                p.endpoint = Some(parse_endpoint(v).map_err(|(problem, fix)| {
                    invalid(
                        &at,
                        key,
                        Some(v),
                        &problem,
                        "host:port, [IPv6]:port or name:port with a port 1-65535",
                        fix,
                    )
                })?)
            }
            "PersistentKeepalive" => {
                let ka = if v.eq_ignore_ascii_case("off") {
                    Some(0)
                } else {
                    parse_dec::<u16>(v)
                };
                let ka = ka.ok_or_else(|| {
                    invalid(
                        &at,
                        key,
                        Some(v),
                        "not a keepalive interval",
                        "off or 1-65535 seconds",
                        "use 25 behind NAT, or `off`",
                    )
                })?;
                p.persistent_keepalive = (ka != 0).then_some(ka);
            }
            // `Section::keys` and this match list the same names.
            _ => {}
        }
        Ok(())
    }

    /// What one `[Appliance]` key cannot check alone: the `PeerSource*`
    /// companions go together.
    fn finish_appliance(&self) -> Result<(), ConfigError> {
        let Some(src) = &self.cfg.appliance.peer_source else {
            return Ok(());
        };
        let line = |k: &str| self.appliance_seen.get(k).copied().unwrap_or(0);
        let need = |k: &'static str, problem: &str, fix: &str| ConfigError::Malformed {
            at: self.at(line(k)),
            problem: format!("{k} {problem}"),
            fix: fix.into(),
        };
        if src.endpoints.is_empty() {
            // The first companion key given (there is one: the source exists).
            let k = Section::Appliance
                .keys()
                .iter()
                .copied()
                .filter(|k| k.starts_with("PeerSource") && *k != "PeerSource")
                .find(|k| self.appliance_seen.contains_key(k))
                .unwrap_or("PeerSourceCa");
            return Err(need(
                k,
                "is given without PeerSource",
                "add `PeerSource = etcd://host:port/prefix`, or remove the line",
            ));
        }
        // Two settings that go together: both or neither.
        let partners = |(ka, a): (&'static str, bool), (kb, b): (&'static str, bool), fix: &str| {
            if a == b {
                return Ok(());
            }
            Err(need(
                if a { ka } else { kb },
                &format!("needs its partner ({ka} and {kb} go together)"),
                fix,
            ))
        };
        partners(
            ("PeerSourceCert", src.cert.is_some()),
            ("PeerSourceKey", src.key.is_some()),
            "give both the client certificate and its key, or neither",
        )?;
        if (src.cert.is_some() || src.key.is_some()) && src.ca.is_none() {
            return Err(need(
                "PeerSourceCert",
                "is a TLS setting but PeerSourceCa is missing",
                "add `PeerSourceCa = <the CA that signed etcd's certificate>`",
            ));
        }
        if src.user.is_some() && src.ca.is_none() {
            return Err(need(
                "PeerSourceUser",
                "would send its password in clear: PeerSourceCa is missing",
                "turn TLS on in etcd and add `PeerSourceCa = <the CA that signed etcd's certificate>`",
            ));
        }
        partners(
            ("PeerSourceUser", src.user.is_some()),
            ("PeerSourcePasswordFile", src.password_file.is_some()),
            "give the etcd user and a 0600 file holding its password, or neither",
        )?;
        Ok(())
    }

    fn appliance_key(&mut self, n: usize, key: &'static str, v: &str) -> Result<(), ConfigError> {
        let at = self.at(n);
        let app = &mut self.cfg.appliance;
        if key == "WAN" {
            for item in list_items(v) {
                if !valid_ifname(item) {
                    return Err(invalid(
                        &at,
                        key,
                        Some(item),
                        "not an interface name",
                        "1-15 characters without spaces, '/' or ':'",
                        "use the name `ip link` shows, e.g. `WAN = eth0`",
                    ));
                }
                if !app.wan.iter().any(|w| w == item) {
                    app.wan.push(item.to_owned());
                }
            }
            return Ok(());
        }
        once(&mut self.appliance_seen, Section::Appliance, key, &at)?;
        let bad = |problem: &str, expected: &'static str, fix: &'static str| {
            invalid(&at, key, Some(v), problem, expected, fix)
        };
        if let Some(rest) = key.strip_prefix("PeerSource") {
            let src = app.peer_source.get_or_insert_with(Default::default);
            let path = || {
                if v.is_empty() || !v.starts_with('/') {
                    Err(invalid(
                        &at,
                        key,
                        Some(v),
                        "not an absolute path",
                        "the absolute path of a PEM file",
                        "write the full path, e.g. `/etc/wireguard/etcd-ca.pem`",
                    ))
                } else {
                    Ok(Some(std::path::PathBuf::from(v)))
                }
            };
            match rest {
                "" => {
                    let parsed = PeerSourceSetting::parse_url(v).map_err(|why| {
                        invalid(
                            &at,
                            key,
                            Some(v),
                            &why,
                            "etcd://host:port[,host:port...]/prefix",
                            "write e.g. `PeerSource = etcd://10.0.0.5:2379/wg-fleet`; TLS and auth have their own keys (PeerSourceCa, PeerSourceUser...)",
                        )
                    })?;
                    src.endpoints = parsed.endpoints;
                    src.prefix = parsed.prefix;
                }
                "Ca" => src.ca = path()?,
                "Cert" => src.cert = path()?,
                "Key" => src.key = path()?,
                "PasswordFile" => src.password_file = path()?,
                "Name" => {
                    if !valid_ifname(v) {
                        return Err(bad(
                            "not an interface name",
                            "1-15 characters without spaces, '/' or ':'",
                            "write the interface name the fleet's keys use, e.g. `PeerSourceName = wg0`",
                        ));
                    }
                    src.name = Some(v.to_owned());
                }
                _ => {
                    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return Err(bad(
                            "not a user name",
                            "an etcd user name without spaces",
                            "write the name `etcdctl user list` shows",
                        ));
                    }
                    src.user = Some(v.to_owned());
                }
            }
            return Ok(());
        }
        match key {
            "DataPath" => {
                app.data_path = DataPathSetting::parse(v).ok_or_else(|| {
                    bad(
                        "not a data path",
                        "auto, afxdp or bpf",
                        "use `DataPath = auto` to take AF_XDP where it works",
                    )
                })?
            }
            "XdpMode" => {
                app.xdp_mode = match v.to_ascii_lowercase().as_str() {
                    "auto" => XdpModeSetting::Auto,
                    "native" => XdpModeSetting::Native,
                    "generic" => XdpModeSetting::Generic,
                    _ => {
                        return Err(bad(
                            "not an XDP mode",
                            "auto, native or generic",
                            "use `XdpMode = auto` unless you know the driver",
                        ))
                    }
                }
            }
            "Steering" => {
                app.steering = match v.to_ascii_lowercase().replace('_', "-").as_str() {
                    "per-peer" => Steering::PerPeer,
                    "per-packet" => Steering::PerPacket,
                    _ => {
                        return Err(bad(
                            "not a steering policy",
                            "per-peer or per-packet",
                            "use `Steering = per-peer` to keep packet order",
                        ))
                    }
                }
            }
            "Cpus" => {
                app.cpus = Some(parse_cpu_list(v).map_err(|problem| {
                    bad(
                        &problem,
                        "a CPU list such as 0-3,6 with CPUs 0-8191",
                        "list online CPUs as /sys/devices/system/cpu/online shows them",
                    )
                })?)
            }
            "Mss" => {
                app.mss = if v.eq_ignore_ascii_case("auto") {
                    MssSetting::Auto
                } else if v.eq_ignore_ascii_case("off") {
                    MssSetting::Off
                } else {
                    match parse_dec::<u16>(v).filter(|m| MSS_RANGE.contains(m)) {
                        Some(m) => MssSetting::Value(m),
                        None => {
                            return Err(bad(
                                "not an MSS",
                                "auto, off or 536-9000",
                                "use `Mss = auto` to derive it from the MTU",
                            ))
                        }
                    }
                }
            }
            "HandshakeRate" => {
                app.handshake_rate =
                    Some(parse_dec::<u32>(v).filter(|r| *r > 0).ok_or_else(|| {
                        bad(
                            "not a rate",
                            "handshake messages per second per source, 1-4294967295",
                            "use e.g. `HandshakeRate = 20`, or delete the line for the default",
                        )
                    })?)
            }
            "ForwardIP" => {
                app.forward_ip = parse_on_off(v).ok_or_else(|| {
                    bad(
                        "not on or off",
                        "on or off",
                        "write `ForwardIP = on` to have the daemon turn IP forwarding on",
                    )
                })?
            }
            "ReturnRouting" => {
                app.return_routing = match parse_on_off(v) {
                    Some(true) => ReturnRouting::Auto,
                    Some(false) => ReturnRouting::Off,
                    None => match parse_dec::<u32>(v) {
                        Some(t) if t != 0 && !(253..=255).contains(&t) => ReturnRouting::Table(t),
                        _ => {
                            return Err(bad(
                                "not on, off or a routing table",
                                "on, off, or a table number other than 0, 253, 254 and 255",
                                "write `ReturnRouting = on` (a table derived from the interface name) or a free table such as `ReturnRouting = 200`",
                            ))
                        }
                    },
                }
            }
            "Masquerade" => {
                app.masquerade = match parse_on_off(v) {
                    Some(true) => Masquerade::All,
                    Some(false) => Masquerade::Off,
                    None => {
                        let mut nets = Vec::new();
                        for item in list_items(v) {
                            let net = parse_ip_or_net(item).ok_or_else(|| {
                                invalid(
                                    &at,
                                    key,
                                    Some(item),
                                    "not on, off or a source prefix",
                                    "on, off, or the prefixes to masquerade, e.g. 192.168.1.0/24",
                                    "write `Masquerade = on` (every source) or the LAN's prefixes, comma-separated",
                                )
                            })?;
                            nets.push(net.trunc());
                        }
                        if nets.is_empty() {
                            return Err(bad(
                                "is empty",
                                "on, off, or source prefixes",
                                "write `Masquerade = on`, or delete the line",
                            ));
                        }
                        Masquerade::Sources(nets)
                    }
                }
            }
            "Metrics" => {
                app.metrics = if v.eq_ignore_ascii_case("off") {
                    MetricsSetting::Off
                } else {
                    match v.parse::<SocketAddr>() {
                        Ok(a) if a.port() != 0 => MetricsSetting::Listen(a),
                        _ => {
                            return Err(bad(
                                "not a listen address",
                                "off, ip:port or [ipv6]:port with a port 1-65535",
                                "use e.g. `Metrics = 127.0.0.1:9586`",
                            ))
                        }
                    }
                }
            }
            // `Section::keys` and this match list the same names.
            _ => {}
        }
        Ok(())
    }
}

/// Record a singular key, rejecting its second appearance.
fn once(
    seen: &mut HashMap<&'static str, usize>,
    section: Section,
    key: &'static str,
    at: &Location,
) -> Result<(), ConfigError> {
    if let Some(&first_line) = seen.get(key) {
        return Err(ConfigError::DuplicateKey {
            at: at.clone(),
            section,
            key,
            first_line,
        });
    }
    seen.insert(key, at.line);
    Ok(())
}

fn invalid(
    at: &Location,
    key: &'static str,
    value: Option<&str>,
    problem: &str,
    expected: &'static str,
    fix: &'static str,
) -> ConfigError {
    ConfigError::InvalidValue {
        at: at.clone(),
        key,
        value: value.map(str::to_owned),
        problem: problem.to_owned(),
        expected,
        fix,
    }
}

/// A key error, reworded for the file and without the value.
fn key_error(at: &Location, key: &'static str, kind: KeyKind, e: KeyError) -> ConfigError {
    let problem = match e {
        KeyError::WrongLength { len, .. } => format!("{kind} has {len} characters"),
        KeyError::InvalidBase64 { .. } => format!("{kind} is not valid base64"),
    };
    let fix = match kind {
        KeyKind::Private => "paste the whole key printed by `wg genkey`",
        KeyKind::Public => "paste the peer's whole public key, as `wg pubkey` prints it",
        KeyKind::Preshared => "paste the whole key printed by `wg genpsk` (the same on both peers)",
    };
    invalid(
        at,
        key,
        None,
        &problem,
        "44 characters of base64 ending in `=`",
        fix,
    )
}

fn unknown_key(at: Location, section: Section, key: &str) -> ConfigError {
    let hint = suggest(key, section.keys())
        .map(|k| format!("did you mean \"{k}\"?"))
        .or_else(|| {
            Section::ALL
                .into_iter()
                .filter(|s| *s != section)
                .find_map(|s| s.canonical_key(key).map(|k| (k, s)))
                .map(|(k, s)| format!("\"{k}\" belongs in {s}"))
        });
    ConfigError::UnknownKey {
        at,
        section,
        key: truncate(key),
        hint,
        fix: format!(
            "use one of the keys of {section}: {}",
            section.keys().join(", ")
        ),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(MAX_SHOWN).collect()
}

/// The closest candidate by edit distance (case-insensitive), if close
/// enough to be a typo rather than a different word.
fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (levenshtein(&w, &c.to_ascii_lowercase()), *c))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `# friendly_name = X` → `X` (the exporter's convention).
fn friendly_name(comment: &str) -> Option<String> {
    let (k, v) = comment.split_once('=')?;
    let v = v.trim();
    (k.trim().eq_ignore_ascii_case("friendly_name") && !v.is_empty()).then(|| v.to_owned())
}

/// Comma-separated items, trimmed; empty items (a trailing comma) skipped.
fn list_items(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Decimal digits only: `u16::from_str` would also take `+51820`.
fn parse_dec<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `on`/`off` (and `true`/`false`, `yes`/`no`), any case.
fn parse_on_off(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Some(true),
        "off" | "false" | "no" => Some(false),
        _ => None,
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// As `wg`: `off`, decimal, or `0x` hex; 0 means off.
fn parse_fwmark(s: &str) -> Option<Option<u32>> {
    if s.eq_ignore_ascii_case("off") {
        return Some(None);
    }
    let mark = match s.strip_prefix("0x") {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u32::from_str_radix(hex, 16).ok()?
        }
        Some(_) => return None,
        None => parse_dec::<u32>(s)?,
    };
    Some((mark != 0).then_some(mark))
}

/// An IP with optional prefix length; a bare IP is a host prefix.
fn parse_ip_or_net(s: &str) -> Option<IpNet> {
    if s.contains('/') {
        s.parse().ok()
    } else {
        s.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

fn parse_address(at: &Location, key: &'static str, s: &str) -> Result<IpNet, ConfigError> {
    parse_ip_or_net(s).ok_or_else(|| {
        invalid(
            at,
            key,
            Some(s),
            "not an address with prefix length",
            "an address such as 10.0.0.1/24 or fd00::1/64",
            "write the interface address in CIDR form; separate several with commas",
        )
    })
}

fn parse_net(at: &Location, key: &'static str, s: &str) -> Result<IpNet, ConfigError> {
    parse_ip_or_net(s).ok_or_else(|| {
        invalid(
            at,
            key,
            Some(s),
            "not a CIDR prefix",
            "prefixes such as 10.0.0.0/24 or fd00::/64, comma-separated",
            "check the address and the prefix length (0-32 for IPv4, 0-128 for IPv6)",
        )
    })
}

/// `host:port` or `[v6]:port`; on error, (problem, fix).
fn parse_endpoint(s: &str) -> Result<Endpoint, (String, &'static str)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or((
            "has `[` without `]`".to_owned(),
            "write it as [fd00::1]:51820",
        ))?;
        let port = after.strip_prefix(':').ok_or((
            "has no `:port` after `]`".to_owned(),
            "add the port, e.g. [fd00::1]:51820",
        ))?;
        let addr = host.split('%').next().unwrap_or("");
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err((
                "has brackets around something that is not an IPv6 address".to_owned(),
                "use brackets only for IPv6 literals, e.g. [fd00::1]:51820",
            ));
        }
        (host, port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or((
            "has no port".to_owned(),
            "add the port, e.g. vpn.example.com:51820",
        ))?;
        if host.contains(':') {
            return Err((
                "is an IPv6 address without brackets".to_owned(),
                "put the address in brackets, e.g. [fd00::1]:51820",
            ));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(("has no host".to_owned(), "write it as host:port"));
    }
    if !host.contains(':') && host.parse::<Ipv4Addr>().is_err() && !valid_hostname(host) {
        return Err((
            "host is neither an IP address nor a DNS name".to_owned(),
            "check the spelling; names may use letters, digits, '-' and '.'",
        ));
    }
    let port = parse_dec::<u16>(port).filter(|p| *p != 0).ok_or((
        "port is not 1-65535".to_owned(),
        "use the peer's ListenPort, often 51820",
    ))?;
    Ok(Endpoint {
        host: host.to_owned(),
        port,
    })
}

fn valid_hostname(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Linux `dev_valid_name`: 1-15 bytes, not `.`/`..`, no '/', ':' or space.
fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() < 16
        && n != "."
        && n != ".."
        && !n
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// `0-3,6` → [0, 1, 2, 3, 6], sorted and deduplicated.
fn parse_cpu_list(s: &str) -> Result<Vec<u32>, String> {
    let mut cpus = Vec::new();
    for item in s.split(',').map(str::trim) {
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (item, item),
        };
        let (Some(lo), Some(hi)) = (parse_dec::<u32>(lo), parse_dec::<u32>(hi)) else {
            return Err(format!(
                "\"{}\" is not a CPU number or range",
                truncate(item)
            ));
        };
        if lo > hi {
            return Err(format!("range {lo}-{hi} runs backwards"));
        }
        if hi > MAX_CPU {
            return Err(format!("CPU {hi} is above {MAX_CPU}"));
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// [0, 1, 2, 3, 6] → `0-3,6`.
fn format_cpu_list(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}-{end}");
        }
        i += 1;
    }
    out
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Config {
    /// The configuration as a wg-quick file (what `SaveConfig` writes).
    /// Contains the private key: write it with mode 0600. Commands are
    /// written as stored; one containing `#` or a newline cannot survive a
    /// round trip (wg-quick itself cuts at `#`).
    pub fn to_wg_quick(&self) -> String {
        let mut out = String::from("[Interface]\n");
        let i = &self.interface;
        let kv = |out: &mut String, k: &str, v: &dyn fmt::Display| {
            let _ = writeln!(out, "{k} = {v}");
        };
        if let Some(k) = &i.private_key {
            kv(&mut out, "PrivateKey", &k.to_base64().as_str());
        }
        if let Some(p) = i.listen_port {
            kv(&mut out, "ListenPort", &p);
        }
        if let Some(m) = i.fwmark {
            kv(&mut out, "FwMark", &format_args!("{m:#x}"));
        }
        if !i.addresses.is_empty() {
            kv(&mut out, "Address", &join(&i.addresses));
        }
        if !i.dns.is_empty() {
            kv(&mut out, "DNS", &join(&i.dns));
        }
        if let Some(m) = i.mtu {
            kv(&mut out, "MTU", &m);
        }
        if let Some(t) = &i.table {
            kv(&mut out, "Table", t);
        }
        for (k, cmds) in [
            ("PreUp", &i.pre_up),
            ("PostUp", &i.post_up),
            ("PreDown", &i.pre_down),
            ("PostDown", &i.post_down),
        ] {
            for c in cmds {
                kv(&mut out, k, c);
            }
        }
        if i.save_config {
            kv(&mut out, "SaveConfig", &"true");
        }
        for p in &self.peers {
            out.push_str("\n[Peer]\n");
            if let Some(n) = &p.friendly_name {
                let _ = writeln!(out, "# friendly_name = {n}");
            }
            kv(&mut out, "PublicKey", &p.public_key);
            if let Some(psk) = &p.preshared_key {
                kv(&mut out, "PresharedKey", &psk.to_base64().as_str());
            }
            if !p.allowed_ips.is_empty() {
                kv(&mut out, "AllowedIPs", &join(&p.allowed_ips));
            }
            if let Some(e) = &p.endpoint {
                kv(&mut out, "Endpoint", e);
            }
            if let Some(k) = p.persistent_keepalive {
                kv(&mut out, "PersistentKeepalive", &k);
            }
        }
        let a = &self.appliance;
        if *a != ApplianceConfig::default() {
            out.push_str("\n[Appliance]\n");
            if !a.wan.is_empty() {
                kv(&mut out, "WAN", &join(&a.wan));
            }
            match a.xdp_mode {
                XdpModeSetting::Auto => {}
                XdpModeSetting::Native => kv(&mut out, "XdpMode", &"native"),
                XdpModeSetting::Generic => kv(&mut out, "XdpMode", &"generic"),
            }
            if a.steering == Steering::PerPacket {
                kv(&mut out, "Steering", &"per-packet");
            }
            if a.data_path != DataPathSetting::default() {
                kv(&mut out, "DataPath", &a.data_path.name());
            }
            if let Some(src) = &a.peer_source {
                kv(&mut out, "PeerSource", &src.url());
                for (k, v) in [
                    ("PeerSourceCa", &src.ca),
                    ("PeerSourceCert", &src.cert),
                    ("PeerSourceKey", &src.key),
                    ("PeerSourcePasswordFile", &src.password_file),
                ] {
                    if let Some(v) = v {
                        kv(&mut out, k, &v.display());
                    }
                }
                if let Some(u) = &src.user {
                    kv(&mut out, "PeerSourceUser", u);
                }
                if let Some(n) = &src.name {
                    kv(&mut out, "PeerSourceName", n);
                }
            }
            if let Some(c) = &a.cpus {
                kv(&mut out, "Cpus", &format_cpu_list(c));
            }
            match a.mss {
                MssSetting::Auto => {}
                MssSetting::Off => kv(&mut out, "Mss", &"off"),
                MssSetting::Value(v) => kv(&mut out, "Mss", &v),
            }
            if let Some(r) = a.handshake_rate {
                kv(&mut out, "HandshakeRate", &r);
            }
            if a.forward_ip {
                kv(&mut out, "ForwardIP", &"on");
            }
            match a.return_routing {
                ReturnRouting::Off => {}
                ReturnRouting::Auto => kv(&mut out, "ReturnRouting", &"on"),
                ReturnRouting::Table(t) => kv(&mut out, "ReturnRouting", &t),
            }
            match &a.masquerade {
                Masquerade::Off => {}
                Masquerade::All => kv(&mut out, "Masquerade", &"on"),
                Masquerade::Sources(n) => kv(&mut out, "Masquerade", &join(n)),
            }
            match a.metrics {
                MetricsSetting::Off => kv(&mut out, "Metrics", &"off"),
                MetricsSetting::Listen(addr) if addr != DEFAULT_METRICS_ADDR => {
                    kv(&mut out, "Metrics", &addr)
                }
                MetricsSetting::Listen(_) => {}
            }
        }
        out
    }
}
