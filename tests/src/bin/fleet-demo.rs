//! `cargo xtask demo --fleet`: the fleet lab of tests/src/fleet.rs, told
//! step by step. Usage: fleet-demo <wg-appliance binary> [clients] [watch seconds]

use std::time::Duration;

use wg_appliance_tests::fleet::{run, FleetOpts};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(bin) = args.next() else {
        eprintln!("usage: fleet-demo <wg-appliance binary> [clients (6)] [seconds to watch after the kill (25)]");
        std::process::exit(2);
    };
    let clients = args.next().and_then(|s| s.parse().ok()).unwrap_or(6);
    let watch = args.next().and_then(|s| s.parse().ok()).unwrap_or(25);
    let opts = FleetOpts {
        bin: bin.into(),
        clients,
        watch: Duration::from_secs(watch),
        verbose: true,
    };
    match run(&opts) {
        Ok(report) => {
            println!("\n{}", report.describe());
            println!("The clients of the dead gateway wait for WireGuard's own timers (KEEPALIVE_TIMEOUT 10 s + REKEY_TIMEOUT 5 s), then re-handshake with the survivor, which has the same key and, from etcd, the same peers. The others never notice.");
        }
        Err(e) => {
            eprintln!("fleet demo failed: {e:#}");
            std::process::exit(1);
        }
    }
}
