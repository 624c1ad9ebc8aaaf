//! `classify`: only the WAN classifier (XDP `wan_rx`) on one interface,
//! and its counters: what passed, and every drop with its reason.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use wg_appliance::datapath::{Datapath, ModePolicy};

/// Attaches `wan_rx` to `interface` for `port` until Ctrl-C (or `seconds`),
/// printing its counters every `interval` seconds.
pub fn classify(
    interface: &str,
    port: u16,
    policy: ModePolicy,
    seconds: Option<u64>,
    interval: u64,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    if port == 0 {
        bail!("--port 0 is not a listen port; give the WireGuard port (e.g. 51820)");
    }
    let mut dp = Datapath::load(port)?;
    let used = dp.attach_wan(interface, policy)?;
    println!("wan_rx attached to {interface} ({used} XDP), classifying UDP port {port}");
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing the signal handler")?;
    }
    let start = Instant::now();
    let deadline = seconds.map(|s| start + Duration::from_secs(s));
    let mut last_print = start;
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        std::thread::sleep(Duration::from_millis(100));
        if last_print.elapsed() >= Duration::from_secs(interval.max(1)) {
            last_print = Instant::now();
            let c = dp.counters()?;
            let line: Vec<String> =
                c.0.iter()
                    .filter(|(_, v)| **v != 0)
                    .map(|(k, v)| format!("{}={v}", k.name()))
                    .collect();
            println!(
                "  {}",
                if line.is_empty() {
                    "(no packets yet)".into()
                } else {
                    line.join(" ")
                }
            );
        }
    }
    println!("final counters ({interface}):");
    for (c, v) in dp.counters()?.0 {
        if c as u32 <= wg_ebpf_common::Counter::DropBadDataLength as u32 {
            println!("{:<28} {v}", c.name());
        }
    }
    // Dropping `dp` closes the bpf_link: the program detaches here.
    drop(dp);
    println!("wan_rx detached from {interface}");
    Ok(())
}
