//! The command line as clap describes it; [`command`] gives the whole
//! `clap::Command` (for completions and help, and for a man page generator).

use std::path::PathBuf;

use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};
use wg_appliance::datapath::ModePolicy;

/// The whole command line, as clap builds it.
pub fn command() -> clap::Command {
    Cli::command()
}

/// `wg-appliance [options] <ifname>`, or one of the subcommands.
#[derive(Parser)]
#[command(
    name = "wg-appliance",
    version = wg_appliance::build_info::long_version(),
    about = "XDP-accelerated, WireGuard-compatible VPN gateway",
    long_about = "wg-appliance is a WireGuard peer whose data plane runs in XDP: packets are \
                  classified, filtered, decrypted and encrypted in the kernel, in front of the \
                  network stack, spread over CPUs.\n\n\
                  `wg-appliance wg0` creates wg0 and daemonizes; configure it with `wg` or \
                  `WG_QUICK_USERSPACE_IMPLEMENTATION=wg-appliance wg-quick up wg0`. \
                  `wg-appliance up wg0.conf` reads a wg-quick file itself. Needs root and a \
                  kernel with BTF.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Interface to create (as wireguard-go and boringtun take it).
    pub interface: Option<String>,
    #[command(flatten)]
    pub opts: IfaceArgs,
}

/// How a daemon runs: `<ifname>`, `run` and `up` take these.
#[derive(Args, Clone, Debug)]
pub struct IfaceArgs {
    /// Stay in the foreground (also WG_PROCESS_FOREGROUND=1).
    #[arg(short, long)]
    pub foreground: bool,
    /// WAN interface(s) for the XDP receive program (default: those routing
    /// to peers' endpoints and the default route).
    #[arg(long, value_delimiter = ',')]
    pub wan: Vec<String>,
    /// XDP attach mode.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<Mode>,
    /// Spread each tunnel over CPUs packet by packet (default: per peer,
    /// which keeps packet order).
    #[arg(long)]
    pub per_packet: bool,
    /// CPUs that run the crypto programs, e.g. 0-3,6 (default: all online).
    #[arg(long)]
    pub cpus: Option<String>,
    /// TCP MSS to clamp SYNs to (default: from the MTU).
    #[arg(long)]
    pub mss: Option<u16>,
    /// Tunnel MTU (default: `MTU` in the file, else from the WAN's MTU
    /// and the underlay family: 1440 over IPv4 and 1420 over IPv6 on a
    /// 1500-byte WAN; the MSS clamp follows unless --mss is given).
    #[arg(long)]
    pub mtu: Option<u16>,
    /// Prometheus metrics address, or "off".
    #[arg(long)]
    pub metrics: Option<String>,
    /// Data path: auto (AF_XDP where it works), afxdp or bpf (default: the
    /// configuration's DataPath, else bpf).
    #[arg(long)]
    pub data_path: Option<String>,
    /// Peers from etcd: etcd://host:port[,host:port...]/prefix, each a
    /// wg-quick [Peer] under <prefix>/<interface>/peers/ (default: the
    /// configuration's PeerSource; TLS and auth are set there).
    #[arg(long, value_name = "URL")]
    pub peer_source: Option<String>,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Create an interface and run in the foreground (configure it with `wg`).
    Run {
        interface: String,
        #[command(flatten)]
        opts: IfaceArgs,
    },
    /// Bring up an interface from a wg-quick configuration file (its name
    /// comes from the file name: wg0.conf → wg0), with addresses, routes for
    /// AllowedIPs and PreUp/PostUp hooks; daemonizes unless -f.
    Up {
        config: PathBuf,
        #[command(flatten)]
        opts: IfaceArgs,
    },
    /// Take an interface down: the daemon removes the interface, detaches its
    /// programs and exits.
    Down { interface: String },
    /// Show interfaces run by wg-appliance, as `wg show` does.
    Show { interface: Option<String> },
    /// One line and an exit status (0 healthy, 1 not) for routing daemons
    /// and load balancers: the daemon answers, it has a key, the interface
    /// is up and XDP is attached on every WAN interface (checked in the
    /// kernel), plus what the options require. Every failed check is named
    /// with its fix. Run it in the interface's network namespace, as root.
    Health {
        interface: String,
        /// Unhealthy with fewer peers than this.
        #[arg(long, default_value_t = 0)]
        min_peers: usize,
        /// Unhealthy unless some peer had a handshake within this many
        /// seconds.
        #[arg(long, value_name = "SECONDS")]
        max_handshake_age: Option<u64>,
        /// Keep checking, and hold this address (e.g. an anycast
        /// 203.0.113.10/32) on --dev while healthy: added when the check
        /// passes, removed when it fails and on SIGTERM/SIGINT, so a
        /// routing daemon that exports the device's addresses (BIRD's
        /// `protocol direct`) announces it only while this gateway works.
        #[arg(long, value_name = "PREFIX")]
        announce: Option<ipnet::IpNet>,
        /// The device --announce puts the address on.
        #[arg(long, default_value = "lo", requires = "announce")]
        dev: String,
        /// Seconds between checks with --announce.
        #[arg(long, default_value_t = 1, requires = "announce")]
        interval: u64,
    },
    /// Walk the troubleshooting layers, top to bottom: (1) links and XDP,
    /// (2) listen port and firewall, (3) handshakes and keys, (4) routing
    /// and NAT, (5) MTU and MSS. Each check prints a line, and the fix when
    /// it fails. Exit status 1 when a layer fails, 0 otherwise (warnings
    /// included). Run it in the interface's network namespace, as root.
    Doctor {
        /// Interface to check (default: every interface wg-appliance runs).
        interface: Option<String>,
        /// Print JSON for scripts instead of text.
        #[arg(long)]
        json: bool,
        /// The interface's configuration file (default:
        /// /etc/wireguard/<ifname>.conf when it exists).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Do not probe the path MTU to the endpoints (no ICMP sent).
        #[arg(long)]
        no_probe: bool,
    },
    /// A live view for the console, redrawn every second: per-peer rates,
    /// totals and latest handshake, drops by reason, packets per CPU, the
    /// data path and XDP modes, handshakes by outcome. Reads the daemon's
    /// UAPI socket only (the counters /metrics shows); `q` quits.
    Top {
        /// Interface to watch (default: every interface wg-appliance runs).
        interface: Option<String>,
        /// Seconds between frames.
        #[arg(long, short = 'd', default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many frames (default: until q or Ctrl-C).
        #[arg(long, short = 'n')]
        count: Option<u64>,
    },
    /// Host settings around the data path: UDP socket buffer ceilings, the
    /// WAN NIC's queue counts, RPS and XPS masks, IRQ affinity aligned with
    /// the steering CPUs, and the XDP mode (shown). Without a flag, shows
    /// the current and recommended values; --apply changes them, printing
    /// each before → after, and saves the originals (0600, under
    /// /run/wg-appliance/tune/); --revert restores them.
    Tune {
        /// Interface whose WAN NICs and steering CPUs to use (default:
        /// every interface wg-appliance runs here).
        interface: Option<String>,
        /// Change the values (the originals are saved first).
        #[arg(long, conflicts_with = "revert")]
        apply: bool,
        /// Restore the values saved by --apply.
        #[arg(long)]
        revert: bool,
        /// WAN NIC(s) to tune instead of the daemon's.
        #[arg(long, value_delimiter = ',')]
        wan: Vec<String>,
        /// Steering CPUs instead of the daemon's, e.g. 0-3.
        #[arg(long)]
        cpus: Option<String>,
        /// Leave the NIC's queue counts alone (changing them resets the
        /// link on many NICs).
        #[arg(long)]
        keep_queues: bool,
    },
    /// Give one peer a new preshared key: set on this side over UAPI
    /// (as `wg set … preshared-key` does) and printed once on stdout, to be
    /// set on the peer within a minute. The running session stays up; the
    /// key takes effect at the next handshake.
    RotatePsk {
        interface: String,
        /// The peer: its public key, a unique start of it, or its
        /// `# friendly_name` in /etc/wireguard/<ifname>.conf.
        peer: String,
        /// Set this key (a file from `wg genpsk`, mode 0600) instead of a
        /// new random one; nothing is printed then.
        #[arg(long)]
        psk_file: Option<PathBuf>,
    },
    /// Print a new private key (as `wg genkey`).
    Genkey,
    /// Read a private key on stdin, print its public key (as `wg pubkey`).
    Pubkey,
    /// Print a new preshared key (as `wg genpsk`).
    Genpsk,
    /// Attach only the WAN classifier (XDP `wan_rx`) to an interface and
    /// print its counters: what passed, and every drop with its reason.
    Classify {
        /// Interface to attach to (e.g. eth0).
        #[arg(long, short)]
        interface: String,
        /// WireGuard UDP listen port to classify.
        #[arg(long, short, default_value_t = wg_ebpf_common::DEFAULT_LISTEN_PORT)]
        port: u16,
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        mode: Mode,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Print the counters every this many seconds while running.
        #[arg(long, default_value_t = 1)]
        interval: u64,
    },
    /// A/B benchmark: wg-appliance (per-peer and per-packet steering)
    /// against wireguard-go and boringtun-cli pairs in namespaces, with
    /// iperf3; writes a table, JSON and an SVG chart.
    Bench(wg_appliance::bench::BenchArgs),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Write man pages (section 8) for the command and each subcommand into
    /// a directory (the Debian package runs this).
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

/// XDP attach mode as the flags spell it.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    Auto,
    Native,
    Generic,
}

impl From<Mode> for ModePolicy {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Auto => ModePolicy::Auto,
            Mode::Native => ModePolicy::Native,
            Mode::Generic => ModePolicy::Generic,
        }
    }
}
