//! What `up <config>` adds to the interface, as wg-quick does: the
//! PreUp/PostUp/PreDown/PostDown hooks and routes for AllowedIPs.

use anyhow::{bail, Context as _};
use wg_appliance::{config, daemon::Daemon};

/// Runs a hook's commands through `sh -c` (`%i` is the interface name);
/// the first that fails stops the rest.
pub fn hooks(ifname: &str, cmds: &[String], what: &str) -> anyhow::Result<()> {
    for c in cmds {
        let c = c.replace("%i", ifname);
        tracing::info!(hook = what, command = %c, "running hook");
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(&c)
            .status()
            .with_context(|| format!("{what}: {c}"))?;
        if !st.success() {
            bail!("{what} hook `{c}` failed ({st}); nothing was left up. Fix: run the command by hand to see why, or remove it from the configuration");
        }
    }
    Ok(())
}

/// Routes for every peer's AllowedIPs through the interface, as wg-quick
/// does with `Table = auto` (a default route needs policy routing, which
/// is left to the operator: said loudly).
pub async fn add_routes(d: &Daemon, c: &config::Config) -> anyhow::Result<()> {
    let table = c.interface.table.as_deref().unwrap_or("auto");
    if table == "off" {
        return Ok(());
    }
    let ip = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .context("running ip")?;
        if !out.status.success() {
            bail!(
                "`ip {}`: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    for p in &c.peers {
        for net in &p.allowed_ips {
            if net.prefix_len() == 0 {
                tracing::warn!(route = %net, "not adding a default route through the tunnel: that needs policy routing (fwmark rules) so the tunnel's own packets avoid it; add it yourself or narrow AllowedIPs");
                continue;
            }
            let n = net.to_string();
            let mut args = vec![
                "route",
                "replace",
                n.as_str(),
                "dev",
                d.link().name.as_str(),
            ];
            if table != "auto" {
                args.extend(["table", table]);
            }
            ip(&args)?;
        }
    }
    Ok(())
}
