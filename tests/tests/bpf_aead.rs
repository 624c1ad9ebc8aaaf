//! The BPF ChaCha20-Poly1305 (`wg_ebpf_common::aead`, driven by the test
//! programs in `wg-ebpf/src/aead_test.rs`) against the `chacha20poly1305`
//! crate, inside the kernel through BPF_PROG_TEST_RUN: RFC 8439 §2.8.2, the
//! lengths around every chunk and Poly1305 block boundary with random keys
//! and counters, open of crate-sealed messages, rejection of corrupted ones.
//!
//! Random inputs come from a seed printed at the start of each test; set
//! `WG_AEAD_SEED` to replay one. `WG_AEAD_SPEED=1` also runs the timing
//! (µs per packet, median of 3 runs of 100,000 repetitions each);
//! `WG_AEAD_OBJ=<path>` runs everything on another build of `wg-ebpf`.

use chacha20poly1305::{aead::AeadInPlace, ChaCha20Poly1305, KeyInit};
use rand::{rngs::StdRng, RngExt, SeedableRng};
use wg_appliance::datapath::{
    aead_probe::{AeadProbe, AEAD_OPEN_TEST, AEAD_SEAL_TEST},
    test_run::run_xdp,
};
use wg_appliance_tests::{netns_unavailable, skip};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const HDR_LEN: usize = 64;
const TAG_LEN: usize = 16;

/// Lengths at and around every boundary the code treats differently: empty,
/// Poly1305 blocks (16), chunks (64), and the largest payloads.
const LENGTHS: &[usize] = &[
    0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 500, 1024, 1419, 1420, 1440,
];

/// The test programs' input: key, nonce, AAD length, flags, AAD (see
/// wg-ebpf/src/aead_test.rs).
fn header(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8]) -> Vec<u8> {
    assert!(aad.len() <= 16, "the test header holds 16 AAD bytes");
    let mut h = Vec::with_capacity(HDR_LEN);
    h.extend_from_slice(key);
    h.extend_from_slice(nonce);
    h.extend_from_slice(&[aad.len() as u8, 0, 0, 0]);
    h.extend_from_slice(aad);
    h.resize(HDR_LEN, 0);
    h
}

/// WireGuard's nonce: four zero bytes, then the counter little endian.
fn wg_nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// The crate's seal: ciphertext || tag.
fn crate_seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    let mut buf = pt.to_vec();
    let tag = ChaCha20Poly1305::new(key.into())
        .encrypt_in_place_detached(nonce.into(), aad, &mut buf)
        .expect("crate seal");
    buf.extend_from_slice(&tag);
    buf
}

fn rng(test: &str) -> StdRng {
    let seed = std::env::var("WG_AEAD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: WG_AEAD_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

struct Progs {
    _probe: AeadProbe,
    seal: i32,
    open: i32,
}

/// The embedded object, or the `wg-ebpf` build named by `WG_AEAD_OBJ` (to
/// compare builds, e.g. one made with `RUSTFLAGS="-C target-cpu=v3"`).
fn load() -> Progs {
    let mut probe = match std::env::var_os("WG_AEAD_OBJ").filter(|p| !p.is_empty()) {
        Some(path) => {
            eprintln!("loading {}", path.to_string_lossy());
            AeadProbe::load_file(path.as_ref())
        }
        None => AeadProbe::load(),
    }
    .expect("load the AEAD test programs");
    let seal = probe.fd(AEAD_SEAL_TEST).expect("seal fd");
    let open = probe.fd(AEAD_OPEN_TEST).expect("open fd");
    for name in [AEAD_SEAL_TEST, AEAD_OPEN_TEST] {
        if let Ok(Some(n)) = probe.verified_insns(name) {
            eprintln!("{name}: verifier processed {n} instructions");
        }
    }
    Progs {
        _probe: probe,
        seal,
        open,
    }
}

/// Seals `pt` in the kernel; returns the packet as it left (header, then
/// ciphertext and tag) after checking the verdict.
fn bpf_seal(p: &Progs, hdr: &[u8], pt: &[u8]) -> Vec<u8> {
    let mut pkt = hdr.to_vec();
    pkt.extend_from_slice(pt);
    let out = run_xdp(p.seal, &pkt, 1).expect("BPF_PROG_TEST_RUN seal");
    assert_eq!(out.verdict, XDP_TX, "seal verdict, {} bytes", pt.len());
    assert_eq!(&out.data[..HDR_LEN], hdr, "seal changed the header");
    out.data
}

#[test]
fn rfc8439_2_8_2_in_kernel() {
    if let Some(why) = netns_unavailable() {
        skip("rfc8439_2_8_2_in_kernel", &why);
        return;
    }
    let p = load();
    let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
    let nonce = [
        0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
    ];
    let aad = [
        0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
    ];
    let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    // The RFC's ciphertext starts d3 1a 8d 34 and its tag is 1ae10b59...;
    // the crate reproduces them (asserted in wg-ebpf-common's tests too).
    let want = crate_seal(&key, &nonce, &aad, pt);
    assert_eq!(&want[..4], &[0xd3, 0x1a, 0x8d, 0x34]);
    assert_eq!(
        &want[want.len() - TAG_LEN..],
        &[
            0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60,
            0x06, 0x91
        ]
    );
    let hdr = header(&key, &nonce, &aad);
    let got = bpf_seal(&p, &hdr, pt);
    assert_eq!(&got[HDR_LEN..], &want[..], "sealed RFC vector");

    let mut sealed = hdr.clone();
    sealed.extend_from_slice(&want);
    let out = run_xdp(p.open, &sealed, 1).expect("test run open");
    assert_eq!(out.verdict, XDP_TX, "open verdict");
    assert_eq!(&out.data[HDR_LEN..], &pt[..], "opened RFC vector");
}

#[test]
fn seal_matches_crate() {
    if let Some(why) = netns_unavailable() {
        skip("seal_matches_crate", &why);
        return;
    }
    let p = load();
    let mut rng = rng("seal_matches_crate");
    let mut failures = Vec::new();
    for &len in LENGTHS {
        for _ in 0..4 {
            let key: [u8; 32] = rng.random();
            let counter: u64 = rng.random();
            let mut pt = vec![0u8; len];
            rng.fill(&mut pt[..]);
            let nonce = wg_nonce(counter);
            let want = crate_seal(&key, &nonce, &[], &pt);
            let got = bpf_seal(&p, &header(&key, &nonce, &[]), &pt);
            if got[HDR_LEN..] != want[..] {
                failures.push(format!("len {len} counter {counter:#x}"));
            }
        }
    }
    assert!(failures.is_empty(), "seal mismatches: {failures:?}");
}

#[test]
fn open_of_crate_sealed_gives_plaintext() {
    if let Some(why) = netns_unavailable() {
        skip("open_of_crate_sealed_gives_plaintext", &why);
        return;
    }
    let p = load();
    let mut rng = rng("open_of_crate_sealed_gives_plaintext");
    for &len in LENGTHS {
        for _ in 0..4 {
            let key: [u8; 32] = rng.random();
            let nonce = wg_nonce(rng.random());
            let mut pt = vec![0u8; len];
            rng.fill(&mut pt[..]);
            let hdr = header(&key, &nonce, &[]);
            let mut pkt = hdr.clone();
            pkt.extend_from_slice(&crate_seal(&key, &nonce, &[], &pt));
            let out = run_xdp(p.open, &pkt, 1).expect("test run open");
            assert_eq!(out.verdict, XDP_TX, "open verdict, len {len}");
            assert_eq!(&out.data[..HDR_LEN], &hdr[..], "header, len {len}");
            assert_eq!(&out.data[HDR_LEN..], &pt[..], "plaintext, len {len}");
        }
    }
}

/// A flipped bit in the tag, in the ciphertext, or a wrong counter: dropped.
#[test]
fn open_rejects_corruption() {
    if let Some(why) = netns_unavailable() {
        skip("open_rejects_corruption", &why);
        return;
    }
    let p = load();
    let mut rng = rng("open_rejects_corruption");
    for &len in LENGTHS {
        let key: [u8; 32] = rng.random();
        let counter: u64 = rng.random();
        let mut pt = vec![0u8; len];
        rng.fill(&mut pt[..]);
        let sealed = crate_seal(&key, &wg_nonce(counter), &[], &pt);
        let hdr = header(&key, &wg_nonce(counter), &[]);

        let mut positions = vec![len + rng.random_range(0..TAG_LEN)];
        if len > 0 {
            positions.push(rng.random_range(0..len));
        }
        for at in positions {
            let mut pkt = hdr.clone();
            pkt.extend_from_slice(&sealed);
            pkt[HDR_LEN + at] ^= 1 << rng.random_range(0..8);
            let out = run_xdp(p.open, &pkt, 1).expect("test run open");
            assert_eq!(out.verdict, XDP_DROP, "len {len}, bit flipped at {at}");
        }

        let mut pkt = header(&key, &wg_nonce(counter.wrapping_add(1)), &[]);
        pkt.extend_from_slice(&sealed);
        let out = run_xdp(p.open, &pkt, 1).expect("test run open");
        assert_eq!(out.verdict, XDP_DROP, "len {len}, wrong counter");
    }
}

/// Packets outside the layout are passed untouched, never half-processed.
#[test]
fn out_of_range_packets_pass_untouched() {
    if let Some(why) = netns_unavailable() {
        skip("out_of_range_packets_pass_untouched", &why);
        return;
    }
    let p = load();
    let hdr = header(&[1; 32], &wg_nonce(1), &[]);
    let mut bad_aad = hdr.clone();
    bad_aad[44] = 17;
    bad_aad.extend_from_slice(&[0; 32]);
    let mut too_long = hdr.clone();
    too_long.resize(HDR_LEN + 1441, 7);
    let mut no_tag = hdr.clone();
    no_tag.extend_from_slice(&[0; TAG_LEN - 1]);
    let mut open_too_long = hdr.clone();
    open_too_long.resize(HDR_LEN + 1440 + TAG_LEN + 1, 7);
    let cases = [
        ("seal: short header", p.seal, hdr[..63].to_vec()),
        ("seal: aad length 17", p.seal, bad_aad.clone()),
        ("seal: 1441 bytes", p.seal, too_long),
        ("open: no room for the tag", p.open, no_tag),
        ("open: aad length 17", p.open, bad_aad),
        ("open: 1441 bytes", p.open, open_too_long),
    ];
    for (name, fd, pkt) in cases {
        let out = run_xdp(fd, &pkt, 1).expect("test run");
        assert_eq!(out.verdict, XDP_PASS, "{name}: verdict");
        assert_eq!(out.data, pkt, "{name}: packet modified");
    }
}
