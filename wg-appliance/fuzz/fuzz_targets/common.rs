//! Deterministic fixtures shared by the fuzz targets: fixed keys and a
//! seeded RNG, so a crash reproduces from its input alone.

#![allow(dead_code)]

use rand_core::{CryptoRng, RngCore};
use std::time::Duration;
use wg_appliance::keys::PrivateKey;
use wg_appliance::noise::{Handshake, Identity, Tai64N};

/// xorshift64*: not cryptographic; fuzzing needs reproducible, not secret.
pub struct TestRng(pub u64);

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for c in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl CryptoRng for TestRng {}

pub fn initiator_key() -> PrivateKey {
    PrivateKey::from_bytes([0x11; 32])
}
pub fn responder_key() -> PrivateKey {
    PrivateKey::from_bytes([0x22; 32])
}

pub const NOW: Duration = Duration::from_secs(1_000);

/// (initiator identity + handshake, responder identity + handshake).
pub fn pair() -> ((Identity, Handshake), (Identity, Handshake)) {
    let i = Identity::new(&initiator_key());
    let r = Identity::new(&responder_key());
    let hi = Handshake::new(&i, *r.public_key(), None);
    let hr = Handshake::new(&r, *i.public_key(), None);
    ((i, hi), (r, hr))
}

pub fn timestamp() -> Tai64N {
    Tai64N::from_unix(1_700_000_000, 0)
}

/// Either the raw fuzz input, or (first byte odd) a valid message with the
/// input XORed over it, so the fuzzer also explores past the AEAD checks.
pub fn mutate(valid: &[u8], data: &[u8]) -> Vec<u8> {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => {
            let mut m = valid.to_vec();
            for (i, b) in rest.iter().enumerate() {
                if let Some(x) = m.get_mut(i) {
                    *x ^= b;
                }
            }
            // High bits of the mode byte truncate or extend.
            match mode >> 6 {
                1 => m.truncate(rest.len().min(m.len())),
                2 => m.push(*mode),
                _ => {}
            }
            m
        }
        _ => data.to_vec(),
    }
}
