//! `cargo xtask test`: every check and test, then a summary with counts.
//!
//! Skips are counted apart from passes: a test that cannot run here calls
//! `wg_appliance_tests::skip`, which appends to the file named by
//! `WG_TEST_SKIP_LOG`; its libtest "ok" is then reported as skipped.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{path_env, root};

struct StepResult {
    name: String,
    ok: bool,
    took: Duration,
}

#[derive(Default)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
    failures: Vec<String>,
}

/// `strict`: any skipped test fails the run (CI runs strict on the machine
/// kind the project targets, where every capability is present).
pub fn run(strict: bool) -> Result<()> {
    let start = Instant::now();
    let skip_log = root().join("target").join("test-skips.log");
    let retry_log = root().join("target").join("test-retries.log");
    std::fs::create_dir_all(root().join("target"))?;
    let _ = std::fs::remove_file(&skip_log);
    let _ = std::fs::remove_file(&retry_log);

    let checks: [(&str, &[&str]); 4] = [
        ("cargo fmt --check", &["fmt", "--all", "--", "--check"]),
        (
            "cargo fmt --check (wg-ebpf)",
            &[
                "fmt",
                "--manifest-path",
                "wg-ebpf/Cargo.toml",
                "--",
                "--check",
            ],
        ),
        (
            "cargo clippy --all-targets -D warnings",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
        // The CLI tests run the real binary.
        (
            "cargo build -p wg-appliance (binary for the CLI tests)",
            &[
                "build",
                "--package",
                "wg-appliance",
                "--bin",
                "wg-appliance",
            ],
        ),
    ];
    let mut steps = Vec::new();
    // Setup must keep working on a fresh machine, where nothing is
    // installed yet: the cheap proof (`cargo xtask setup --check`).
    let t = Instant::now();
    println!("\n==> setup --check (pinned versions parse as cargo reads them, packages resolve)");
    let ok = match crate::setup::check() {
        Ok(()) => true,
        Err(e) => {
            println!("{e:#}");
            false
        }
    };
    steps.push(StepResult {
        name: "setup --check".into(),
        ok,
        took: t.elapsed(),
    });
    for (name, args) in checks {
        steps.push(step(name, args)?);
    }

    // The Debian package (release build, shared with the demo below); a
    // namespace test unpacks it and runs the packaged binary.
    let t = Instant::now();
    println!("\n==> cargo xtask package (the .deb the package test unpacks)");
    let deb = match crate::package::run() {
        Ok(deb) => Some(deb),
        Err(e) => {
            println!("packaging failed: {e:#}");
            None
        }
    };
    steps.push(StepResult {
        name: "cargo xtask package (.deb)".into(),
        ok: deb.is_some(),
        took: t.elapsed(),
    });

    let mut counts = Counts::default();
    let t = Instant::now();
    let ok = cargo_test(&skip_log, &retry_log, deb.as_deref(), &mut counts)?;
    steps.push(StepResult {
        name: "cargo test --workspace".into(),
        ok,
        took: t.elapsed(),
    });

    // The README's first command, end to end (release build, the lab, the
    // quick A/B): it fails on any broken step.
    let t = Instant::now();
    println!("\n==> smoke run of the demo (cargo xtask demo)");
    let ok = match crate::demo::run_demo() {
        Ok(()) => true,
        Err(e) => {
            println!("demo failed: {e:#}");
            false
        }
    };
    steps.push(StepResult {
        name: "demo smoke run".into(),
        ok,
        took: t.elapsed(),
    });

    // Every wire parser under the fuzzer for a bounded time.
    let t = Instant::now();
    let fuzz_secs = 5;
    let ok = match crate::fuzz::run(fuzz_secs) {
        Ok(()) => true,
        Err(e) => {
            println!("fuzzing failed: {e:#}");
            false
        }
    };
    steps.push(StepResult {
        name: format!(
            "fuzz {} targets × {fuzz_secs} s",
            crate::fuzz::TARGETS.len()
        ),
        ok,
        took: t.elapsed(),
    });

    let skips: Vec<String> = std::fs::read_to_string(&skip_log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let skipped = skips.len() as u64;
    let retries: Vec<String> = std::fs::read_to_string(&retry_log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let passed = counts.passed.saturating_sub(skipped);

    println!("\n================ summary ================");
    for s in &steps {
        println!(
            "  {:<44} {:>4}  {:>6.1?}",
            s.name,
            if s.ok { "ok" } else { "FAIL" },
            s.took
        );
    }
    println!("  ignored tests: {}", counts.ignored);
    for f in &counts.failures {
        println!("  FAILED: {f}");
    }
    for s in &skips {
        let (name, why) = s.split_once('\t').unwrap_or((s.as_str(), ""));
        println!("  SKIPPED (machine lacks a capability): {name}: {why}");
    }
    println!("  retried attempts: {}", retries.len());
    for r in &retries {
        let mut parts = r.splitn(3, '\t');
        let (name, attempt, why) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        println!("  RETRIED {name} (attempt {attempt} repeated): {why}");
    }
    if strict {
        println!("  strict: any skip fails the run");
    }
    println!("  total time: {:.1?}", start.elapsed());
    // The closing line CI reads, alone on its line.
    println!(
        "tests: {passed} passed, {} failed, {skipped} skipped",
        counts.failed
    );
    println!("=========================================");
    if steps.iter().any(|s| !s.ok) || counts.failed > 0 {
        anyhow::bail!("some checks or tests failed (see the summary above)");
    }
    if strict && skipped > 0 {
        anyhow::bail!(
            "{skipped} test(s) skipped under --strict: this machine lacks a capability the suite needs (see the summary above)"
        );
    }
    Ok(())
}

fn step(name: &str, args: &[&str]) -> Result<StepResult> {
    println!("\n==> {name}");
    let t = Instant::now();
    let mut cmd = Command::new("cargo");
    cmd.args(args).current_dir(root()).env("PATH", path_env());
    let ok = cmd
        .status()
        .with_context(|| format!("cannot run cargo for {name}"))?
        .success();
    Ok(StepResult {
        name: name.into(),
        ok,
        took: t.elapsed(),
    })
}

/// Runs the workspace tests, echoing their output and tallying the libtest
/// summary lines ("test result: ok. 3 passed; 0 failed; 1 ignored; ...").
fn cargo_test(
    skip_log: &std::path::Path,
    retry_log: &std::path::Path,
    deb: Option<&std::path::Path>,
    counts: &mut Counts,
) -> Result<bool> {
    println!("\n==> cargo test --workspace (unit, property, BPF program and namespace tests)");
    let mut cmd = Command::new("cargo");
    if let Some(deb) = deb {
        cmd.env("WG_TEST_DEB", deb);
    }
    let mut child = cmd
        .args(["test", "--workspace", "--no-fail-fast", "--color", "never"])
        .current_dir(root())
        .env("PATH", path_env())
        .env("WG_TEST_SKIP_LOG", skip_log)
        .env("WG_TEST_RETRY_LOG", retry_log)
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot run cargo test")?;
    let stdout = child.stdout.take().context("no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => counts.passed += n,
                    "failed" => counts.failed += n,
                    "ignored" => counts.ignored += n,
                    _ => {}
                }
            }
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            counts.failures.push(name.to_owned());
        }
    }
    Ok(child.wait()?.success())
}
