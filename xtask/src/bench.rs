//! `cargo xtask bench [ARGS]`: builds the release wg-appliance and execs
//! `target/release/wg-appliance bench ARGS` from the workspace root (so the
//! default output lands in target/bench/<timestamp>) with the project's
//! tools (boringtun-cli) first in PATH. The harness itself lives in
//! wg-appliance/src/bench.rs; `--help` lists its flags (--rounds,
//! --duration, --variants, --workloads, --baseline, --out, --quick...).

use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, Result};

use crate::{path_env, root, sh};

pub fn run(args: &[String]) -> Result<()> {
    println!("==> building wg-appliance (release)");
    sh("cargo", &["build", "--release", "-p", "wg-appliance"])?;
    let bin = root().join("target/release/wg-appliance");
    println!("==> {} bench {}", bin.display(), args.join(" "));
    // exec: Ctrl-C reaches the bench itself, which tears its labs down.
    let err = Command::new(&bin)
        .arg("bench")
        .args(args)
        .current_dir(root())
        .env("PATH", path_env())
        .exec();
    Err(err).with_context(|| format!("cannot run {}", bin.display()))
}
