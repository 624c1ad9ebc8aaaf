//! The `wg-appliance` command.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use wg_appliance::datapath::{Datapath, ModePolicy};

#[derive(Parser)]
#[command(
    name = "wg-appliance",
    version,
    about = "XDP-accelerated, WireGuard-compatible VPN gateway",
    long_about = "wg-appliance runs the WireGuard data path in XDP: it classifies, filters and \
                  (in later versions) decrypts WireGuard traffic in the kernel, in front of the \
                  network stack. Run as root on a kernel with BTF."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the WAN classifier (XDP `wan_rx`) to an interface and print its
    /// counters: what was passed, and every drop with its reason.
    ///
    /// Non-WireGuard traffic passes untouched; malformed WireGuard messages to
    /// the listen port are dropped before they cost the stack anything. The
    /// program is detached when the command exits (Ctrl-C or --seconds).
    Classify {
        /// Interface to attach to (e.g. eth0).
        #[arg(long, short)]
        interface: String,
        /// WireGuard UDP listen port to classify.
        #[arg(long, short, default_value_t = wg_ebpf_common::DEFAULT_LISTEN_PORT)]
        port: u16,
        /// XDP mode: native (driver), generic (skb), or auto (native, else generic).
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        mode: Mode,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Print the counters every this many seconds while running.
        #[arg(long, default_value_t = 1)]
        interval: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Auto,
    Native,
    Generic,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Classify {
            interface,
            port,
            mode,
            seconds,
            interval,
        } => classify(&interface, port, mode, seconds, interval),
    }
}

fn classify(
    interface: &str,
    port: u16,
    mode: Mode,
    seconds: Option<u64>,
    interval: u64,
) -> anyhow::Result<()> {
    if port == 0 {
        anyhow::bail!("--port 0 is not a listen port; give the WireGuard port (e.g. 51820)");
    }
    let policy = match mode {
        Mode::Auto => ModePolicy::Auto,
        Mode::Native => ModePolicy::Native,
        Mode::Generic => ModePolicy::Generic,
    };
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
            print_nonzero(&dp)?;
        }
    }
    println!("final counters ({interface}):");
    print!("{}", dp.counters()?);
    // Dropping `dp` closes the bpf_link: the program detaches here.
    drop(dp);
    println!("wan_rx detached from {interface}");
    Ok(())
}

fn print_nonzero(dp: &Datapath) -> anyhow::Result<()> {
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
    Ok(())
}
