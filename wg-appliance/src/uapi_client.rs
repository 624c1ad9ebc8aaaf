//! A running daemon seen from outside, through its UAPI socket
//! (`/var/run/wireguard/<if>.sock`): what `doctor`, `top` and `rotate-psk`
//! ask, with the answers parsed.
//!
//! Invariants: the private key a `get` answer carries is turned into our
//! public key at once and zeroed; preshared keys are kept only as "set or
//! not". Nothing here logs, and no error carries key material.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use zeroize::Zeroizing;

use crate::keys::{PresharedKey, PrivateKey, PublicKey, KEY_LEN};

/// Where wireguard-go, wg(8) and wg-appliance keep the UAPI sockets.
pub const UAPI_DIR: &str = "/var/run/wireguard";

/// Why a daemon could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{ifname} is not run here (no {path}). Fix: `wg-appliance show` lists the interfaces wg-appliance runs; start this one with `wg-appliance up /etc/wireguard/{ifname}.conf`")]
    NoSocket { ifname: String, path: String },
    #[error("{path}: {source}. Fix: run as root, in the network namespace of the interface; if the daemon died, see /var/log/wg-appliance/{ifname}.log")]
    Io {
        ifname: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon of {ifname} refused the request (errno {errno})")]
    Refused { ifname: String, errno: i32 },
    #[error("the daemon of {ifname} gave an answer that does not parse: {what}")]
    BadAnswer { ifname: String, what: String },
}

/// One interface's daemon, by its socket.
pub struct Client {
    ifname: String,
    path: PathBuf,
}

/// A peer as `get` reports it (no key material beyond the public key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub public_key: PublicKey,
    pub has_psk: bool,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// None: never.
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: u16,
}

/// The `get` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Derived from the private key, which is not kept.
    pub public_key: Option<PublicKey>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerInfo>,
}

/// The `appliance=1` answer: key → values, in order (keys may repeat, e.g.
/// `wan_xdp` once per WAN interface).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplianceInfo(pub Vec<(String, String)>);

impl ApplianceInfo {
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Values of the form `<name> <number>` under `key`, as a map (counters,
    /// handshakes by outcome).
    pub fn numbers(&self, key: &str) -> BTreeMap<String, u64> {
        self.all(key)
            .filter_map(|v| {
                let (name, n) = v.rsplit_once(' ')?;
                Some((name.to_owned(), n.parse().ok()?))
            })
            .collect()
    }
}

impl Client {
    /// The daemon of `ifname`; fails if it has no socket here.
    pub fn new(ifname: &str) -> Result<Self, ClientError> {
        let path = PathBuf::from(format!("{UAPI_DIR}/{ifname}.sock"));
        if !path.exists() {
            return Err(ClientError::NoSocket {
                ifname: ifname.to_owned(),
                path: path.display().to_string(),
            });
        }
        Ok(Client {
            ifname: ifname.to_owned(),
            path,
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interfaces with a socket in [`UAPI_DIR`], sorted.
    pub fn interfaces() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(UAPI_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".sock"))
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        names
    }

    /// Sends `request` and returns the answer up to its empty line.
    fn ask(&self, request: &[u8]) -> Result<Zeroizing<String>, ClientError> {
        let io = |source| ClientError::Io {
            ifname: self.ifname.clone(),
            path: self.path.display().to_string(),
            source,
        };
        let mut s = UnixStream::connect(&self.path).map_err(io)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(io)?;
        s.set_write_timeout(Some(Duration::from_secs(5)))
            .map_err(io)?;
        s.write_all(request).map_err(io)?;
        let mut out = Zeroizing::new(Vec::new());
        let mut buf = Zeroizing::new([0u8; 4096]);
        while !(out.ends_with(b"\n\n") || out.as_slice() == b"\n") {
            let n = s.read(&mut buf[..]).map_err(io)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok(Zeroizing::new(String::from_utf8_lossy(&out).into_owned()))
    }

    /// The errno line of an answer (0 when absent, as after a `get`).
    fn errno(&self, answer: &str) -> Result<(), ClientError> {
        let errno = answer
            .lines()
            .find_map(|l| l.strip_prefix("errno="))
            .and_then(|v| v.trim().parse::<i32>().ok())
            .unwrap_or(0);
        if errno != 0 {
            return Err(ClientError::Refused {
                ifname: self.ifname.clone(),
                errno,
            });
        }
        Ok(())
    }

    /// `get=1`.
    pub fn get(&self) -> Result<DeviceInfo, ClientError> {
        let answer = self.ask(b"get=1\n\n")?;
        self.errno(&answer)?;
        parse_get(&answer).map_err(|what| ClientError::BadAnswer {
            ifname: self.ifname.clone(),
            what,
        })
    }

    /// `appliance=1` (an empty answer from a daemon that predates it).
    pub fn appliance(&self) -> Result<ApplianceInfo, ClientError> {
        let answer = self.ask(b"appliance=1\n\n")?;
        self.errno(&answer)?;
        Ok(ApplianceInfo(
            answer
                .lines()
                .filter(|l| !l.starts_with("errno="))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        ))
    }

    /// Sets the preshared key of `peer` with a `set` request, the same path
    /// `wg set <if> peer <key> preshared-key <file>` takes. `update_only`:
    /// a peer that is not there is not created.
    pub fn set_psk(&self, peer: &PublicKey, psk: &PresharedKey) -> Result<(), ClientError> {
        let mut req = Zeroizing::new(String::from("set=1\npublic_key="));
        req.push_str(&hex(peer.as_bytes()));
        req.push_str("\nupdate_only=true\npreshared_key=");
        req.push_str(&Zeroizing::new(hex(psk.as_bytes())));
        req.push_str("\n\n");
        let answer = self.ask(req.as_bytes())?;
        self.errno(&answer)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let s = s.as_bytes();
    if s.len() != KEY_LEN * 2 {
        return None;
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    for (i, pair) in s.chunks(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

/// Parses a `get` answer (the protocol of <https://www.wireguard.com/xplatform/>).
pub fn parse_get(answer: &str) -> Result<DeviceInfo, String> {
    let mut dev = DeviceInfo::default();
    let (mut secs, mut nsecs): (u64, u32) = (0, 0);
    let finish_handshake = |p: &mut PeerInfo, secs: u64, nsecs: u32| {
        p.last_handshake = (secs != 0 || nsecs != 0)
            .then(|| UNIX_EPOCH + Duration::new(secs, nsecs.min(999_999_999)));
    };
    for line in answer.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{k}={v} is not a number"))
        };
        match k {
            "private_key" => {
                let bytes = unhex(v).ok_or("private_key is not 64 hex digits")?;
                if bytes.iter().any(|b| *b != 0) {
                    dev.public_key = Some(PrivateKey::from_bytes(*bytes).public_key());
                }
            }
            "listen_port" => dev.listen_port = num(v)? as u16,
            "fwmark" => dev.fwmark = num(v)? as u32,
            "public_key" => {
                if let Some(p) = dev.peers.last_mut() {
                    finish_handshake(p, secs, nsecs);
                }
                (secs, nsecs) = (0, 0);
                let bytes = unhex(v).ok_or("public_key is not 64 hex digits")?;
                dev.peers.push(PeerInfo {
                    public_key: PublicKey::from_bytes(*bytes),
                    has_psk: false,
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: 0,
                });
            }
            _ => {
                let Some(p) = dev.peers.last_mut() else {
                    continue;
                };
                match k {
                    "preshared_key" => {
                        p.has_psk = unhex(v)
                            .ok_or("preshared_key is not 64 hex digits")?
                            .iter()
                            .any(|b| *b != 0)
                    }
                    "endpoint" => {
                        p.endpoint = Some(
                            v.parse()
                                .map_err(|_| format!("endpoint={v} is not an address"))?,
                        )
                    }
                    "allowed_ip" => p.allowed_ips.push(
                        v.parse()
                            .map_err(|_| format!("allowed_ip={v} is not a prefix"))?,
                    ),
                    "last_handshake_time_sec" => secs = num(v)?,
                    "last_handshake_time_nsec" => nsecs = num(v)?.min(999_999_999) as u32,
                    "rx_bytes" => p.rx_bytes = num(v)?,
                    "tx_bytes" => p.tx_bytes = num(v)?,
                    "persistent_keepalive_interval" => p.persistent_keepalive = num(v)? as u16,
                    _ => {}
                }
            }
        }
    }
    if let Some(p) = dev.peers.last_mut() {
        finish_handshake(p, secs, nsecs);
    }
    Ok(dev)
}

/// Whether `path` is a socket a daemon answers on (a stale one does not).
pub fn answers(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi::{format_get, DeviceSnapshot, PeerSnapshot};

    #[test]
    fn reads_what_the_daemon_writes_and_keeps_no_secret() {
        let key = PrivateKey::generate();
        let peer = PrivateKey::generate().public_key();
        let snap = DeviceSnapshot {
            private_key: Some(key.clone()),
            listen_port: 51820,
            fwmark: 0xca6c,
            peers: vec![PeerSnapshot {
                public_key: peer,
                preshared_key: Some(PresharedKey::generate()),
                endpoint: Some("10.0.0.2:51821".parse().unwrap()),
                allowed_ips: vec!["10.9.0.0/24".parse().unwrap()],
                persistent_keepalive: 25,
                last_handshake: Some((UNIX_EPOCH + Duration::new(1_700_000_000, 5)).into()),
                rx_bytes: 10,
                tx_bytes: 20,
            }],
        };
        let dev = parse_get(&format_get(&snap)).unwrap();
        assert_eq!(dev.public_key, Some(key.public_key()));
        assert_eq!((dev.listen_port, dev.fwmark), (51820, 0xca6c));
        let p = &dev.peers[0];
        assert_eq!(p.public_key, peer);
        assert!(p.has_psk);
        assert_eq!(p.endpoint, Some("10.0.0.2:51821".parse().unwrap()));
        assert_eq!(p.allowed_ips, vec!["10.9.0.0/24".parse().unwrap()]);
        assert_eq!(
            p.last_handshake,
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        assert_eq!(
            (p.rx_bytes, p.tx_bytes, p.persistent_keepalive),
            (10, 20, 25)
        );
        assert!(!format!("{dev:?}").contains(&hex(key.as_bytes())));
    }

    #[test]
    fn bad_answers_are_errors_not_panics() {
        assert!(parse_get("public_key=zz\n").is_err());
        assert!(parse_get("listen_port=x\n").is_err());
        assert_eq!(parse_get("").unwrap(), DeviceInfo::default());
        let a = ApplianceInfo(vec![
            ("counter".into(), "drop_replay 3".into()),
            ("counter".into(), "garbage".into()),
        ]);
        assert_eq!(a.numbers("counter").get("drop_replay"), Some(&3));
        assert_eq!(a.numbers("counter").len(), 1);
    }
}
