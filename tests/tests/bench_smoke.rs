//! Smoke test of the A/B bench (`wg-appliance bench`, issue 7): one round
//! of 1 s, TCP with 1 stream, wg-appliance (per-peer) against wireguard-go;
//! every variant must produce a non-zero figure, and the JSON and SVG must
//! be written.
//!
//! The bench runs in-process (`wg_appliance::bench::run`); its daemons are
//! separate processes, `wg-appliance -f <if> ...` from an already built
//! binary: the newer of target/debug/wg-appliance (which `cargo build` and
//! `cargo test --workspace` produce) and target/release/wg-appliance. A test
//! cannot build it itself without racing the cargo that runs it for the
//! build directory lock. The bench only uses the binary's stable CLI
//! (`-f --wan --metrics`), so any recent build works; the figures are the
//! data path that binary embeds. The smoke test checks the harness, not
//! the numbers. With neither binary present the test is skipped, loudly.

use std::{path::PathBuf, time::Instant};

use wg_appliance::bench::{self, BenchArgs};
use wg_appliance_tests::{require_netns, skip};

fn appliance_bin() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    ["debug", "release"]
        .iter()
        .map(|p| root.join("target").join(p).join("wg-appliance"))
        .filter_map(|p| {
            let t = std::fs::metadata(&p).ok()?.modified().ok()?;
            Some((t, p))
        })
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p)
}

#[test]
fn bench_smoke() {
    require_netns!("bench_smoke");
    let Some(bin) = appliance_bin() else {
        let _ = skip(
            "bench_smoke",
            "no target/{debug,release}/wg-appliance binary; `cargo build -p wg-appliance` first",
        );
        return;
    };
    let out = std::env::temp_dir().join(format!("wg-bench-smoke-{}", std::process::id()));
    let args = BenchArgs {
        rounds: 1,
        duration: 1,
        warmup: 0,
        variants: vec!["appliance".into(), "wireguard-go".into()],
        workloads: vec!["tcp1".into()],
        out: Some(out.clone()),
        appliance_bin: Some(bin),
        ..BenchArgs::new()
    };
    let started = Instant::now();
    let outcome = bench::run(&args).expect("bench run");
    let took = started.elapsed();
    println!("bench took {took:?}");

    assert_eq!(outcome.samples.len(), 2, "{:?}", outcome.samples);
    for s in &outcome.samples {
        assert!(s.error.is_none(), "{:?} failed: {:?}", s.variant, s.error);
        assert!(
            s.value.unwrap_or(0.0) > 0.0,
            "{:?}: no throughput",
            s.variant
        );
    }
    for v in [bench::Variant::Appliance, bench::Variant::WireguardGo] {
        let row = outcome
            .summary
            .iter()
            .find(|r| r.variant == v)
            .unwrap_or_else(|| panic!("no summary row for {v:?}"));
        assert!(row.median.unwrap_or(0.0) > 0.0, "{v:?}: {row:?}");
    }
    // The baseline defaults to the best userspace pair present.
    assert_eq!(
        outcome.summary[0].baseline,
        Some(bench::Variant::WireguardGo)
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&outcome.json).expect("JSON written"))
            .expect("valid JSON");
    assert!(json["machine"]["kernel"]
        .as_str()
        .is_some_and(|k| !k.is_empty()));
    assert_eq!(json["samples"].as_array().map(Vec::len), Some(2));
    let svg = std::fs::read_to_string(&outcome.svg).expect("SVG written");
    assert!(
        svg.starts_with("<svg") && svg.contains("wireguard-go"),
        "SVG content"
    );
    assert!(took.as_secs() < 60, "the smoke bench took {took:?}");
    let _ = std::fs::remove_dir_all(&out);
}
