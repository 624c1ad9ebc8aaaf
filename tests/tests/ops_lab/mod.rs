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
use wg_appliance::keys::{PresharedKey, PrivateKey};
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
    /// The far side neither knows our endpoint nor sends keepalives: only
    /// the gateway initiates (so its sessions are its own, and a shortened
    /// REKEY_AFTER_TIME applies to them).
    pub far_passive: bool,
    /// `Metrics =` of the gateway (default off); its loopback is its own.
    pub metrics: Option<String>,
    /// A preshared key on both sides.
    pub psk: Option<PresharedKey>,
    /// The far side accepts only the gateway's tunnel address from it, not
    /// its LAN (which then needs masquerade to reach the far site).
    pub far_knows_no_lan: bool,
    /// The gateway's file names no peer (a peer source supplies it:
    /// [`Lab::far_peer_section`] is its `[Peer]`).
    pub no_file_peer: bool,
}

/// The far site's `[Peer]` as the gateway knows it (`extra`: more lines).
pub fn far_peer(peer_key: &PrivateKey, psk: Option<&PresharedKey>, extra: &str) -> String {
    let psk_line = psk
        .map(|k| format!("PresharedKey = {}\n", &*k.to_base64()))
        .unwrap_or_default();
    format!(
        "[Peer]\nPublicKey = {}\n{psk_line}AllowedIPs = {PEER_TUN}/32, 10.97.0.0/24\nEndpoint = {PEER_WAN}:{PEER_PORT}\nPersistentKeepalive = 10\n{extra}\n",
        peer_key.public_key().to_base64(),
    )
}

/// The gateway's wg-quick file for `o`.
fn conf_text(gw_key: &PrivateKey, peer_key: &PrivateKey, wan: &str, o: &LabOpts) -> String {
    let peer = if o.no_file_peer {
        String::new()
    } else {
        format!(
            "# friendly_name = far-site\n{}",
            far_peer(peer_key, o.psk.as_ref(), &o.peer_extra)
        )
    };
    format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = {GW_TUN}/24\n{}\n[Appliance]\nWAN = {wan}\nMetrics = {}\n{}\n{peer}",
        &*gw_key.to_base64(),
        o.interface_extra,
        o.metrics.as_deref().unwrap_or("off"),
        o.appliance_extra,
    )
}

/// A 0600 file holding `text` in the lab's scratch directory (for `wg set
/// … private-key/preshared-key <file>`); the caller removes it.
pub fn write_secret(tag: &str, text: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("wgt-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(tag);
    write_file(&path, &format!("{text}\n"))?;
    Ok(path)
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
        let gw_pub = gw_key.public_key().to_base64();
        let endpoint = format!("{GW_WAN}:51820");
        let far_allowed = if o.far_knows_no_lan {
            format!("{GW_TUN}/32")
        } else {
            format!("{GW_TUN}/32,10.90.0.0/24")
        };
        tp.add_peer(
            &peer,
            &gw_key.public_key(),
            (!o.far_passive).then_some(endpoint.as_str()),
            &far_allowed,
        )?;
        if !o.far_passive {
            peer.exec(
                "wg",
                &[
                    "set",
                    &tp.ifname,
                    "peer",
                    &gw_pub,
                    "persistent-keepalive",
                    "5",
                ],
            )?;
        }
        if let Some(psk) = &o.psk {
            let f = write_secret(&format!("{}-psk", tp.ifname), &psk.to_base64())?;
            let r = peer.exec(
                "wg",
                &[
                    "set",
                    &tp.ifname,
                    "peer",
                    &gw_pub,
                    "preshared-key",
                    &f.display().to_string(),
                ],
            );
            let _ = std::fs::remove_file(&f);
            r?;
        }
        peer.ip(&["route", "add", "10.90.0.0/24", "dev", &tp.ifname])?;

        let ifname = unique_name("o");
        let conf_dir = std::env::temp_dir().join(format!("wgt-ops-{}", std::process::id()));
        std::fs::create_dir_all(&conf_dir)?;
        let conf = conf_dir.join(format!("{ifname}.conf"));
        let text = conf_text(&gw_key, &peer_key, &wan_link.a, &o);
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

    /// `down`, a new configuration from `o`, `up` again.
    pub fn restart(&mut self, o: &LabOpts) -> Result<()> {
        let bin = self.bin.display().to_string();
        self.gw
            .exec(&bin, &["down", &self.ifname])
            .context("wg-appliance down")?;
        self.guard = None;
        write_file(
            &self.conf,
            &conf_text(&self.gw_key, &self.peer_key, &self.wan_link.a, o),
        )?;
        self.up(&o.env)
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

    /// The far site's `[Peer]` for a peer source (`extra`: more lines).
    pub fn far_peer_section(&self, extra: &str) -> String {
        far_peer(&self.peer_key, None, extra)
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

/// Byte `i` of the stream a [`Stream`] sends: not periodic in any small
/// power of two, so reordered, duplicated or dropped segments show.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (i as u8)
}

/// One TCP connection carrying a known byte pattern from `sender` to a
/// listener at `dst` in `receiver`, for as long as the test wants: every
/// byte is checked on arrival. [`Stream::finish`] closes it and returns
/// (bytes sent, bytes received intact).
pub struct Stream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tx: Option<std::thread::JoinHandle<Result<u64>>>,
    rx: Option<std::thread::JoinHandle<Result<u64>>>,
}

impl Stream {
    pub fn start(sender: &Netns, receiver: &Netns, dst: std::net::SocketAddr) -> Result<Self> {
        use std::{
            io::Read as _,
            net::{TcpListener, TcpStream},
            sync::atomic::{AtomicBool, Ordering},
        };
        let l = receiver.enter(|| TcpListener::bind(dst))??;
        let s = sender.enter(|| TcpStream::connect_timeout(&dst, Duration::from_secs(5)))??;
        let (mut r, _) = l.accept()?;
        r.set_read_timeout(Some(Duration::from_secs(30)))?;
        let rx = std::thread::spawn(move || -> Result<u64> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            loop {
                let n = r
                    .read(&mut buf)
                    .context("reading the stream (stalled 30 s?)")?;
                if n == 0 {
                    return Ok(got);
                }
                for (k, b) in buf[..n].iter().enumerate() {
                    if *b != pattern(got + k as u64) {
                        bail!("byte {} of the stream is corrupt", got + k as u64);
                    }
                }
                got += n as u64;
            }
        });
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stop2 = std::sync::Arc::clone(&stop);
        let tx = std::thread::spawn(move || -> Result<u64> {
            let mut s = s;
            s.set_write_timeout(Some(Duration::from_secs(30)))?;
            let mut sent = 0u64;
            let mut chunk = vec![0u8; 16 * 1024];
            while !stop2.load(Ordering::Relaxed) {
                for (k, b) in chunk.iter_mut().enumerate() {
                    *b = pattern(sent + k as u64);
                }
                s.write_all(&chunk)
                    .context("writing the stream (stalled 30 s?)")?;
                sent += chunk.len() as u64;
            }
            s.shutdown(std::net::Shutdown::Write)?;
            Ok(sent)
        });
        Ok(Stream {
            stop,
            tx: Some(tx),
            rx: Some(rx),
        })
    }

    /// Stops sending, waits for the receiver to see the end: (sent, received).
    pub fn finish(mut self) -> Result<(u64, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let join = |h: Option<std::thread::JoinHandle<Result<u64>>>| -> Result<u64> {
            h.context("joined twice")?
                .join()
                .map_err(|_| anyhow::anyhow!("stream thread panicked"))?
        };
        let sent = join(self.tx.take())?;
        let got = join(self.rx.take())?;
        Ok((sent, got))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
