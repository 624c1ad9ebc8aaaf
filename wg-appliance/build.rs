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
    println!(
        "cargo:rustc-env=WG_APPLIANCE_GIT_COMMIT={}",
        git_commit(root)
    );

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

/// The commit being built, for `--version` and the build-info metric:
/// `$WG_APPLIANCE_GIT_COMMIT` when set (builds from a source tarball), else
/// `git rev-parse`, else "unknown". Re-run when HEAD or the branch moves.
fn git_commit(root: &Path) -> String {
    println!("cargo:rerun-if-env-changed=WG_APPLIANCE_GIT_COMMIT");
    if let Ok(c) = env::var("WG_APPLIANCE_GIT_COMMIT") {
        return c;
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    // Re-run when a commit lands: HEAD, the branch's ref, packed refs.
    for p in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--git-path", "packed-refs"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
    ]
    .into_iter()
    .flatten()
    {
        let p = Path::new(&p);
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            root.join(p)
        };
        println!("cargo:rerun-if-changed={}", p.display());
    }
    commit
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
