//! Micro-benchmarks of the data path's hot pieces, side by side (issue 7):
//!
//! - `aead`: ChaCha20-Poly1305 seal and open at 64, 512 and 1420 bytes, the
//!   BPF implementation (`aead_seal_test` / `aead_open_test`, see
//!   wg-ebpf/src/aead_test.rs) through BPF_PROG_TEST_RUN against the
//!   `chacha20poly1305` crate the control plane uses (`wg_appliance::session`).
//! - `lpm_map`: AllowedIPs longest-prefix lookups from userspace through the
//!   map (`Datapath::lookup_allowed`, one syscall each) with 1 peer and with
//!   10,000 peers (a /32, a /24 and a /128 each).
//! - `lpm_tun_tx`: the same lookups in the kernel, `tun_tx` (parse, classify,
//!   LPM, peer slot) on a crafted Ethernet + IP + UDP frame. Without an
//!   endpoint or session it returns XDP_DROP (`drop_no_endpoint`) right after
//!   the lookup, which is the part timed.
//!
//! BPF figures are the kernel's own per-run time (BPF_PROG_TEST_RUN with
//! `repeat`, up to 10,000 runs per syscall), fed to criterion through
//! `iter_custom`, so syscall and copy overhead is excluded. Caveats: the
//! kernel reports an integer mean in ns (a bias below 1 ns per run); repeated
//! runs see the same packet, so caches and branch predictors are warm.
//! The AEAD programs run with `KEEP_LEN` so every repetition does the same
//! work (open fails the tag check after the first repetition, as it then
//! sees plaintext, but only after doing all the work). Userspace open copies
//! the ciphertext into the work buffer first, as `ReceivingKey::open` does.
//!
//! A summary table (with BPF/userspace and 10,000/1 ratios) is printed at
//! the end from criterion's estimates. Needs root and BPF; otherwise it says
//! why, loudly, and measures nothing. Handshake figures are in
//! `cargo bench -p wg-appliance --bench protocol`.
//!
//! Run: `cargo bench -p wg-appliance-tests --bench datapath`.

use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::RawFd,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use chacha20poly1305::{aead::AeadInPlace, ChaCha20Poly1305, KeyInit};
use criterion::{BenchmarkId, Criterion, Throughput};
use wg_appliance::datapath::{
    aead_probe::{AeadProbe, AEAD_OPEN_TEST, AEAD_SEAL_TEST},
    test_run::run_xdp,
    Datapath, TUN_TX,
};
use wg_appliance_tests::{
    packet::{Frame, Ip},
    skip,
};
use wg_ebpf_common::Counter;

const BENCH: &str = "bench datapath";
const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;
const HDR_LEN: usize = 64;
/// Flag byte of the AEAD test header: same length on every repetition.
const KEEP_LEN: u8 = 1;
const SIZES: [usize; 3] = [64, 512, 1420];
const MANY: u32 = 10_000;
/// Most repetitions per BPF_PROG_TEST_RUN call.
const REPEAT: u64 = 10_000;
const ETH_HLEN: usize = 14;

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args()
}

/// Runs `fd` on `pkt` `iters` times in chunks of at most [`REPEAT`]; returns
/// the kernel-measured time of all runs. `ok` checks every chunk's verdict.
fn kernel_time(fd: RawFd, pkt: &[u8], iters: u64, ok: impl Fn(u32) -> bool) -> Duration {
    let mut left = iters;
    let mut ns = 0u64;
    while left > 0 {
        let r = left.min(REPEAT);
        let out = run_xdp(fd, pkt, r as u32).expect("BPF_PROG_TEST_RUN");
        assert!(ok(out.verdict), "unexpected verdict {}", out.verdict);
        ns += r * u64::from(out.duration_ns);
        left -= r;
    }
    Duration::from_nanos(ns)
}

// ---------------------------------------------------------------- AEAD

/// WireGuard's nonce: four zero bytes, then the counter little endian.
fn wg_nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// The AEAD test programs' header (wg-ebpf/src/aead_test.rs), no AAD.
fn aead_header(key: &[u8; 32], nonce: &[u8; 12], flags: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(HDR_LEN);
    h.extend_from_slice(key);
    h.extend_from_slice(nonce);
    h.extend_from_slice(&[0, flags, 0, 0]);
    h.resize(HDR_LEN, 0);
    h
}

fn aead(c: &mut Criterion, probe: &mut AeadProbe) {
    let seal_fd = probe.fd(AEAD_SEAL_TEST).expect("seal program fd");
    let open_fd = probe.fd(AEAD_OPEN_TEST).expect("open program fd");
    let key: [u8; 32] = std::array::from_fn(|i| 0x80 ^ (i as u8).wrapping_mul(37));
    let nonce = wg_nonce(0x1234_5678);
    let cipher = ChaCha20Poly1305::new((&key).into());
    let nonce_ga = chacha20poly1305::Nonce::from_slice(&nonce);

    let mut g = c.benchmark_group("aead");
    for size in SIZES {
        let pt: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        let mut ct = pt.clone();
        let tag = cipher
            .encrypt_in_place_detached(nonce_ga, &[], &mut ct)
            .expect("crate seal");

        // The BPF programs agree with the crate before they are timed.
        let mut seal_pkt = aead_header(&key, &nonce, 0);
        seal_pkt.extend_from_slice(&pt);
        let out = run_xdp(seal_fd, &seal_pkt, 1).expect("test run seal");
        assert_eq!(out.verdict, XDP_TX, "BPF seal verdict, {size} bytes");
        assert_eq!(
            &out.data[HDR_LEN..HDR_LEN + size],
            &ct[..],
            "BPF seal, {size} bytes"
        );
        assert_eq!(
            &out.data[HDR_LEN + size..],
            &tag[..],
            "BPF tag, {size} bytes"
        );
        let mut open_pkt = aead_header(&key, &nonce, KEEP_LEN);
        open_pkt.extend_from_slice(&ct);
        open_pkt.extend_from_slice(&tag);
        let out = run_xdp(open_fd, &open_pkt, 1).expect("test run open");
        assert_eq!(out.verdict, XDP_TX, "BPF open verdict, {size} bytes");
        assert_eq!(
            &out.data[HDR_LEN..HDR_LEN + size],
            &pt[..],
            "BPF open, {size} bytes"
        );
        seal_pkt[45] = KEEP_LEN;

        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("seal_bpf", size), |b| {
            b.iter_custom(|iters| kernel_time(seal_fd, &seal_pkt, iters, |v| v == XDP_TX))
        });
        let mut buf = pt.clone();
        g.bench_function(BenchmarkId::new("seal_userspace", size), |b| {
            b.iter(|| {
                cipher
                    .encrypt_in_place_detached(nonce_ga, &[], black_box(&mut buf[..]))
                    .expect("seal")
            })
        });
        // After the first repetition the buffer holds plaintext: DROP.
        g.bench_function(BenchmarkId::new("open_bpf", size), |b| {
            b.iter_custom(|iters| {
                kernel_time(open_fd, &open_pkt, iters, |v| v == XDP_TX || v == XDP_DROP)
            })
        });
        let mut buf = Vec::with_capacity(size);
        g.bench_function(BenchmarkId::new("open_userspace", size), |b| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(black_box(&ct));
                cipher
                    .decrypt_in_place_detached(nonce_ga, &[], &mut buf, &tag)
                    .expect("open")
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------- LPM

/// Peer `i`'s prefixes: a /32, a /24 and a /128.
fn v4_host(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i)
}
fn v4_net(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (i << 8))
}
fn v6_host(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, 0xbe, 0, 0, 0, 0, (i >> 16) as u16, i as u16)
}

#[derive(Clone, Copy)]
enum Kind {
    V4Host,
    V4Net,
    V6Host,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::V4Host, Kind::V4Net, Kind::V6Host];
    fn name(self) -> &'static str {
        match self {
            Kind::V4Host => "v4_32",
            Kind::V4Net => "v4_24",
            Kind::V6Host => "v6_128",
        }
    }
    /// An address of peer `i` that this kind of prefix covers.
    fn addr(self, i: u32) -> IpAddr {
        match self {
            Kind::V4Host => v4_host(i).into(),
            Kind::V4Net => Ipv4Addr::from(u32::from(v4_net(i)) + 77).into(),
            Kind::V6Host => v6_host(i).into(),
        }
    }
}

/// A data path with `peers` peers (ids 1..=peers), each with its prefixes.
fn loaded(peers: u32) -> Datapath {
    let mut dp = Datapath::load(51820).expect("load the data path");
    for i in 0..peers {
        dp.add_allowed(v4_host(i).into(), 32, i + 1)
            .expect("add /32");
        dp.add_allowed(v4_net(i).into(), 24, i + 1)
            .expect("add /24");
        dp.add_allowed(v6_host(i).into(), 128, i + 1)
            .expect("add /128");
    }
    dp
}

/// A UDP frame as the kernel hands it to `tun_tx`, towards `dst`.
fn frame_to(dst: IpAddr) -> Vec<u8> {
    let (ip, off) = match dst {
        IpAddr::V4(_) => (Ip::v4(), ETH_HLEN + 16),
        IpAddr::V6(_) => (Ip::v6(), ETH_HLEN + 24),
    };
    let mut f = Frame::udp(ip, 53, vec![0x5a; 64]).build();
    match dst {
        IpAddr::V4(a) => f[off..off + 4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => f[off..off + 16].copy_from_slice(&a.octets()),
    }
    f
}

fn lpm(c: &mut Criterion, sets: &mut [(u32, Datapath)]) {
    let mut g = c.benchmark_group("lpm_map");
    for (peers, dp) in sets.iter() {
        let peers = *peers;
        for kind in Kind::ALL {
            for i in [0, peers - 1] {
                assert_eq!(
                    dp.lookup_allowed(kind.addr(i)).expect("lookup"),
                    Some(i + 1)
                );
            }
            // Walks all peers' addresses, one lookup each.
            let mut i = 0u32;
            g.bench_function(BenchmarkId::new(kind.name(), peers), |b| {
                b.iter(|| {
                    i = if i + 1 == peers { 0 } else { i + 1 };
                    dp.lookup_allowed(black_box(kind.addr(i))).expect("lookup")
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("lpm_tun_tx");
    for (peers, dp) in sets.iter_mut() {
        let peers = *peers;
        let fd = dp.prog_fd(TUN_TX).expect("tun_tx fd");
        for kind in Kind::ALL {
            // One peer in the middle of the table; every run the same frame.
            let pkt = frame_to(kind.addr(peers / 2));
            let before = dp.counters().expect("counters");
            let out = run_xdp(fd, &pkt, 1).expect("test run tun_tx");
            let d = dp.counters().expect("counters").since(&before);
            assert_eq!(out.verdict, XDP_DROP, "tun_tx verdict");
            assert_eq!(
                d.get(Counter::DropNoEndpoint),
                1,
                "tun_tx must find the peer (and then no endpoint):\n{d}"
            );
            g.bench_function(BenchmarkId::new(kind.name(), peers), |b| {
                b.iter_custom(|iters| kernel_time(fd, &pkt, iters, |v| v == XDP_DROP))
            });
        }
    }
    g.finish();
}

// ---------------------------------------------------------------- summary

/// Where criterion writes its estimates (its own lookup order, with the
/// workspace's target directory standing in for `cargo metadata`).
fn criterion_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CRITERION_HOME") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d).join("criterion");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/criterion")
}

/// Criterion's typical time in ns for `group/func/param`, if measured in
/// this run (not left over from an earlier one).
fn estimate_ns(group: &str, func: &str, param: impl ToString, since: SystemTime) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(func)
        .join(param.to_string())
        .join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    v["slope"]["point_estimate"]
        .as_f64()
        .or_else(|| v["mean"]["point_estimate"].as_f64())
}

fn cell(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{:.*}", digits, v / scale))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".into(),
    }
}

fn summary(since: SystemTime) {
    println!("\n== summary (criterion typical time per packet / lookup) ==");
    println!("\nChaCha20-Poly1305, µs per packet");
    println!("| op   | bytes | BPF (kernel) | userspace | BPF / userspace |");
    println!("|------|------:|-------------:|----------:|----------------:|");
    for op in ["seal", "open"] {
        for size in SIZES {
            let bpf = estimate_ns("aead", &format!("{op}_bpf"), size, since);
            let user = estimate_ns("aead", &format!("{op}_userspace"), size, since);
            println!(
                "| {op} | {size} | {} | {} | {} |",
                cell(bpf, 1e3, 3),
                cell(user, 1e3, 3),
                ratio(bpf, user)
            );
        }
    }
    println!("\nAllowedIPs LPM lookup, ns");
    println!("| path | prefix | 1 peer | {MANY} peers | ratio |");
    println!("|------|--------|-------:|-------------:|------:|");
    for (group, path) in [
        ("lpm_map", "userspace map"),
        ("lpm_tun_tx", "tun_tx in-kernel"),
    ] {
        for kind in Kind::ALL {
            let one = estimate_ns(group, kind.name(), 1, since);
            let many = estimate_ns(group, kind.name(), MANY, since);
            println!(
                "| {path} | {} | {} | {} | {} |",
                kind.name(),
                cell(one, 1.0, 1),
                cell(many, 1.0, 1),
                ratio(many, one)
            );
        }
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(
            BENCH,
            "needs root (BPF programs and maps); nothing measured",
        );
        return;
    }
    let mut probe = match AeadProbe::load() {
        Ok(p) => p,
        Err(e) => {
            skip(BENCH, &format!("cannot load the AEAD test programs: {e}"));
            return;
        }
    };
    if let Err(e) = Datapath::load(51820) {
        skip(BENCH, &format!("cannot load the data path: {e}"));
        return;
    }
    let since = SystemTime::now() - Duration::from_secs(1);
    let mut c = config();
    aead(&mut c, &mut probe);
    let mut sets = [(1, loaded(1)), (MANY, loaded(MANY))];
    lpm(&mut c, &mut sets);
    c.final_summary();
    summary(since);
}
