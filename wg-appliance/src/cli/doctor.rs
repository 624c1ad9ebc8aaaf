//! `doctor`: the layered walk of `wg_appliance::doctor` for one interface
//! or all of them, printed for people or as JSON; exit status 1 when a
//! layer fails.

use std::path::PathBuf;

use anyhow::bail;
use wg_appliance::{doctor, uapi_client::Client};

pub fn doctor(
    ifname: Option<&str>,
    json: bool,
    config: Option<PathBuf>,
    probe_mtu: bool,
) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "doctor needs root (the UAPI socket, nftables, raw ICMP probes). Fix: run it with sudo"
        );
    }
    let names = match ifname {
        Some(i) => vec![i.to_owned()],
        None => Client::interfaces(),
    };
    if names.is_empty() {
        bail!("no interface run by wg-appliance here (no socket in /var/run/wireguard). Fix: name one (`wg-appliance doctor wg0`), or start it first");
    }
    if config.is_some() && names.len() > 1 {
        bail!("--config belongs to one interface. Fix: name it: `wg-appliance doctor <ifname> --config <file>`");
    }
    let mut failed = false;
    let mut reports = Vec::new();
    for name in names {
        let r = doctor::run(&doctor::Options {
            ifname: name,
            config: config.clone(),
            probe_mtu,
        });
        failed |= r.failed();
        if json {
            reports.push(r.json());
        } else {
            print!("{}", r.human());
        }
    }
    if json {
        let out = if reports.len() == 1 {
            reports.remove(0)
        } else {
            serde_json::Value::Array(reports)
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    if failed {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    }
    Ok(())
}
