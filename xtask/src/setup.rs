//! `cargo xtask setup`: everything a fresh Debian 12 machine needs, each
//! step checked first so a re-run with everything present takes seconds.

use std::{
    path::{Path, PathBuf},
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
    // prometheus and promtool: the monitoring test, the alert-rule unit
    // tests and the demo's dashboard query.
    "prometheus",
    // tmux: the `top` test drives the live view in a pseudo-terminal.
    "tmux",
    // protoc: building etcd-client (the etcd peer source) compiles etcd's
    // .proto files. Without it the first build fails in etcd-client's
    // build script. libprotobuf-dev holds the well-known types
    // (google/protobuf/descriptor.proto, struct.proto) that etcd's files
    // import: protoc alone fails with "descriptor.proto: File not found"
    // (it is only a Recommends of protobuf-compiler, and setup installs
    // without recommends).
    "protobuf-compiler",
    "libprotobuf-dev",
    // etcd and etcdctl: the peer-source tests and the fleet demo start
    // their own members in namespaces (on a machine with systemd the
    // package also starts one on 127.0.0.1:2379; the tests do not use it).
    "etcd-server",
    "etcd-client",
    // bird2: the fleet test and `demo --fleet` announce the anycast address
    // over BGP from each gateway to the router.
    "bird2",
];

/// Tools `cargo install` builds, each pinned to a full version: stable
/// cargo (1.95) refuses a partial one such as `0.13` ("unexpected end of
/// input while parsing minor version number"), which is how setup broke on
/// fresh machines once. `cargo xtask setup --check` (run by `cargo xtask
/// test`) parses every requirement the way `cargo install` does;
/// `cargo xtask setup --prove` builds every tool into a throwaway root.
struct CargoTool {
    krate: &'static str,
    /// The binary the crate installs (checked with `--version`).
    bin: &'static str,
    version: &'static str,
    why: &'static str,
}

/// bpf-linker: the release line that builds against the nightly's LLVM 22.
const BPF_LINKER: CargoTool = CargoTool {
    krate: "bpf-linker",
    bin: "bpf-linker",
    version: "0.13.0",
    why: "links the BPF object, built against the nightly's own libLLVM",
};
/// cargo-fuzz: runs the wire-parser fuzz targets on the nightly.
const CARGO_FUZZ: CargoTool = CargoTool {
    krate: "cargo-fuzz",
    bin: "cargo-fuzz",
    version: "0.13.2",
    why: "fuzzes the wire parsers",
};
/// boringtun-cli: the version whose quirks the tests know.
const BORINGTUN_CLI: CargoTool = CargoTool {
    krate: "boringtun-cli",
    bin: "boringtun-cli",
    version: "0.7.1",
    why: "interop peer in the tests, the demo and the bench",
};
const CARGO_TOOLS: [&CargoTool; 3] = [&BPF_LINKER, &CARGO_FUZZ, &BORINGTUN_CLI];

struct Step {
    name: &'static str,
    present: fn() -> bool,
    install: fn() -> Result<()>,
    fix: &'static str,
}

const STEPS: &[Step] = &[
    Step {
        name: "Debian packages (iproute2 iperf3 wireguard-tools wireguard-go ethtool bpftool tcpdump curl nftables iputils-ping prometheus tmux protobuf-compiler libprotobuf-dev etcd-server etcd-client bird2)",
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
        name: "bpf-linker 0.13.0 (built against the nightly's own libLLVM)",
        present: bpf_linker_present,
        install: bpf_linker_install,
        fix: "see the bpf-linker step in xtask/src/setup.rs; it needs the nightly toolchain first",
    },
    Step {
        name: "cargo-fuzz 0.13.2 (fuzzing the wire parsers)",
        present: cargo_fuzz_present,
        install: cargo_fuzz_install,
        fix: "cargo install cargo-fuzz --version 0.13.2 --locked (needs crates.io)",
    },
    Step {
        name: "boringtun-cli 0.7.1 (interop peer) into ./tools/bin",
        present: boringtun_present,
        install: boringtun_install,
        fix: "cargo install boringtun-cli --version 0.7.1 --root tools (needs crates.io)",
    },
    Step {
        name: "BPF file system at /run/wg-appliance/bpf, mounted on the host side (pins outlive daemons run under ip netns exec)",
        present: bpffs_present,
        install: bpffs_install,
        fix: "mkdir -p -m 0700 /run/wg-appliance/bpf && mount -t bpf bpf /run/wg-appliance/bpf",
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

pub(crate) fn output(cmd: &str, args: &[&str]) -> Result<String> {
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

pub(crate) fn run_loud(cmd: &mut Command) -> Result<()> {
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

/// Where a `cargo install` goes: the user's cargo (or ./tools), or a
/// throwaway root with a fresh CARGO_HOME for `--prove`.
#[derive(Clone, Copy)]
struct InstallTarget<'a> {
    root: Option<&'a Path>,
    cargo_home: Option<&'a Path>,
}

impl InstallTarget<'_> {
    const USER: InstallTarget<'static> = InstallTarget {
        root: None,
        cargo_home: None,
    };
}

/// `cargo install <tool> --version <pinned>` with `extra` arguments and
/// environment, into `target`.
fn cargo_install(
    tool: &CargoTool,
    extra: &[&str],
    env: &[(&str, String)],
    target: InstallTarget,
) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.args(["install", tool.krate, "--version", tool.version])
        .args(extra)
        .env("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback");
    if let Some(root) = target.root {
        cmd.arg("--root").arg(root);
    }
    if let Some(home) = target.cargo_home {
        cmd.env("CARGO_HOME", home);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_loud(&mut cmd)
}

/// Builds bpf-linker against the libLLVM shipped inside the nightly
/// toolchain, so no system LLVM is needed. The library name and the LLVM
/// major version are read off the sysroot, never assumed.
fn bpf_linker_install_into(target: InstallTarget) -> Result<()> {
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
    cargo_install(
        &BPF_LINKER,
        &[
            "--no-default-features",
            "--features",
            &format!("llvm-{major},no-llvm-linking"),
        ],
        &[("RUSTFLAGS", rustflags)],
        target,
    )
}

fn bpf_linker_install() -> Result<()> {
    bpf_linker_install_into(InstallTarget::USER)
}

fn boringtun_present() -> bool {
    tools_bin().join("boringtun-cli").exists()
}

fn boringtun_install() -> Result<()> {
    let tools = root().join("tools");
    cargo_install(
        &BORINGTUN_CLI,
        &[],
        &[],
        InstallTarget {
            root: Some(&tools),
            cargo_home: None,
        },
    )
}

fn cargo_fuzz_present() -> bool {
    quiet("cargo", &["+nightly", "fuzz", "--version"])
}

fn cargo_fuzz_install() -> Result<()> {
    cargo_install(&CARGO_FUZZ, &["--locked"], &[], InstallTarget::USER)
}

fn bpffs_dir() -> PathBuf {
    PathBuf::from("/run/wg-appliance/bpf")
}

/// A BPF file system (magic 0xcafe4a11) is mounted at the pin root.
fn bpffs_present() -> bool {
    output(
        "stat",
        &["-f", "-c", "%t", &bpffs_dir().display().to_string()],
    )
    .is_ok_and(|t| t.trim() == "cafe4a11")
}

fn bpffs_install() -> Result<()> {
    let dir = bpffs_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    run_loud(Command::new("chmod").args(["0700"]).arg(&dir))?;
    run_loud(
        Command::new("mount")
            .args(["-t", "bpf", "-o", "mode=0700", "bpf"])
            .arg(&dir),
    )
}

/// `cargo xtask setup --check`: the cheap proof that setup can still work on
/// a fresh machine, for `cargo xtask test`: every pinned version parses the
/// way `cargo install` parses it (`cargo install --list` parses the
/// arguments and touches no registry), every Debian package name resolves,
/// and the nightly offers rust-src.
pub fn check() -> Result<()> {
    let scratch = Scratch::new("check")?;
    let mut problems = Vec::new();
    for tool in CARGO_TOOLS {
        let out = Command::new("cargo")
            .args(["install", tool.krate, "--version", tool.version, "--list"])
            .env("CARGO_HOME", scratch.path())
            .env("PATH", path_env())
            .output()
            .context("cannot run cargo")?;
        if out.status.success() {
            println!(
                "  ok  cargo install {} --version {} parses",
                tool.krate, tool.version
            );
        } else {
            problems.push(format!(
                "`cargo install {} --version {}` is refused by this cargo: {}",
                tool.krate,
                tool.version,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    for pkg in APT_PACKAGES {
        if quiet("apt-cache", &["show", "--no-all-versions", pkg]) {
            println!("  ok  Debian package {pkg} resolves");
        } else {
            problems.push(format!(
                "Debian package {pkg} does not resolve (apt-cache show {pkg}); after `apt-get update` it still must"
            ));
        }
    }
    let components =
        output("rustup", &["component", "list", "--toolchain", "nightly"]).unwrap_or_default();
    if components.lines().any(|l| l.starts_with("rust-src")) {
        println!("  ok  the nightly toolchain offers rust-src");
    } else {
        problems.push("the nightly toolchain does not list rust-src (rustup component list --toolchain nightly)".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "setup would break on a fresh machine:\n  {}",
            problems.join("\n  ")
        )
    }
}

/// `cargo xtask setup --prove`: every install step run for real where
/// everything is already installed: `apt-get install --simulate` of every
/// Debian package after `apt-get update`, and every cargo-installed tool
/// built into a throwaway root with a fresh CARGO_HOME, then run with
/// `--version`. Takes several minutes (the tools are compiled).
pub fn prove() -> Result<()> {
    let start = Instant::now();
    check()?;
    println!("==> apt-get update, then a simulated install of every Debian package");
    run_loud(Command::new("apt-get").args(["update", "-q"]))?;
    run_loud(
        Command::new("apt-get")
            .args(["install", "--simulate", "-q", "--no-install-recommends"])
            .args(APT_PACKAGES),
    )?;
    nightly_install()?;
    let scratch = Scratch::new("prove")?;
    let home = scratch.path().join("cargo-home");
    for tool in CARGO_TOOLS {
        let t = Instant::now();
        let root = scratch.path().join(tool.krate);
        println!(
            "==> cargo install {} --version {} into a throwaway root ({})",
            tool.krate, tool.version, tool.why
        );
        let target = InstallTarget {
            root: Some(&root),
            cargo_home: Some(&home),
        };
        match tool.krate {
            "bpf-linker" => bpf_linker_install_into(target)?,
            "cargo-fuzz" => cargo_install(tool, &["--locked"], &[], target)?,
            _ => cargo_install(tool, &[], &[], target)?,
        }
        let bin = root.join("bin").join(tool.bin);
        let version = output(&bin.display().to_string(), &["--version"])
            .with_context(|| format!("the freshly built {} does not run", tool.bin))?;
        println!(
            "  ok  {} built in {:.0?}: {}",
            tool.krate,
            t.elapsed(),
            version.lines().next().unwrap_or("").trim()
        );
    }
    println!("setup proven in {:.0?}", start.elapsed());
    Ok(())
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Result<Self> {
        let p =
            std::env::temp_dir().join(format!("wg-appliance-setup-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
