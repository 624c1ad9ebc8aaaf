//! The paper's primitives (section 5.4) that `noise` and `cookie` share:
//! BLAKE2s HASH, MAC, HMAC and KDF, the AEAD nonce, the protocol's labels.

use blake2::digest::consts::U16;
use blake2::digest::Mac;
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::KeyInit;
use hmac::SimpleHmac;
use zeroize::Zeroizing;

/// The Noise protocol name and WireGuard's identifier: hashed into the
/// chaining key and hash every handshake starts from.
pub const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// Prefixes of the keys derived from a public key for mac1 and for the
/// cookie reply's AEAD.
pub const LABEL_MAC1: &[u8] = b"mac1----";
pub const LABEL_COOKIE: &[u8] = b"cookie--";

pub(crate) const HASH_LEN: usize = 32;

/// BLAKE2s-256 of the concatenated `parts`.
pub(crate) fn hash(parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// Keyed BLAKE2s with a 16-byte output. `key` is at most 32 bytes by
/// construction (a hash or a 16-byte cookie), so creation cannot fail.
pub(crate) fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut m = match <Blake2sMac<U16> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        // Unreachable for our fixed key sizes; keep the function total anyway.
        Err(_) => return [0u8; 16],
    };
    for p in parts {
        Mac::update(&mut m, p);
    }
    Mac::finalize(m).into_bytes().into()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; HASH_LEN]> {
    // HMAC accepts keys of any length.
    let mut m = <SimpleHmac<Blake2s256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    for p in parts {
        Mac::update(&mut m, p);
    }
    Zeroizing::new(Mac::finalize(m).into_bytes().into())
}

/// HKDF as the paper defines it: returns (T1, T2, T3); callers take what
/// they need (KDF1/KDF2/KDF3).
pub(crate) fn kdf(key: &[u8; HASH_LEN], input: &[u8]) -> [Zeroizing<[u8; HASH_LEN]>; 3] {
    let t0 = hmac(key, &[input]);
    let t1 = hmac(&t0[..], &[&[1u8]]);
    let t2 = hmac(&t0[..], &[&t1[..], &[2u8]]);
    let t3 = hmac(&t0[..], &[&t2[..], &[3u8]]);
    [t1, t2, t3]
}

/// The 96-bit AEAD nonce: 32 zero bits, then the counter little-endian.
pub(crate) fn aead_nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}
