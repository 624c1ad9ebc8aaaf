//! The cross-platform userspace API (<https://www.wireguard.com/xplatform/>)
//! that `wg(8)` speaks over `/var/run/wireguard/<ifname>.sock`.
//!
//! Job: pure protocol code, no sockets. [`RequestReader`] frames requests
//! out of a byte stream; [`parse_request`] turns one into a typed
//! [`Request`]; [`format_get`] and [`format_errno`] write the responses.
//! The daemon owns the socket and applies [`SetOp`]s to the device.
//!
//! Invariants:
//! - Semantics follow wireguard-go's `device/uapi.go`, the reference
//!   implementation: the same keys and value syntax, `true` as the only
//!   boolean, decimal numbers, keys in exactly 64 hex digits, and the same
//!   errno values on the wire (negated: `errno=-22`), which `wg` turns back
//!   into `EINVAL` for its message.
//! - Nothing here panics on input, and no error message contains key
//!   material (a bad key is named, never echoed).
//! - A request is at most [`MAX_REQUEST_LEN`] bytes; larger ones are
//!   refused before they are buffered whole.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

use crate::keys::{PresharedKey, PrivateKey, PublicKey, KEY_LEN};

#[cfg(test)]
mod tests;

/// wireguard-go's `ipcError*` codes, as written after `errno=`: negated
/// Linux errno values (and -55, ENOANO, for "unknown").
pub const IPC_ERROR_IO: i32 = -libc::EIO;
pub const IPC_ERROR_PROTOCOL: i32 = -libc::EPROTO;
pub const IPC_ERROR_INVALID: i32 = -libc::EINVAL;
pub const IPC_ERROR_PORT_IN_USE: i32 = -libc::EADDRINUSE;
pub const IPC_ERROR_UNKNOWN: i32 = -55;

/// Largest request accepted: a `setconf` of the data path's full peer table
/// (16,384 peers with several prefixes each, ≈ 100 bytes a line) fits; a
/// client streaming garbage does not. The socket is root-only.
pub const MAX_REQUEST_LEN: usize = 32 << 20;

/// One request from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Get,
    /// `appliance=1`: what only wg-appliance reports (`wg-appliance show`
    /// asks; `wg` never sends it): whether a restart is hitless, the data
    /// path in use, XDP modes.
    Appliance,
    /// The operations in wire order. Order matters: peer operations apply
    /// to the most recent [`SetOp::PublicKey`], and `ReplaceAllowedIps`
    /// only clears prefixes added before it.
    Set(Vec<SetOp>),
}

/// One line of a `set=1` request, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOp {
    /// `private_key`; `None` for the all-zero key, which removes it.
    PrivateKey(Option<PrivateKey>),
    /// `listen_port`; 0 asks for a random port.
    ListenPort(u16),
    /// `fwmark`; 0 removes the mark.
    FwMark(u32),
    /// `replace_peers=true`: remove every peer before the ones that follow.
    ReplacePeers,
    /// `public_key`: the following peer operations are about this peer
    /// (created unless `UpdateOnly` follows).
    PublicKey(PublicKey),
    /// `remove=true`: remove the current peer.
    Remove,
    /// `update_only=true`: do not create the current peer if it is new.
    UpdateOnly,
    /// `preshared_key`; the all-zero key means none.
    PresharedKey(PresharedKey),
    /// `endpoint`.
    Endpoint(SocketAddr),
    /// `persistent_keepalive_interval` in seconds; 0 turns it off.
    PersistentKeepaliveInterval(u16),
    /// `replace_allowed_ips=true`: drop the peer's prefixes added so far.
    ReplaceAllowedIps,
    /// `allowed_ip`, masked to its network as the kernel stores it.
    AllowedIp(IpNet),
}

/// Which of the three keys a hex error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HexKeyField {
    PrivateKey,
    PublicKey,
    PresharedKey,
}

impl fmt::Display for HexKeyField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HexKeyField::PrivateKey => "private_key",
            HexKeyField::PublicKey => "public_key",
            HexKeyField::PresharedKey => "preshared_key",
        })
    }
}

/// Why a UAPI request was refused. Map to the wire with [`UapiError::errno`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UapiError {
    #[error("unknown UAPI operation (expected `get=1` or `set=1` as the first line). Fix: send get=1 or set=1")]
    UnknownOperation,
    #[error("line {line}: {detail} (expected `key=value`). Fix: send one key=value per line, ending the request with an empty line")]
    Malformed { line: usize, detail: &'static str },
    #[error("line {line}: unknown {scope} key \"{key}\" (expected {expected}). Fix: send only keys the UAPI defines")]
    UnknownKey {
        line: usize,
        scope: &'static str,
        key: String,
        expected: &'static str,
    },
    #[error("line {line}: {key}={value}: {problem} (expected {expected})")]
    InvalidValue {
        line: usize,
        key: &'static str,
        value: String,
        problem: &'static str,
        expected: &'static str,
    },
    #[error("line {line}: {field} {problem} (expected exactly {} hex digits). Fix: encode the 32-byte key in hex, as `wg` does", KEY_LEN * 2)]
    BadHexKey {
        line: usize,
        field: HexKeyField,
        problem: HexProblem,
    },
    #[error("line {line}: protocol_version={value} is not supported (expected 1). Fix: use a client that speaks protocol version 1")]
    ProtocolVersion { line: usize, value: String },
    #[error("line {line}: data after the end of the request (expected an empty line to end it). Fix: send one request at a time and wait for its answer")]
    TrailingData { line: usize },
    #[error(
        "request exceeds {limit} bytes. Fix: split the configuration into several set requests"
    )]
    TooLarge { limit: usize },
    #[error("request is not UTF-8. Fix: send ASCII key=value lines")]
    NotUtf8,
}

/// What is wrong with a hex key, without the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HexProblem {
    WrongLength(usize),
    NotHex { position: usize },
}

impl fmt::Display for HexProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HexProblem::WrongLength(n) => write!(f, "has {n} characters"),
            HexProblem::NotHex { position } => {
                write!(f, "has a non-hex character at position {position}")
            }
        }
    }
}

impl UapiError {
    /// The value to send after `errno=`, as wireguard-go would for the
    /// same input: a line without `=` is a protocol error, everything else
    /// (including an unsupported protocol_version) is invalid input.
    pub fn errno(&self) -> i32 {
        match self {
            UapiError::Malformed { .. } => IPC_ERROR_PROTOCOL,
            // Go's line scanner fails with an I/O error on an oversized line.
            UapiError::TooLarge { .. } => IPC_ERROR_IO,
            UapiError::NotUtf8
            | UapiError::TrailingData { .. }
            | UapiError::UnknownOperation
            | UapiError::UnknownKey { .. }
            | UapiError::InvalidValue { .. }
            | UapiError::BadHexKey { .. }
            | UapiError::ProtocolVersion { .. } => IPC_ERROR_INVALID,
        }
    }

    /// wireguard-go answers nothing to an unknown operation and closes the
    /// connection; the other errors get an `errno=` reply.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            UapiError::UnknownOperation | UapiError::TooLarge { .. }
        )
    }
}

/// Values echoed in messages are cut short.
const MAX_SHOWN: usize = 64;

fn shown(s: &str) -> String {
    s.chars().take(MAX_SHOWN).collect()
}

/// Parse one request: `get=1\n\n` or `set=1\n` + `key=value` lines + `\n`.
/// The final empty line may be missing (end of stream ends a request, as in
/// wireguard-go); anything after it is an error.
pub fn parse_request(text: &str) -> Result<Request, UapiError> {
    let (op, body) = text.split_once('\n').unwrap_or((text, ""));
    match op {
        "get=1" => match body {
            "" | "\n" => Ok(Request::Get),
            _ => Err(UapiError::TrailingData { line: 2 }),
        },
        "set=1" => parse_set(body).map(Request::Set),
        "appliance=1" => match body {
            "" | "\n" => Ok(Request::Appliance),
            _ => Err(UapiError::TrailingData { line: 2 }),
        },
        _ => Err(UapiError::UnknownOperation),
    }
}

fn parse_set(body: &str) -> Result<Vec<SetOp>, UapiError> {
    let mut ops = Vec::new();
    let mut in_peer = false;
    let mut lines = body.split('\n');
    let mut n = 1;
    while let Some(line) = lines.next() {
        n += 1;
        if line.is_empty() {
            // The terminating empty line; only a final "\n" may follow it
            // (split yields one trailing "" for the text's last newline).
            if lines.any(|rest| !rest.is_empty()) {
                return Err(UapiError::TrailingData { line: n + 1 });
            }
            break;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(UapiError::Malformed {
                line: n,
                detail: "line has no `=`",
            });
        };
        if key == "public_key" {
            in_peer = true;
            let k = parse_hex_key(n, HexKeyField::PublicKey, value)?;
            ops.push(SetOp::PublicKey(PublicKey::from_bytes(k)));
            continue;
        }
        let op = if in_peer {
            peer_op(n, key, value)?
        } else {
            device_op(n, key, value)?
        };
        if let Some(op) = op {
            ops.push(op);
        }
    }
    Ok(ops)
}

fn device_op(n: usize, key: &str, value: &str) -> Result<Option<SetOp>, UapiError> {
    Ok(Some(match key {
        "private_key" => {
            let k = parse_hex_key(n, HexKeyField::PrivateKey, value)?;
            SetOp::PrivateKey((k != [0; KEY_LEN]).then(|| PrivateKey::from_bytes(k)))
        }
        "listen_port" => SetOp::ListenPort(number(n, "listen_port", value, "a port 0-65535")?),
        "fwmark" => SetOp::FwMark(number(n, "fwmark", value, "a decimal mark 0-4294967295")?),
        "replace_peers" => {
            flag(n, "replace_peers", value)?;
            SetOp::ReplacePeers
        }
        _ => {
            return Err(UapiError::UnknownKey {
                line: n,
                scope: "device",
                key: shown(key),
                expected: "private_key, listen_port, fwmark, replace_peers or public_key",
            })
        }
    }))
}

fn peer_op(n: usize, key: &str, value: &str) -> Result<Option<SetOp>, UapiError> {
    Ok(Some(match key {
        "remove" => {
            flag(n, "remove", value)?;
            SetOp::Remove
        }
        "update_only" => {
            flag(n, "update_only", value)?;
            SetOp::UpdateOnly
        }
        "preshared_key" => SetOp::PresharedKey(PresharedKey::from_bytes(parse_hex_key(
            n,
            HexKeyField::PresharedKey,
            value,
        )?)),
        "endpoint" => {
            SetOp::Endpoint(
                parse_endpoint(value).ok_or_else(|| UapiError::InvalidValue {
                    line: n,
                    key: "endpoint",
                    value: shown(value),
                    problem: "not a numeric socket address",
                    expected: "ip:port or [ipv6]:port",
                })?,
            )
        }
        "persistent_keepalive_interval" => SetOp::PersistentKeepaliveInterval(number(
            n,
            "persistent_keepalive_interval",
            value,
            "seconds 0-65535",
        )?),
        "replace_allowed_ips" => {
            flag(n, "replace_allowed_ips", value)?;
            SetOp::ReplaceAllowedIps
        }
        "allowed_ip" => SetOp::AllowedIp(
            value
                .parse::<IpNet>()
                .map_err(|_| UapiError::InvalidValue {
                    line: n,
                    key: "allowed_ip",
                    value: shown(value),
                    problem: "not a CIDR prefix",
                    expected: "address/prefix-length, e.g. 10.0.0.0/24",
                })?
                .trunc(),
        ),
        "protocol_version" => {
            if value != "1" {
                return Err(UapiError::ProtocolVersion {
                    line: n,
                    value: shown(value),
                });
            }
            return Ok(None);
        }
        _ => {
            return Err(UapiError::UnknownKey {
                line: n,
                scope: "peer",
                key: shown(key),
                expected: "remove, update_only, preshared_key, endpoint, \
                           persistent_keepalive_interval, replace_allowed_ips, allowed_ip, \
                           protocol_version or public_key",
            })
        }
    }))
}

/// Booleans are the literal `true`, as in wireguard-go.
fn flag(n: usize, key: &'static str, value: &str) -> Result<(), UapiError> {
    if value == "true" {
        Ok(())
    } else {
        Err(UapiError::InvalidValue {
            line: n,
            key,
            value: shown(value),
            problem: "not a flag",
            expected: "true",
        })
    }
}

/// Decimal digits only (Go's `ParseUint(v, 10, bits)`: no sign, no space).
fn number<T: std::str::FromStr>(
    n: usize,
    key: &'static str,
    value: &str,
    expected: &'static str,
) -> Result<T, UapiError> {
    let ok = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| value.parse().ok())
        .flatten()
        .ok_or_else(|| UapiError::InvalidValue {
            line: n,
            key,
            value: shown(value),
            problem: "not a number in range",
            expected,
        })
}

/// Exactly 64 hex digits, either case.
fn parse_hex_key(n: usize, field: HexKeyField, value: &str) -> Result<[u8; KEY_LEN], UapiError> {
    let err = |problem| UapiError::BadHexKey {
        line: n,
        field,
        problem,
    };
    let bytes = value.as_bytes();
    if bytes.len() != KEY_LEN * 2 {
        return Err(err(HexProblem::WrongLength(value.chars().count())));
    }
    let mut key = [0u8; KEY_LEN];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = hex_val(pair[0]).ok_or_else(|| err(HexProblem::NotHex { position: 2 * i }))?;
        let lo = hex_val(pair[1]).ok_or_else(|| {
            err(HexProblem::NotHex {
                position: 2 * i + 1,
            })
        })?;
        key[i] = (hi << 4) | lo;
    }
    Ok(key)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `1.2.3.4:5`, `[::1]:5`, or `[fe80::1%3]:5` (numeric zone only: naming
/// an interface would need a lookup, and `wg` sends what getnameinfo
/// printed, which is numeric for addresses it got from us).
fn parse_endpoint(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let rest = s.strip_prefix('[')?;
    let (host, port) = rest.split_once("]:")?;
    let (addr, zone) = host.split_once('%')?;
    let addr: Ipv6Addr = addr.parse().ok()?;
    let scope: u32 = zone.parse().ok()?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|_| port.bytes().all(|b| b.is_ascii_digit()))?;
    Some(SocketAddr::V6(SocketAddrV6::new(addr, port, 0, scope)))
}

/// The time of a peer's last handshake, as the UAPI reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HandshakeTime {
    pub sec: u64,
    pub nsec: u32,
}

impl From<SystemTime> for HandshakeTime {
    fn from(t: SystemTime) -> Self {
        // Before 1970 cannot be a real handshake; report the epoch.
        let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        HandshakeTime {
            sec: d.as_secs(),
            nsec: d.subsec_nanos(),
        }
    }
}

/// Everything a `get` reports about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSnapshot {
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// Seconds; 0 is off.
    pub persistent_keepalive: u16,
    /// `None`: never (reported as 0 s, 0 ns).
    pub last_handshake: Option<HandshakeTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Everything a `get` reports about the device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceSnapshot {
    pub private_key: Option<PrivateKey>,
    /// 0 when not bound.
    pub listen_port: u16,
    /// 0 is off.
    pub fwmark: u32,
    pub peers: Vec<PeerSnapshot>,
}

fn push_hex(out: &mut String, key: &str, bytes: &[u8; KEY_LEN]) {
    out.push_str(key);
    out.push('=');
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out.push('\n');
}

/// The complete answer to `get=1`, ending in `errno=0` and the empty line.
/// Lines and their order are wireguard-go's: `listen_port` and `fwmark`
/// only when nonzero, `private_key` only when set, `preshared_key` always
/// (all zeros when there is none). The result holds the private key: send
/// it and drop it.
pub fn format_get(dev: &DeviceSnapshot) -> String {
    let mut out = String::new();
    if let Some(k) = &dev.private_key {
        push_hex(&mut out, "private_key", k.as_bytes());
    }
    if dev.listen_port != 0 {
        let _ = writeln!(out, "listen_port={}", dev.listen_port);
    }
    if dev.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", dev.fwmark);
    }
    for p in &dev.peers {
        push_hex(&mut out, "public_key", p.public_key.as_bytes());
        let zero = [0u8; KEY_LEN];
        let psk = p.preshared_key.as_ref().map_or(&zero, |k| k.as_bytes());
        push_hex(&mut out, "preshared_key", psk);
        out.push_str("protocol_version=1\n");
        if let Some(e) = p.endpoint {
            let _ = writeln!(out, "endpoint={}", format_endpoint(e));
        }
        let hs = p.last_handshake.unwrap_or_default();
        let _ = writeln!(out, "last_handshake_time_sec={}", hs.sec);
        let _ = writeln!(out, "last_handshake_time_nsec={}", hs.nsec);
        let _ = writeln!(out, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            p.persistent_keepalive
        );
        for net in &p.allowed_ips {
            let _ = writeln!(out, "allowed_ip={net}");
        }
    }
    out.push_str("errno=0\n\n");
    out
}

/// `1.2.3.4:5` or `[v6]:5`; an IPv4-mapped IPv6 address is shown as IPv4,
/// as Go's netip does after `Unmap`, so `wg` prints what users configured.
fn format_endpoint(e: SocketAddr) -> String {
    match e {
        SocketAddr::V6(v6) if v6.scope_id() == 0 => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()).to_string(),
            None => e.to_string(),
        },
        _ => e.to_string(),
    }
}

/// The answer to a `set` (or a failed `get`): `errno=N` and the empty line.
/// Pass 0 for success, or [`UapiError::errno`] / an `IPC_ERROR_*` value.
/// The answer to `appliance=1`: `key=value` lines (values without
/// newlines), then `errno=0` and the empty line.
pub fn format_appliance(items: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (k, v) in items {
        out.push_str(k);
        out.push('=');
        out.push_str(&v.replace('\n', " "));
        out.push('\n');
    }
    out.push_str("errno=0\n\n");
    out
}

pub fn format_errno(errno: i32) -> String {
    format!("errno={errno}\n\n")
}

/// Frames requests out of a byte stream that arrives in arbitrary chunks.
///
/// Push what the socket gave, then take requests until `Ok(None)`. A
/// request ends at its first empty line (`\n\n`, or a `\n` at its start).
/// Whatever follows stays buffered for the next request, since a client
/// may send several on one connection.
#[derive(Debug)]
pub struct RequestReader {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for the terminator.
    scanned: usize,
    limit: usize,
}

impl Default for RequestReader {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestReader {
    pub fn new() -> Self {
        Self::with_limit(MAX_REQUEST_LEN)
    }

    pub fn with_limit(limit: usize) -> Self {
        RequestReader {
            buf: Vec::new(),
            scanned: 0,
            limit,
        }
    }

    /// Append a chunk. Fails (and the connection should be closed) once
    /// the buffered, unterminated data exceeds the limit.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), UapiError> {
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > self.limit && self.find_end().is_none() {
            self.buf = Vec::new();
            self.scanned = 0;
            return Err(UapiError::TooLarge { limit: self.limit });
        }
        Ok(())
    }

    /// The next complete request's text (including its terminating empty
    /// line), if one has arrived.
    pub fn next_raw(&mut self) -> Result<Option<String>, UapiError> {
        let Some(end) = self.find_end() else {
            return Ok(None);
        };
        if end > self.limit {
            return Err(UapiError::TooLarge { limit: self.limit });
        }
        let rest = self.buf.split_off(end);
        let req = std::mem::replace(&mut self.buf, rest);
        self.scanned = 0;
        String::from_utf8(req)
            .map(Some)
            .map_err(|_| UapiError::NotUtf8)
    }

    /// The next complete request, parsed.
    pub fn next_request(&mut self) -> Result<Option<Request>, UapiError> {
        match self.next_raw()? {
            Some(text) => parse_request(&text).map(Some),
            None => Ok(None),
        }
    }

    /// Bytes received but not yet part of a complete request.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Offset just past the terminating empty line, if present.
    fn find_end(&mut self) -> Option<usize> {
        if self.buf.first() == Some(&b'\n') {
            return Some(1);
        }
        // Resume one byte back so a "\n\n" split across chunks is found.
        let from = self.scanned.saturating_sub(1);
        let found = self.buf[from..]
            .windows(2)
            .position(|w| w == b"\n\n")
            .map(|i| from + i + 2);
        if found.is_none() {
            self.scanned = self.buf.len();
        }
        found
    }
}
