//! What to bring up, from the flags, the configuration file and the
//! environment, validated before any fork so that errors reach the terminal.

use std::{collections::HashSet, net::SocketAddr, path::Path, time::Duration};

use anyhow::{bail, Context as _};
use wg_appliance::{
    config::{
        self, ApplianceConfig, Config, MetricsSetting, MssSetting, PeerSpec, Steering,
        XdpModeSetting,
    },
    daemon::{DeviceSpec, InterfaceOptions},
    datapath::{parse_cpu_list, ModePolicy},
    keys::PublicKey,
    link, metrics,
};

use super::{args::IfaceArgs, daemonize::Launch};

/// What to bring up, validated before any fork.
pub struct Plan {
    pub ifname: String,
    pub opts: InterfaceOptions,
    pub spec: Option<DeviceSpec>,
    pub config: Option<config::Config>,
    pub metrics: Option<SocketAddr>,
    pub names: metrics::FriendlyNames,
    /// Why the tunnel MTU is what it is, when it was derived (logged once
    /// logging is up).
    pub mtu_note: Option<String>,
    /// Peers fed from etcd (`PeerSource` or `--peer-source`), its files
    /// read, and the file's own peers (which the source never touches).
    pub peer_source: Option<(wg_appliance::peer_source::EtcdSource, HashSet<PublicKey>)>,
}

impl Plan {
    pub fn new(what: Launch, a: &IfaceArgs) -> anyhow::Result<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("wg-appliance needs root (network interfaces, XDP, BPF maps). Fix: run it with sudo");
        }
        let (ifname, cfg) = match what {
            Launch::Uapi(i) => (i, None),
            Launch::Config(path) => {
                let cfg = config::load(&path)?;
                let name = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .context(
                        "the configuration file name gives the interface name (wg0.conf → wg0)",
                    )?
                    .to_owned();
                (name, Some(cfg))
            }
        };
        link::check_name(&ifname)?;
        let app = cfg
            .as_ref()
            .map(|c| c.appliance.clone())
            .unwrap_or_default();
        let mut mtu_note = None;
        let opts = interface_options(&ifname, a, &app, cfg.as_ref(), &mut mtu_note)?;
        let metrics = metrics_address(a, &app)?;
        let mut names = metrics::FriendlyNames::new();
        if cfg.is_none() {
            // Under wg-quick the file is not ours to read, but friendly names
            // for metrics are taken from where wg-quick keeps it, if there.
            if let Ok(c) = config::load(Path::new(&format!("/etc/wireguard/{ifname}.conf"))) {
                for p in &c.peers {
                    if let Some(n) = &p.friendly_name {
                        names.insert(p.public_key.to_base64(), n.clone());
                    }
                }
            }
        }
        let spec = match &cfg {
            None => None,
            Some(c) => Some(device_spec(c, &opts, &mut names)?),
        };
        let peer_source = peer_source(&ifname, a, &app, cfg.as_ref())?;
        Ok(Plan {
            ifname,
            opts,
            spec,
            config: cfg,
            metrics,
            names,
            mtu_note,
            peer_source,
        })
    }
}

/// `--peer-source` (its TLS and auth settings still from `[Appliance]`),
/// else `PeerSource`; the files it names are read now. The local peers,
/// which the source never removes, are the file's; under wg-quick (no
/// file of ours) those of `/etc/wireguard/<if>.conf`, which wg-quick
/// loads with `wg setconf`.
fn peer_source(
    ifname: &str,
    a: &IfaceArgs,
    app: &ApplianceConfig,
    cfg: Option<&Config>,
) -> anyhow::Result<Option<(wg_appliance::peer_source::EtcdSource, HashSet<PublicKey>)>> {
    let setting = match &a.peer_source {
        Some(url) => {
            let parsed = config::PeerSourceSetting::parse_url(url).map_err(|why| {
                anyhow::anyhow!("--peer-source {url}: {why} (expected etcd://host:port[,host:port...]/prefix). Fix: e.g. --peer-source etcd://10.0.0.5:2379/wg-fleet")
            })?;
            let mut s = app.peer_source.clone().unwrap_or_default();
            s.endpoints = parsed.endpoints;
            s.prefix = parsed.prefix;
            s
        }
        None => match &app.peer_source {
            Some(s) => s.clone(),
            None => return Ok(None),
        },
    };
    let source = wg_appliance::peer_source::EtcdSource::load(&setting)?;
    let wg_quick = match cfg {
        Some(_) => None,
        None => config::load(Path::new(&format!("/etc/wireguard/{ifname}.conf"))).ok(),
    };
    let local = cfg
        .or(wg_quick.as_ref())
        .map(|c| c.peers.iter().map(|p| p.public_key).collect())
        .unwrap_or_default();
    Ok(Some((source, local)))
}

/// The daemon's options: each flag given, else its `[Appliance]` setting
/// (or the file's `MTU`), else the default; an MTU left out is derived
/// from the WAN (`mtu_note` says how).
fn interface_options(
    ifname: &str,
    a: &IfaceArgs,
    app: &ApplianceConfig,
    cfg: Option<&Config>,
    mtu_note: &mut Option<String>,
) -> anyhow::Result<InterfaceOptions> {
    let xdp_mode = match a.xdp_mode {
        Some(m) => m.into(),
        None => match app.xdp_mode {
            XdpModeSetting::Auto => ModePolicy::Auto,
            XdpModeSetting::Native => ModePolicy::Native,
            XdpModeSetting::Generic => ModePolicy::Generic,
        },
    };
    let cpus = match &a.cpus {
        Some(s) => Some(
            parse_cpu_list(s)
                .with_context(|| format!("--cpus {s}: expected a CPU list such as 0-3,6. Fix: choose CPUs from /sys/devices/system/cpu/online"))?,
        ),
        None => app.cpus.clone(),
    };
    let mss = a.mss.or(match app.mss {
        MssSetting::Value(v) => Some(v),
        MssSetting::Auto => None,
        // The largest MSS never clamps.
        MssSetting::Off => Some(u16::MAX),
    });
    let wan = if a.wan.is_empty() {
        app.wan.clone()
    } else {
        a.wan.clone()
    };
    let mtu = match a.mtu.or(cfg.and_then(|c| c.interface.mtu)) {
        Some(m) => m,
        None => {
            let endpoints: Vec<SocketAddr> = cfg
                .map(|c| {
                    c.peers
                        .iter()
                        .filter_map(|p| p.endpoint.as_ref()?.resolve().ok())
                        .collect()
                })
                .unwrap_or_default();
            let auto = config::auto_mtu(&wan_mtus(&wan, &endpoints), &endpoints);
            *mtu_note = Some(auto.reason);
            auto.mtu
        }
    };
    Ok(InterfaceOptions {
        ifname: ifname.to_owned(),
        mtu,
        wan,
        xdp_mode,
        per_packet: a.per_packet || app.steering == Steering::PerPacket,
        cpus,
        mss,
        handshake_rate: app.handshake_rate,
        data_path: match a.data_path.as_deref() {
            Some(s) => wg_appliance::config::DataPathSetting::parse(s)
                .with_context(|| format!("--data-path {s}: expected auto, afxdp or bpf"))?,
            None => app.data_path,
        },
        // Test hook only (the rekey test of the hitless restart); never
        // set in production.
        rekey_after_time: std::env::var("WG_APPLIANCE_TEST_REKEY_AFTER_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs),
    })
}

/// The MTUs of the interfaces the tunnel's packets will leave by: the WAN
/// interfaces named, else those routing to the endpoints, else those of
/// the default routes.
fn wan_mtus(wan: &[String], endpoints: &[SocketAddr]) -> Vec<(String, u32)> {
    let mut devs: Vec<String> = wan.to_vec();
    if devs.is_empty() {
        let probes: Vec<SocketAddr> = if endpoints.is_empty() {
            // Documentation addresses: only the default routes lead there.
            vec![
                "198.51.100.1:9".parse().expect("literal"),
                "[2001:db8::1]:9".parse().expect("literal"),
            ]
        } else {
            endpoints.to_vec()
        };
        for ep in probes {
            if let Some(name) = link::egress_ifindex(ep).and_then(ifname_of) {
                if !devs.contains(&name) {
                    devs.push(name);
                }
            }
        }
    }
    devs.into_iter()
        .filter_map(|d| {
            let mtu = std::fs::read_to_string(format!("/sys/class/net/{d}/mtu")).ok()?;
            Some((d, mtu.trim().parse().ok()?))
        })
        .collect()
}

fn ifname_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: a buffer of IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    name.to_str().ok().map(str::to_owned)
}

/// `--metrics` (an address, or off), else `Metrics =` in `[Appliance]`.
fn metrics_address(a: &IfaceArgs, app: &ApplianceConfig) -> anyhow::Result<Option<SocketAddr>> {
    Ok(match a.metrics.as_deref() {
        Some("off") => None,
        Some(s) => Some(s.parse().with_context(|| {
            format!("--metrics {s}: expected an address such as 127.0.0.1:9586, or off")
        })?),
        None => match app.metrics {
            MetricsSetting::Off => None,
            MetricsSetting::Listen(addr) => Some(addr),
        },
    })
}

/// The device a configuration file describes, with the peers' endpoints
/// resolved; their friendly names go into `names`.
fn device_spec(
    c: &Config,
    opts: &InterfaceOptions,
    names: &mut metrics::FriendlyNames,
) -> anyhow::Result<DeviceSpec> {
    let key = c
        .interface
        .private_key
        .clone()
        .context("the configuration has no PrivateKey in [Interface]")?;
    let mut peers = Vec::new();
    for p in &c.peers {
        let endpoint = match &p.endpoint {
            Some(e) => Some(e.resolve().with_context(|| {
                format!(
                    "resolving the endpoint {e} of peer {}",
                    p.public_key.short()
                )
            })?),
            None => None,
        };
        if let Some(n) = &p.friendly_name {
            names.insert(p.public_key.to_base64(), n.clone());
        }
        peers.push(PeerSpec {
            public_key: p.public_key,
            preshared_key: p.preshared_key.clone(),
            endpoint,
            allowed_ips: p.allowed_ips.clone(),
            persistent_keepalive: p.persistent_keepalive,
        });
    }
    Ok(DeviceSpec {
        ifname: opts.ifname.clone(),
        private_key: key,
        listen_port: c.interface.listen_port.unwrap_or(0),
        peers,
        addresses: c.interface.addresses.clone(),
        mtu: opts.mtu,
        wan: opts.wan.clone(),
        xdp_mode: opts.xdp_mode,
        per_packet: opts.per_packet,
        cpus: opts.cpus.clone(),
        mss: opts.mss,
        rekey_after_time: opts.rekey_after_time,
        data_path: opts.data_path,
    })
}
