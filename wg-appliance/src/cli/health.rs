//! `health`: the verdict of `wg_appliance::health` as one line on stdout,
//! exit status 0 when healthy and 1 when not; with `--announce`, a loop
//! that holds an address on a device only while the check passes.

use std::{process::Command, time::Duration};

use anyhow::{bail, Context as _};
use ipnet::IpNet;
use wg_appliance::health::{self, Options};

pub fn health(opts: &Options) -> anyhow::Result<()> {
    let v = health::check(opts);
    println!("{}", v.line);
    if !v.healthy {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    }
    Ok(())
}

/// `ip addr <verb> <prefix> dev <dev>`; adding an address already there
/// and removing one already gone both count as done.
fn ip_addr(verb: &str, prefix: IpNet, dev: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["addr", verb, &prefix.to_string(), "dev", dev])
        .output()
        .context("running ip (install iproute2)")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success()
        || (verb == "add" && err.contains("File exists"))
        || (verb == "del" && err.contains("Cannot assign requested address"))
    {
        return Ok(());
    }
    bail!(
        "ip addr {verb} {prefix} dev {dev}: {}. Fix: check that {dev} exists here and that this runs as root",
        err.trim()
    )
}

/// Checks every `interval` seconds; holds `prefix` on `dev` while healthy.
/// Prints a line at each change. On SIGTERM or SIGINT the address goes and
/// the loop ends (exit 0), so stopping the service withdraws the route.
pub fn announce(opts: &Options, prefix: IpNet, dev: &str, interval: u64) -> anyhow::Result<()> {
    if interval == 0 {
        bail!("--interval must be at least 1 second");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut tick = tokio::time::interval(Duration::from_secs(interval));
        let mut held: Option<bool> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
            let o = opts.clone();
            let v = tokio::task::spawn_blocking(move || health::check(&o))
                .await
                .context("the health check")?;
            if held == Some(v.healthy) {
                continue;
            }
            let verb = if v.healthy { "add" } else { "del" };
            match ip_addr(verb, prefix, dev) {
                Ok(()) => {
                    held = Some(v.healthy);
                    let what = if v.healthy { "announced" } else { "withdrawn" };
                    println!("{what} {prefix} on {dev}: {}", v.line);
                }
                // Tried again at the next tick.
                Err(e) => eprintln!("{e}"),
            }
        }
        ip_addr("del", prefix, dev)?;
        println!("withdrawn {prefix} on {dev}: stopping");
        anyhow::Ok(())
    })
}
