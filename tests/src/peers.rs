//! Third-party WireGuard peers in a test namespace: wireguard-go and
//! boringtun-cli, configured with the real `wg` tool, and the appliance
//! itself run in-process inside a namespace.
//!
//! UAPI sockets in /var/run/wireguard are shared by all namespaces, so every
//! interface name is unique to the test ([`crate::unique_name`]). Processes
//! are killed and their sockets removed on drop.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use wg_appliance::keys::{PrivateKey, PublicKey};

use crate::{wait_until, Netns};

/// Which userspace implementation runs the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    WireguardGo,
    Boringtun,
}

/// A running third-party peer.
pub struct ThirdParty {
    pub ifname: String,
    pub public_key: PublicKey,
    ns: String,
    child: Child,
    key_file: PathBuf,
}

/// Writes a key where `wg set ... private-key <file>` reads it: 0600.
pub fn write_key_file(key: &PrivateKey, tag: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("wgt-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{tag}.key"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(key.to_base64().as_bytes())?;
    f.write_all(b"\n")?;
    Ok(path)
}

impl ThirdParty {
    /// Starts the implementation with a fresh interface in `ns`, configured
    /// with `key`, `listen_port` and `addr` (CIDR) on the interface.
    pub fn start(
        which: Impl,
        ns: &Netns,
        key: &PrivateKey,
        listen_port: u16,
        addr: &str,
    ) -> Result<Self> {
        let ifname = crate::unique_name("g");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name()]);
        match which {
            Impl::WireguardGo => {
                cmd.args(["wireguard-go", "-f", &ifname]);
            }
            Impl::Boringtun => {
                cmd.args(["boringtun-cli", "-f", "--disable-drop-privileges", &ifname]);
            }
        }
        let child = cmd
            .env("WG_SUDO", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {which:?} (cargo xtask setup installs it)"))?;
        let key_file = write_key_file(key, &ifname)?;
        let me = Self {
            ifname: ifname.clone(),
            public_key: key.public_key(),
            ns: ns.name().to_owned(),
            child,
            key_file,
        };
        wait_until(
            Duration::from_secs(10),
            "the userspace WireGuard interface",
            || {
                ns.ip(&["link", "show", &ifname]).is_ok()
                    && std::path::Path::new(&format!("/var/run/wireguard/{ifname}.sock")).exists()
            },
        )?;
        let kf = me.key_file.display().to_string();
        ns.exec(
            "wg",
            &[
                "set",
                &ifname,
                "private-key",
                &kf,
                "listen-port",
                &listen_port.to_string(),
            ],
        )?;
        ns.ip(&["addr", "add", addr, "dev", &ifname])?;
        ns.ip(&["link", "set", &ifname, "up"])?;
        Ok(me)
    }

    /// `wg set <if> peer <pub> endpoint <ep> allowed-ips <ips>`.
    pub fn add_peer(
        &self,
        ns: &Netns,
        peer: &PublicKey,
        endpoint: Option<&str>,
        allowed_ips: &str,
    ) -> Result<()> {
        let pk = peer.to_base64();
        let mut args = vec![
            "set",
            self.ifname.as_str(),
            "peer",
            pk.as_str(),
            "allowed-ips",
            allowed_ips,
        ];
        if let Some(ep) = endpoint {
            args.extend(["endpoint", ep]);
        }
        ns.exec("wg", &args)?;
        Ok(())
    }

    /// `wg show <if> transfer`: (rx, tx) bytes for the first peer.
    pub fn transfer(&self, ns: &Netns) -> Result<(u64, u64)> {
        let out = ns.exec("wg", &["show", &self.ifname, "transfer"])?;
        let s = String::from_utf8_lossy(&out.stdout);
        let line = s.lines().next().context("no peer in wg show")?;
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            bail!("unexpected wg show transfer output: {line}");
        }
        Ok((f[1].parse()?, f[2].parse()?))
    }
}

impl Drop for ThirdParty {
    fn drop(&mut self) {
        // boringtun-cli ignores SIGTERM; SIGKILL works for both.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname));
        let _ = std::fs::remove_file(&self.key_file);
        // Usually gone with its process already; quiet when it is.
        let _ = Command::new("ip")
            .args(["-n", &self.ns, "link", "del", &self.ifname])
            .stderr(Stdio::null())
            .status();
    }
}
