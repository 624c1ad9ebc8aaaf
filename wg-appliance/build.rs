//! Builds the BPF programs (crate `wg-ebpf`) with the nightly toolchain for
//! `bpfel-unknown-none` and hands the object's path to the library, which
//! embeds it. Doing it here means `cargo build -p wg-appliance` can never
//! embed a stale or missing object: the order cannot be got wrong.
//!
//! Needs what `cargo xtask setup` installs: the nightly toolchain with
//! `rust-src`, and `bpf-linker`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    if let Err(e) = run() {
        // cargo prints build-script stderr on failure; make the fix obvious.
        eprintln!("\nerror: building the BPF programs failed: {e:#}");
        eprintln!("fix: run `cargo xtask setup` (installs the nightly rust-src component and bpf-linker), then build again.\n");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest
        .parent()
        .ok_or_else(|| anyhow::anyhow!("wg-appliance has no parent directory"))?;
    let ebpf = root.join("wg-ebpf");
    for p in [
        "wg-ebpf/src",
        "wg-ebpf/Cargo.toml",
        "wg-ebpf/Cargo.lock",
        "wg-ebpf/.cargo/config.toml",
        "wg-ebpf-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=WG_APPLIANCE_SKIP_EBPF");

    let target_dir = root.join("target").join("bpf");
    let obj = target_dir
        .join("bpfel-unknown-none")
        .join("release")
        .join("wg-ebpf");
    if env::var_os("WG_APPLIANCE_SKIP_EBPF").is_some_and(|v| v == "1") {
        // For working on pure-userspace code only: the loader then reports
        // that the binary carries no BPF programs.
        println!("cargo:warning=WG_APPLIANCE_SKIP_EBPF=1: building without BPF programs");
        let empty = PathBuf::from(env::var("OUT_DIR")?).join("empty.o");
        std::fs::write(&empty, [])?;
        println!("cargo:rustc-env=WG_EBPF_OBJ={}", empty.display());
        return Ok(());
    }

    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release"])
        .current_dir(&ebpf)
        .env("CARGO_TARGET_DIR", &target_dir);
    scrub_cargo_env(&mut cmd);
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run `rustup run nightly cargo`: {e}"))?;
    if !status.success() {
        anyhow::bail!(
            "`rustup run nightly cargo build --release` in {} exited with {status}",
            ebpf.display()
        );
    }
    ensure_object(&obj)?;
    println!("cargo:rustc-env=WG_EBPF_OBJ={}", obj.display());
    Ok(())
}

/// The outer cargo exports its own toolchain, flags and wrappers to build
/// scripts; the inner nightly build must not inherit them.
fn scrub_cargo_env(cmd: &mut Command) {
    for (k, _) in env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        let inherited = (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k.starts_with("RUSTC")
            || k.starts_with("RUSTDOC")
            || k == "RUSTFLAGS"
            || k == "RUSTUP_TOOLCHAIN";
        if inherited {
            cmd.env_remove(k);
        }
    }
}

fn ensure_object(obj: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(obj)
        .map_err(|e| anyhow::anyhow!("expected BPF object at {}: {e}", obj.display()))?;
    if meta.len() == 0 {
        anyhow::bail!("BPF object {} is empty", obj.display());
    }
    Ok(())
}
