//! The monitoring files in `dist/`, checked without a daemon:
//!
//! - `promtool check rules` and `promtool test rules` on the alert rules and
//!   their unit tests (each rule firing and not firing);
//! - every alert carries a summary, a description and a runbook naming a
//!   `wg-appliance doctor` layer by its number and name;
//! - every metric, label name and label value the rules and the Grafana
//!   dashboard use is still spelled that way in the exporter's source
//!   (`wg-appliance/src`, drop reasons in `wg-ebpf-common/src`), so a rename
//!   fails here instead of silently emptying a panel or muting an alert.
//!
//! `tests/tests/monitoring.rs` runs the same files against a real
//! Prometheus scraping a real daemon.

use std::{
    collections::BTreeSet,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const RULES: &str = "dist/wg-appliance.rules.yml";
const RULES_TEST: &str = "dist/wg-appliance.rules.test.yml";
const DASHBOARD: &str = "dist/grafana-dashboard.json";

/// The doctor's layers, as the runbooks must name them: doctor's own names,
/// so a rename on either side fails here.
const LAYERS: [&str; 5] = [
    wg_appliance::doctor::LAYERS[0].1,
    wg_appliance::doctor::LAYERS[1].1,
    wg_appliance::doctor::LAYERS[2].1,
    wg_appliance::doctor::LAYERS[3].1,
    wg_appliance::doctor::LAYERS[4].1,
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Runs promtool from the workspace root, killed after 60 s; returns
/// (success, stdout + stderr).
fn promtool(args: &[&str]) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool: {e}. Fix: cargo xtask setup (installs Debian's \
                 `prometheus` package, which ships /usr/bin/promtool)"
            )
        });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        s + &e
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for promtool") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "promtool {} still running after 60 s; killed",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), reader.join().unwrap_or_default())
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", RULES]);
    assert!(ok, "promtool check rules {RULES} failed:\n{out}");
    let alerts = read(RULES)
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(
        out.contains(&format!("SUCCESS: {alerts} rules found")),
        "promtool saw another number of rules than the {alerts} alerts in {RULES}:\n{out}"
    );
    let (ok, out) = promtool(&["test", "rules", RULES_TEST]);
    assert!(ok, "promtool test rules {RULES_TEST} failed:\n{out}");
    // Every alert has its unit test (firing and not firing).
    let tests = read(RULES_TEST);
    for name in alert_names(&read(RULES)) {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{RULES_TEST} has no test for {name}"
        );
    }
}

/// The non-comment lines of a YAML file.
fn yaml_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect()
}

fn alert_names(rules: &str) -> Vec<String> {
    yaml_lines(rules)
        .iter()
        .filter_map(|l| l.trim_start().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn every_alert_has_a_summary_description_and_doctor_runbook() {
    let rules = read(RULES);
    let lines = yaml_lines(&rules);
    assert!(
        lines.iter().any(|l| l.trim() == "- name: wg-appliance"),
        "{RULES} has no group named wg-appliance"
    );
    let mut blocks: Vec<(String, Vec<&str>)> = Vec::new();
    for l in &lines {
        if let Some(name) = l.trim_start().strip_prefix("- alert:") {
            blocks.push((name.trim().to_owned(), Vec::new()));
        } else if let Some((_, b)) = blocks.last_mut() {
            b.push(l);
        }
    }
    assert!(
        blocks.len() >= 10,
        "only {} alerts in {RULES}",
        blocks.len()
    );
    for (name, block) in &blocks {
        let field = |key: &str| {
            block
                .iter()
                .find_map(|l| l.trim_start().strip_prefix(&format!("{key}:")))
                .map(|v| v.trim().trim_matches('"').to_owned())
                .unwrap_or_else(|| panic!("{name}: no `{key}` annotation"))
        };
        assert!(!field("summary").is_empty(), "{name}: empty summary");
        assert!(
            !field("description").is_empty(),
            "{name}: empty description"
        );
        assert!(
            ["warning", "critical"].contains(&field("severity").as_str()),
            "{name}: severity must be warning or critical"
        );
        let runbook = field("runbook");
        assert!(
            runbook.contains("wg-appliance doctor, layer "),
            "{name}: the runbook must name a `wg-appliance doctor, layer N (...)`: {runbook}"
        );
        for (i, _) in runbook.match_indices("layer ") {
            let rest = &runbook[i + "layer ".len()..];
            let n: usize = rest[..1]
                .parse()
                .unwrap_or_else(|_| panic!("{name}: `layer` without a number: {runbook}"));
            assert!((1..=5).contains(&n), "{name}: no layer {n}");
            let want = format!("{n} ({})", LAYERS[n - 1]);
            assert!(
                rest.starts_with(&want),
                "{name}: layer {n} is `{want}`: {runbook}"
            );
        }
    }
}

/// A PromQL token: an identifier, a quoted string, or one other character.
#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Op(String),
}

fn tokenize(expr: &str) -> Vec<Tok> {
    let c: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let s = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            out.push(Tok::Ident(c[s..i].iter().collect()));
        } else if ch == '"' || ch == '\'' {
            let q = ch;
            let mut s = String::new();
            i += 1;
            while i < c.len() && c[i] != q {
                if c[i] == '\\' && i + 1 < c.len() {
                    i += 1;
                }
                s.push(c[i]);
                i += 1;
            }
            i += 1;
            out.push(Tok::Str(s));
        } else if ch.is_ascii_digit() {
            // Numbers and durations (5m, 0.1): not names.
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_whitespace() {
            i += 1;
        } else {
            let two: String = c[i..(i + 2).min(c.len())].iter().collect();
            if ["=~", "!~", "!="].contains(&two.as_str()) {
                out.push(Tok::Op(two));
                i += 2;
            } else {
                out.push(Tok::Op(ch.to_string()));
                i += 1;
            }
        }
    }
    out
}

/// What one set of PromQL expressions asks of the exporter.
#[derive(Default, Debug)]
struct Uses {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
    /// (label, value) from equality and regex matchers (regex alternatives
    /// split on `|`).
    values: BTreeSet<(String, String)>,
}

const METRIC_PREFIXES: [&str; 2] = ["wireguard_", "wg_appliance_"];
/// Labels Prometheus adds (target labels, alert labels), not the exporter.
const OUTSIDE_LABELS: [&str; 4] = ["job", "instance", "alertname", "__name__"];
const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn scan(expr: &str, uses: &mut Uses) {
    let t = tokenize(expr);
    let mut i = 0;
    while i < t.len() {
        match &t[i] {
            Tok::Ident(id) if METRIC_PREFIXES.iter().any(|p| id.starts_with(p)) => {
                uses.metrics.insert(id.clone());
                i += 1;
            }
            Tok::Ident(id) if GROUPING.contains(&id.as_str()) => {
                if t.get(i + 1) == Some(&Tok::Op("(".into())) {
                    i += 2;
                    while i < t.len() && t[i] != Tok::Op(")".into()) {
                        if let Tok::Ident(l) = &t[i] {
                            uses.labels.insert(l.clone());
                        }
                        i += 1;
                    }
                }
                i += 1;
            }
            // Grafana's label_values(metric, label): the last argument is a
            // label name.
            Tok::Ident(id) if id == "label_values" => {
                let mut j = i + 1;
                let mut last = None;
                while j < t.len() && t[j] != Tok::Op(")".into()) {
                    if let Tok::Ident(x) = &t[j] {
                        if METRIC_PREFIXES.iter().any(|p| x.starts_with(p)) {
                            uses.metrics.insert(x.clone());
                        }
                        last = Some(x.clone());
                    }
                    j += 1;
                }
                if let Some(l) = last {
                    uses.labels.insert(l);
                }
                i = j + 1;
            }
            Tok::Op(o) if o == "{" => {
                i += 1;
                while i < t.len() && t[i] != Tok::Op("}".into()) {
                    if let (Some(Tok::Ident(l)), Some(Tok::Op(_)), Some(Tok::Str(v))) =
                        (t.get(i), t.get(i + 1), t.get(i + 2))
                    {
                        uses.labels.insert(l.clone());
                        // Values with variables or regex syntax other than
                        // alternation are not literal label values.
                        let literal = !v.contains('$')
                            && !v
                                .chars()
                                .any(|c| ".*+?()[]{}^\\".contains(c) || c.is_whitespace());
                        if literal {
                            for alt in v.split('|').filter(|a| !a.is_empty()) {
                                uses.values.insert((l.clone(), alt.to_owned()));
                            }
                        }
                        i += 3;
                    } else {
                        i += 1;
                    }
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
}

/// The `expr:` values of a rules file (single-line and block scalars).
fn rule_exprs(rules: &str) -> Vec<String> {
    let lines = yaml_lines(rules);
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let indent = l.len() - l.trim_start().len();
        if let Some(rest) = l.trim_start().strip_prefix("expr:") {
            let rest = rest.trim();
            if rest.starts_with('|') || rest.starts_with('>') {
                let mut e = String::new();
                i += 1;
                while i < lines.len() {
                    let m = lines[i];
                    if !m.trim().is_empty() && m.len() - m.trim_start().len() <= indent {
                        break;
                    }
                    e.push_str(m.trim());
                    e.push('\n');
                    i += 1;
                }
                out.push(e);
                continue;
            }
            out.push(rest.to_owned());
        }
        i += 1;
    }
    out
}

/// Every `expr` of the dashboard's panels (rows included) and every query of
/// its template variables, with the label names of the legends.
fn dashboard_exprs(dash: &serde_json::Value) -> (Vec<String>, BTreeSet<String>) {
    fn panels(v: &serde_json::Value, exprs: &mut Vec<String>, legend: &mut BTreeSet<String>) {
        for p in v["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    exprs.push(e.to_owned());
                }
                let mut f = t["legendFormat"].as_str().unwrap_or("");
                while let Some(s) = f.find("{{") {
                    let Some(e) = f[s..].find("}}") else { break };
                    legend.insert(f[s + 2..s + e].trim().to_owned());
                    f = &f[s + e + 2..];
                }
            }
            panels(p, exprs, legend);
        }
    }
    let mut exprs = Vec::new();
    let mut legend = BTreeSet::new();
    panels(dash, &mut exprs, &mut legend);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let q = match &v["query"] {
            serde_json::Value::String(s) => Some(s.clone()),
            o => o["query"].as_str().map(str::to_owned),
        };
        if let Some(q) = q {
            exprs.push(q);
        }
    }
    (exprs, legend)
}

/// The text of every `.rs` file under `dir`, recursively (the restructuring
/// of a crate's modules does not matter).
fn source_text(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).expect("source"));
                out.push('\n');
            }
        }
    }
    out
}

#[test]
fn rules_and_dashboard_use_only_names_the_exporter_has() {
    let exporter = source_text(&repo().join("wg-appliance/src"));
    let counters = source_text(&repo().join("wg-ebpf-common/src"));
    let dash: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    let (dash_exprs, legend) = dashboard_exprs(&dash);
    let rules = read(RULES);
    let rexprs = rule_exprs(&rules);
    assert_eq!(
        rexprs.len(),
        alert_names(&rules).len(),
        "one expr per alert in {RULES}"
    );

    let mut missing = Vec::new();
    for (file, exprs, extra_labels) in [
        (RULES, rexprs, BTreeSet::new()),
        (DASHBOARD, dash_exprs, legend),
    ] {
        let mut u = Uses::default();
        for e in &exprs {
            scan(e, &mut u);
        }
        u.labels.extend(extra_labels);
        // The annotations of the rules name metrics too.
        if file == RULES {
            for l in yaml_lines(&rules) {
                for id in l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
                    if METRIC_PREFIXES.iter().any(|p| id.starts_with(p)) {
                        u.metrics.insert(id.to_owned());
                    }
                }
            }
        }
        assert!(
            u.metrics.len() >= 5,
            "found only {:?} in {file}: the scan is broken",
            u.metrics
        );
        for m in &u.metrics {
            if !exporter.contains(&format!("\"{m}\"")) {
                missing.push(format!("{file}: metric {m} is not in wg-appliance/src"));
            }
        }
        for l in u
            .labels
            .iter()
            .filter(|l| !OUTSIDE_LABELS.contains(&l.as_str()))
        {
            if !exporter.contains(&format!("\"{l}\"")) {
                missing.push(format!("{file}: label {l} is not in wg-appliance/src"));
            }
        }
        for (l, v) in &u.values {
            let found = match l.as_str() {
                "job" | "instance" => true,
                // Drop reasons are Counter names without `drop_`.
                "reason" => counters.contains(&format!("\"drop_{v}\"")),
                _ => exporter.contains(&format!("\"{v}\"")),
            };
            if !found {
                missing.push(format!(
                    "{file}: {l}=\"{v}\" is not a value wg-appliance exports"
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "names the exporter does not have (renamed?):\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_scan_finds_what_it_must() {
    let mut u = Uses::default();
    scan(
        r#"sum by (job, reason) (rate(wg_appliance_dropped_packets_total{reason=~"replay|auth_failed", interface=~"$interface"}[5m])) > 0.1
           and on (job) wireguard_latest_handshake_seconds{mode="generic"}"#,
        &mut u,
    );
    assert_eq!(
        u.metrics.iter().collect::<Vec<_>>(),
        [
            "wg_appliance_dropped_packets_total",
            "wireguard_latest_handshake_seconds"
        ]
    );
    assert_eq!(
        u.labels.iter().collect::<Vec<_>>(),
        ["interface", "job", "mode", "reason"]
    );
    assert_eq!(
        u.values
            .iter()
            .map(|(l, v)| format!("{l}={v}"))
            .collect::<Vec<_>>(),
        ["mode=generic", "reason=auth_failed", "reason=replay"]
    );
    let exprs = rule_exprs("  - alert: A\n    expr: |\n      up\n      == 0\n    for: 1m\n  - alert: B\n    expr: x > 1\n");
    assert_eq!(exprs, vec!["up\n== 0\n".to_owned(), "x > 1".to_owned()]);
}
