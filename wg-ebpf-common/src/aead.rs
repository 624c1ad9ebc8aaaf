//! ChaCha20-Poly1305 (RFC 8439) as WireGuard's transport data uses it,
//! written so the BPF verifier accepts it and the BPF programs can run it.
//!
//! The job: seal (encrypt, then MAC the ciphertext) and open (MAC the
//! ciphertext, decrypt, compare tags in constant time) a packet payload in
//! place, 64 bytes at a time, with a 32-byte key and the 96-bit nonce
//! `0u32 || counter as u64 (little endian)`. The AAD is always empty, which
//! is all transport data needs (handshakes are sealed by the control plane).
//!
//! Everything lives in one [`AeadScratch`] that a BPF program keeps in a
//! per-CPU array map: the ChaCha20 key and nonce, the block counter, the
//! Poly1305 state, the 64-byte chunk buffer the program loads packet bytes
//! into and stores them back from, and the tag. The 512-byte BPF stack could
//! not hold these next to the spilled cipher state. A BPF program drives it:
//!
//! 1. [`AeadScratch::start`] with the key words and the counter;
//! 2. for each full 64-byte chunk: copy the bytes into [`AeadScratch::buf`],
//!    call [`AeadScratch::seal_chunk`] (or [`AeadScratch::open_chunk`]), copy
//!    `buf` back;
//! 3. for the last 1..=63 bytes, if any: copy them into the start of `buf`,
//!    call [`AeadScratch::seal_partial`] / [`AeadScratch::open_partial`] with
//!    the length, copy that many bytes back;
//! 4. [`AeadScratch::finish`], then append [`AeadScratch::tag`] (seal) or
//!    compare it with the received tag via [`AeadScratch::tag_matches`]
//!    (open; on `false` the packet, already decrypted in place, must be
//!    dropped).
//!
//! Invariants: a partial chunk, if any, comes last; every function does a
//! fixed amount of work (loops have constant bounds, lengths are masked to
//! their range) so the verifier sees straight-line or bounded code; `buf`
//! holds chunk bytes in memory order, i.e. word `i` is bytes `4i..4i+4` read
//! with the machine's byte order (BPF is little endian), and the code
//! converts with `to_le`/`from_le` so the host tests mean the same thing on
//! any host. Secret data never chooses a branch or an index.

/// Key length in bytes.
pub const KEY_LEN: usize = 32;
/// Poly1305 tag length in bytes.
pub const TAG_LEN: usize = 16;
/// The unit of work: one ChaCha20 block, four Poly1305 blocks.
pub const CHUNK_LEN: usize = 64;
/// Payload bytes the test programs and the data path handle at most; with
/// the 16-byte tag this is WireGuard's largest transport message body.
pub const MAX_PAYLOAD: usize = 1440;

/// "expand 32-byte k", the ChaCha20 constants.
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];
const MASK26: u32 = 0x03ff_ffff;
/// Poly1305 blocks here are always full 16-byte blocks (the AEAD pads the
/// ciphertext with zeros to 16), so the 2^128 bit is always set: bit 24 of
/// the top 26-bit limb.
const HIBIT: u32 = 1 << 24;

/// The key as ChaCha20 reads it: eight little-endian words. Sessions can
/// store keys in this form so the data path never converts bytes.
#[inline(always)]
pub fn key_words(key: &[u8; KEY_LEN]) -> [u32; 8] {
    let mut w = [0u32; 8];
    let mut i = 0;
    while i < 8 {
        w[i] = u32::from_le_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]]);
        i += 1;
    }
    w
}

/// Poly1305 state in radix 2^26: `r` clamped, `s5 = r[1..] * 5` (the
/// reduction folds 2^130 into 5), accumulator `h`, and the final pad `s`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Poly1305 {
    r: [u32; 5],
    s5: [u32; 4],
    h: [u32; 5],
    pad: [u32; 4],
}

/// Per-CPU working state of one seal or open; see the module doc for the
/// calling sequence. 216 bytes (checked below), `#[repr(C)]` so a map value
/// has one layout on both sides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AeadScratch {
    /// The chunk being processed, in memory order (see the module doc).
    /// BPF programs load packet bytes here and store them back from here.
    pub buf: [u32; 16],
    /// The tag [`AeadScratch::finish`] computed, in memory order: store
    /// these 16 bytes after the ciphertext, or compare with the received.
    pub tag: [u32; 4],
    key: [u32; 8],
    /// The 96-bit nonce; WireGuard's is `[0, counter_lo, counter_hi]`.
    nonce: [u32; 3],
    /// ChaCha20 block counter of the next chunk (0 is the Poly1305 key).
    block: u32,
    /// AAD bytes MACed (0 for WireGuard transport data).
    aad_len: u32,
    _pad: u32,
    /// Ciphertext bytes MACed so far.
    len: u64,
    poly: Poly1305,
}

// The size BPF maps and the docs assume; a field change must update both.
const _: () = assert!(core::mem::size_of::<AeadScratch>() == 216);

impl Default for AeadScratch {
    fn default() -> Self {
        Self::new()
    }
}

macro_rules! qr {
    ($x:ident, $a:literal, $b:literal, $c:literal, $d:literal) => {
        $x[$a] = $x[$a].wrapping_add($x[$b]);
        $x[$d] = ($x[$d] ^ $x[$a]).rotate_left(16);
        $x[$c] = $x[$c].wrapping_add($x[$d]);
        $x[$b] = ($x[$b] ^ $x[$c]).rotate_left(12);
        $x[$a] = $x[$a].wrapping_add($x[$b]);
        $x[$d] = ($x[$d] ^ $x[$a]).rotate_left(8);
        $x[$c] = $x[$c].wrapping_add($x[$d]);
        $x[$b] = ($x[$b] ^ $x[$c]).rotate_left(7);
    };
}

impl AeadScratch {
    /// All zeros; [`AeadScratch::start`] sets every field that matters. A
    /// per-CPU map value starts like this too.
    pub const fn new() -> Self {
        Self {
            buf: [0; 16],
            tag: [0; 4],
            key: [0; 8],
            nonce: [0; 3],
            block: 0,
            aad_len: 0,
            _pad: 0,
            len: 0,
            poly: Poly1305 {
                r: [0; 5],
                s5: [0; 4],
                h: [0; 5],
                pad: [0; 4],
            },
        }
    }

    /// Begins a message under `key` (see [`key_words`]) and the WireGuard
    /// message `counter` (nonce `0u32 || counter`): derives the Poly1305 key
    /// from ChaCha20 block 0. Leaves garbage in `buf`; the caller fills it.
    #[inline(always)]
    pub fn start(&mut self, key: &[u32; 8], counter: u64) {
        self.start_nonce(key, &[0, counter as u32, (counter >> 32) as u32]);
    }

    /// [`AeadScratch::start`] with any 96-bit nonce, as little-endian words
    /// (RFC 8439 test vectors use nonces WireGuard never does).
    #[inline(never)]
    pub fn start_nonce(&mut self, key: &[u32; 8], nonce: &[u32; 3]) {
        self.key = *key;
        self.nonce = *nonce;
        self.block = 0;
        self.aad_len = 0;
        self.len = 0;
        self.buf = [0; 16];
        // Block 0 XORed into zeros is the key stream itself.
        self.apply_keystream();
        let k = &self.buf;
        let (t0, t1, t2, t3) = (
            u32::from_le(k[0]),
            u32::from_le(k[1]),
            u32::from_le(k[2]),
            u32::from_le(k[3]),
        );
        // r, clamped (RFC 8439 §2.5), split into 26-bit limbs.
        let r = [
            t0 & 0x03ff_ffff,
            ((t0 >> 26) | (t1 << 6)) & 0x03ff_ff03,
            ((t1 >> 20) | (t2 << 12)) & 0x03ff_c0ff,
            ((t2 >> 14) | (t3 << 18)) & 0x03f0_3fff,
            (t3 >> 8) & 0x000f_ffff,
        ];
        self.poly = Poly1305 {
            r,
            s5: [r[1] * 5, r[2] * 5, r[3] * 5, r[4] * 5],
            h: [0; 5],
            pad: [
                u32::from_le(k[4]),
                u32::from_le(k[5]),
                u32::from_le(k[6]),
                u32::from_le(k[7]),
            ],
        };
    }

    /// MACs the first `len` (at most 64; more is taken as 64) bytes of `buf`
    /// as additional authenticated data. Optional; if used, call it once,
    /// right after `start`. WireGuard transport data has none.
    #[inline(always)]
    pub fn aad(&mut self, len: u32) {
        let n = if len > CHUNK_LEN as u32 {
            CHUNK_LEN as u32
        } else {
            len
        };
        self.mask_tail(n);
        self.mac_buf(n.div_ceil(16));
        self.aad_len = n;
    }

    /// Encrypts the 64 bytes in `buf` in place and MACs the ciphertext.
    #[inline(always)]
    pub fn seal_chunk(&mut self) {
        self.apply_keystream();
        self.mac_buf(4);
        self.len += CHUNK_LEN as u64;
    }

    /// MACs the 64 ciphertext bytes in `buf` and decrypts them in place.
    #[inline(always)]
    pub fn open_chunk(&mut self) {
        self.mac_buf(4);
        self.apply_keystream();
        self.len += CHUNK_LEN as u64;
    }

    /// Seals the last `len` (1..=63) plaintext bytes, at the start of `buf`;
    /// bytes of `buf` past `len` are ignored and come back zero. `len` is
    /// taken modulo 64, so 0 (or 64) does nothing: call it only for a
    /// partial tail.
    #[inline(always)]
    pub fn seal_partial(&mut self, len: u32) {
        let n = len & (CHUNK_LEN as u32 - 1);
        if n == 0 {
            return;
        }
        self.mask_tail(n);
        self.apply_keystream();
        // The MAC pads the ciphertext with zeros, not with key stream.
        self.mask_tail(n);
        self.mac_buf(n.div_ceil(16));
        self.len += n as u64;
    }

    /// Opens the last `len` (1..=63) ciphertext bytes at the start of `buf`;
    /// the rest of `buf` is ignored and comes back zero. Same `len` rules as
    /// [`AeadScratch::seal_partial`].
    #[inline(always)]
    pub fn open_partial(&mut self, len: u32) {
        let n = len & (CHUNK_LEN as u32 - 1);
        if n == 0 {
            return;
        }
        self.mask_tail(n);
        self.mac_buf(n.div_ceil(16));
        self.apply_keystream();
        self.mask_tail(n);
        self.len += n as u64;
    }

    /// Ends the message: MACs the lengths block (empty AAD, ciphertext
    /// length) and writes the tag into `tag`.
    #[inline(never)]
    pub fn finish(&mut self) {
        let p = &self.poly;
        let mut h = p.h;
        poly_block(
            &p.r,
            &p.s5,
            &mut h,
            [self.aad_len, 0, self.len as u32, (self.len >> 32) as u32],
        );
        // Full carry, then h mod 2^130 - 5 by computing h + 5 - 2^130 and
        // keeping it when it does not borrow, with masks (no branch on h).
        let [mut h0, mut h1, mut h2, mut h3, mut h4] = h;
        let mut c;
        c = h1 >> 26;
        h1 &= MASK26;
        h2 += c;
        c = h2 >> 26;
        h2 &= MASK26;
        h3 += c;
        c = h3 >> 26;
        h3 &= MASK26;
        h4 += c;
        c = h4 >> 26;
        h4 &= MASK26;
        h0 += c * 5;
        c = h0 >> 26;
        h0 &= MASK26;
        h1 += c;

        let mut g0 = h0.wrapping_add(5);
        c = g0 >> 26;
        g0 &= MASK26;
        let mut g1 = h1.wrapping_add(c);
        c = g1 >> 26;
        g1 &= MASK26;
        let mut g2 = h2.wrapping_add(c);
        c = g2 >> 26;
        g2 &= MASK26;
        let mut g3 = h3.wrapping_add(c);
        c = g3 >> 26;
        g3 &= MASK26;
        let mut g4 = h4.wrapping_add(c).wrapping_sub(1 << 26);
        // All ones when g did not borrow (h >= p), else zero.
        let mut mask = (g4 >> 31).wrapping_sub(1);
        g0 &= mask;
        g1 &= mask;
        g2 &= mask;
        g3 &= mask;
        g4 &= mask;
        mask = !mask;
        h0 = (h0 & mask) | g0;
        h1 = (h1 & mask) | g1;
        h2 = (h2 & mask) | g2;
        h3 = (h3 & mask) | g3;
        h4 = (h4 & mask) | g4;

        // To 4 × 32 bits, then + s mod 2^128.
        let w0 = h0 | (h1 << 26);
        let w1 = (h1 >> 6) | (h2 << 20);
        let w2 = (h2 >> 12) | (h3 << 14);
        let w3 = (h3 >> 18) | (h4 << 8);
        let mut f = w0 as u64 + p.pad[0] as u64;
        let t0 = f as u32;
        f = w1 as u64 + p.pad[1] as u64 + (f >> 32);
        let t1 = f as u32;
        f = w2 as u64 + p.pad[2] as u64 + (f >> 32);
        let t2 = f as u32;
        f = w3 as u64 + p.pad[3] as u64 + (f >> 32);
        let t3 = f as u32;
        self.tag = [t0.to_le(), t1.to_le(), t2.to_le(), t3.to_le()];
    }

    /// Whether `received` (16 tag bytes in memory order, like `tag`) equals
    /// the tag [`AeadScratch::finish`] computed. Constant time: every word
    /// is compared whatever the others hold.
    #[inline(always)]
    pub fn tag_matches(&self, received: &[u32; 4]) -> bool {
        let d = (self.tag[0] ^ received[0])
            | (self.tag[1] ^ received[1])
            | (self.tag[2] ^ received[2])
            | (self.tag[3] ^ received[3]);
        d == 0
    }

    /// XORs the next ChaCha20 key-stream block into `buf` and advances the
    /// block counter. Not inlined: the chunk and partial paths share one
    /// copy of the ~2000 instructions, which keeps the BPF program small.
    #[inline(never)]
    fn apply_keystream(&mut self) {
        let k = &self.key;
        let input = [
            SIGMA[0],
            SIGMA[1],
            SIGMA[2],
            SIGMA[3],
            k[0],
            k[1],
            k[2],
            k[3],
            k[4],
            k[5],
            k[6],
            k[7],
            self.block,
            self.nonce[0],
            self.nonce[1],
            self.nonce[2],
        ];
        let mut x = input;
        let mut i = 0;
        while i < 10 {
            qr!(x, 0, 4, 8, 12);
            qr!(x, 1, 5, 9, 13);
            qr!(x, 2, 6, 10, 14);
            qr!(x, 3, 7, 11, 15);
            qr!(x, 0, 5, 10, 15);
            qr!(x, 1, 6, 11, 12);
            qr!(x, 2, 7, 8, 13);
            qr!(x, 3, 4, 9, 14);
            i += 1;
        }
        let mut j = 0;
        while j < 16 {
            self.buf[j] ^= x[j].wrapping_add(input[j]).to_le();
            j += 1;
        }
        self.block = self.block.wrapping_add(1);
    }

    /// MACs the first `blocks` (at most 4) 16-byte blocks of `buf`.
    #[inline(never)]
    fn mac_buf(&mut self, blocks: u32) {
        let p = &mut self.poly;
        let mut h = p.h;
        let mut b = 0;
        while b < 4 {
            if b < blocks as usize {
                let m = [
                    u32::from_le(self.buf[4 * b]),
                    u32::from_le(self.buf[4 * b + 1]),
                    u32::from_le(self.buf[4 * b + 2]),
                    u32::from_le(self.buf[4 * b + 3]),
                ];
                poly_block(&p.r, &p.s5, &mut h, m);
            }
            b += 1;
        }
        p.h = h;
    }

    /// Zeroes the bytes of `buf` from `n` (0..=64) on. Word masks, no byte
    /// loop: 16 fixed steps whatever `n` is.
    #[inline(always)]
    fn mask_tail(&mut self, n: u32) {
        let mut j = 0;
        while j < 16 {
            // Bytes of word j that are kept: clamp(n - 4j, 0, 4).
            let keep = n.saturating_sub(4 * j as u32).min(4);
            let bits = ((1u64 << (8 * keep)) - 1) as u32;
            // The mask is in byte order, like buf.
            self.buf[j] &= bits.to_le();
            j += 1;
        }
    }
}

/// h = (h + m + 2^128) * r mod 2^130 - 5, partially reduced (poly1305-donna
/// 32-bit). Limb bounds keep every sum of five products below 2^59 and
/// every carry below 2^32.
#[inline(always)]
fn poly_block(r: &[u32; 5], s5: &[u32; 4], h: &mut [u32; 5], m: [u32; 4]) {
    let [t0, t1, t2, t3] = m;
    let h0 = (h[0] + (t0 & MASK26)) as u64;
    let h1 = (h[1] + (((t0 >> 26) | (t1 << 6)) & MASK26)) as u64;
    let h2 = (h[2] + (((t1 >> 20) | (t2 << 12)) & MASK26)) as u64;
    let h3 = (h[3] + (((t2 >> 14) | (t3 << 18)) & MASK26)) as u64;
    let h4 = (h[4] + ((t3 >> 8) | HIBIT)) as u64;
    let (r0, r1, r2, r3, r4) = (
        r[0] as u64,
        r[1] as u64,
        r[2] as u64,
        r[3] as u64,
        r[4] as u64,
    );
    let (s1, s2, s3, s4) = (s5[0] as u64, s5[1] as u64, s5[2] as u64, s5[3] as u64);
    let d0 = h0 * r0 + h1 * s4 + h2 * s3 + h3 * s2 + h4 * s1;
    let mut d1 = h0 * r1 + h1 * r0 + h2 * s4 + h3 * s3 + h4 * s2;
    let mut d2 = h0 * r2 + h1 * r1 + h2 * r0 + h3 * s4 + h4 * s3;
    let mut d3 = h0 * r3 + h1 * r2 + h2 * r1 + h3 * r0 + h4 * s4;
    let mut d4 = h0 * r4 + h1 * r3 + h2 * r2 + h3 * r1 + h4 * r0;
    d1 += d0 >> 26;
    d2 += d1 >> 26;
    d3 += d2 >> 26;
    d4 += d3 >> 26;
    let mut n0 = (d0 as u32 & MASK26) as u64 + (d4 >> 26) * 5;
    let n1 = (d1 as u32 & MASK26) + (n0 >> 26) as u32;
    n0 &= MASK26 as u64;
    *h = [
        n0 as u32,
        n1,
        d2 as u32 & MASK26,
        d3 as u32 & MASK26,
        d4 as u32 & MASK26,
    ];
}

/// Seals `data` in place and returns the tag: the whole calling sequence for
/// a byte slice, for the host (tests, the control plane if it wants it). BPF
/// programs drive the chunk functions themselves.
pub fn seal_in_place(
    s: &mut AeadScratch,
    key: &[u8; KEY_LEN],
    counter: u64,
    data: &mut [u8],
) -> [u8; TAG_LEN] {
    s.start(&key_words(key), counter);
    for chunk in data.chunks_mut(CHUNK_LEN) {
        load(s, chunk);
        if chunk.len() == CHUNK_LEN {
            s.seal_chunk();
        } else {
            s.seal_partial(chunk.len() as u32);
        }
        store(s, chunk);
    }
    s.finish();
    tag_bytes(&s.tag)
}

/// The tag did not match: the message is not authentic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagMismatch;

/// Opens `data` in place against `tag`. On a mismatch `data` is zeroed, so
/// unauthenticated plaintext never escapes.
pub fn open_in_place(
    s: &mut AeadScratch,
    key: &[u8; KEY_LEN],
    counter: u64,
    data: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), TagMismatch> {
    s.start(&key_words(key), counter);
    for chunk in data.chunks_mut(CHUNK_LEN) {
        load(s, chunk);
        if chunk.len() == CHUNK_LEN {
            s.open_chunk();
        } else {
            s.open_partial(chunk.len() as u32);
        }
        store(s, chunk);
    }
    s.finish();
    let mut received = [0u32; 4];
    for (w, b) in received.iter_mut().zip(tag.chunks_exact(4)) {
        *w = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    }
    if s.tag_matches(&received) {
        Ok(())
    } else {
        data.fill(0);
        Err(TagMismatch)
    }
}

/// `tag` (memory order) as bytes.
pub fn tag_bytes(tag: &[u32; 4]) -> [u8; TAG_LEN] {
    let mut out = [0u8; TAG_LEN];
    for (b, w) in out.chunks_exact_mut(4).zip(tag) {
        b.copy_from_slice(&w.to_ne_bytes());
    }
    out
}

/// Copies up to 64 bytes into `buf` in memory order (what a BPF program's
/// `bpf_xdp_load_bytes` into `buf` does).
fn load(s: &mut AeadScratch, bytes: &[u8]) {
    let mut raw = [0u8; CHUNK_LEN];
    raw[..bytes.len()].copy_from_slice(bytes);
    for (w, b) in s.buf.iter_mut().zip(raw.chunks_exact(4)) {
        *w = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Copies the first `bytes.len()` bytes of `buf` out in memory order.
fn store(s: &AeadScratch, bytes: &mut [u8]) {
    let mut raw = [0u8; CHUNK_LEN];
    for (b, w) in raw.chunks_exact_mut(4).zip(&s.buf) {
        b.copy_from_slice(&w.to_ne_bytes());
    }
    let n = bytes.len();
    bytes.copy_from_slice(&raw[..n]);
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use chacha20poly1305::{aead::AeadInPlace, ChaCha20Poly1305, KeyInit, Nonce};
    use proptest::prelude::*;

    fn wg_nonce(counter: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&counter.to_le_bytes());
        n.into()
    }

    /// The crate's seal: (ciphertext, tag).
    fn reference(key: &[u8; 32], counter: u64, pt: &[u8]) -> (Vec<u8>, [u8; 16]) {
        let aead = ChaCha20Poly1305::new(key.into());
        let mut ct = pt.to_vec();
        let tag = aead
            .encrypt_in_place_detached(&wg_nonce(counter), &[], &mut ct)
            .expect("crate seal");
        (ct, tag.into())
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        s.chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
            .collect()
    }

    fn words(b: &[u8]) -> Vec<u32> {
        b.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// RFC 8439 §2.8.2: the full AEAD, with its nonce and 12-byte AAD.
    #[test]
    fn rfc8439_2_8_2() {
        let key: [u8; 32] = hex(RFC_KEY).try_into().expect("32 bytes");
        let nonce: [u32; 3] = words(&hex(RFC_NONCE)).try_into().expect("3 words");
        let aad = hex(RFC_AAD);
        let mut data = RFC_PT.to_vec();
        let mut s = AeadScratch::new();
        s.start_nonce(&key_words(&key), &nonce);
        load(&mut s, &aad);
        s.aad(aad.len() as u32);
        for chunk in data.chunks_mut(CHUNK_LEN) {
            load(&mut s, chunk);
            if chunk.len() == CHUNK_LEN {
                s.seal_chunk();
            } else {
                s.seal_partial(chunk.len() as u32);
            }
            store(&s, chunk);
        }
        s.finish();
        assert_eq!(data, hex(RFC_CT));
        assert_eq!(tag_bytes(&s.tag).as_slice(), hex(RFC_TAG).as_slice());
    }

    /// The same vector through the crate, so a typo in the constants above
    /// cannot make the test above vacuous.
    #[test]
    fn rfc8439_2_8_2_constants_match_crate() {
        let key: [u8; 32] = hex(RFC_KEY).try_into().expect("32 bytes");
        let nonce: [u8; 12] = hex(RFC_NONCE).try_into().expect("12 bytes");
        let mut buf = RFC_PT.to_vec();
        let tag = ChaCha20Poly1305::new((&key).into())
            .encrypt_in_place_detached(&nonce.into(), &hex(RFC_AAD), &mut buf)
            .expect("seal");
        assert_eq!(buf, hex(RFC_CT));
        assert_eq!(tag.as_slice(), hex(RFC_TAG).as_slice());
    }

    const RFC_KEY: &str = "80 81 82 83 84 85 86 87 88 89 8a 8b 8c 8d 8e 8f
        90 91 92 93 94 95 96 97 98 99 9a 9b 9c 9d 9e 9f";
    const RFC_NONCE: &str = "07 00 00 00 40 41 42 43 44 45 46 47";
    const RFC_AAD: &str = "50 51 52 53 c0 c1 c2 c3 c4 c5 c6 c7";
    const RFC_PT: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    const RFC_CT: &str = "d3 1a 8d 34 64 8e 60 db 7b 86 af bc 53 ef 7e c2
        a4 ad ed 51 29 6e 08 fe a9 e2 b5 a7 36 ee 62 d6
        3d be a4 5e 8c a9 67 12 82 fa fb 69 da 92 72 8b
        1a 71 de 0a 9e 06 0b 29 05 d6 a5 b6 7e cd 3b 36
        92 dd bd 7f 2d 77 8b 8c 98 03 ae e3 28 09 1b 58
        fa b3 24 e4 fa d6 75 94 55 85 80 8b 48 31 d7 bc
        3f f4 de f0 8e 4b 7a 9d e5 76 d2 65 86 ce c6 4b
        61 16";
    const RFC_TAG: &str = "1a e1 0b 59 4f 09 e2 6a 7e 90 2e cb d0 60 06 91";

    /// Every length across the chunk boundaries, with one key: cheap and
    /// exhaustive where the structure changes (partial chunk, 16-byte pads).
    #[test]
    fn every_length_to_200_matches_crate() {
        let key: [u8; 32] = core::array::from_fn(|i| (i as u8).wrapping_mul(29).wrapping_add(3));
        let mut s = AeadScratch::new();
        for len in 0..=200usize {
            let pt: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let counter = (len as u64) << 33 | 5;
            let (ct, tag) = reference(&key, counter, &pt);
            let mut data = pt.clone();
            let ours = seal_in_place(&mut s, &key, counter, &mut data);
            assert_eq!(data, ct, "ciphertext, len {len}");
            assert_eq!(ours, tag, "tag, len {len}");
            assert_eq!(
                open_in_place(&mut s, &key, counter, &mut data, &tag),
                Ok(())
            );
            assert_eq!(data, pt, "plaintext, len {len}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn seal_matches_crate(
            key in any::<[u8; 32]>(),
            counter in any::<u64>(),
            pt in proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD),
        ) {
            let (ct, tag) = reference(&key, counter, &pt);
            let mut data = pt.clone();
            let ours = seal_in_place(&mut AeadScratch::new(), &key, counter, &mut data);
            prop_assert_eq!(&data, &ct);
            prop_assert_eq!(ours, tag);
        }

        #[test]
        fn open_inverts_crate_seal(
            key in any::<[u8; 32]>(),
            counter in any::<u64>(),
            pt in proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD),
        ) {
            let (mut data, tag) = reference(&key, counter, &pt);
            prop_assert_eq!(
                open_in_place(&mut AeadScratch::new(), &key, counter, &mut data, &tag),
                Ok(())
            );
            prop_assert_eq!(data, pt);
        }

        /// One flipped bit anywhere in ciphertext or tag is rejected, and
        /// the rejected plaintext is wiped.
        #[test]
        fn open_rejects_a_flipped_bit(
            key in any::<[u8; 32]>(),
            counter in any::<u64>(),
            pt in proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD),
            flip in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let (ct, tag) = reference(&key, counter, &pt);
            let mut sealed = ct.clone();
            sealed.extend_from_slice(&tag);
            let at = flip.index(sealed.len());
            sealed[at] ^= 1 << bit;
            let (data, bad_tag) = sealed.split_at_mut(ct.len());
            let bad_tag: [u8; 16] = (&*bad_tag).try_into().expect("16 bytes");
            prop_assert_eq!(
                open_in_place(&mut AeadScratch::new(), &key, counter, data, &bad_tag),
                Err(TagMismatch)
            );
            prop_assert!(data.iter().all(|&b| b == 0));
        }

        /// A different counter (nonce) is rejected too.
        #[test]
        fn open_rejects_wrong_counter(
            key in any::<[u8; 32]>(),
            counter in any::<u64>(),
            pt in proptest::collection::vec(any::<u8>(), 0..=256),
        ) {
            let (mut data, tag) = reference(&key, counter, &pt);
            prop_assert_eq!(
                open_in_place(&mut AeadScratch::new(), &key, counter ^ 1, &mut data, &tag),
                Err(TagMismatch)
            );
        }
    }

    #[test]
    fn tag_matches_is_exact() {
        let mut s = AeadScratch::new();
        s.tag = [1, 2, 3, 4];
        assert!(s.tag_matches(&[1, 2, 3, 4]));
        for w in 0..4 {
            for bit in [0, 17, 31] {
                let mut r = [1, 2, 3, 4];
                r[w] ^= 1 << bit;
                assert!(!s.tag_matches(&r), "word {w} bit {bit}");
            }
        }
    }

    #[test]
    fn partial_length_zero_and_64_are_no_ops() {
        let mut s = AeadScratch::new();
        s.start(&[7; 8], 9);
        s.buf = [0xdead_beef; 16];
        let before = s;
        s.seal_partial(0);
        s.open_partial(64);
        assert_eq!(s, before);
    }
}
