//! The site-to-site lab of the operations tests (`ops_*.rs`): a gateway
//! running wg-appliance from a wg-quick file, as an operator runs it, a
//! router between it and the far site, and wireguard-go as the far site's
//! gateway.
//!
//! ```text
//!  lan ns  10.90.0.2 ── 10.90.0.1 [lan]  gw ns: wg-appliance <if> 10.95.0.1/24
//!                                  [wan] 10.96.0.1 ── 10.96.0.254  router ns
//!                                                     10.98.0.254 ── 10.98.0.2  peer ns:
//!                                         wireguard-go 10.95.0.2/24, site 10.97.0.1 (on lo)
//! ```
//!
//! Names are unique per test ([`unique_name`]); dropping the lab stops the
//! daemon (its UAPI socket removed), wireguard-go, and deletes the
//! namespaces, also when a test fails.

#![allow(dead_code)] // each test file uses a part

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use wg_appliance::keys::PrivateKey;
use wg_appliance_tests::{
    appliance_bin,
    peers::{Impl, ThirdParty},
    proc::{Bg, Finished},
    unique_name, wait_until, Netns, Veth,
};

pub const GW_TUN: &str = "10.95.0.1";
pub const PEER_TUN: &str = "10.95.0.2";
pub const LAN_HOST: &str = "10.90.0.2";
pub const LAN_GW: &str = "10.90.0.1";
pub const GW_WAN: &str = "10.96.0.1";
pub const PEER_WAN: &str = "10.98.0.2";
pub const SITE: &str = "10.97.0.1";
pub const PEER_PORT: u16 = 51821;

/// Removes the daemon's UAPI socket on drop: that stops it, as `wg-quick
/// down` does, even when the test failed half way; then waits (5 s at
/// most) for its interface to go.
pub struct DaemonGuard {
    pub ifname: String,
    pub ns: String,
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname));
        let _ = wait_until(Duration::from_secs(5), "the daemon to stop", || {
            !std::process::Command::new("ip")
                .args(["-n", &self.ns, "link", "show", &self.ifname])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        let _ = std::fs::remove_file(format!("/var/log/wg-appliance/{}.log", self.ifname));
    }
}

pub struct Lab {
    // Field order is drop order: daemon and peer first, namespaces last.
    pub guard: Option<DaemonGuard>,
    pub tp: ThirdParty,
    pub ifname: String,
    pub conf: PathBuf,
    pub bin: PathBuf,
    pub gw_key: PrivateKey,
    pub peer_key: PrivateKey,
    /// Gateway's LAN side (a) ↔ LAN host (b).
    pub lan_link: Veth,
    /// Gateway's WAN (a) ↔ router (b).
    pub wan_link: Veth,
    /// Router (a) ↔ far gateway (b).
    pub far_link: Veth,
    pub lan: Netns,
    pub gw: Netns,
    pub router: Netns,
    pub peer: Netns,
}

/// Lab options.
#[derive(Clone, Debug, Default)]
pub struct LabOpts {
    /// Extra lines for the gateway's [Interface] section.
    pub interface_extra: String,
    /// Extra lines for its [Appliance] section.
    pub appliance_extra: String,
    /// Extra lines for its [Peer] section.
    pub peer_extra: String,
    /// Environment for the gateway's daemon (test hooks).
    pub env: Vec<(String, String)>,
    /// Enable IPv4 forwarding on the gateway (a site gateway does).
    pub forwarding: bool,
}

fn write_file(path: &std::path::Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

impl Lab {
    pub fn new(o: LabOpts) -> Result<Self> {
        let bin = appliance_bin()?;
        let lan = Netns::new()?;
        let gw = Netns::new()?;
        let router = Netns::new()?;
        let peer = Netns::new()?;
        let lan_link = Veth::new(
            &gw,
            &[&format!("{LAN_GW}/24")],
            &lan,
            &[&format!("{LAN_HOST}/24")],
        )?;
        let wan_link = Veth::new(
            &gw,
            &[&format!("{GW_WAN}/24")],
            &router,
            &["10.96.0.254/24"],
        )?;
        let far_link = Veth::new(
            &router,
            &["10.98.0.254/24"],
            &peer,
            &[&format!("{PEER_WAN}/24")],
        )?;
        lan.ip(&["route", "add", "default", "via", LAN_GW])?;
        gw.ip(&["route", "add", "default", "via", "10.96.0.254"])?;
        peer.ip(&["route", "add", "default", "via", "10.98.0.254"])?;
        router.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        if o.forwarding {
            gw.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        }
        // Frames XDP redirects out of the gateway's WAN veth need GRO on its
        // other end; packets the LAN host sends are redirected by XDP once
        // routed into the tunnel, so no checksum offload there (see
        // docs/architecture.md, veth facts).
        router.exec("ethtool", &["-K", &wan_link.b, "gro", "on"])?;
        lan.exec("ethtool", &["-K", &lan_link.b, "tx", "off"])?;
        peer.ip(&["addr", "add", &format!("{SITE}/24"), "dev", "lo"])?;

        let gw_key = PrivateKey::generate();
        let peer_key = PrivateKey::generate();
        let tp = ThirdParty::start(
            Impl::WireguardGo,
            &peer,
            &peer_key,
            PEER_PORT,
            &format!("{PEER_TUN}/24"),
        )?;
        tp.add_peer(
            &peer,
            &gw_key.public_key(),
            Some(&format!("{GW_WAN}:51820")),
            &format!("{GW_TUN}/32,10.90.0.0/24"),
        )?;
        peer.exec(
            "wg",
            &[
                "set",
                &tp.ifname,
                "peer",
                &gw_key.public_key().to_base64(),
                "persistent-keepalive",
                "5",
            ],
        )?;
        peer.ip(&["route", "add", "10.90.0.0/24", "dev", &tp.ifname])?;

        let ifname = unique_name("o");
        let conf_dir = std::env::temp_dir().join(format!("wgt-ops-{}", std::process::id()));
        std::fs::create_dir_all(&conf_dir)?;
        let conf = conf_dir.join(format!("{ifname}.conf"));
        let text = format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = {GW_TUN}/24\n{}\n[Appliance]\nWAN = {}\nMetrics = off\n{}\n# friendly_name = far-site\n[Peer]\nPublicKey = {}\nAllowedIPs = {PEER_TUN}/32, 10.97.0.0/24\nEndpoint = {PEER_WAN}:{PEER_PORT}\nPersistentKeepalive = 10\n{}\n",
            &*gw_key.to_base64(),
            o.interface_extra,
            wan_link.a,
            o.appliance_extra,
            peer_key.public_key().to_base64(),
            o.peer_extra,
        );
        write_file(&conf, &text)?;
        let mut lab = Lab {
            guard: None,
            tp,
            ifname: ifname.clone(),
            conf: conf.clone(),
            bin: bin.clone(),
            gw_key,
            peer_key,
            lan_link,
            wan_link,
            far_link,
            lan,
            gw,
            router,
            peer,
        };
        lab.up(&o.env)?;
        Ok(lab)
    }

    /// `wg-appliance up <conf>` in the gateway's namespace.
    pub fn up(&mut self, env: &[(String, String)]) -> Result<()> {
        let mut args: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        args.push(self.bin.display().to_string());
        args.push("up".into());
        args.push(self.conf.display().to_string());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.guard = Some(DaemonGuard {
            ifname: self.ifname.clone(),
            ns: self.gw.name().to_owned(),
        });
        self.gw.exec("env", &a).context("wg-appliance up")?;
        Ok(())
    }

    /// Waits until traffic crosses the tunnel both ways (LAN host ↔ far
    /// site), at most `timeout`.
    pub fn warm_up(&self, timeout: Duration) -> Result<()> {
        wait_until(timeout, "a ping from the LAN to the far site", || {
            self.lan.exec("ping", &["-c", "1", "-W", "1", SITE]).is_ok()
        })
    }

    /// Runs `wg-appliance <args>` in the gateway's namespace, bounded.
    pub fn run(&self, args: &[&str]) -> Result<Finished> {
        let bin = self.bin.display().to_string();
        Bg::spawn(&self.gw, &bin, args)?.finish(Duration::from_secs(90))
    }

    /// `doctor <if> [extra]`: (exit code, stdout).
    pub fn doctor(&self, extra: &[&str]) -> Result<(i32, String)> {
        let conf = self.conf.display().to_string();
        let mut args = vec!["doctor", self.ifname.as_str(), "--config", conf.as_str()];
        args.extend_from_slice(extra);
        let f = self.run(&args)?;
        let code = f.status.code().unwrap_or(-1);
        if code != 0 {
            eprintln!("doctor {extra:?} exited {code}:\n{}", f.stdout);
        }
        if code != 0 && code != 1 {
            bail!("doctor exited {code}: {} {}", f.stdout, f.stderr);
        }
        Ok((code, f.stdout))
    }

    /// `doctor --json`, parsed.
    pub fn doctor_json(&self) -> Result<(i32, serde_json::Value)> {
        let (code, out) = self.doctor(&["--json"])?;
        let v = serde_json::from_str(&out).with_context(|| format!("doctor --json: {out}"))?;
        Ok((code, v))
    }
}

/// The checks of `layer` in a doctor JSON report with `status`.
pub fn checks_with<'a>(
    report: &'a serde_json::Value,
    layer: u64,
    status: &str,
) -> Vec<&'a serde_json::Value> {
    report["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["layer"] == layer)
        .flat_map(|l| l["checks"].as_array().into_iter().flatten())
        .filter(|c| c["status"] == status)
        .collect()
}
