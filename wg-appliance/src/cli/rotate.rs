//! `rotate-psk <ifname> <peer>`: a new preshared key for one peer, set on
//! our side with a UAPI `set` (the path `wg set … preshared-key` takes),
//! printed once on stdout for the operator to put on the peer.
//!
//! The running session is not touched: WireGuard mixes the preshared key
//! into the next handshake only. That handshake (at the latest when the
//! session turns 2 minutes old) fails until the peer has the same key,
//! while the current session carries traffic until it is 3 minutes old, so
//! the peer must be given the key within a minute; docs/operations.md has
//! the procedure.

use std::{io::Read as _, os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::{bail, Context as _};
use wg_appliance::{
    config,
    keys::{PresharedKey, PublicKey},
    uapi_client::{Client, PeerInfo},
};
use zeroize::Zeroizing;

pub fn rotate_psk(ifname: &str, peer: &str, psk_file: Option<&Path>) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("rotate-psk needs root (the UAPI socket is root's). Fix: run it with sudo");
    }
    let client = Client::new(ifname)?;
    let dev = client.get()?;
    let target = find_peer(ifname, &dev.peers, peer)?;
    let (psk, generated) = match psk_file {
        Some(p) => (read_psk(p)?, false),
        None => (PresharedKey::generate(), true),
    };
    client.set_psk(&target.public_key, &psk).with_context(|| {
        format!(
            "setting the preshared key of peer {} on {ifname}; nothing was changed",
            target.public_key.short()
        )
    })?;
    // Read back: the daemon must report a key for the peer now.
    let after = client.get()?;
    if !after
        .peers
        .iter()
        .any(|p| p.public_key == target.public_key && p.has_psk)
    {
        bail!("the daemon of {ifname} accepted the new preshared key but does not report one for peer {}. Fix: check /var/log/wg-appliance/{ifname}.log", target.public_key.short());
    }
    let ours = dev
        .public_key
        .map(|k| k.to_base64())
        .unwrap_or_else(|| "<this interface's public key>".into());
    if generated {
        println!("{}", &*psk.to_base64());
    }
    eprintln!(
        "wg-appliance: new preshared key set for peer {} on {ifname}.{}\n\
         The running session stays up; the key is used from the next handshake on, which fails\n\
         until the peer has the same key. Set it on the peer within a minute:\n  \
         wg set <peer's interface> peer {ours} preshared-key <file holding the key, mode 0600>\n\
         and put it in both configuration files (PresharedKey = ...) so a restart keeps it.",
        target.public_key.to_base64(),
        if generated {
            " It is printed above, once: it is SECRET (anyone who has it and a peer's\nprivate key can impersonate that peer); copy it to the peer over a secure channel and do not\nkeep it in shell history or logs."
        } else {
            ""
        }
    );
    Ok(())
}

/// The peer named by its public key, a unique prefix of it (as `show`
/// abbreviates), or a `# friendly_name` from /etc/wireguard/<if>.conf.
fn find_peer<'a>(ifname: &str, peers: &'a [PeerInfo], name: &str) -> anyhow::Result<&'a PeerInfo> {
    if let Ok(k) = name.parse::<PublicKey>() {
        return peers.iter().find(|p| p.public_key == k).with_context(|| {
            format!(
                "{ifname} has no peer {}. Fix: `wg show {ifname} peers` lists them",
                k.short()
            )
        });
    }
    let by_prefix: Vec<&PeerInfo> = if name.len() >= 4 {
        peers
            .iter()
            .filter(|p| p.public_key.to_base64().starts_with(name))
            .collect()
    } else {
        Vec::new()
    };
    match by_prefix.as_slice() {
        [one] => return Ok(one),
        [] => {}
        _ => bail!(
            "{name:?} is the start of {} peers' keys on {ifname}. Fix: give more of the public key",
            by_prefix.len()
        ),
    }
    if let Ok(c) = config::load(Path::new(&format!("/etc/wireguard/{ifname}.conf"))) {
        if let Some(cp) = c
            .peers
            .iter()
            .find(|p| p.friendly_name.as_deref() == Some(name))
        {
            if let Some(p) = peers.iter().find(|p| p.public_key == cp.public_key) {
                return Ok(p);
            }
        }
    }
    bail!("{ifname} has no peer {name:?} (expected its public key, the start of it, or a `# friendly_name` from /etc/wireguard/{ifname}.conf). Fix: `wg show {ifname} peers` lists the keys")
}

/// A preshared key from a file that only its owner can read.
fn read_psk(path: &Path) -> anyhow::Result<PresharedKey> {
    let mut f = std::fs::File::open(path).with_context(|| {
        format!(
            "{}: cannot open. Fix: give a file holding a key from `wg genpsk`",
            path.display()
        )
    })?;
    let mode = f.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!("{}: holds a preshared key but has mode {:04o}, so other users can read it. Fix: chmod 600 {}", path.display(), mode & 0o7777, path.display());
    }
    let mut text = Zeroizing::new(String::new());
    f.read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    let psk: PresharedKey = text.trim().parse().with_context(|| {
        format!(
            "{}: not a preshared key. Fix: write the key `wg genpsk` prints, alone in the file",
            path.display()
        )
    })?;
    if psk.is_zero() {
        bail!(
            "{}: the all-zero key means \"no preshared key\". Fix: use a key from `wg genpsk`",
            path.display()
        );
    }
    Ok(psk)
}
