//! The `wg-appliance` command.
//!
//! `wg-appliance <ifname>` behaves like wireguard-go and boringtun: it
//! creates the interface, opens `/var/run/wireguard/<ifname>.sock` and
//! daemonizes, so `wg` and `WG_QUICK_USERSPACE_IMPLEMENTATION=wg-appliance
//! wg-quick up` drive it unchanged. `up <config>` does the wg-quick part
//! itself.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    os::fd::FromRawFd as _,
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};
use tokio::sync::Notify;
use wg_appliance::{
    config::{self, MetricsSetting, MssSetting, PeerSpec, Steering, XdpModeSetting},
    daemon::{self, Daemon, DeviceSpec, InterfaceOptions},
    datapath::{parse_cpu_list, Datapath, ModePolicy},
    keys::{PresharedKey, PrivateKey},
    link, metrics,
};

const UAPI_DIR: &str = "/var/run/wireguard";

#[derive(Parser)]
#[command(
    name = "wg-appliance",
    version,
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
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Interface to create (as wireguard-go and boringtun take it).
    interface: Option<String>,
    #[command(flatten)]
    opts: IfaceArgs,
}

#[derive(Args, Clone, Debug)]
struct IfaceArgs {
    /// Stay in the foreground (also WG_PROCESS_FOREGROUND=1).
    #[arg(short, long)]
    foreground: bool,
    /// WAN interface(s) for the XDP receive program (default: those routing
    /// to peers' endpoints and the default route).
    #[arg(long, value_delimiter = ',')]
    wan: Vec<String>,
    /// XDP attach mode.
    #[arg(long, value_enum)]
    xdp_mode: Option<Mode>,
    /// Spread each tunnel over CPUs packet by packet (default: per peer,
    /// which keeps packet order).
    #[arg(long)]
    per_packet: bool,
    /// CPUs that run the crypto programs, e.g. 0-3,6 (default: all online).
    #[arg(long)]
    cpus: Option<String>,
    /// TCP MSS to clamp SYNs to (default: from the MTU).
    #[arg(long)]
    mss: Option<u16>,
    /// Tunnel MTU.
    #[arg(long)]
    mtu: Option<u16>,
    /// Prometheus metrics address, or "off".
    #[arg(long)]
    metrics: Option<String>,
}

#[derive(Subcommand)]
enum Command {
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
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
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

fn init_logging() {
    use std::io::IsTerminal as _;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // journald adds its own timestamps.
    if !ansi && std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match (cli.command, cli.interface) {
        (Some(cmd), _) => run_command(cmd),
        (None, Some(ifname)) => {
            let fg = cli.opts.foreground
                || std::env::var("WG_PROCESS_FOREGROUND").is_ok_and(|v| v == "1");
            launch(Launch::Uapi(ifname), cli.opts, fg)
        }
        (None, None) => {
            let _ = Cli::command().print_help();
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wg-appliance: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_command(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Run { interface, opts } => launch(Launch::Uapi(interface), opts, true),
        Command::Up { config, opts } => {
            let fg = opts.foreground;
            launch(Launch::Config(config), opts, fg)
        }
        Command::Down { interface } => down(&interface),
        Command::Show { interface } => show(interface.as_deref()),
        Command::Genkey => {
            println!("{}", &*PrivateKey::generate().to_base64());
            Ok(())
        }
        Command::Pubkey => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the private key from stdin")?;
            let k: PrivateKey = s.trim().parse().context("the private key on stdin")?;
            println!("{}", k.public_key().to_base64());
            Ok(())
        }
        Command::Genpsk => {
            println!("{}", &*PresharedKey::generate().to_base64());
            Ok(())
        }
        Command::Classify {
            interface,
            port,
            mode,
            seconds,
            interval,
        } => {
            init_logging();
            classify(&interface, port, mode.into(), seconds, interval)
        }
        Command::Bench(args) => wg_appliance::bench::run(&args).map(|_| ()),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "wg-appliance",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

enum Launch {
    Uapi(String),
    Config(PathBuf),
}

/// Runs the daemon, in the foreground or detached. Detached, the parent
/// waits until the child has the interface and the UAPI socket up (or
/// failed) before it exits, so `wg setconf` right after us finds the socket.
fn launch(what: Launch, opts: IfaceArgs, foreground: bool) -> anyhow::Result<()> {
    // Everything that can be checked before forking is checked here, so the
    // user sees the error on the terminal.
    let plan = Plan::new(what, &opts)?;
    if foreground {
        init_logging();
        return run_daemon(plan, None);
    }
    let mut fds = [0; 2];
    // SAFETY: pipe with a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: single-threaded here (no runtime yet); the child only runs
    // our own code.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            // SAFETY: closing our copy of the read end.
            unsafe { libc::close(fds[0]) };
            // SAFETY: detaching from the terminal's session.
            unsafe { libc::setsid() };
            let log = open_log(&plan.ifname);
            redirect_stdio(log.as_ref());
            init_logging();
            // SAFETY: the write end, owned by this process from here on.
            let ready = unsafe { std::fs::File::from_raw_fd(fds[1]) };
            let r = run_daemon(plan, Some(ready));
            if let Err(e) = &r {
                tracing::error!("{e:#}");
            }
            std::process::exit(if r.is_ok() { 0 } else { 1 });
        }
        _child => {
            // SAFETY: closing our copy of the write end.
            unsafe { libc::close(fds[1]) };
            // SAFETY: the read end, owned by this process.
            let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
            let mut msg = String::new();
            let _ = r.read_to_string(&mut msg);
            if msg == "ok" {
                Ok(())
            } else if msg.is_empty() {
                bail!("the daemon exited before the interface came up (see /var/log/wg-appliance/{}.log)", plan.ifname)
            } else {
                bail!("{msg}")
            }
        }
    }
}

fn open_log(ifname: &str) -> Option<std::fs::File> {
    let dir = Path::new("/var/log/wg-appliance");
    std::fs::create_dir_all(dir).ok()?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{ifname}.log")))
        .ok()
}

fn redirect_stdio(log: Option<&std::fs::File>) {
    use std::os::fd::AsRawFd as _;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .ok();
    let out = log
        .map(|f| f.as_raw_fd())
        .or(null.as_ref().map(|f| f.as_raw_fd()));
    // SAFETY: dup2 onto the standard descriptors.
    unsafe {
        if let Some(n) = &null {
            libc::dup2(n.as_raw_fd(), 0);
        }
        if let Some(o) = out {
            libc::dup2(o, 1);
            libc::dup2(o, 2);
        }
    }
}

/// What to bring up, validated before any fork.
struct Plan {
    ifname: String,
    opts: InterfaceOptions,
    spec: Option<DeviceSpec>,
    config: Option<config::Config>,
    metrics: Option<SocketAddr>,
    names: metrics::FriendlyNames,
}

impl Plan {
    fn new(what: Launch, a: &IfaceArgs) -> anyhow::Result<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("wg-appliance needs root (network interfaces, XDP, BPF maps). Fix: run it with sudo");
        }
        let (ifname, cfg) = match what {
            Launch::Uapi(i) => (i, None),
            Launch::Config(path) => {
                let cfg = config::load(&path)?;
                let name = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .context(
                        "the configuration file name gives the interface name (wg0.conf → wg0)",
                    )?
                    .to_owned();
                (name, Some(cfg))
            }
        };
        link::check_name(&ifname)?;
        let app = cfg
            .as_ref()
            .map(|c| c.appliance.clone())
            .unwrap_or_default();
        let xdp_mode = match a.xdp_mode {
            Some(m) => m.into(),
            None => match app.xdp_mode {
                XdpModeSetting::Auto => ModePolicy::Auto,
                XdpModeSetting::Native => ModePolicy::Native,
                XdpModeSetting::Generic => ModePolicy::Generic,
            },
        };
        let cpus = match &a.cpus {
            Some(s) => Some(
                parse_cpu_list(s)
                    .with_context(|| format!("--cpus {s}: expected a CPU list such as 0-3,6"))?,
            ),
            None => app.cpus.clone(),
        };
        let mss = a.mss.or(match app.mss {
            MssSetting::Value(v) => Some(v),
            MssSetting::Auto => None,
            // The largest MSS never clamps.
            MssSetting::Off => Some(u16::MAX),
        });
        let mtu = a
            .mtu
            .or(cfg.as_ref().and_then(|c| c.interface.mtu))
            .unwrap_or(1420);
        let opts = InterfaceOptions {
            ifname: ifname.clone(),
            mtu,
            wan: if a.wan.is_empty() {
                app.wan.clone()
            } else {
                a.wan.clone()
            },
            xdp_mode,
            per_packet: a.per_packet || app.steering == Steering::PerPacket,
            cpus,
            mss,
            // Test hook only (the rekey test of the hitless restart); never
            // set in production.
            handshake_rate: app.handshake_rate,
            rekey_after_time: std::env::var("WG_APPLIANCE_TEST_REKEY_AFTER_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs),
        };
        let metrics = match a.metrics.as_deref() {
            Some("off") => None,
            Some(s) => Some(s.parse().with_context(|| {
                format!("--metrics {s}: expected an address such as 127.0.0.1:9586, or off")
            })?),
            None => match app.metrics {
                MetricsSetting::Off => None,
                MetricsSetting::Listen(addr) => Some(addr),
            },
        };
        let mut names = metrics::FriendlyNames::new();
        if cfg.is_none() {
            // Under wg-quick the file is not ours to read, but friendly names
            // for metrics are taken from where wg-quick keeps it, if there.
            if let Ok(c) = config::load(Path::new(&format!("/etc/wireguard/{ifname}.conf"))) {
                for p in &c.peers {
                    if let Some(n) = &p.friendly_name {
                        names.insert(p.public_key.to_base64(), n.clone());
                    }
                }
            }
        }
        let spec = match &cfg {
            None => None,
            Some(c) => {
                let key = c
                    .interface
                    .private_key
                    .clone()
                    .context("the configuration has no PrivateKey in [Interface]")?;
                let mut peers = Vec::new();
                for p in &c.peers {
                    let endpoint = match &p.endpoint {
                        Some(e) => Some(e.resolve().with_context(|| {
                            format!(
                                "resolving the endpoint {e} of peer {}",
                                p.public_key.short()
                            )
                        })?),
                        None => None,
                    };
                    if let Some(n) = &p.friendly_name {
                        names.insert(p.public_key.to_base64(), n.clone());
                    }
                    peers.push(PeerSpec {
                        public_key: p.public_key,
                        preshared_key: p.preshared_key.clone(),
                        endpoint,
                        allowed_ips: p.allowed_ips.clone(),
                        persistent_keepalive: p.persistent_keepalive,
                    });
                }
                Some(DeviceSpec {
                    ifname: ifname.clone(),
                    private_key: key,
                    listen_port: c.interface.listen_port.unwrap_or(0),
                    peers,
                    addresses: c.interface.addresses.clone(),
                    mtu,
                    wan: opts.wan.clone(),
                    xdp_mode,
                    per_packet: opts.per_packet,
                    cpus: opts.cpus.clone(),
                    mss,
                    rekey_after_time: opts.rekey_after_time,
                })
            }
        };
        Ok(Plan {
            ifname,
            opts,
            spec,
            config: cfg,
            metrics,
            names,
        })
    }
}

fn hooks(ifname: &str, cmds: &[String], what: &str) -> anyhow::Result<()> {
    for c in cmds {
        let c = c.replace("%i", ifname);
        tracing::info!(hook = what, command = %c, "running hook");
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(&c)
            .status()
            .with_context(|| format!("{what}: {c}"))?;
        if !st.success() {
            bail!("{what} hook `{c}` failed ({st})");
        }
    }
    Ok(())
}

fn run_daemon(plan: Plan, ready: Option<std::fs::File>) -> anyhow::Result<()> {
    // Still single-threaded: pins must live in the host's mount namespace to
    // outlive this process (see wg_appliance::persist).
    if wg_appliance::persist::enter_host_mount_ns() {
        tracing::debug!("moved to PID 1's mount namespace so the BPF pins outlive the daemon");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut ready = ready;
    let r = rt.block_on(serve(plan, &mut ready));
    if let (Err(e), Some(mut f)) = (&r, ready.take()) {
        let _ = write!(f, "{e:#}");
    }
    r
}

async fn serve(plan: Plan, ready: &mut Option<std::fs::File>) -> anyhow::Result<()> {
    let ifname = plan.ifname.clone();
    std::fs::create_dir_all(UAPI_DIR).with_context(|| format!("creating {UAPI_DIR}"))?;
    let _ = std::fs::set_permissions(UAPI_DIR, std::fs::Permissions::from_mode(0o755));
    let sock_path = PathBuf::from(format!("{UAPI_DIR}/{ifname}.sock"));
    if sock_path.exists() {
        if UnixStream::connect(&sock_path).is_ok() {
            bail!("{ifname} is already running (its UAPI socket {} answers). Fix: `wg-appliance down {ifname}` first", sock_path.display());
        }
        std::fs::remove_file(&sock_path).ok();
    }
    if let Some(c) = &plan.config {
        hooks(&ifname, &c.interface.pre_up, "PreUp")?;
    }
    let daemon = match plan.spec {
        Some(spec) => Daemon::start(spec).await?,
        None => Daemon::start_empty(plan.opts.clone(), 0, &[]).await?,
    };
    let mut daemon = daemon;
    if let Some(rate) = plan.opts.handshake_rate {
        // Daemon::start takes the file's [Interface] and [Peer] parts;
        // this one comes from [Appliance] (or the flag).
        if let Err(e) = daemon.set_handshake_rate(rate) {
            daemon.shutdown().await;
            return Err(e.into());
        }
    }
    let setup = async {
        if let Some(c) = &plan.config {
            add_routes(&daemon, c).await?;
            hooks(&ifname, &c.interface.post_up, "PostUp")?;
        }
        // Root only: the socket hands out the private key.
        let old = unsafe { libc::umask(0o077) };
        let listener = tokio::net::UnixListener::bind(&sock_path);
        // SAFETY: restoring the previous mask.
        unsafe { libc::umask(old) };
        let listener = listener.with_context(|| format!("creating the UAPI socket {}", sock_path.display()))?;
        let metrics_listener = match plan.metrics {
            Some(addr) => match metrics::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(address = %addr, error = %e, "metrics endpoint not started; choose another address with --metrics or Metrics = in [Appliance]");
                    None
                }
            },
            None => None,
        };
        anyhow::Ok((listener, metrics_listener))
    }
    .await;
    let (listener, metrics_listener) = match setup {
        Ok(v) => v,
        Err(e) => {
            daemon.shutdown().await;
            return Err(e);
        }
    };
    tokio::spawn(daemon::serve_uapi(listener, daemon.commands()));
    if let Some(l) = metrics_listener {
        tracing::info!(address = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics at /metrics");
        tokio::spawn(metrics::serve(l, daemon.commands(), plan.names.clone()));
    }
    if let Some(mut f) = ready.take() {
        let _ = f.write_all(b"ok");
    }

    // Stop on SIGTERM/SIGINT, or when the UAPI socket disappears (which is
    // how `wg-quick down` and `wg-appliance down` stop a userspace daemon).
    let stop = Arc::new(Notify::new());
    {
        let stop = Arc::clone(&stop);
        let path = sock_path.clone();
        let ifname_watch = ifname.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let mut int =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => break,
                    _ = async { match int.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => break,
                    _ = tick.tick() => {
                        if !path.exists() {
                            tracing::info!("UAPI socket removed; going down");
                            break;
                        }
                        // `wg-quick down` deletes the link itself.
                        if link::ifindex(&ifname_watch).is_none() {
                            tracing::info!("interface deleted; going down");
                            break;
                        }
                    }
                }
            }
            stop.notify_one();
        });
    }
    let r = daemon.run(stop).await;
    if let Some(c) = &plan.config {
        let _ = hooks(&ifname, &c.interface.pre_down, "PreDown");
    }
    daemon.shutdown().await;
    let _ = std::fs::remove_file(&sock_path);
    if let Some(c) = &plan.config {
        let _ = hooks(&ifname, &c.interface.post_down, "PostDown");
    }
    r?;
    Ok(())
}

/// Routes for every peer's AllowedIPs through the interface, as wg-quick
/// does with `Table = auto` (a default route needs policy routing, which
/// is left to the operator: said loudly).
async fn add_routes(d: &Daemon, c: &config::Config) -> anyhow::Result<()> {
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

fn down(ifname: &str) -> anyhow::Result<()> {
    let path = PathBuf::from(format!("{UAPI_DIR}/{ifname}.sock"));
    if !path.exists() {
        bail!("{ifname} is not run by wg-appliance here (no {}). `ip link show {ifname}` tells whether it exists at all", path.display());
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

fn uapi_get(path: &Path) -> anyhow::Result<String> {
    let mut s =
        UnixStream::connect(path).with_context(|| format!("connecting to {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"get=1\n\n")?;
    let mut out = String::new();
    let mut buf = [0u8; 4096];
    while !out.ends_with("\n\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    Ok(out)
}

fn show(ifname: Option<&str>) -> anyhow::Result<()> {
    let mut names = Vec::new();
    match ifname {
        Some(i) => names.push(i.to_owned()),
        None => {
            if let Ok(dir) = std::fs::read_dir(UAPI_DIR) {
                for e in dir.flatten() {
                    if let Some(n) = e.file_name().to_str().and_then(|n| n.strip_suffix(".sock")) {
                        names.push(n.to_owned());
                    }
                }
            }
            names.sort();
        }
    }
    for name in names {
        let reply = uapi_get(Path::new(&format!("{UAPI_DIR}/{name}.sock")))?;
        println!("interface: {name}");
        for line in reply.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "private_key" => println!("  private key: (hidden)"),
                "listen_port" => println!("  listening port: {v}"),
                "fwmark" => println!("  fwmark: {v}"),
                "public_key" => println!("\npeer (hex): {v}"),
                "endpoint" => println!("  endpoint: {v}"),
                "allowed_ip" => println!("  allowed ip: {v}"),
                "last_handshake_time_sec" if v != "0" => {
                    println!("  latest handshake: {v} (unix time)")
                }
                "rx_bytes" => println!("  received: {v} B"),
                "tx_bytes" => println!("  sent: {v} B"),
                "persistent_keepalive_interval" if v != "0" => {
                    println!("  persistent keepalive: every {v} s")
                }
                _ => {}
            }
        }
        println!();
    }
    Ok(())
}

fn classify(
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
