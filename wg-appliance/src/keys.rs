//! Curve25519 keys and pre-shared keys, in the base64 form `wg` prints.
//!
//! Invariants: key material is zeroed when a key is dropped; `Debug` never
//! shows a private or pre-shared key (it prints `(hidden)`) and shows only a
//! short prefix of a public key; parsing accepts exactly what `wg` accepts
//! (44 characters of canonical standard base64 ending in `=`, surrounding
//! ASCII whitespace ignored) and says what was wrong and how to fix it.
//! `generate` behaves as `wg genkey` (32 random bytes, clamped as Curve25519
//! requires) and `PresharedKey::generate` as `wg genpsk` (32 random bytes).

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand_core::{CryptoRng, OsRng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of every WireGuard key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a key in base64 as `wg` prints it.
pub const KEY_BASE64_LEN: usize = 44;

/// Which kind of key a parse error is about, so messages name the right tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Private,
    Public,
    Preshared,
}

impl KeyKind {
    fn noun(self) -> &'static str {
        match self {
            KeyKind::Private => "private key",
            KeyKind::Public => "public key",
            KeyKind::Preshared => "preshared key",
        }
    }

    fn tool(self) -> &'static str {
        match self {
            KeyKind::Private => "`wg genkey`",
            KeyKind::Public => "`wg pubkey`",
            KeyKind::Preshared => "`wg genpsk`",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

/// Why a key string was rejected. Messages never echo the input: it may be
/// a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{kind} has {len} characters; expected {KEY_BASE64_LEN} characters of base64 as printed by {tool}", tool = kind.tool())]
    WrongLength { kind: KeyKind, len: usize },
    #[error("{kind} is not valid base64 (bad character or padding); expected {KEY_BASE64_LEN} characters as printed by {tool}", tool = kind.tool())]
    InvalidBase64 { kind: KeyKind },
}

fn parse_key(kind: KeyKind, s: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let s = s.trim_matches(|c: char| c.is_ascii_whitespace());
    if s.len() != KEY_BASE64_LEN {
        return Err(KeyError::WrongLength {
            kind,
            len: s.chars().count(),
        });
    }
    // STANDARD requires canonical padding and zero trailing bits, which is
    // exactly the check `wg`'s own decoder makes on the last quantum.
    let mut out = Zeroizing::new([0u8; KEY_LEN + 1]);
    match STANDARD.decode_slice(s.as_bytes(), &mut out[..]) {
        Ok(KEY_LEN) => {
            let mut key = [0u8; KEY_LEN];
            key.copy_from_slice(&out[..KEY_LEN]);
            Ok(key)
        }
        _ => Err(KeyError::InvalidBase64 { kind }),
    }
}

fn encode_key(bytes: &[u8; KEY_LEN]) -> String {
    STANDARD.encode(bytes)
}

/// Clamp a scalar as Curve25519 does (and as `wg genkey` stores it).
fn clamp(mut k: [u8; KEY_LEN]) -> [u8; KEY_LEN] {
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    k
}

/// A Curve25519 private key. Zeroed on drop; `Debug` prints `(hidden)`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// A fresh key from the operating system's RNG, as `wg genkey` makes one.
    pub fn generate() -> Self {
        Self::generate_with(&mut OsRng)
    }

    /// A fresh key from `rng` (32 random bytes, clamped).
    pub fn generate_with<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut raw[..]);
        PrivateKey(clamp(*raw))
    }

    /// Wrap raw bytes. Not clamped: X25519 clamps at use, and keeping the
    /// bytes lets `to_base64` print back exactly what was configured.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PrivateKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The matching public key (`wg pubkey`).
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.to_dh_secret().public())
    }

    /// Base64 as `wg` prints it; zeroed when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(encode_key(&self.0))
    }

    pub(crate) fn to_dh_secret(&self) -> crate::crypto::DhSecret {
        crate::crypto::DhSecret::from_bytes(&self.0)
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        parse_key(KeyKind::Private, s).map(PrivateKey)
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for PrivateKey {}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(hidden)")
    }
}

/// A Curve25519 public key. Not secret, but `Debug` prints only a prefix to
/// keep logs short; `Display` prints the full base64 as `wg show` does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn to_base64(&self) -> String {
        encode_key(&self.0)
    }

    /// First 8 base64 characters, for log fields (`peer = %key.short()`).
    pub fn short(&self) -> String {
        let mut s = self.to_base64();
        s.truncate(8);
        s
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        parse_key(KeyKind::Public, s).map(PublicKey)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}…)", self.short())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// A 32-byte pre-shared symmetric key. Zeroed on drop; `Debug` hides it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PresharedKey([u8; KEY_LEN]);

impl PresharedKey {
    /// A fresh key as `wg genpsk` makes one: 32 random bytes, no clamping.
    pub fn generate() -> Self {
        Self::generate_with(&mut OsRng)
    }

    pub fn generate_with<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut k = PresharedKey([0u8; KEY_LEN]);
        rng.fill_bytes(&mut k.0);
        k
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PresharedKey(bytes)
    }

    /// The all-zero key, which is what "no pre-shared key" means in Noise
    /// IKpsk2 (and how `wg` shows an unset one: `(none)`).
    pub fn zero() -> Self {
        PresharedKey([0u8; KEY_LEN])
    }

    pub fn is_zero(&self) -> bool {
        self.0.ct_eq(&[0u8; KEY_LEN]).into()
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(encode_key(&self.0))
    }
}

impl FromStr for PresharedKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        parse_key(KeyKind::Preshared, s).map(PresharedKey)
    }
}

impl PartialEq for PresharedKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for PresharedKey {}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(hidden)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7748 section 6.1: Alice's private and public key.
    const ALICE_PRIV_HEX: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PUB_HEX: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn pubkey_matches_rfc7748() {
        let k = PrivateKey::from_bytes(hex32(ALICE_PRIV_HEX));
        assert_eq!(k.public_key().as_bytes(), &hex32(ALICE_PUB_HEX));
    }

    #[test]
    fn base64_round_trip_and_wg_form() {
        let k = PrivateKey::from_bytes(hex32(ALICE_PRIV_HEX));
        let b = k.to_base64();
        assert_eq!(b.len(), 44);
        assert!(b.ends_with('='));
        assert_eq!(&*b, "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=");
        let back: PrivateKey = format!("  {}\n", &*b).parse().unwrap();
        assert_eq!(back, k);
        let p = k.public_key();
        assert_eq!(p.to_base64().parse::<PublicKey>().unwrap(), p);
        assert_eq!(p.short(), p.to_base64()[..8]);
    }

    #[test]
    fn generated_keys_are_clamped_like_wg_genkey() {
        for _ in 0..32 {
            let k = PrivateKey::generate();
            assert_eq!(k.as_bytes()[0] & 7, 0);
            assert_eq!(k.as_bytes()[31] & 0x80, 0);
            assert_eq!(k.as_bytes()[31] & 0x40, 0x40);
        }
        // genpsk is not clamped: over 32 keys some low bits will be set.
        assert!((0..32).any(|_| PresharedKey::generate().as_bytes()[0] & 7 != 0));
    }

    #[test]
    fn parse_errors_name_problem_and_fix() {
        let e = "abc".parse::<PrivateKey>().unwrap_err();
        assert_eq!(
            e,
            KeyError::WrongLength {
                kind: KeyKind::Private,
                len: 3
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("44 characters") && msg.contains("wg genkey"),
            "{msg}"
        );

        // 44 characters but a bad character.
        let bad = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LC*=";
        let e = bad.parse::<PublicKey>().unwrap_err();
        assert_eq!(
            e,
            KeyError::InvalidBase64 {
                kind: KeyKind::Public
            }
        );
        assert!(e.to_string().contains("not valid base64"));

        // Non-canonical trailing bits (last char 'p' instead of 'o'): wg rejects.
        assert!("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCp="
            .parse::<PresharedKey>()
            .is_err());
        // Missing padding, 44 chars without '=' decode to 33 bytes: rejected.
        assert!("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCoA"
            .parse::<PresharedKey>()
            .is_err());
    }

    #[test]
    fn debug_never_prints_secrets() {
        let k = PrivateKey::from_bytes(hex32(ALICE_PRIV_HEX));
        let d = format!("{k:?}");
        assert_eq!(d, "PrivateKey(hidden)");
        let psk = PresharedKey::from_bytes([7u8; 32]);
        assert_eq!(format!("{psk:?}"), "PresharedKey(hidden)");
        let p = k.public_key();
        let d = format!("{p:?}");
        assert!(d.contains(&p.short()) && !d.contains(&p.to_base64()), "{d}");
    }
}
