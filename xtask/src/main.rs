//! Project tasks: `cargo xtask <setup|build-ebpf|demo|test|ci>`.
//!
//! The README's two commands are `cargo xtask demo` and `cargo xtask test`;
//! both run `setup` first when something is missing, so a fresh machine
//! needs nothing else.

mod bench;
mod demo;
mod fuzz;
mod package;
mod setup;
mod test;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "wg-appliance project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything the build, the tests and the demo need (idempotent).
    Setup {
        /// Only check, cheaply, that setup would work on a fresh machine:
        /// pinned versions parse as `cargo install` reads them, Debian
        /// package names resolve (run by `cargo xtask test`).
        #[arg(long, conflicts_with = "prove")]
        check: bool,
        /// Prove every install step where everything is already installed:
        /// a simulated apt install after `apt-get update`, and every
        /// cargo-installed tool built into a throwaway root with a fresh
        /// CARGO_HOME (several minutes).
        #[arg(long)]
        prove: bool,
    },
    /// Build the BPF programs (and the library that embeds them).
    BuildEbpf,
    /// Run the lab in network namespaces and show what the data path does.
    Demo {
        /// Instead: a fleet of two gateways (one anycast address over BGP,
        /// peers from etcd), one killed under traffic, failover measured.
        #[arg(long)]
        fleet: bool,
    },
    /// Run every check and test: fmt, clippy, unit, BPF program and namespace tests.
    Test {
        /// Fail on any skipped test (CI runs this on the target machine kind).
        #[arg(long)]
        strict: bool,
    },
    /// What CI runs (`.ci/run`): `test --strict`.
    Ci,
    /// A/B benchmark of wg-appliance against wireguard-go and boringtun-cli
    /// (release build; `cargo xtask bench --help` for the flags).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build a Debian package (target/debian/wg-appliance_<version>_<arch>.deb):
    /// the binary with its BPF object, the systemd unit, man pages,
    /// completions, the config directory.
    Package,
    /// Fuzz every wire parser (cargo-fuzz on the nightly).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup { check: true, .. } => setup::check(),
        Task::Setup { prove: true, .. } => setup::prove(),
        Task::Setup { .. } => setup::run(),
        Task::BuildEbpf => setup::ensure().and_then(|()| build_ebpf()),
        Task::Demo { fleet: false } => setup::ensure().and_then(|()| demo::run_demo()),
        Task::Demo { fleet: true } => setup::ensure().and_then(|()| demo::run_fleet()),
        Task::Test { strict } => setup::ensure().and_then(|()| test::run(strict)),
        Task::Ci => setup::ensure().and_then(|()| test::run(true)),
        Task::Bench { args } => setup::ensure().and_then(|()| bench::run(&args)),
        Task::Package => setup::ensure().and_then(|()| package::run().map(drop)),
        Task::Fuzz { seconds } => setup::ensure().and_then(|()| fuzz::run(seconds)),
    };
    if let Err(e) = result {
        eprintln!("\nxtask: error: {e:#}");
        std::process::exit(1);
    }
}

/// The workspace root (the parent of this crate).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Directory for tools installed by setup (boringtun-cli).
pub fn tools_bin() -> PathBuf {
    root().join("tools").join("bin")
}

/// PATH with the project's tools directory and cargo's bin directory first.
pub fn path_env() -> String {
    let mut parts = vec![tools_bin().display().to_string()];
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        parts.push(Path::new(&home).join("bin").display().to_string());
    } else if let Some(home) = std::env::var_os("HOME") {
        parts.push(Path::new(&home).join(".cargo/bin").display().to_string());
    }
    parts.push(std::env::var("PATH").unwrap_or_default());
    parts.join(":")
}

/// Runs a command in the workspace root, inheriting stdio.
pub fn sh(cmd: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(cmd)
        .args(args)
        .current_dir(root())
        .env("PATH", path_env())
        .status()
        .with_context(|| format!("cannot run `{cmd}`"))?;
    if !status.success() {
        bail!("`{cmd} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn build_ebpf() -> Result<()> {
    println!(
        "==> building the BPF programs (wg-ebpf, nightly, bpfel-unknown-none) and wg-appliance"
    );
    sh(
        "cargo",
        &["build", "--release", "--package", "wg-appliance"],
    )?;
    let obj = root().join("target/bpf/bpfel-unknown-none/release/wg-ebpf");
    println!("==> BPF object: {}", obj.display());
    Ok(())
}
