//! Monitoring as operators consume it: Debian's Prometheus scrapes a running
//! wg-appliance every second, and every query of `dist/grafana-dashboard.json`
//! is evaluated through Prometheus's HTTP API. Each must return series, and
//! the traffic panels must move with iperf3 traffic through the tunnel, so a
//! renamed metric fails the suite instead of silently emptying a panel. The
//! same Prometheus loads `dist/wg-appliance.rules.yml`: every rule must
//! evaluate without error, and none may fire on a healthy lab.
//!
//! Prometheus runs as a child of the test inside the gateway's namespace
//! (where the daemon's `Metrics = 127.0.0.1:<port>` listens), on a free
//! loopback port, with its TSDB and config in a temporary directory; it is
//! killed and the directory removed on drop (also when the test fails), and
//! it dies with the test thread if the test process is killed.
//!
//! Dashboard variables are substituted the way Grafana would for this lab
//! (docs/monitoring.md describes it):
//! - a `query` variable (`$interface`) is evaluated through the API
//!   (`label_values(metric, label)` → `/api/v1/label/<label>/values`) and
//!   replaced by "All": every value, regex-escaped, joined with `|`;
//! - `$__interval` is the scrape interval (1 s, also the step of range
//!   queries), `$__rate_interval` is max(`$__interval` + scrape interval,
//!   4 × scrape interval) = 4 s, `$__range` is the queried time range;
//! - any other variable fails the test until it is taught here.
//!
//! Timeseries panels are evaluated as range queries (`/api/v1/query_range`
//! over the traffic window, step 1 s) and as instant queries; other panels
//! as instant queries unless their target asks for a range.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::TcpListener,
    os::unix::{fs::OpenOptionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use wg_appliance::keys::PrivateKey;
use wg_appliance_tests::{
    appliance_bin, netns_unavailable,
    peers::{Impl, ThirdParty},
    proc::{iperf3, Proto},
    skip, unique_name, wait_until, Netns, Veth,
};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const SCRAPE_INTERVAL_S: u64 = 1;
const JOB: &str = "wg-appliance";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("wgt-{tag}-{}", unique_name("")));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two loopback ports free in `ns` (bound together, so they differ).
fn free_ports(ns: &Netns) -> (u16, u16) {
    ns.enter(|| -> std::io::Result<(u16, u16)> {
        let a = TcpListener::bind("127.0.0.1:0")?;
        let b = TcpListener::bind("127.0.0.1:0")?;
        Ok((a.local_addr()?.port(), b.local_addr()?.port()))
    })
    .expect("enter namespace")
    .expect("free ports")
}

/// Prometheus running in a namespace; killed (and its directory removed)
/// on drop.
struct Prometheus {
    child: Child,
    ns: String,
    port: u16,
    log: PathBuf,
    // Dropped after the child is killed (field order).
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus in `ns`, scraping `target` as job `wg-appliance`
    /// every second and evaluating `rules`, and waits until it is ready.
    fn start(ns: &Netns, port: u16, target: &str, rules: &Path) -> Result<Self> {
        let dir = TempDir::new("prom");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n  scrape_timeout: {SCRAPE_INTERVAL_S}s\n  evaluation_interval: {SCRAPE_INTERVAL_S}s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )?;
        let log = dir.0.join("prometheus.log");
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name(), PROMETHEUS])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // SAFETY: prctl in the child between fork and exec; it survives the
        // exec of `ip` and of prometheus (not setuid), so Prometheus dies
        // with the thread that started it even if the test is killed.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting prometheus")?;
        let p = Self {
            child,
            ns: ns.name().to_owned(),
            port,
            log,
            _dir: dir,
        };
        let ready = wait_until(Duration::from_secs(30), "Prometheus to be ready", || {
            p.get("/-/ready", &[]).is_ok()
        });
        if let Err(e) = ready {
            bail!("{e:#}\nprometheus log:\n{}", p.log_tail());
        }
        Ok(p)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// GET `path` with URL-encoded `params` through curl in the namespace;
    /// the body.
    fn get(&self, path: &str, params: &[(&str, String)]) -> Result<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let pairs: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec![
            "netns",
            "exec",
            self.ns.as_str(),
            "curl",
            "-sS",
            "--fail-with-body",
            "--max-time",
            "10",
            "-G",
        ];
        for p in &pairs {
            args.extend(["--data-urlencode", p.as_str()]);
        }
        args.push(&url);
        let out = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .context("running curl (cargo xtask setup installs it)")?;
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "GET {path} {params:?}: {} {}",
                String::from_utf8_lossy(&out.stderr).trim(),
                body.trim()
            );
        }
        Ok(body)
    }

    /// An API call: the `data` of a successful answer.
    fn api(&self, path: &str, params: &[(&str, String)]) -> Result<Value> {
        let body = self.get(path, params)?;
        let v: Value = serde_json::from_str(&body).with_context(|| format!("{path}: {body}"))?;
        if v["status"] != "success" {
            bail!("{path} {params:?}: {} {}", v["errorType"], v["error"]);
        }
        Ok(v["data"].clone())
    }

    /// `/api/v1/query` at `time`: the result (vector or scalar).
    fn query(&self, expr: &str, time: f64) -> Result<Vec<Value>> {
        let d = self.api(
            "/api/v1/query",
            &[("query", expr.to_owned()), ("time", format!("{time:.3}"))],
        )?;
        Ok(match d["resultType"].as_str() {
            Some("vector") | Some("matrix") => d["result"].as_array().cloned().unwrap_or_default(),
            Some("scalar") | Some("string") => vec![serde_json::json!({ "value": d["result"] })],
            _ => bail!("{expr}: unexpected answer {d}"),
        })
    }

    /// `/api/v1/query_range`: the series of the matrix.
    fn query_range(&self, expr: &str, start: f64, end: f64, step_s: u64) -> Result<Vec<Value>> {
        let d = self.api(
            "/api/v1/query_range",
            &[
                ("query", expr.to_owned()),
                ("start", format!("{start:.3}")),
                ("end", format!("{end:.3}")),
                ("step", format!("{step_s}s")),
            ],
        )?;
        Ok(d["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number in a `[time, "value"]` pair.
fn num(pair: &Value) -> f64 {
    pair[1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Sum of an instant vector's values.
fn sum(result: &[Value]) -> f64 {
    result.iter().map(|s| num(&s["value"])).sum()
}

/// One query of the dashboard.
struct Target {
    panel: String,
    kind: String,
    expr: String,
    range: bool,
    instant: bool,
}

fn targets(dash: &Value) -> Vec<Target> {
    fn walk(v: &Value, out: &mut Vec<Target>) {
        for p in v["panels"].as_array().into_iter().flatten() {
            let kind = p["type"].as_str().unwrap_or("").to_owned();
            for t in p["targets"].as_array().into_iter().flatten() {
                let Some(expr) = t["expr"].as_str() else {
                    continue;
                };
                // Grafana: timeseries panels query ranges; a target may ask
                // for an instant query, a range, or both.
                let range = t["range"]
                    .as_bool()
                    .unwrap_or(kind == "timeseries" || kind == "graph");
                let instant = t["instant"].as_bool().unwrap_or(true);
                out.push(Target {
                    panel: p["title"].as_str().unwrap_or("?").to_owned(),
                    kind: kind.clone(),
                    expr: expr.to_owned(),
                    range,
                    instant,
                });
            }
            walk(p, out);
        }
    }
    let mut out = Vec::new();
    walk(dash, &mut out);
    out
}

/// Grafana's regex escaping of a variable value for Prometheus.
fn regex_escape(v: &str) -> String {
    let mut s = String::new();
    for c in v.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            s.push_str("\\\\");
        }
        s.push(c);
    }
    s
}

/// Replaces `$name`, `${name}`, `${name:format}` and `[[name]]` with their
/// values; fails on a variable it does not know.
fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = expr;
    loop {
        let dollar = rest.find('$');
        let bracket = rest.find("[[");
        let (i, name, len) = match (dollar, bracket) {
            (Some(d), b) if b.is_none_or(|b| d < b) => {
                let after = &rest[d + 1..];
                if let Some(inner) = after.strip_prefix('{') {
                    let end = inner.find('}').context("unclosed ${")?;
                    let name = inner[..end].split(':').next().unwrap_or("");
                    (d, name.to_owned(), end + 3)
                } else {
                    let n: String = after.chars().take_while(|c| is_ident(*c)).collect();
                    if n.is_empty() {
                        // A regex anchor (`$"`), not a variable.
                        out.push_str(&rest[..=d]);
                        rest = &rest[d + 1..];
                        continue;
                    }
                    let l = n.len() + 1;
                    (d, n, l)
                }
            }
            (_, Some(b)) => {
                let inner = &rest[b + 2..];
                match inner.find("]]") {
                    Some(end) if inner[..end].chars().all(is_ident) => {
                        (b, inner[..end].to_owned(), end + 4)
                    }
                    _ => {
                        out.push_str(&rest[..b + 2]);
                        rest = &rest[b + 2..];
                        continue;
                    }
                }
            }
            (None, None) => break,
            (Some(_), None) => unreachable!(),
        };
        let value = vars.get(&name).with_context(|| {
            format!(
                "the dashboard uses ${name}, which tests/tests/monitoring.rs does not \
                 substitute: teach it (and docs/monitoring.md) how Grafana fills it"
            )
        })?;
        out.push_str(&rest[..i]);
        out.push_str(value);
        rest = &rest[i + len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Evaluates the dashboard's template variables through the API: name →
/// the "All" value. Every variable must have values.
fn template_values(prom: &Prometheus, dash: &Value, at: f64) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().context("variable without a name")?;
        let kind = v["type"].as_str().unwrap_or("");
        let query = match &v["query"] {
            Value::String(s) => s.clone(),
            o => o["query"].as_str().unwrap_or("").to_owned(),
        };
        let values: Vec<String> = match kind {
            "query" => {
                let q = query.trim();
                if let Some(args) = q
                    .strip_prefix("label_values(")
                    .and_then(|a| a.strip_suffix(')'))
                {
                    let (metric, label) = match args.rsplit_once(',') {
                        Some((m, l)) => (Some(m.trim()), l.trim()),
                        None => (None, args.trim()),
                    };
                    let mut params = vec![("start", format!("{:.3}", at - 300.0))];
                    params.push(("end", format!("{at:.3}")));
                    if let Some(m) = metric {
                        params.push(("match[]", m.to_owned()));
                    }
                    let d = prom.api(&format!("/api/v1/label/{label}/values"), &params)?;
                    d.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                } else {
                    bail!("variable ${name}: query {q:?} is not label_values(...); teach the test")
                }
            }
            "custom" => query.split(',').map(|s| s.trim().to_owned()).collect(),
            "constant" | "textbox" => vec![query.clone()],
            other => bail!("variable ${name} of type {other:?}: teach the test"),
        };
        if values.is_empty() {
            bail!("variable ${name} ({query}) has no values: the dashboard would show nothing");
        }
        let all = values
            .iter()
            .map(|v| regex_escape(v))
            .collect::<Vec<_>>()
            .join("|");
        let all = if values.len() > 1 {
            format!("({all})")
        } else {
            all
        };
        vars.insert(name.to_owned(), all);
    }
    Ok(vars)
}

/// Grafana's built-in interval variables for a `range_s`-second view.
fn builtin_vars(vars: &mut BTreeMap<String, String>, range_s: u64) {
    let interval = SCRAPE_INTERVAL_S;
    let rate = (interval + SCRAPE_INTERVAL_S).max(4 * SCRAPE_INTERVAL_S);
    for (k, v) in [
        ("__interval", format!("{interval}s")),
        ("__interval_ms", format!("{}", interval * 1000)),
        ("__rate_interval", format!("{rate}s")),
        ("__range", format!("{range_s}s")),
        ("__range_s", format!("{range_s}")),
        ("__range_ms", format!("{}", range_s * 1000)),
    ] {
        vars.insert(k.to_owned(), v);
    }
}

fn write_conf(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.conf"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .expect("conf");
    f.write_all(text.as_bytes()).expect("write conf");
    path
}

/// Brings the daemon down even when the test fails: `down`, then removing
/// the UAPI socket (which stops it if `down` could not), then its log.
struct DaemonGuard {
    ns: String,
    bin: PathBuf,
    ifname: String,
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(&self.bin)
            .args(["down", &self.ifname])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname));
        let _ = std::fs::remove_file(format!("/var/log/wg-appliance/{}.log", self.ifname));
    }
}

/// The value of the first sample of `metric` in a scrape.
fn scraped(metrics: &str, metric: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{metric}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn grafana_dashboard_queries_answer_through_prometheus() {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing. Fix: cargo xtask setup (it installs Debian's `prometheus` \
         package; by hand: apt-get install --no-install-recommends prometheus)"
    );
    if let Some(why) = netns_unavailable() {
        skip("grafana_dashboard_queries_answer_through_prometheus", &why);
        return;
    }
    let bin = appliance_bin().expect("binary");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("dist/grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let rules_path = repo().join("dist/wg-appliance.rules.yml");
    let alert_count = std::fs::read_to_string(&rules_path)
        .expect("rules")
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();

    // The lab of cli_wg_tools.rs: the gateway runs `wg-appliance up` from a
    // wg-quick file; wireguard-go is its peer.
    let gw = Netns::new().expect("gw ns");
    let peer_ns = Netns::new().expect("peer ns");
    let veth = Veth::new(&gw, &["10.96.0.1/24"], &peer_ns, &["10.96.0.2/24"]).expect("veth");
    peer_ns
        .exec("ethtool", &["-K", &veth.b, "gro", "on"])
        .expect("gro");
    let conf_dir = TempDir::new("conf");
    let ifname = unique_name("m");
    let (metrics_port, prom_port) = free_ports(&gw);
    let gw_key = PrivateKey::generate();
    let peer_key = PrivateKey::generate();
    let conf = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = 10.95.0.1/24\n\n[Appliance]\nMetrics = 127.0.0.1:{metrics_port}\nWAN = {}\n\n# friendly_name = lab-peer\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.95.0.2/32\n",
        &*gw_key.to_base64(),
        veth.a,
        peer_key.public_key().to_base64()
    );
    let path = write_conf(&conf_dir.0, &ifname, &conf);
    let _daemon = DaemonGuard {
        ns: gw.name().to_owned(),
        bin: bin.clone(),
        ifname: ifname.clone(),
    };
    gw.exec(
        bin.to_str().expect("bin"),
        &["up", path.to_str().expect("path")],
    )
    .expect("wg-appliance up");
    let tp = ThirdParty::start(
        Impl::WireguardGo,
        &peer_ns,
        &peer_key,
        51821,
        "10.95.0.2/24",
    )
    .expect("wireguard-go");
    tp.add_peer(
        &peer_ns,
        &gw_key.public_key(),
        Some("10.96.0.1:51820"),
        "10.95.0.1/32",
    )
    .expect("peer");
    wait_until(Duration::from_secs(10), "a ping through the tunnel", || {
        peer_ns
            .exec("ping", &["-c", "1", "-W", "1", "10.95.0.1"])
            .is_ok()
    })
    .expect("tunnel up");

    let target = format!("127.0.0.1:{metrics_port}");
    let prom = Prometheus::start(&gw, prom_port, &target, &rules_path).expect("prometheus");

    // Two scrapes of an up target.
    let scrapes = format!("count_over_time(up{{job=\"{JOB}\"}}[5m])");
    let two = wait_until(Duration::from_secs(20), "two scrapes", || {
        prom.query(&scrapes, now()).map(|r| sum(&r)).unwrap_or(0.0) >= 2.0
            && prom
                .query(&format!("up{{job=\"{JOB}\"}}"), now())
                .map(|r| sum(&r))
                .unwrap_or(0.0)
                == 1.0
    });
    if let Err(e) = two {
        let targets = prom.api("/api/v1/targets", &[]).unwrap_or_default();
        panic!(
            "{e:#}\ntargets: {targets}\nprometheus log:\n{}",
            prom.log_tail()
        );
    }

    // Before traffic.
    let t_before = now();
    let down = iperf3(
        &gw,
        &peer_ns,
        "10.95.0.1",
        Proto::Tcp,
        &["-t", "3"],
        Duration::from_secs(30),
    )
    .expect("iperf3 gateway → peer");
    let up = iperf3(
        &peer_ns,
        &gw,
        "10.95.0.2",
        Proto::Tcp,
        &["-t", "3"],
        Duration::from_secs(30),
    )
    .expect("iperf3 peer → gateway");
    println!(
        "iperf3: gateway → peer {:.0} Mbit/s ({} bytes), peer → gateway {:.0} Mbit/s ({} bytes)",
        down.mbit_s, down.received, up.mbit_s, up.received
    );
    assert!(down.received > 0 && up.received > 0, "iperf3 moved nothing");

    // Wait until Prometheus has scraped the counters as they are after the
    // traffic.
    let metrics = String::from_utf8_lossy(
        &gw.exec(
            "curl",
            &[
                "-sf",
                "--max-time",
                "5",
                &format!("http://{target}/metrics"),
            ],
        )
        .expect("scrape /metrics")
        .stdout,
    )
    .into_owned();
    let sent_now = scraped(&metrics, "wireguard_sent_bytes_total").expect("sent bytes");
    let recv_now = scraped(&metrics, "wireguard_received_bytes_total").expect("received bytes");
    wait_until(
        Duration::from_secs(15),
        "a scrape after the traffic",
        || {
            let s = prom
                .query("max(wireguard_sent_bytes_total)", now())
                .map(|r| sum(&r));
            let r = prom
                .query("max(wireguard_received_bytes_total)", now())
                .map(|r| sum(&r));
            matches!((s, r), (Ok(s), Ok(r)) if s >= sent_now && r >= recv_now)
        },
    )
    .expect("Prometheus saw the traffic");
    let t_after = now();

    // Every query of the dashboard, as Grafana would send it.
    let mut vars = template_values(&prom, &dash, t_after).expect("template variables");
    assert!(
        vars.get("interface").is_some_and(|v| v.contains(&ifname)),
        "$interface does not offer {ifname}: {vars:?}"
    );
    let range_s = (t_after - t_before).ceil() as u64;
    builtin_vars(&mut vars, range_s);
    let mut empty = Vec::new();
    let mut report = Vec::new();
    let targets = targets(&dash);
    assert!(
        targets.len() >= 5,
        "only {} queries in the dashboard",
        targets.len()
    );
    for t in &targets {
        let expr = substitute(&t.expr, &vars).expect("substitution");
        if t.instant {
            match prom.query(&expr, t_after) {
                Ok(r) if !r.is_empty() => {
                    report.push(format!("{:>3} series  {}: {expr}", r.len(), t.panel))
                }
                Ok(_) => empty.push(format!("instant, panel {:?} ({}): {expr}", t.panel, t.kind)),
                Err(e) => empty.push(format!("instant, panel {:?}: {e:#}", t.panel)),
            }
        }
        if t.range {
            match prom.query_range(&expr, t_before, t_after, SCRAPE_INTERVAL_S) {
                Ok(r) if !r.is_empty() => report.push(format!(
                    "{:>3} series over {range_s} s  {}",
                    r.len(),
                    t.panel
                )),
                Ok(_) => empty.push(format!("range, panel {:?} ({}): {expr}", t.panel, t.kind)),
                Err(e) => empty.push(format!("range, panel {:?}: {e:#}", t.panel)),
            }
        }
    }
    println!(
        "dashboard queries through Prometheus:\n  {}",
        report.join("\n  ")
    );
    assert!(
        empty.is_empty(),
        "dashboard queries that return nothing (a renamed metric or label?):\n  {}",
        empty.join("\n  ")
    );

    // The traffic panels move with the traffic. A [1m] rate covering the
    // whole run is at least the bytes of the run over 60 s (iperf3 counts
    // payload, the tunnel counts more); allow half of that.
    let traffic = [
        ("wireguard_sent_bytes_total", Some(down.received)),
        ("wireguard_received_bytes_total", Some(up.received)),
        ("wg_appliance_cpu_packets_total", None),
    ];
    for (metric, bytes) in traffic {
        let panels: Vec<&Target> = targets.iter().filter(|t| t.expr.contains(metric)).collect();
        assert!(!panels.is_empty(), "no dashboard panel shows {metric}");
        for t in panels {
            let expr = substitute(&t.expr, &vars).expect("substitution");
            let before = sum(&prom.query(&expr, t_before).expect("query before"));
            let after = sum(&prom.query(&expr, t_after).expect("query after"));
            println!(
                "{:?}: {before:.0} before the traffic, {after:.0} after",
                t.panel
            );
            assert!(
                after > before && after > 0.0,
                "panel {:?} did not move with the traffic: {before} → {after} ({expr})",
                t.panel
            );
            if let Some(bytes) = bytes {
                // The panels show bits/s (`* 8`).
                let bits = if expr.contains("* 8") { 8.0 } else { 1.0 };
                let floor = 0.5 * bytes as f64 * bits / 60.0;
                assert!(
                    after >= floor,
                    "panel {:?}: {after:.0} after {bytes} bytes of iperf3, expected at least {floor:.0} ({expr})",
                    t.panel
                );
            }
            if t.range {
                let series = prom
                    .query_range(&expr, t_before, t_after, SCRAPE_INTERVAL_S)
                    .expect("range");
                let points: Vec<Vec<f64>> = series
                    .iter()
                    .map(|s| {
                        s["values"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(num)
                            .collect()
                    })
                    .collect();
                let rises = points.iter().any(|p| {
                    let max = p.iter().cloned().fold(f64::MIN, f64::max);
                    p.first().is_some_and(|first| max > *first)
                });
                assert!(
                    rises,
                    "panel {:?} is flat over the traffic window: {points:?}",
                    t.panel
                );
            }
        }
    }

    // The alert rules: all loaded, all evaluated without error, none
    // pending or firing on a healthy lab.
    let mut last = String::new();
    let rules_ok = wait_until(
        Duration::from_secs(15),
        "every alert rule evaluated",
        || {
            let Ok(d) = prom.api("/api/v1/rules", &[]) else {
                return false;
            };
            let rules: Vec<Value> = d["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|g| g["name"] == "wg-appliance")
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            last = serde_json::to_string_pretty(&rules).unwrap_or_default();
            rules.len() == alert_count
                && rules.iter().all(|r| {
                    r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001-"))
                })
        },
    );
    assert!(
        rules_ok.is_ok(),
        "{alert_count} rules expected, loaded and evaluated:\n{last}"
    );
    let rules: Value = serde_json::from_str(&last).expect("rules");
    for r in rules.as_array().into_iter().flatten() {
        assert_eq!(
            r["health"], "ok",
            "rule {} does not evaluate: {}",
            r["name"], r["lastError"]
        );
    }
    let alerts = prom.api("/api/v1/alerts", &[]).expect("alerts");
    let active = alerts["alerts"].as_array().cloned().unwrap_or_default();
    assert!(
        active.is_empty(),
        "alerts pending or firing on a healthy lab:\n{}",
        serde_json::to_string_pretty(&active).unwrap_or_default()
    );

    drop(prom);
    drop(tp);
    gw.exec(bin.to_str().expect("bin"), &["down", &ifname])
        .expect("wg-appliance down");
}
