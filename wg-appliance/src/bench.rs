//! `wg-appliance bench` (and `cargo xtask bench`): an A/B harness.
//!
//! Variants are implementation pairs — both ends of the tunnel run the same
//! implementation: wg-appliance with per-peer steering, wg-appliance with
//! per-packet steering (`--per-packet --cpus 0,1`), wireguard-go, and
//! boringtun-cli. Workloads run from namespace A (client) to namespace B
//! (server) over the tunnel addresses: TCP with 1 and 4 iperf3 streams
//! (Mbit/s the receiver got) and a small-packet UDP rate (64-byte
//! datagrams from our `sendmmsg` generator, [`udpgen`], packets per second
//! the receiver got; iperf3's one-datagram-per-call sender could not
//! saturate any tunnel here). Two more, only when
//! asked for by name, measure the server's control plane with generators
//! of ours ([`flood`]) in namespace A aimed at B's WireGuard port: `junk`
//! (malformed and unknown-index datagrams; the figure is the server
//! daemon's CPU %, lower is better, with the generator's rate and
//! wg-appliance's XDP drops per second alongside) and `handshakes`
//! (complete Noise handshakes per second from many client identities).
//!
//! Runs are interleaved (A B C D A B C D ...): each round builds a fresh
//! lab per variant (two namespaces, a veth, a daemon at each end), brings
//! the tunnel up, warms it up with an unrecorded TCP run, runs every
//! workload once and tears the lab down. The report gives median, min and
//! max per variant and workload, and ratios against a baseline computed
//! from the same run (default: the better of wireguard-go and boringtun
//! per workload). Output: a table on the terminal (also `summary.txt`),
//! `bench.json` (machine, versions, settings, every raw sample with
//! retransmits/loss and, for wg-appliance, the data path counters that
//! moved during the sample) and `bench.svg` (medians with min/max bars).
//!
//! Layout: [`stats`] (pure statistics and run order), [`lab`] (namespaces,
//! processes, cleanup), [`report`] (table and JSON), [`chart`] (SVG).

pub mod chart;
pub mod flood;
pub mod lab;
pub mod report;
pub mod stats;
pub mod udpgen;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::keys::PrivateKey;
use lab::{run_bounded, wait_until, Endpoint, Lab, Proc, Stop};

/// Tunnel and wire addresses; each lab has its own namespaces, so they
/// repeat between labs.
const OUT_A: &str = "10.201.0.1";
const OUT_B: &str = "10.201.0.2";
const IN_A: &str = "10.202.0.1";
const IN_B: &str = "10.202.0.2";
const WG_PORT: u16 = 51820;
const IPERF_PORT: &str = "5201";
/// The small-packet sink's UDP port in B.
const UDP_SINK_PORT: u16 = 5202;
/// The small-packet generator's bound: far above any tunnel here.
const UDP_MAX_PER_S: u64 = 20_000_000;
/// The server's `[Appliance] HandshakeRate` when the handshakes workload
/// runs (handshake messages per second per source address).
const HS_RATE_LIMIT: u32 = 1_000_000;
/// Bounds of the generators, per second of run time.
const JUNK_MAX_PER_S: u64 = 20_000_000;
const HS_MAX_PER_S: u64 = 1_000_000;
/// wg-appliance's metrics inside each namespace (every namespace has its
/// own loopback, so the address never collides).
const METRICS_ADDR: &str = "127.0.0.1:9586";

/// An implementation pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    Appliance,
    AppliancePerPacket,
    WireguardGo,
    Boringtun,
    /// DataPath = afxdp at both ends (issue #13's fast path).
    ApplianceAfxdp,
    /// DataPath = bpf at both ends, named so in A/B runs with the above.
    ApplianceBpf,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Appliance,
        Variant::AppliancePerPacket,
        Variant::WireguardGo,
        Variant::Boringtun,
    ];

    /// The name used on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Appliance => "appliance",
            Variant::AppliancePerPacket => "appliance-pp",
            Variant::WireguardGo => "wireguard-go",
            Variant::Boringtun => "boringtun",
            Variant::ApplianceAfxdp => "appliance-afxdp",
            Variant::ApplianceBpf => "appliance-bpf",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::Appliance => "wg-appliance per-peer",
            Variant::AppliancePerPacket => "wg-appliance per-packet",
            Variant::WireguardGo => "wireguard-go",
            Variant::Boringtun => "boringtun-cli",
            Variant::ApplianceAfxdp => "wg-appliance AF_XDP fast path",
            Variant::ApplianceBpf => "wg-appliance BPF path",
        }
    }

    pub fn is_appliance(self) -> bool {
        matches!(
            self,
            Variant::Appliance
                | Variant::AppliancePerPacket
                | Variant::ApplianceAfxdp
                | Variant::ApplianceBpf
        )
    }

    /// `WG_APPLIANCE_DATA_PATH` for the variant's daemons.
    fn data_path(self) -> Option<&'static str> {
        match self {
            Variant::ApplianceAfxdp => Some("afxdp"),
            Variant::ApplianceBpf => Some("bpf"),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "appliance" | "wg-appliance" | "per-peer" | "appliance-per-peer" => Variant::Appliance,
            "appliance-pp" | "per-packet" | "appliance-per-packet" => Variant::AppliancePerPacket,
            "wireguard-go" | "wggo" | "go" => Variant::WireguardGo,
            "boringtun" | "boringtun-cli" => Variant::Boringtun,
            "appliance-afxdp" | "afxdp" => Variant::ApplianceAfxdp,
            "appliance-bpf" | "bpf" => Variant::ApplianceBpf,
            other => bail!(
                "unknown variant {other:?}; expected appliance, appliance-pp, appliance-afxdp, appliance-bpf, wireguard-go or boringtun"
            ),
        })
    }
}

/// What runs through the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Tcp1,
    Tcp4,
    Udp64,
    /// Malformed datagrams and unknown-index transport data at the server's
    /// port (not through the tunnel); the figure is the server's CPU.
    Junk,
    /// Complete Noise handshakes per second from many client identities.
    Handshakes,
}

impl Workload {
    /// The default set (the tunnel throughput workloads).
    pub const ALL: [Workload; 3] = [Workload::Tcp1, Workload::Tcp4, Workload::Udp64];
    /// Every workload, including those only run when asked for.
    pub const EVERY: [Workload; 5] = [
        Workload::Tcp1,
        Workload::Tcp4,
        Workload::Udp64,
        Workload::Junk,
        Workload::Handshakes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Tcp1 => "tcp1",
            Workload::Tcp4 => "tcp4",
            Workload::Udp64 => "udp64",
            Workload::Junk => "junk",
            Workload::Handshakes => "handshakes",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Workload::Tcp1 => "TCP, 1 stream",
            Workload::Tcp4 => "TCP, 4 streams",
            Workload::Udp64 => "UDP, 64-byte datagrams",
            Workload::Junk => "Junk flood at the server's port, server CPU (lower is better)",
            Workload::Handshakes => "Handshakes completed per second",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Workload::Tcp1 | Workload::Tcp4 => "Mbit/s",
            Workload::Udp64 => "kpps",
            Workload::Junk => "CPU %, lower is better",
            Workload::Handshakes => "handshakes/s",
        }
    }

    /// Whether a higher figure is better (picks the baseline and reads the
    /// ratio); false for the junk flood's CPU cost.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Workload::Junk)
    }

    fn through_tunnel(self) -> bool {
        matches!(self, Workload::Tcp1 | Workload::Tcp4 | Workload::Udp64)
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "tcp1" | "tcp" => Workload::Tcp1,
            "tcp4" => Workload::Tcp4,
            "udp64" | "udp" | "udp-small" => Workload::Udp64,
            "junk" | "junk-flood" => Workload::Junk,
            "handshakes" | "hs" | "handshake" => Workload::Handshakes,
            other => {
                bail!("unknown workload {other:?}; expected tcp1, tcp4, udp64, junk or handshakes")
            }
        })
    }

    /// iperf3 client options besides the target and duration.
    fn iperf_args(self) -> &'static [&'static str] {
        match self {
            Workload::Tcp1 => &[],
            Workload::Tcp4 => &["-P", "4"],
            Workload::Udp64 | Workload::Junk | Workload::Handshakes => &[],
        }
    }
}

/// `wg-appliance bench` options.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Rounds; each runs every variant once, interleaved (A B C D A B ...).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Seconds of unrecorded TCP traffic after each tunnel comes up (0: none).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Variants, comma-separated: appliance, appliance-pp, wireguard-go,
    /// boringtun (default: these four), appliance-afxdp, appliance-bpf
    /// (`DataPath` forced at both ends).
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    /// Workloads, comma-separated: tcp1, tcp4 (iperf3), udp64 (64-byte
    /// datagrams from a sendmmsg generator: the default set), and
    /// junk (a flood of malformed/unknown-index datagrams at the server's
    /// port; figure: the server daemon's CPU %, lower is better; also the
    /// generator's rate and, for wg-appliance, XDP drops per second) and
    /// handshakes (complete handshakes per second from --hs-peers client
    /// identities). junk and handshakes are not in the default set: they
    /// measure the control plane, not the tunnel; ask for them by name.
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// handshakes: client identities (each a peer of the server).
    #[arg(long, default_value_t = 512)]
    pub hs_peers: usize,
    /// handshakes: initiations in flight (64 keeps both servers' queues
    /// busy on two cores and stays under wireguard-go's under-load mark of
    /// 128 queued).
    #[arg(long, default_value_t = 64)]
    pub hs_window: usize,
    /// Variant the ratios are computed against (default: the better of
    /// wireguard-go and boringtun, per workload).
    #[arg(long)]
    pub baseline: Option<String>,
    /// Output directory (default: target/bench/<UTC timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Preset for the demo: 1 round, 2 s, TCP 1 stream, all four variants,
    /// 1 s warm-up (explicit --variants/--workloads still apply).
    #[arg(long)]
    pub quick: bool,
    /// The wg-appliance binary that runs the daemons (default: this
    /// executable when it is wg-appliance, else target/release/wg-appliance).
    #[arg(long)]
    pub appliance_bin: Option<PathBuf>,
    /// CPUs for the per-packet variant's --cpus.
    #[arg(long, default_value = "0,1")]
    pub per_packet_cpus: String,
    /// Tunnel MTU of every variant's interfaces (a run-level dimension:
    /// compare MTUs across runs; variants are compared within one).
    #[arg(long, default_value_t = 1420)]
    pub mtu: u16,
    /// Extra peers configured on both ends of every tunnel before measuring
    /// (each with its own /32), to see what a large peer table costs
    /// per packet: e.g. 10000 against a run with 0.
    #[arg(long, default_value_t = 0)]
    pub extra_peers: usize,
}

impl BenchArgs {
    /// Defaults as the command line gives them (for in-process callers).
    pub fn new() -> Self {
        Self {
            rounds: 3,
            duration: 5,
            warmup: 2,
            variants: Vec::new(),
            workloads: Vec::new(),
            hs_peers: 512,
            hs_window: 64,
            baseline: None,
            out: None,
            quick: false,
            appliance_bin: None,
            per_packet_cpus: "0,1".into(),
            mtu: 1420,
            extra_peers: 0,
        }
    }
}

impl Default for BenchArgs {
    fn default() -> Self {
        Self::new()
    }
}

/// The settings a run used, after presets and defaults.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub rounds: usize,
    pub duration_s: u64,
    pub warmup_s: u64,
    pub variants: Vec<Variant>,
    pub workloads: Vec<Workload>,
    pub hs_peers: usize,
    pub hs_window: usize,
    pub baseline: Option<Variant>,
    /// Not in the JSON: committed results name binaries by version, never
    /// by a path of the machine that ran them.
    #[serde(skip)]
    pub appliance_bin: PathBuf,
    pub per_packet_cpus: String,
    pub mtu: u16,
    pub extra_peers: usize,
    #[serde(skip)]
    pub out: PathBuf,
}

impl Settings {
    fn from_args(a: &BenchArgs) -> Result<Self> {
        let mut rounds = a.rounds;
        let mut duration = a.duration;
        let mut warmup = a.warmup;
        let mut variants: Vec<Variant> = a
            .variants
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| Variant::parse(s))
            .collect::<Result<_>>()?;
        let mut workloads: Vec<Workload> = a
            .workloads
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| Workload::parse(s))
            .collect::<Result<_>>()?;
        if a.quick {
            rounds = 1;
            duration = 2;
            warmup = warmup.min(1);
            if workloads.is_empty() {
                workloads = vec![Workload::Tcp1];
            }
        }
        if variants.is_empty() {
            variants = Variant::ALL.to_vec();
        }
        if workloads.is_empty() {
            workloads = Workload::ALL.to_vec();
        }
        variants.dedup();
        workloads.dedup();
        if a.hs_peers == 0 || a.hs_window == 0 || a.hs_peers > 4096 {
            bail!("--hs-peers must be 1-4096 and --hs-window at least 1");
        }
        if rounds == 0 || duration == 0 {
            bail!("--rounds and --duration must be at least 1");
        }
        let baseline = a.baseline.as_deref().map(Variant::parse).transpose()?;
        if let Some(b) = baseline {
            if !variants.contains(&b) {
                bail!("--baseline {} is not among the variants run", b.name());
            }
        }
        let appliance_bin = match &a.appliance_bin {
            Some(p) => p.clone(),
            None => default_appliance_bin(),
        };
        if variants.iter().any(|v| v.is_appliance()) && !appliance_bin.exists() {
            bail!(
                "{} does not exist; build it (cargo build --release -p wg-appliance) or pass --appliance-bin",
                appliance_bin.display()
            );
        }
        let out = match &a.out {
            Some(p) => p.clone(),
            None => PathBuf::from("target/bench").join(utc_stamp()),
        };
        Ok(Self {
            rounds,
            duration_s: duration,
            warmup_s: warmup,
            variants,
            workloads,
            hs_peers: a.hs_peers,
            hs_window: a.hs_window,
            baseline,
            appliance_bin,
            per_packet_cpus: a.per_packet_cpus.clone(),
            mtu: a.mtu,
            extra_peers: a.extra_peers,
            out,
        })
    }
}

fn default_appliance_bin() -> PathBuf {
    if let Ok(me) = std::env::current_exe() {
        if me.file_name().is_some_and(|n| n == "wg-appliance") {
            return me;
        }
    }
    PathBuf::from("target/release/wg-appliance")
}

/// One measured run.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub round: usize,
    pub variant: Variant,
    pub workload: Workload,
    /// In `unit`; `None` when the run failed (see `error`).
    pub value: Option<f64>,
    pub unit: &'static str,
    /// Receiver throughput in Mbit/s (for UDP too).
    pub mbit_s: Option<f64>,
    /// TCP: sender retransmissions.
    pub retransmits: Option<u64>,
    /// UDP: datagrams sent and lost (as the receiver counted them).
    pub udp_sent: Option<u64>,
    pub udp_lost: Option<u64>,
    /// wg-appliance only: data path counters that moved during the run,
    /// `<side>:<metric>{labels}` → delta (side `a` is the client's end).
    pub counters: BTreeMap<String, f64>,
    /// junk and handshakes: the generator's and the server's figures
    /// (`gen_pps`, `gen_sent`, `server_cpu_pct`, `xdp_drop_pps`,
    /// `host_busy_pct`, `host_softirq_pct`, `hs_*`; see `flood_sample`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
    /// The 1-minute load average right after the run. It includes the
    /// bench's own load (iperf3, userspace daemons' threads); a figure far
    /// above the other runs' points at other tenants of the machine.
    pub loadavg_1m: Option<f64>,
    pub error: Option<String>,
}

/// What a bench run produced.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub settings: Settings,
    pub machine: report::Machine,
    pub samples: Vec<Sample>,
    pub summary: Vec<report::Row>,
    pub json: PathBuf,
    pub svg: PathBuf,
    pub table: String,
}

/// Runs the bench; writes the JSON, the SVG and `summary.txt` under the
/// output directory and prints the table. Per-run failures are recorded
/// in the samples and do not stop the bench; an interrupt (SIGINT,
/// SIGTERM) does, after writing what was measured so far.
pub fn run(args: &BenchArgs) -> Result<Outcome> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench needs root (network namespaces, XDP). Fix: run it with sudo");
    }
    let settings = Settings::from_args(args)?;
    std::fs::create_dir_all(settings.out.join("logs"))
        .with_context(|| format!("creating {}", settings.out.display()))?;
    lab::sweep_stale();
    let stop = Stop::default();
    let sig_ids: Vec<_> = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM]
        .into_iter()
        .filter_map(|s| signal_hook::flag::register(s, Arc::clone(&stop.0)).ok())
        .collect();
    let r = run_inner(&settings, &stop);
    for id in sig_ids {
        signal_hook::low_level::unregister(id);
    }
    r
}

fn run_inner(settings: &Settings, stop: &Stop) -> Result<Outcome> {
    let machine = report::Machine::probe(&settings.appliance_bin);
    println!(
        "bench: {} round(s) × {} variant(s) × {} workload(s), {} s per run (+{} s warm-up per lab); output in {}",
        settings.rounds,
        settings.variants.len(),
        settings.workloads.len(),
        settings.duration_s,
        settings.warmup_s,
        settings.out.display()
    );
    println!("machine: {}", machine.one_line());
    if let Some(busy) = machine.cpu_busy_before_pct.filter(|b| *b > 15.0) {
        eprintln!(
            "warning: the CPUs were {busy:.0}% busy before the bench started (loadavg {}); other load skews every figure",
            machine.loadavg_start
        );
    }
    let mut samples = Vec::new();
    let mut interrupted = false;
    let order = stats::schedule(settings.variants.len(), settings.rounds);
    for (i, slot) in order.iter().enumerate() {
        let v = settings.variants[slot.variant];
        println!(
            "[{}/{}] round {} {}",
            i + 1,
            order.len(),
            slot.round + 1,
            v.label()
        );
        let r = run_variant(settings, stop, slot.round, v, &mut samples);
        if let Err(e) = r {
            if stop.requested() {
                interrupted = true;
                break;
            }
            eprintln!("  {} round {}: {e:#}", v.label(), slot.round + 1);
            // Every workload this lab did not measure is recorded as failed.
            for w in &settings.workloads {
                if !samples
                    .iter()
                    .any(|s: &Sample| s.round == slot.round && s.variant == v && s.workload == *w)
                {
                    samples.push(failed(slot.round, v, *w, &e));
                }
            }
        }
        if stop.requested() {
            interrupted = true;
            break;
        }
    }
    let summary = report::summarize(settings, &samples);
    let table = report::table(settings, &summary, &samples);
    println!("\n{table}");
    let json = settings.out.join("bench.json");
    let svg = settings.out.join("bench.svg");
    report::write_json(&json, settings, &machine, &samples, &summary, interrupted)?;
    std::fs::write(settings.out.join("summary.txt"), &table)?;
    chart::draw(&svg, settings, &summary, &machine)?;
    println!("wrote {}, {}", json.display(), svg.display());
    if interrupted {
        bail!(
            "interrupted; the labs were torn down and the partial results written to {}",
            settings.out.display()
        );
    }
    Ok(Outcome {
        settings: settings.clone(),
        machine,
        samples,
        summary,
        json,
        svg,
        table,
    })
}

fn failed(round: usize, variant: Variant, workload: Workload, e: &anyhow::Error) -> Sample {
    Sample {
        round,
        variant,
        workload,
        value: None,
        unit: workload.unit(),
        mbit_s: None,
        retransmits: None,
        udp_sent: None,
        udp_lost: None,
        counters: BTreeMap::new(),
        extra: BTreeMap::new(),
        loadavg_1m: loadavg_1m(),
        error: Some(format!("{e:#}")),
    }
}

/// One lab: build, bring up, warm up, every workload once, tear down.
fn run_variant(
    settings: &Settings,
    stop: &Stop,
    round: usize,
    v: Variant,
    samples: &mut Vec<Sample>,
) -> Result<()> {
    let mut lab = Lab::new(&format!("{OUT_A}/24"), &format!("{OUT_B}/24"))?;
    let key_a = PrivateKey::generate();
    let key_b = PrivateKey::generate();
    let log = |side: &str| {
        settings
            .out
            .join("logs")
            .join(format!("r{}-{}-{side}.log", round + 1, v.name()))
    };
    // B first, so A's first handshake initiation finds it listening.
    let b = start_endpoint(settings, stop, &lab, false, v, &key_b, &key_a, &log("b"))?;
    lab.b_end = Some(b);
    let a = start_endpoint(settings, stop, &lab, true, v, &key_a, &key_b, &log("a"))?;
    lab.a_end = Some(a);
    if settings.extra_peers > 0 {
        add_extra_peers(settings, &lab)?;
    }
    wait_until(
        stop,
        Duration::from_secs(15),
        "a ping through the tunnel",
        || lab.a.exec("ping", &["-c", "1", "-W", "1", IN_B]).is_ok(),
    )
    .with_context(|| format!("{} tunnel never came up", v.label()))?;
    if settings.warmup_s > 0 {
        iperf(stop, &lab, Workload::Tcp1, settings.warmup_s).context("warm-up run")?;
    }
    let mut hs_ids: Option<Vec<crate::noise::Identity>> = None;
    for &w in &settings.workloads {
        stop.check()?;
        if !w.through_tunnel() {
            let s = flood_sample(settings, stop, &lab, round, v, w, &key_b, &mut hs_ids);
            samples.push(s?);
            continue;
        }
        let before = if v.is_appliance() {
            Some(scrape_both(&lab))
        } else {
            None
        };
        let r = match w {
            Workload::Udp64 => udp_small(stop, &lab, settings.duration_s),
            _ => iperf(stop, &lab, w, settings.duration_s),
        };
        let counters = match (before, v.is_appliance()) {
            (Some(b), true) => counter_delta(&b, &scrape_both(&lab)),
            _ => BTreeMap::new(),
        };
        let sample = match r {
            Ok(m) => {
                let value = match w {
                    Workload::Udp64 => m.pps / 1000.0,
                    _ => m.mbit_s,
                };
                println!(
                    "  {:<6} {:>10.1} {}{}",
                    w.name(),
                    value,
                    w.unit(),
                    match w {
                        Workload::Udp64 => format!(
                            "  (sent {} datagrams, lost {})",
                            m.udp_sent.unwrap_or(0),
                            m.udp_lost.unwrap_or(0)
                        ),
                        _ => format!("  (retransmits {})", m.retransmits.unwrap_or(0)),
                    }
                );
                Sample {
                    round,
                    variant: v,
                    workload: w,
                    value: Some(value),
                    unit: w.unit(),
                    mbit_s: Some(m.mbit_s),
                    retransmits: m.retransmits,
                    udp_sent: m.udp_sent,
                    udp_lost: m.udp_lost,
                    counters,
                    extra: BTreeMap::new(),
                    loadavg_1m: loadavg_1m(),
                    error: None,
                }
            }
            Err(e) => {
                if stop.requested() {
                    return Err(e);
                }
                eprintln!("  {:<6} failed: {e:#}", w.name());
                let mut s = failed(round, v, w, &e);
                s.counters = counters;
                s
            }
        };
        samples.push(sample);
    }
    // Drop order (Lab's fields): daemons, namespaces, files.
    drop(lab);
    Ok(())
}

/// One junk or handshakes run, as a sample (a failure is recorded in it,
/// unless the bench was interrupted).
#[allow(clippy::too_many_arguments)]
fn flood_sample(
    settings: &Settings,
    stop: &Stop,
    lab: &Lab,
    round: usize,
    v: Variant,
    w: Workload,
    server_key: &PrivateKey,
    hs_ids: &mut Option<Vec<crate::noise::Identity>>,
) -> Result<Sample> {
    match flood_run(settings, lab, v, w, server_key, hs_ids) {
        Ok(f) => {
            println!(
                "  {:<6} {:>10.1} {}  ({})",
                w.name(),
                f.value,
                w.unit(),
                f.line
            );
            Ok(Sample {
                round,
                variant: v,
                workload: w,
                value: Some(f.value),
                unit: w.unit(),
                mbit_s: None,
                retransmits: None,
                udp_sent: None,
                udp_lost: None,
                counters: f.counters,
                extra: f.extra,
                loadavg_1m: loadavg_1m(),
                error: None,
            })
        }
        Err(e) => {
            if stop.requested() {
                return Err(e);
            }
            eprintln!("  {:<6} failed: {e:#}", w.name());
            Ok(failed(round, v, w, &e))
        }
    }
}

struct Flooded {
    value: f64,
    extra: BTreeMap<String, f64>,
    counters: BTreeMap<String, f64>,
    line: String,
}

/// The generator of `w` on a thread in A against B's WireGuard port, with
/// B's daemon CPU (its process tree's utime + stime over the wall time),
/// the host's CPU and, for wg-appliance, B's counters measured around it.
fn flood_run(
    settings: &Settings,
    lab: &Lab,
    v: Variant,
    w: Workload,
    server_key: &PrivateKey,
    hs_ids: &mut Option<Vec<crate::noise::Identity>>,
) -> Result<Flooded> {
    use std::fmt::Write as _;
    let target: std::net::SocketAddrV4 = format!("{OUT_B}:{WG_PORT}").parse()?;
    let dur = Duration::from_secs(settings.duration_s);
    let b_end = lab.b_end.as_ref().context("no server end")?;
    let pid = b_end
        .proc
        .pid()
        .context("the server's daemon is not running")?;
    if w == Workload::Handshakes && hs_ids.is_none() {
        // Client identities, each a peer of the server with its own /32.
        let keys: Vec<PrivateKey> = (0..settings.hs_peers)
            .map(|_| PrivateKey::generate())
            .collect();
        let mut conf = String::new();
        for (i, k) in keys.iter().enumerate() {
            let _ = writeln!(
                conf,
                "[Peer]\nPublicKey = {}\nAllowedIPs = 10.203.{}.{}/32\n",
                k.public_key().to_base64(),
                i / 256,
                i % 256
            );
        }
        let f = lab
            .dir
            .write(&format!("{}-peers.conf", b_end.ifname), &conf)?;
        lab.b
            .exec("wg", &["addconf", &b_end.ifname, &f.display().to_string()])
            .context("adding the handshake identities to the server")?;
        // A source address per identity in A, routed from B over the veth.
        let mut batch = String::new();
        for ip in hs_sources(settings.hs_peers) {
            let _ = writeln!(batch, "addr add {ip}/32 dev {}", lab.veth_a);
        }
        let bf = lab.dir.write("hs-sources.batch", &batch)?;
        lab.a
            .ip(&["-batch", &bf.display().to_string()])
            .context("adding the handshake source addresses")?;
        lab.b
            .ip(&["route", "add", HS_SOURCE_NET, "dev", &lab.veth_b])
            .context("routing the handshake source addresses")?;
        *hs_ids = Some(keys.iter().map(crate::noise::Identity::new).collect());
    }
    let before = v.is_appliance().then(|| scrape_both(lab));
    let tck = flood::clk_tck();
    let host0 = flood::host_cpu();
    let cpu0 =
        flood::tree_cpu_ticks(pid).context("reading the server daemon's /proc/<pid>/stat")?;
    let t0 = std::time::Instant::now();
    let mut extra = BTreeMap::new();
    let (value, gen_elapsed, mut line) = match w {
        Workload::Junk => {
            let max = JUNK_MAX_PER_S * settings.duration_s;
            let r = lab.a.enter(|| flood::junk(target.into(), dur, max))?;
            extra.insert("gen_sent".into(), r.sent as f64);
            extra.insert("gen_pps".into(), r.rate());
            extra.insert("gen_send_errors".into(), r.send_errors as f64);
            (
                None,
                r.elapsed,
                format!("generator {:.0} kpps", r.rate() / 1e3),
            )
        }
        _ => {
            let ids = hs_ids.as_deref().context("no identities")?;
            let max = HS_MAX_PER_S * settings.duration_s;
            let pk = server_key.public_key();
            let win = settings.hs_window;
            let srcs = hs_sources(settings.hs_peers);
            let r = lab
                .a
                .enter(|| flood::handshakes(target, pk, ids, &srcs, win, dur, max))?;
            extra.insert("hs_initiations".into(), r.initiations as f64);
            extra.insert("hs_completed".into(), r.completed as f64);
            extra.insert("hs_rejected".into(), r.rejected as f64);
            extra.insert("hs_cookie_replies".into(), r.cookie_replies as f64);
            extra.insert("hs_timed_out".into(), r.timed_out as f64);
            extra.insert(
                "gen_pps".into(),
                flood::per_second(r.initiations, r.elapsed),
            );
            if r.completed == 0 {
                bail!(
                    "no handshake completed ({} initiations, {} cookie replies, {} timed out)",
                    r.initiations,
                    r.cookie_replies,
                    r.timed_out
                );
            }
            (
                Some(r.rate()),
                r.elapsed,
                format!(
                    "{} initiations, {} cookie replies, {} timed out",
                    r.initiations, r.cookie_replies, r.timed_out
                ),
            )
        }
    };
    let wall = t0.elapsed();
    let cpu1 = flood::tree_cpu_ticks(pid).context("the server's daemon exited during the run")?;
    let server_cpu =
        flood::cpu_pct(cpu1.saturating_sub(cpu0), tck, wall).context("no time elapsed")?;
    extra.insert("server_cpu_pct".into(), server_cpu);
    let _ = write!(line, "; server daemon {server_cpu:.1}% CPU");
    if let (Some(a), Some(b)) = (host0, flood::host_cpu()) {
        if let Some((busy, softirq)) = flood::host_pct(a, b) {
            extra.insert("host_busy_pct".into(), busy);
            extra.insert("host_softirq_pct".into(), softirq);
            let _ = write!(line, "; host {busy:.0}% busy, {softirq:.0}% softirq");
        }
    }
    let counters = match before {
        Some(b) => counter_delta(&b, &scrape_both(lab)),
        None => BTreeMap::new(),
    };
    if v.is_appliance() {
        let drops = server_drops(&counters);
        // `+ 0.0`: an empty f64 sum is -0.0.
        let pps = drops.max(0.0) / gen_elapsed.as_secs_f64().max(1e-9) + 0.0;
        extra.insert("xdp_drop_pps".into(), pps);
        let _ = write!(line, "; XDP drops {:.0} kpps", pps / 1e3);
    }
    Ok(Flooded {
        value: value.unwrap_or(server_cpu),
        extra,
        counters,
        line,
    })
}

/// The handshake identities' source addresses (one each) in A.
const HS_SOURCE_NET: &str = "10.204.0.0/16";

/// `n` addresses in [`HS_SOURCE_NET`]: 10.204.<i / 250>.<i % 250 + 1>.
fn hs_sources(n: usize) -> Vec<std::net::Ipv4Addr> {
    (0..n)
        .map(|i| std::net::Ipv4Addr::new(10, 204, (i / 250) as u8, (i % 250 + 1) as u8))
        .collect()
}

/// Packets the server end (`b:`) dropped, all reasons.
fn server_drops(counters: &BTreeMap<String, f64>) -> f64 {
    counters
        .iter()
        .filter(|(k, _)| k.starts_with("b:wg_appliance_dropped_packets_total"))
        .map(|(_, v)| v)
        .sum()
}

/// `settings.extra_peers` dummy peers on both ends, each with its own /32
/// in 100.64.0.0/10, configured with `wg addconf` like any peer.
fn add_extra_peers(settings: &Settings, lab: &Lab) -> Result<()> {
    use std::fmt::Write as _;
    for (ns, end) in [(&lab.a, &lab.a_end), (&lab.b, &lab.b_end)] {
        let end = end.as_ref().context("tunnel end not started")?;
        let mut conf = String::new();
        for i in 0..settings.extra_peers {
            let _ = writeln!(
                conf,
                "[Peer]\nPublicKey = {}\nAllowedIPs = 100.{}.{}.{}/32\n",
                PrivateKey::generate().public_key().to_base64(),
                64 + (i >> 16) % 64,
                (i >> 8) & 0xff,
                i & 0xff
            );
        }
        let f = lab
            .dir
            .write(&format!("{}-extra.conf", end.ifname), &conf)?;
        ns.exec("wg", &["addconf", &end.ifname, &f.display().to_string()])
            .with_context(|| format!("adding {} extra peers", settings.extra_peers))?;
    }
    Ok(())
}

/// Starts the daemon of one end and configures it with `wg set`, an
/// address and the link up.
#[allow(clippy::too_many_arguments)]
fn start_endpoint(
    settings: &Settings,
    stop: &Stop,
    lab: &Lab,
    side_a: bool,
    v: Variant,
    key: &PrivateKey,
    peer: &PrivateKey,
    log: &Path,
) -> Result<Endpoint> {
    let (ns, veth, inner, peer_out, peer_in) = if side_a {
        (&lab.a, &lab.veth_a, IN_A, OUT_B, IN_B)
    } else {
        (&lab.b, &lab.veth_b, IN_B, OUT_A, IN_A)
    };
    let ifname = lab::unique_name(if side_a { "x" } else { "y" });
    let bin = settings.appliance_bin.display().to_string();
    let proc = match v {
        Variant::Appliance
        | Variant::AppliancePerPacket
        | Variant::ApplianceAfxdp
        | Variant::ApplianceBpf => {
            let mtu = settings.mtu.to_string();
            let mut args = vec![
                "-f",
                &ifname,
                "--wan",
                veth,
                "--metrics",
                METRICS_ADDR,
                "--mtu",
                &mtu,
            ];
            // The handshakes workload: the server's XDP must not rate-limit
            // handshake messages from the one client address (default
            // 20/s per source), which only a configuration file sets
            // (`[Appliance] HandshakeRate`); `up <ifname>.conf` with just
            // the private key, then configured with `wg` as usual.
            let conf;
            if !side_a && settings.workloads.contains(&Workload::Handshakes) {
                conf = lab
                    .dir
                    .write(
                        &format!("{ifname}.conf"),
                        &format!(
                            "[Interface]\nPrivateKey = {}\n\n[Appliance]\nHandshakeRate = {HS_RATE_LIMIT}\n",
                            &*key.to_base64()
                        ),
                    )?
                    .display()
                    .to_string();
                args.splice(0..2, ["up", conf.as_str(), "-f"]);
            }
            if v == Variant::AppliancePerPacket {
                args.extend(["--per-packet", "--cpus", &settings.per_packet_cpus]);
            }
            let env: Vec<(&str, &str)> = v
                .data_path()
                .map(|p| ("WG_APPLIANCE_DATA_PATH", p))
                .into_iter()
                .collect();
            Proc::spawn(ns, &bin, &args, &env, Some(log), false)?
        }
        Variant::WireguardGo => Proc::spawn(
            ns,
            "wireguard-go",
            &["-f", &ifname],
            &[("WG_SUDO", "1")],
            Some(log),
            // wireguard-go exits on SIGTERM; boringtun-cli ignores it.
            false,
        )?,
        Variant::Boringtun => Proc::spawn(
            ns,
            &find_tool("boringtun-cli", &settings.appliance_bin),
            &["-f", "--disable-drop-privileges", &ifname],
            &[("WG_SUDO", "1")],
            Some(log),
            true,
        )?,
    };
    let mut end = Endpoint { ifname, proc };
    let sock = format!("/var/run/wireguard/{}.sock", end.ifname);
    let mut dead = None;
    wait_until(
        stop,
        Duration::from_secs(30),
        "the WireGuard interface and its UAPI socket",
        || {
            if let Err(e) = end.proc.check_alive() {
                dead = Some(e);
                return true;
            }
            Path::new(&sock).exists() && ns.ip(&["link", "show", &end.ifname]).is_ok()
        },
    )
    .with_context(|| format!("starting {} (log: {})", v.label(), log.display()))?;
    if let Some(e) = dead {
        return Err(e).with_context(|| format!("log: {}", log.display()));
    }
    let key_file = lab.dir.write(
        &format!("{}.key", end.ifname),
        &format!("{}\n", &*key.to_base64()),
    )?;
    let kf = key_file.display().to_string();
    let pk = peer.public_key().to_base64();
    let port = WG_PORT.to_string();
    let ep = format!("{peer_out}:{WG_PORT}");
    let allowed = format!("{peer_in}/32");
    ns.exec(
        "wg",
        &[
            "set",
            &end.ifname,
            "private-key",
            &kf,
            "listen-port",
            &port,
            "peer",
            &pk,
            "endpoint",
            &ep,
            "allowed-ips",
            &allowed,
        ],
    )?;
    let _ = std::fs::remove_file(&key_file);
    ns.ip(&["addr", "add", &format!("{inner}/24"), "dev", &end.ifname])?;
    ns.ip(&[
        "link",
        "set",
        &end.ifname,
        "mtu",
        &settings.mtu.to_string(),
        "up",
    ])?;
    end.proc.check_alive()?;
    Ok(end)
}

struct Measured {
    mbit_s: f64,
    pps: f64,
    retransmits: Option<u64>,
    udp_sent: Option<u64>,
    udp_lost: Option<u64>,
}

/// One iperf3 run: server in B (`-s -1`), client in A sending to B's
/// tunnel address; the receiver's figures.
fn iperf(stop: &Stop, lab: &Lab, w: Workload, secs: u64) -> Result<Measured> {
    let mut server = Proc::spawn(
        &lab.b,
        "iperf3",
        &["-s", "-1", "-p", IPERF_PORT],
        &[],
        None,
        true,
    )?;
    wait_until(
        stop,
        Duration::from_secs(5),
        "the iperf3 server to listen",
        || {
            lab.b
                .exec("ss", &["-Hltn", "sport", "=", &format!(":{IPERF_PORT}")])
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false)
        },
    )?;
    let t = secs.to_string();
    let mut args = vec![
        "-c",
        IN_B,
        "-p",
        IPERF_PORT,
        "-t",
        &t,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    args.extend_from_slice(w.iperf_args());
    let out = run_bounded(
        stop,
        &lab.a,
        "iperf3",
        &args,
        Duration::from_secs(secs + 20),
    )?;
    server.stop();
    parse_iperf(w, &out.stdout).with_context(|| {
        format!(
            "iperf3 {}: exit {}, stderr: {}",
            args.join(" "),
            if out.success { "ok" } else { "failed" },
            out.stderr.trim()
        )
    })
}

fn parse_iperf(w: Workload, stdout: &str) -> Result<Measured> {
    let json: serde_json::Value =
        serde_json::from_str(stdout).with_context(|| format!("no JSON: {}", stdout.trim()))?;
    if let Some(e) = json.get("error") {
        bail!("{e}");
    }
    let end = &json["end"];
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let u = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let recv = &end["sum_received"];
    let bps = f(&recv["bits_per_second"]);
    Ok(match w {
        Workload::Tcp1 | Workload::Tcp4 => Measured {
            mbit_s: bps / 1e6,
            pps: 0.0,
            retransmits: Some(u(&end["sum_sent"]["retransmits"])),
            udp_sent: None,
            udp_lost: None,
        },
        Workload::Udp64 | Workload::Junk | Workload::Handshakes => {
            bail!("{} is not an iperf3 workload", w.name())
        }
    })
}

/// Payload of the small-packet workload's datagrams.
const UDP_SMALL_LEN: usize = 64;

/// The small-packet workload: [`udpgen::blast`] in A to the sink in B over
/// the tunnel for `secs`; the figure is what the sink counted over the
/// sender's time (a short drain after the sender stops lets the last
/// datagrams in flight arrive).
fn udp_small(stop: &Stop, lab: &Lab, secs: u64) -> Result<Measured> {
    let target: std::net::SocketAddr = format!("{IN_B}:{UDP_SINK_PORT}").parse()?;
    let rx = lab.b.enter(|| udpgen::sink(target))?;
    let tx = lab.a.enter(|| udpgen::source(target))?;
    let done = std::sync::atomic::AtomicBool::new(false);
    let (sent, got) = std::thread::scope(|s| {
        let h = s.spawn(|| udpgen::count(&rx, &done));
        let sent = udpgen::blast(
            &tx,
            UDP_SMALL_LEN,
            Duration::from_secs(secs),
            UDP_MAX_PER_S * secs,
            &stop.0,
        );
        std::thread::sleep(Duration::from_millis(300));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (sent, h.join().unwrap_or(0))
    });
    stop.check()?;
    if got == 0 {
        bail!(
            "no datagram arrived at {target} ({} sent, {} failed sendmmsg calls)",
            sent.datagrams,
            sent.errors
        );
    }
    let t = sent.elapsed.as_secs_f64().max(1e-9);
    Ok(Measured {
        mbit_s: got as f64 * UDP_SMALL_LEN as f64 * 8.0 / t / 1e6,
        pps: got as f64 / t,
        retransmits: None,
        udp_sent: Some(sent.datagrams),
        udp_lost: Some(sent.datagrams.saturating_sub(got)),
    })
}

/// Both ends' metrics, prefixed `a:`/`b:`; an end that does not answer
/// contributes nothing.
fn scrape_both(lab: &Lab) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for (side, ns) in [("a", &lab.a), ("b", &lab.b)] {
        if let Ok(text) = lab::scrape_metrics(ns, METRICS_ADDR) {
            for (k, v) in parse_prometheus(&text) {
                // Interface names are unique per lab; drop them so keys
                // add up across rounds.
                let k = strip_label(&k, "interface");
                if k.starts_with("wg_appliance_dropped_packets_total")
                    || k.starts_with("wg_appliance_datapath_packets_total")
                    || k.starts_with("wg_appliance_cpu_packets_total")
                    || k.starts_with("wg_appliance_afxdp_")
                {
                    m.insert(format!("{side}:{k}"), v);
                }
            }
        }
    }
    m
}

/// `name{a="x",interface="y"}` without the `interface` label.
fn strip_label(key: &str, label: &str) -> String {
    let Some((name, rest)) = key.split_once('{') else {
        return key.to_owned();
    };
    let inner = rest.trim_end_matches('}');
    let kept: Vec<&str> = inner
        .split(',')
        .filter(|kv| !kv.starts_with(&format!("{label}=")))
        .collect();
    if kept.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{}}}", kept.join(","))
    }
}

/// `name{labels} value` lines of the Prometheus text format.
pub fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The counters that moved between two scrapes.
fn counter_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

fn loadavg_1m() -> Option<f64> {
    report::loadavg().split_whitespace().next()?.parse().ok()
}

/// `tool` from PATH, else from the project's tools/bin (where `cargo xtask
/// setup` installs boringtun-cli) next to the workspace of `appliance_bin`
/// or the current directory.
pub fn find_tool(tool: &str, appliance_bin: &Path) -> String {
    let in_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if in_path {
        return tool.to_owned();
    }
    let mut dirs = vec![PathBuf::from("tools/bin")];
    if let Some(ws) = appliance_bin.ancestors().nth(3) {
        dirs.push(ws.join("tools/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .map_or_else(|| tool.to_owned(), |p| p.display().to_string())
}

/// `YYYYMMDDTHHMMSSZ` for the default output directory.
fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}{mo:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_419), (2025, 11, 27));
    }

    #[test]
    fn names_round_trip() {
        for v in Variant::ALL {
            assert_eq!(Variant::parse(v.name()).unwrap(), v);
        }
        for w in Workload::EVERY {
            assert_eq!(Workload::parse(w.name()).unwrap(), w);
        }
        assert_eq!(Workload::parse("hs").unwrap(), Workload::Handshakes);
        assert!(Workload::parse("flood").is_err());
        assert!(!Workload::Junk.higher_is_better());
        assert!(Workload::Handshakes.higher_is_better());
        assert!(Variant::parse("kernel").is_err());
    }

    #[test]
    fn quick_preset() {
        let a = BenchArgs {
            quick: true,
            appliance_bin: Some("/bin/true".into()),
            ..BenchArgs::new()
        };
        let s = Settings::from_args(&a).unwrap();
        assert_eq!((s.rounds, s.duration_s), (1, 2));
        assert_eq!(s.variants, Variant::ALL.to_vec());
        assert_eq!(s.workloads, vec![Workload::Tcp1]);
    }

    #[test]
    fn new_workloads_only_when_asked() {
        let base = BenchArgs {
            appliance_bin: Some("/bin/true".into()),
            ..BenchArgs::new()
        };
        let s = Settings::from_args(&base).unwrap();
        assert_eq!(s.workloads, Workload::ALL.to_vec());
        let a = BenchArgs {
            workloads: vec!["junk".into(), "handshakes".into()],
            ..base.clone()
        };
        let s = Settings::from_args(&a).unwrap();
        assert_eq!(s.workloads, vec![Workload::Junk, Workload::Handshakes]);
        assert_eq!((s.hs_peers, s.hs_window), (512, 64));
        let bad = BenchArgs {
            hs_window: 0,
            ..base
        };
        assert!(Settings::from_args(&bad).is_err());
    }

    #[test]
    fn server_drop_sum() {
        let c: BTreeMap<String, f64> = [
            (
                "a:wg_appliance_dropped_packets_total{reason=\"x\"}".to_string(),
                5.0,
            ),
            (
                "b:wg_appliance_dropped_packets_total{reason=\"malformed\"}".to_string(),
                7.0,
            ),
            (
                "b:wg_appliance_dropped_packets_total{reason=\"unknown_index\"}".to_string(),
                3.0,
            ),
            ("b:wg_appliance_datapath_packets_total".to_string(), 100.0),
        ]
        .into();
        assert_eq!(server_drops(&c), 10.0);
        let s = hs_sources(4096);
        assert_eq!(s[0], std::net::Ipv4Addr::new(10, 204, 0, 1));
        assert_eq!(s[251], std::net::Ipv4Addr::new(10, 204, 1, 2));
        assert_eq!(
            s.iter().collect::<std::collections::HashSet<_>>().len(),
            4096
        );
    }

    #[test]
    fn iperf_json() {
        let tcp = r#"{"end":{"sum_sent":{"retransmits":7,"bytes":100},
            "sum_received":{"bits_per_second":5.5e8,"bytes":99}}}"#;
        let m = parse_iperf(Workload::Tcp1, tcp).unwrap();
        assert_eq!(m.mbit_s, 550.0);
        assert_eq!(m.retransmits, Some(7));
        assert!(parse_iperf(Workload::Udp64, tcp).is_err());
        assert!(parse_iperf(Workload::Tcp1, r#"{"error":"boom"}"#).is_err());
    }

    #[test]
    fn prometheus_and_deltas() {
        let a = parse_prometheus("# HELP x\nx{a=\"1\"} 5\ny 2\n");
        assert_eq!(a, vec![("x{a=\"1\"}".into(), 5.0), ("y".into(), 2.0)]);
        let before: BTreeMap<_, _> = [("x".to_string(), 1.0), ("y".to_string(), 2.0)].into();
        let after: BTreeMap<_, _> = [
            ("x".to_string(), 4.0),
            ("y".to_string(), 2.0),
            ("z".to_string(), 1.0),
        ]
        .into();
        assert_eq!(
            strip_label("x{interface=\"w\",reason=\"replay\"}", "interface"),
            "x{reason=\"replay\"}"
        );
        assert_eq!(strip_label("x{interface=\"w\"}", "interface"), "x");
        let d = counter_delta(&before, &after);
        assert_eq!(d, [("x".to_string(), 3.0), ("z".to_string(), 1.0)].into());
    }
}
