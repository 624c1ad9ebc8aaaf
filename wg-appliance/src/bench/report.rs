//! The bench's outputs besides the chart: the machine description, the
//! per variant × workload summary with ratios, the terminal table and the
//! JSON file.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{stats, Sample, Settings, Variant, Workload};

/// What the numbers were measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub versions: Versions,
    /// /proc/loadavg when the bench started, and how busy the CPUs were
    /// (percent, all cores) over the half second before: other load skews
    /// every figure.
    pub loadavg_start: String,
    pub cpu_busy_before_pct: Option<f64>,
}

/// (busy, total) jiffies of all CPUs from /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Percent of CPU time busy over `d`.
pub fn cpu_busy_pct(d: std::time::Duration) -> Option<f64> {
    let (b0, t0) = cpu_jiffies()?;
    std::thread::sleep(d);
    let (b1, t1) = cpu_jiffies()?;
    (t1 > t0).then(|| (b1 - b0) as f64 * 100.0 / (t1 - t0) as f64)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[derive(Clone, Debug, Serialize)]
pub struct Versions {
    pub bench: String,
    pub wg_appliance: String,
    pub wireguard_go: String,
    pub boringtun_cli: String,
    pub iperf3: String,
}

/// The first line of `cmd args`' output (stdout, else stderr), or why not.
fn version_of(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output() {
        Ok(o) => {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned()
        }
        Err(e) => format!("unavailable ({e})"),
    }
}

impl Machine {
    pub fn probe(appliance_bin: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
            .max(std::thread::available_parallelism().map_or(0, |n| n.get()));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| version_of("uname", &["-r"]));
        Self {
            cpu_model,
            cores,
            kernel,
            loadavg_start: loadavg(),
            cpu_busy_before_pct: cpu_busy_pct(std::time::Duration::from_millis(500)),
            versions: Versions {
                bench: env!("CARGO_PKG_VERSION").into(),
                // By version (with commit and BPF object hash), never by path.
                wg_appliance: version_of(&appliance_bin.display().to_string(), &["--version"]),
                wireguard_go: version_of("wireguard-go", &["--version"]),
                boringtun_cli: version_of(
                    &super::find_tool("boringtun-cli", appliance_bin),
                    &["--version"],
                ),
                iperf3: version_of("iperf3", &["--version"]),
            },
        }
    }

    pub fn one_line(&self) -> String {
        format!(
            "{}, {} cores, kernel {}; {}, {}, {}, {}",
            self.cpu_model,
            self.cores,
            self.kernel,
            self.versions.wg_appliance,
            self.versions.wireguard_go,
            self.versions.boringtun_cli,
            self.versions.iperf3
        )
    }
}

/// An argument as the JSON records it: an absolute path (the binary, `--out`,
/// `--appliance-bin`) by its file name only, so committed results name no
/// directory of the machine that ran them.
fn without_machine_path(arg: &str) -> String {
    match arg.strip_prefix('/') {
        Some(_) => std::path::Path::new(arg)
            .file_name()
            .map_or_else(|| arg.to_owned(), |n| n.to_string_lossy().into_owned()),
        None => arg.to_owned(),
    }
}

/// One variant × workload.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub workload: Workload,
    pub variant: Variant,
    pub unit: &'static str,
    /// Successful runs.
    pub n: usize,
    /// Failed runs.
    pub failed: usize,
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// The variant the ratio is against, and median / baseline median.
    pub baseline: Option<Variant>,
    pub ratio: Option<f64>,
    /// TCP: median of the per-run sender retransmissions.
    pub retransmits_median: Option<f64>,
    /// UDP: median of the per-run loss (percent of datagrams sent).
    pub udp_loss_pct_median: Option<f64>,
    /// junk and handshakes: the median of each of the samples' `extra`
    /// figures (generator rate, server CPU %, XDP drops per second, ...).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extra_median: std::collections::BTreeMap<String, f64>,
}

/// The baseline of a workload: the one given, else the better of
/// wireguard-go and boringtun by median (the lower for a cost).
pub fn baseline_for(settings: &Settings, rows: &[Row], w: Workload) -> Option<Variant> {
    if let Some(b) = settings.baseline {
        return Some(b);
    }
    let cands: Vec<(usize, Option<f64>)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.workload == w && matches!(r.variant, Variant::WireguardGo | Variant::Boringtun)
        })
        .map(|(i, r)| (i, r.median))
        .collect();
    stats::best_by(&cands, w.higher_is_better()).map(|i| rows[i].variant)
}

pub fn summarize(settings: &Settings, samples: &[Sample]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &w in &settings.workloads {
        for &v in &settings.variants {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.workload == w && s.variant == v)
                .collect();
            let vals: Vec<f64> = mine.iter().filter_map(|s| s.value).collect();
            let sum = stats::Summary::of(&vals);
            let retr: Vec<f64> = mine
                .iter()
                .filter_map(|s| s.retransmits.map(|r| r as f64))
                .collect();
            let loss: Vec<f64> = mine
                .iter()
                .filter_map(|s| match (s.udp_sent, s.udp_lost) {
                    (Some(sent), Some(lost)) if sent > 0 => Some(lost as f64 * 100.0 / sent as f64),
                    _ => None,
                })
                .collect();
            let mut keys: Vec<&String> = mine.iter().flat_map(|s| s.extra.keys()).collect();
            keys.sort();
            keys.dedup();
            let extra_median = keys
                .into_iter()
                .filter_map(|k| {
                    let xs: Vec<f64> = mine
                        .iter()
                        .filter(|s| s.error.is_none())
                        .filter_map(|s| s.extra.get(k).copied())
                        .collect();
                    Some((k.clone(), stats::median(&xs)?))
                })
                .collect();
            rows.push(Row {
                workload: w,
                variant: v,
                unit: w.unit(),
                n: vals.len(),
                failed: mine.len() - vals.len(),
                median: sum.map(|s| s.median),
                min: sum.map(|s| s.min),
                max: sum.map(|s| s.max),
                baseline: None,
                ratio: None,
                retransmits_median: stats::median(&retr),
                udp_loss_pct_median: stats::median(&loss),
                extra_median,
            });
        }
    }
    for &w in &settings.workloads {
        let Some(b) = baseline_for(settings, &rows, w) else {
            continue;
        };
        let bm = rows
            .iter()
            .find(|r| r.workload == w && r.variant == b)
            .and_then(|r| r.median);
        for r in rows.iter_mut().filter(|r| r.workload == w) {
            r.baseline = Some(b);
            r.ratio = match (r.median, bm) {
                (Some(m), Some(bm)) => stats::ratio(m, bm),
                _ => None,
            };
        }
    }
    rows
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.prec$}"))
}

/// The terminal table: one block per workload.
pub fn table(settings: &Settings, rows: &[Row], samples: &[Sample]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "wg-appliance A/B bench: {} round(s), {} s per run, {} s warm-up; medians of the receiver's figures",
        settings.rounds, settings.duration_s, settings.warmup_s
    );
    for &w in &settings.workloads {
        let base = rows
            .iter()
            .find(|r| r.workload == w)
            .and_then(|r| r.baseline);
        let _ = writeln!(
            s,
            "\n{} [{}]   ratio vs {}{}",
            w.label(),
            w.unit(),
            base.map_or("(no baseline)", |b| b.label()),
            if w.higher_is_better() {
                ""
            } else {
                " (below 1.00x: cheaper)"
            }
        );
        if !matches!(w, Workload::Tcp1 | Workload::Tcp4 | Workload::Udp64) {
            flood_block(&mut s, w, rows);
            continue;
        }
        let extra = match w {
            Workload::Udp64 => "loss% (med)",
            _ => "retr (med)",
        };
        let _ = writeln!(
            s,
            "  {:<24} {:>10} {:>10} {:>10} {:>7} {:>5} {:>12}",
            "variant", "median", "min", "max", "ratio", "runs", extra
        );
        for r in rows.iter().filter(|r| r.workload == w) {
            let runs = if r.failed > 0 {
                format!("{}+{}F", r.n, r.failed)
            } else {
                r.n.to_string()
            };
            let _ = writeln!(
                s,
                "  {:<24} {:>10} {:>10} {:>10} {:>7} {:>5} {:>12}",
                r.variant.label(),
                opt(r.median, 1),
                opt(r.min, 1),
                opt(r.max, 1),
                r.ratio.map_or_else(|| "-".into(), |x| format!("{x:.2}x")),
                runs,
                match w {
                    Workload::Udp64 => opt(r.udp_loss_pct_median, 1),
                    _ => opt(r.retransmits_median, 0),
                }
            );
        }
    }
    let errors: Vec<&Sample> = samples.iter().filter(|s| s.error.is_some()).collect();
    if !errors.is_empty() {
        let _ = writeln!(s, "\nfailed runs:");
        for e in errors {
            let _ = writeln!(
                s,
                "  round {} {} {}: {}",
                e.round + 1,
                e.variant.label(),
                e.workload.name(),
                e.error.as_deref().unwrap_or("")
            );
        }
    }
    // Data path drops are worth a line each: they explain odd figures.
    let mut drops: std::collections::BTreeMap<(Variant, String), f64> = Default::default();
    for smp in samples {
        for (k, v) in &smp.counters {
            if k.contains("dropped_packets_total") {
                *drops.entry((smp.variant, k.clone())).or_default() += v;
            }
        }
    }
    if !drops.is_empty() {
        let _ = writeln!(s, "\nwg-appliance data path drops during measured runs (sum over runs; a: client end, b: server end):");
        for ((v, k), n) in drops {
            let _ = writeln!(s, "  {:<24} {k} {n}", v.label());
        }
    }
    s
}

fn ex(r: &Row, k: &str, scale: f64, prec: usize) -> String {
    opt(r.extra_median.get(k).map(|v| v / scale), prec)
}

/// The table block of junk or handshakes: the headline figure with its
/// ratio, and the medians of the generator's and the server's figures.
fn flood_block(s: &mut String, w: Workload, rows: &[Row]) {
    let (prec, cols): (usize, &[(&str, &str, f64, usize)]) = match w {
        Workload::Junk => (
            1,
            &[
                ("sent kpps", "gen_pps", 1e3, 0),
                ("XDP drop kpps", "xdp_drop_pps", 1e3, 0),
                ("softirq%", "host_softirq_pct", 1.0, 0),
            ],
        ),
        _ => (
            0,
            &[
                ("init/s", "gen_pps", 1.0, 0),
                ("srv CPU%", "server_cpu_pct", 1.0, 1),
                ("cookies", "hs_cookie_replies", 1.0, 0),
                ("timeouts", "hs_timed_out", 1.0, 0),
            ],
        ),
    };
    let _ = write!(
        s,
        "  {:<24} {:>10} {:>10} {:>10} {:>7} {:>5}",
        "variant", "median", "min", "max", "ratio", "runs"
    );
    for (h, ..) in cols {
        let _ = write!(s, " {h:>13}");
    }
    let _ = writeln!(s);
    for r in rows.iter().filter(|r| r.workload == w) {
        let runs = if r.failed > 0 {
            format!("{}+{}F", r.n, r.failed)
        } else {
            r.n.to_string()
        };
        let _ = write!(
            s,
            "  {:<24} {:>10} {:>10} {:>10} {:>7} {:>5}",
            r.variant.label(),
            opt(r.median, prec),
            opt(r.min, prec),
            opt(r.max, prec),
            r.ratio.map_or_else(|| "-".into(), |x| format!("{x:.2}x")),
            runs
        );
        for (_, k, scale, p) in cols {
            let _ = write!(s, " {:>13}", ex(r, k, *scale, *p));
        }
        let _ = writeln!(s);
    }
    if w == Workload::Junk {
        let _ = writeln!(
            s,
            "  CPU % is the server daemon's process (utime+stime over wall time, 100 = one core); XDP drops\n  \
             run in softirq, outside it (host softirq% is all CPUs, generator included).\n  \
             issue target (not asserted): XDP drops >= 5 Mpps per core with the control plane < 5% CPU;\n  \
             one generator thread on this machine offers only the 'sent' rate."
        );
    }
}

#[derive(Serialize)]
struct JsonOut<'a> {
    schema: &'static str,
    finished_unix: u64,
    interrupted: bool,
    loadavg_end: String,
    command: Vec<String>,
    machine: &'a Machine,
    settings: &'a Settings,
    summary: &'a [Row],
    samples: &'a [Sample],
}

pub fn write_json(
    path: &Path,
    settings: &Settings,
    machine: &Machine,
    samples: &[Sample],
    summary: &[Row],
    interrupted: bool,
) -> Result<()> {
    let out = JsonOut {
        schema: "wg-appliance-bench/1",
        finished_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        interrupted,
        loadavg_end: loadavg(),
        command: std::env::args().map(|a| without_machine_path(&a)).collect(),
        machine,
        settings,
        summary,
        samples,
    };
    let text = serde_json::to_string_pretty(&out)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn absolute_paths_become_file_names() {
        assert_eq!(
            super::without_machine_path("/work/main/target/release/wg-appliance"),
            "wg-appliance"
        );
        assert_eq!(super::without_machine_path("--out"), "--out");
        assert_eq!(super::without_machine_path("tcp1,udp64"), "tcp1,udp64");
    }
}
