//! `cargo xtask setup`: everything a fresh Debian 12 machine needs, each
//! step checked first so a re-run with everything present takes seconds.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{path_env, root, tools_bin};

/// Debian packages the tests and the demo use.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iperf3",
    "wireguard-tools",
    "wireguard-go",
    "ethtool",
    "bpftool",
    "tcpdump",
    "curl",
    "nftables",
    "iputils-ping",
];

/// boringtun-cli: the version whose quirks the tests know.
const BORINGTUN_CLI_VERSION: &str = "0.7.1";
/// bpf-linker: the release line that builds against the nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

struct Step {
    name: &'static str,
    present: fn() -> bool,
    install: fn() -> Result<()>,
    fix: &'static str,
}

const STEPS: &[Step] = &[
    Step {
        name: "Debian packages (iproute2 iperf3 wireguard-tools wireguard-go ethtool bpftool tcpdump curl nftables iputils-ping)",
        present: apt_present,
        install: apt_install,
        fix: "run as root with network access to the Debian mirrors: apt-get update && apt-get install --no-install-recommends <packages>",
    },
    Step {
        name: "nightly toolchain with rust-src (for -Z build-std=core on bpfel-unknown-none)",
        present: nightly_present,
        install: nightly_install,
        fix: "rustup toolchain install nightly --profile minimal --component rust-src",
    },
    Step {
        name: "bpf-linker (built against the nightly's own libLLVM)",
        present: bpf_linker_present,
        install: bpf_linker_install,
        fix: "see the bpf-linker step in xtask/src/setup.rs; it needs the nightly toolchain first",
    },
    Step {
        name: "cargo-fuzz (fuzzing the wire parsers)",
        present: cargo_fuzz_present,
        install: cargo_fuzz_install,
        fix: "cargo install cargo-fuzz --locked (needs crates.io)",
    },
    Step {
        name: "boringtun-cli (interop peer) into ./tools/bin",
        present: boringtun_present,
        install: boringtun_install,
        fix: "cargo install boringtun-cli --version 0.7.1 --root tools (needs crates.io)",
    },
];

/// `cargo xtask setup`: every step, printing what it does.
pub fn run() -> Result<()> {
    let start = Instant::now();
    let n = STEPS.len();
    for (i, step) in STEPS.iter().enumerate() {
        let t = Instant::now();
        if (step.present)() {
            println!("[{}/{n}] {}: present", i + 1, step.name);
            continue;
        }
        println!("[{}/{n}] {}: installing...", i + 1, step.name);
        (step.install)()
            .with_context(|| format!("setup step failed: {}. Fix: {}", step.name, step.fix))?;
        if !(step.present)() {
            bail!(
                "{} still missing after installing it. Fix: {}",
                step.name,
                step.fix
            );
        }
        println!(
            "[{}/{n}] {}: installed in {:.0?}",
            i + 1,
            step.name,
            t.elapsed()
        );
    }
    println!("setup complete in {:.1?}", start.elapsed());
    Ok(())
}

/// Runs setup only when some step is missing (called by demo and test).
pub fn ensure() -> Result<()> {
    if STEPS.iter().all(|s| (s.present)()) {
        return Ok(());
    }
    println!("==> some prerequisites are missing; running `cargo xtask setup` first");
    run()
}

fn quiet(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .env("PATH", path_env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .env("PATH", path_env())
        .output()
        .with_context(|| format!("cannot run {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_loud(cmd: &mut Command) -> Result<()> {
    let desc = format!("{cmd:?}");
    let status = cmd
        .env("PATH", path_env())
        .status()
        .with_context(|| format!("cannot run {desc}"))?;
    if !status.success() {
        bail!("{desc} failed ({status})");
    }
    Ok(())
}

fn apt_missing() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output("dpkg-query", &["-W", "-f=${db:Status-Status}", p])
                .is_ok_and(|s| s.trim() == "installed")
        })
        .collect()
}

fn apt_present() -> bool {
    apt_missing().is_empty()
}

fn apt_install() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("installing Debian packages needs root");
    }
    let missing = apt_missing();
    println!("      apt-get update, then install: {}", missing.join(" "));
    run_loud(Command::new("apt-get").args(["update", "-q"]))?;
    // No recommends: wireguard-tools would otherwise pull in a kernel image.
    run_loud(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_present() -> bool {
    output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .is_ok_and(|s| s.lines().any(|l| l.starts_with("rust-src")))
}

fn nightly_install() -> Result<()> {
    let have_nightly = output("rustup", &["toolchain", "list"])
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("nightly")));
    if !have_nightly {
        run_loud(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    run_loud(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn bpf_linker_present() -> bool {
    quiet("bpf-linker", &["--version"])
}

/// Builds bpf-linker against the libLLVM shipped inside the nightly
/// toolchain, so no system LLVM is needed. The library name and the LLVM
/// major version are read off the sysroot, never assumed.
fn bpf_linker_install() -> Result<()> {
    let sysroot =
        PathBuf::from(output("rustup", &["run", "nightly", "rustc", "--print", "sysroot"])?.trim());
    let lib_dir = sysroot.join("lib");
    let mut llvm = None;
    for entry in
        std::fs::read_dir(&lib_dir).with_context(|| format!("reading {}", lib_dir.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_prefix("lib").and_then(|n| n.strip_suffix(".so")) {
            if stem.starts_with("LLVM-") {
                llvm = Some(stem.to_owned());
            }
        }
    }
    let Some(llvm) = llvm else {
        bail!("no libLLVM-*.so in {}; the nightly toolchain is incomplete (rustup toolchain install nightly)", lib_dir.display());
    };
    let major: String = llvm["LLVM-".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if major.is_empty() {
        bail!("cannot read the LLVM major version from {llvm}");
    }
    println!(
        "      nightly's LLVM: {llvm} (major {major}) in {}",
        lib_dir.display()
    );
    let lib = lib_dir.display();
    let rustflags = format!("-C link-arg=-Wl,-rpath,{lib} -L {lib} -l dylib={llvm}");
    run_loud(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{major},no-llvm-linking")])
            .env("RUSTFLAGS", rustflags)
            .env("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback"),
    )
}

fn boringtun_present() -> bool {
    tools_bin().join("boringtun-cli").exists()
}

fn boringtun_install() -> Result<()> {
    let tools = root().join("tools");
    run_loud(
        Command::new("cargo")
            .args([
                "install",
                "boringtun-cli",
                "--version",
                BORINGTUN_CLI_VERSION,
                "--root",
            ])
            .arg(&tools)
            .env("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback"),
    )
}

fn cargo_fuzz_present() -> bool {
    quiet("cargo", &["+nightly", "fuzz", "--version"])
}

fn cargo_fuzz_install() -> Result<()> {
    run_loud(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .env("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback"),
    )
}
