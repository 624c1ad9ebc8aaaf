//! Fuzzing every parser that sees untrusted bytes (the cargo-fuzz targets
//! in wg-appliance/fuzz): a bounded smoke run in `cargo xtask test`, longer
//! runs with `cargo xtask fuzz`.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{path_env, root};

/// The targets in wg-appliance/fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &[
    "handshake_initiation",
    "handshake_response",
    "cookie_reply",
    "transport",
    "key_base64",
    "message_parse",
];

fn cargo_fuzz(args: &[&str]) -> Result<()> {
    let dir = root().join("wg-appliance").join("fuzz");
    let status = Command::new("cargo")
        .args(["+nightly", "fuzz"])
        .args(args)
        .current_dir(&dir)
        .env("PATH", path_env())
        // The parsers need no BPF object; skip building it for ASan.
        .env("WG_APPLIANCE_SKIP_EBPF", "1")
        .status()
        .context("cannot run cargo +nightly fuzz (cargo xtask setup installs cargo-fuzz)")?;
    if !status.success() {
        bail!("`cargo +nightly fuzz {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Builds every target, then runs each for `seconds`. A crash fails.
pub fn run(seconds: u32) -> Result<()> {
    cargo_fuzz(&["build"])?;
    let limit = format!("-max_total_time={seconds}");
    for t in TARGETS {
        println!("==> fuzzing {t} for {seconds} s");
        cargo_fuzz(&["run", t, "--", &limit, "-print_final_stats=0"])?;
    }
    Ok(())
}
