//! `down`: stops a daemon the way `wg-quick down` does, by removing its
//! UAPI socket, and waits for the interface to go.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use wg_appliance::link;

use super::UAPI_DIR;

/// Removes the socket of `ifname` and waits (10 s at most) for the daemon
/// to remove the interface.
pub fn down(ifname: &str) -> anyhow::Result<()> {
    let path = PathBuf::from(format!("{UAPI_DIR}/{ifname}.sock"));
    if !path.exists() {
        bail!("{ifname} is not run by wg-appliance here (no {}). Fix: check the name with `wg-appliance show` (all interfaces it runs) and `ip link show {ifname}` (whether it exists at all)", path.display());
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while link::ifindex(ifname).is_some() {
        if Instant::now() > deadline {
            bail!("{ifname} still exists 10 s after its daemon was told to stop; check /var/log/wg-appliance/{ifname}.log");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
