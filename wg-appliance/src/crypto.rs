//! The paper's primitives (section 5.4) that `noise` and `cookie` share:
//! BLAKE2s HASH, MAC, HMAC and KDF, X25519 DH, the AEAD nonce, the
//! protocol's labels.

use std::sync::Arc;

use aws_lc_rs::agreement::{self, UnparsedPublicKey, X25519};
use blake2::digest::consts::U16;
use blake2::digest::Mac;
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::KeyInit;
use hmac::SimpleHmac;
use rand_core::{CryptoRng, RngCore};
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

/// An X25519 private key, static or ephemeral, for DH.
///
/// Backed by aws-lc-rs, whose x86_64 ladder (s2n-bignum, MULX/ADX) takes
/// 26.6 µs per DH on this VM kind against 53.4 µs for x25519-dalek's serial
/// field arithmetic: the responder does three DH and one key generation per
/// handshake, so this halves the handshake pool's dominant cost (see
/// docs/performance.md, "Handshakes"). aws-lc clamps the scalar itself and
/// clears the key when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct DhSecret(Arc<agreement::PrivateKey>);

impl DhSecret {
    /// The key whose 32 raw bytes are `bytes` (clamped at use, as X25519
    /// defines).
    pub(crate) fn from_bytes(bytes: &[u8; 32]) -> Self {
        // aws-lc checks only the length of an X25519 private key.
        let key = agreement::PrivateKey::from_private_key(&X25519, bytes)
            .unwrap_or_else(|_| unreachable!("any 32 bytes are an X25519 private key"));
        DhSecret(Arc::new(key))
    }

    /// A fresh key from `rng`.
    pub(crate) fn random<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut raw = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut raw[..]);
        Self::from_bytes(&raw)
    }

    /// The public key (X25519 of the base point).
    pub(crate) fn public(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // An X25519 key's public half is always 32 bytes.
        match self.0.compute_public_key() {
            Ok(p) if p.as_ref().len() == 32 => out.copy_from_slice(p.as_ref()),
            _ => unreachable!("an X25519 key has a 32-byte public key"),
        }
        out
    }

    /// DH with `public`; `None` when the result is all zeros (a low-order
    /// point), which WireGuard refuses.
    pub(crate) fn dh(&self, public: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        let peer = UnparsedPublicKey::new(&X25519, public);
        agreement::agree(&self.0, peer, (), |shared| {
            let mut out = Zeroizing::new([0u8; 32]);
            if shared.len() != 32 {
                return Err(());
            }
            out.copy_from_slice(shared);
            Ok(out)
        })
        .ok()
    }
}
