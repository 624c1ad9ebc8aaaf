//! The standard tunnel topology of the end-to-end tests:
//!
//! ```text
//!  gw ns: wg-appliance (10.92.0.1, fd92::1 inside)
//!     veth a: 10.91.0.1/24 fd91::1/64   (outer, endpoint port 51820)
//!        │
//!     veth b: 10.91.0.2/24 fd91::2/64
//!  peer ns: wireguard-go | boringtun-cli (port 51821) | wg-appliance (51820)
//!           (10.92.0.2, fd92::2 inside)
//! ```
//!
//! Third parties know the appliance's endpoint and initiate; a remote
//! wg-appliance is the responder and the gateway knows its endpoint.
//! Outer IPv4 or IPv6 is chosen by the endpoint address given.
//! Dropping a [`Tunnel`] stops the daemons and peers before it deletes the
//! namespaces.

use std::time::Duration;

use anyhow::{Context as _, Result};
use wg_appliance::{
    config::PeerSpec,
    daemon::DeviceSpec,
    datapath::ModePolicy,
    keys::{PrivateKey, PublicKey},
};

use crate::{
    appliance::{Appliance, Report},
    peers::{Impl, ThirdParty},
    unique_name, wait_until, Netns, Veth,
};

/// What runs on the far side of the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    WireguardGo,
    Boringtun,
    Appliance,
}

pub const GW_IN4: &str = "10.92.0.1";
pub const GW_IN6: &str = "fd92::1";
pub const PEER_IN4: &str = "10.92.0.2";
pub const PEER_IN6: &str = "fd92::2";
pub const GW_OUT4: &str = "10.91.0.1";
pub const GW_OUT6: &str = "fd91::1";
pub const PEER_OUT4: &str = "10.91.0.2";
pub const PEER_OUT6: &str = "fd91::2";
pub const THIRD_PARTY_PORT: u16 = 51821;

pub enum Remote {
    ThirdParty(ThirdParty),
    Appliance(Appliance),
}

pub struct Tunnel {
    // Field order is drop order: daemons and peers first, namespaces last.
    pub app: Option<Appliance>,
    pub remote: Option<Remote>,
    pub kind: PeerKind,
    pub outer_v6: bool,
    /// The gateway's and the far side's public keys.
    pub gw_public: PublicKey,
    pub peer_public: PublicKey,
    pub veth: Veth,
    pub gw: Netns,
    pub peer_ns: Netns,
}

/// The gateway's spec: one peer (the far side), 10.92.0.1/24, fd92::1/64.
pub fn gw_spec(ifname: &str, key: PrivateKey, peer: PeerSpec, wan: &str) -> DeviceSpec {
    DeviceSpec {
        ifname: ifname.to_owned(),
        private_key: key,
        listen_port: 51820,
        peers: vec![peer],
        addresses: vec![
            format!("{GW_IN4}/24").parse().expect("cidr"),
            format!("{GW_IN6}/64").parse().expect("cidr"),
        ],
        mtu: 1420,
        wan: vec![wan.to_owned()],
        xdp_mode: ModePolicy::Auto,
        per_packet: false,
        cpus: None,
        mss: None,
        rekey_after_time: None,
        data_path: test_data_path(),
    }
}

/// The data path the tests' appliances use: `WG_TEST_DATA_PATH` (auto,
/// afxdp or bpf), so the whole matrix runs on either; BPF by default.
pub fn test_data_path() -> wg_appliance::config::DataPathSetting {
    std::env::var("WG_TEST_DATA_PATH")
        .ok()
        .and_then(|v| wg_appliance::config::DataPathSetting::parse(&v))
        .unwrap_or_default()
}

fn endpoint(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

impl Tunnel {
    /// Builds the topology and starts both ends; `tweak_gw` may change the
    /// gateway's spec (steering, MSS, extra peers or AllowedIPs...),
    /// `tweak_remote` a remote wg-appliance's.
    pub fn new(
        kind: PeerKind,
        outer_v6: bool,
        tweak_gw: impl FnOnce(&mut DeviceSpec),
        tweak_remote: impl FnOnce(&mut DeviceSpec),
    ) -> Result<Self> {
        let gw = Netns::new()?;
        let peer_ns = Netns::new()?;
        let veth = Veth::new(
            &gw,
            &[&format!("{GW_OUT4}/24"), &format!("{GW_OUT6}/64")],
            &peer_ns,
            &[&format!("{PEER_OUT4}/24"), &format!("{PEER_OUT6}/64")],
        )?;
        // Frames redirected out of a veth need GRO on the receiving end
        // (docs/architecture.md, veth facts): the peer's end always, the
        // gateway's end when the far side is an XDP appliance too.
        peer_ns.exec("ethtool", &["-K", &veth.b, "gro", "on"])?;
        if kind == PeerKind::Appliance {
            gw.exec("ethtool", &["-K", &veth.a, "gro", "on"])?;
        }
        let gw_key = PrivateKey::generate();
        let peer_key = PrivateKey::generate();
        let mut t = Tunnel {
            app: None,
            remote: None,
            kind,
            outer_v6,
            gw_public: gw_key.public_key(),
            peer_public: peer_key.public_key(),
            veth,
            gw,
            peer_ns,
        };
        let (gw_out, peer_out) = if outer_v6 {
            (GW_OUT6, PEER_OUT6)
        } else {
            (GW_OUT4, PEER_OUT4)
        };
        let peer_spec = PeerSpec {
            public_key: peer_key.public_key(),
            preshared_key: None,
            endpoint: None,
            allowed_ips: vec![
                format!("{PEER_IN4}/32").parse()?,
                format!("{PEER_IN6}/128").parse()?,
            ],
            persistent_keepalive: None,
        };
        match kind {
            PeerKind::WireguardGo | PeerKind::Boringtun => {
                let which = if kind == PeerKind::WireguardGo {
                    Impl::WireguardGo
                } else {
                    Impl::Boringtun
                };
                let tp = ThirdParty::start(
                    which,
                    &t.peer_ns,
                    &peer_key,
                    THIRD_PARTY_PORT,
                    &format!("{PEER_IN4}/24"),
                )?;
                t.peer_ns.ip(&[
                    "addr",
                    "add",
                    &format!("{PEER_IN6}/64"),
                    "dev",
                    &tp.ifname,
                    "nodad",
                ])?;
                tp.add_peer(
                    &t.peer_ns,
                    &gw_key.public_key(),
                    Some(&endpoint(gw_out, 51820)),
                    &format!("{GW_IN4}/32,{GW_IN6}/128"),
                )?;
                t.remote = Some(Remote::ThirdParty(tp));
                let mut spec = gw_spec(&unique_name("w"), gw_key, peer_spec, &t.veth.a);
                tweak_gw(&mut spec);
                t.app = Some(Appliance::start(&t.gw, spec)?);
            }
            PeerKind::Appliance => {
                let mut rspec = gw_spec(
                    &unique_name("r"),
                    peer_key,
                    PeerSpec {
                        public_key: gw_key.public_key(),
                        preshared_key: None,
                        endpoint: None,
                        allowed_ips: vec![
                            format!("{GW_IN4}/32").parse()?,
                            format!("{GW_IN6}/128").parse()?,
                        ],
                        persistent_keepalive: None,
                    },
                    &t.veth.b,
                );
                rspec.addresses = vec![
                    format!("{PEER_IN4}/24").parse()?,
                    format!("{PEER_IN6}/64").parse()?,
                ];
                tweak_remote(&mut rspec);
                t.remote = Some(Remote::Appliance(Appliance::start(&t.peer_ns, rspec)?));
                let mut peer_spec = peer_spec;
                peer_spec.endpoint = Some(endpoint(peer_out, 51820).parse()?);
                let mut spec = gw_spec(&unique_name("w"), gw_key, peer_spec, &t.veth.a);
                tweak_gw(&mut spec);
                t.app = Some(Appliance::start(&t.gw, spec)?);
            }
        }
        Ok(t)
    }

    /// The gateway's tunnel interface.
    pub fn gw_if(&self) -> &str {
        &self.app.as_ref().expect("gateway running").ifname
    }

    /// The far side's tunnel interface.
    pub fn peer_if(&self) -> &str {
        match self.remote.as_ref().expect("remote running") {
            Remote::ThirdParty(tp) => &tp.ifname,
            Remote::Appliance(a) => &a.ifname,
        }
    }

    pub fn third_party(&self) -> &ThirdParty {
        match self.remote.as_ref() {
            Some(Remote::ThirdParty(tp)) => tp,
            _ => panic!("the far side is not a third party"),
        }
    }

    /// Brings the session up from the initiating side (the third party, or
    /// the gateway when the far side is an appliance) and waits until a
    /// ping crosses, at most 10 s.
    pub fn warm_up(&self) -> Result<()> {
        let (ns, dst) = match self.kind {
            PeerKind::Appliance => (&self.gw, PEER_IN4),
            _ => (&self.peer_ns, GW_IN4),
        };
        wait_until(
            Duration::from_secs(10),
            "a first ping through the tunnel",
            || ns.exec("ping", &["-c", "1", "-W", "1", dst]).is_ok(),
        )
        .with_context(|| format!("{:?} tunnel never came up", self.kind))
    }

    /// Stops the gateway and returns its report.
    pub fn stop_gw(&mut self) -> Result<Report> {
        self.app.take().context("gateway already stopped")?.stop()
    }

    /// Stops a remote wg-appliance and returns its report.
    pub fn stop_remote(&mut self) -> Result<Report> {
        match self.remote.take() {
            Some(Remote::Appliance(a)) => a.stop(),
            _ => anyhow::bail!("the far side is not a running wg-appliance"),
        }
    }
}

/// Every one of `count` echo requests answered, `interval` apart.
pub fn ping_all(ns: &Netns, src: Option<&str>, dst: &str, count: u32, interval: &str) -> bool {
    let c = count.to_string();
    let mut args = vec!["-c", &c, "-i", interval, "-W", "2"];
    if let Some(s) = src {
        args.extend(["-I", s]);
    }
    args.push(dst);
    match ns.exec("ping", &args) {
        Ok(out) => String::from_utf8_lossy(&out.stdout).contains(" 0% packet loss"),
        Err(_) => false,
    }
}
