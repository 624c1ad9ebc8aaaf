//! Denial-of-service cookies (WireGuard paper section 5.3, driver `cookie.c`).
//!
//! Two sides. [`CookieJar`] lives in each peer: it writes mac1 (always) and
//! mac2 (while it holds a fresh cookie) on the handshake messages we send,
//! and stores the cookie a peer sends us in a cookie reply. [`CookieChecker`]
//! is ours, one per interface: it checks mac1 on every incoming handshake
//! message, and under load also mac2, replying with a cookie when mac2 is
//! missing. The cookie is MAC(secret, source ip || source port); the secret is
//! regenerated from the caller's RNG once it is older than
//! [`COOKIE_SECRET_MAX_AGE`]. Time is passed in as monotonic `Duration`s.
//!
//! Invariants: macs are compared in constant time; a cookie reply is only
//! accepted when we have sent a mac1 it can answer (its AEAD binds that
//! mac1), and then only once; nothing here prints secrets.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use rand_core::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::{hash, mac, LABEL_COOKIE, LABEL_MAC1};
use crate::framing::{expect_fixed, FramingError};
use crate::keys::PublicKey;
use wg_ebpf_common::{COOKIE_REPLY_LEN, MSG_COOKIE_REPLY};

/// How long a cookie secret is used before a new one is drawn (and how long a
/// received cookie lives, less [`COOKIE_SECRET_LATENCY`]).
pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);
/// Margin the driver subtracts from a received cookie's life so it is not used
/// just as the responder rotates its secret: valid for 120 − 5 = 115 s.
pub const COOKIE_SECRET_LATENCY: Duration = Duration::from_secs(5);
/// How long "under load" persists after the load signal drops (driver: 1 s).
pub const UNDER_LOAD_HOLD: Duration = Duration::from_secs(1);

const COOKIE_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const MACS_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    #[error("{0}")]
    Framing(#[from] FramingError),
    #[error("cookie reply arrived but we have not sent a handshake message it could answer (stale or unsolicited; drop it)")]
    NotExpected,
    #[error("cookie reply did not decrypt: not from this peer, or not answering our last message (drop it)")]
    DecryptFailed,
    #[error("handshake message is {0} bytes; too short to carry mac1 and mac2 (need at least 32 + header)")]
    TooShortForMacs(usize),
}

/// Per-peer sender side: mac1/mac2 writer and received-cookie store.
pub struct CookieJar {
    /// HASH(LABEL_MAC1 || peer public key).
    mac1_key: [u8; 32],
    /// HASH(LABEL_COOKIE || peer public key): decrypts their cookie replies.
    decryption_key: Zeroizing<[u8; 32]>,
    cookie: Option<(Zeroizing<[u8; COOKIE_LEN]>, Duration)>,
    /// mac1 of our last handshake message: the AAD a cookie reply must bind.
    last_mac1_sent: Option<[u8; 16]>,
}

impl fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieJar")
            .field("has_cookie", &self.cookie.is_some())
            .field("awaiting_reply", &self.last_mac1_sent.is_some())
            .finish_non_exhaustive()
    }
}

impl CookieJar {
    pub fn new(peer: &PublicKey) -> Self {
        CookieJar {
            mac1_key: hash(&[LABEL_MAC1, peer.as_bytes()]),
            decryption_key: Zeroizing::new(hash(&[LABEL_COOKIE, peer.as_bytes()])),
            cookie: None,
            last_mac1_sent: None,
        }
    }

    /// True if a cookie is held and young enough that mac2 will be sent.
    pub fn has_valid_cookie(&self, now: Duration) -> bool {
        matches!(&self.cookie, Some((_, born)) if now < *born + COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY)
    }

    /// Write mac1, and mac2 if a valid cookie is held (zeros otherwise), over
    /// the last 32 bytes of `msg`. Messages shorter than 32 bytes are left
    /// alone (ours never are: this is only called on 148/92-byte messages).
    pub fn add_macs(&mut self, msg: &mut [u8], now: Duration) {
        let Some(mac1_off) = msg.len().checked_sub(MACS_LEN) else {
            return;
        };
        let mac1 = mac(&self.mac1_key, &[&msg[..mac1_off]]);
        msg[mac1_off..mac1_off + 16].copy_from_slice(&mac1);
        self.last_mac1_sent = Some(mac1);
        let mac2 = match &self.cookie {
            Some((cookie, _)) if self.has_valid_cookie(now) => {
                mac(&cookie[..], &[&msg[..mac1_off + 16]])
            }
            _ => [0u8; 16],
        };
        msg[mac1_off + 16..].copy_from_slice(&mac2);
    }

    /// Consume a cookie reply addressed to this peer (the caller found the
    /// peer by the reply's receiver index). On success mac2 is sent from the
    /// next handshake message on; the caller should not resend at once but
    /// let the retransmit timer do it (as the driver does).
    pub fn consume_reply(&mut self, msg: &[u8], now: Duration) -> Result<(), CookieError> {
        let m: &[u8; COOKIE_REPLY_LEN] = expect_fixed(msg, MSG_COOKIE_REPLY, "cookie reply")?;
        let last_mac1 = self.last_mac1_sent.ok_or(CookieError::NotExpected)?;
        let nonce = &m[8..8 + NONCE_LEN];
        let mut cookie = Zeroizing::new([0u8; COOKIE_LEN]);
        cookie.copy_from_slice(&m[32..48]);
        let tag = &m[48..64];
        XChaCha20Poly1305::new((&*self.decryption_key).into())
            .decrypt_in_place_detached(nonce.into(), &last_mac1, &mut cookie[..], tag.into())
            .map_err(|_| CookieError::DecryptFailed)?;
        self.cookie = Some((cookie, now));
        self.last_mac1_sent = None;
        Ok(())
    }
}

/// What mac checking found on an incoming handshake message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacVerdict {
    /// mac1 wrong: not for us, or corrupted. Always dropped.
    InvalidMac1,
    /// mac1 right; mac2 was not checked or did not match.
    ValidMac1,
    /// mac1 and mac2 both right (the sender proved its address).
    ValidMac2,
}

/// What to do with an incoming handshake message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Drop,
    /// Under load and no valid mac2: answer with [`CookieChecker::create_reply`].
    SendCookieReply,
    /// Go on to the handshake (`noise::open_initiation` / `consume_response`).
    Process,
}

/// The load signal the daemon measures: how deep the handshake queue is and
/// whether per-source limits (e.g. the BPF `HS_LIMIT` buckets) are being hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSignal {
    pub queued_handshakes: usize,
    /// Queue depth at which we are under load (driver: 4096 / 8 = 512).
    pub threshold: usize,
    pub rate_limited: bool,
}

/// Decides "under load" from the signal, holding it for
/// [`UNDER_LOAD_HOLD`] after the signal drops, as the driver does, so an
/// attacker cannot flip us out of cookie mode by pausing briefly.
#[derive(Debug, Clone, Default)]
pub struct LoadDetector {
    last_under_load: Option<Duration>,
}

impl LoadDetector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn under_load(&mut self, signal: LoadSignal, now: Duration) -> bool {
        if signal.queued_handshakes >= signal.threshold || signal.rate_limited {
            self.last_under_load = Some(now);
            return true;
        }
        matches!(self.last_under_load, Some(t) if now < t + UNDER_LOAD_HOLD)
    }
}

/// Our receiver side: checks mac1/mac2 and makes cookie replies.
pub struct CookieChecker {
    /// HASH(LABEL_MAC1 || our public key).
    mac1_key: [u8; 32],
    /// HASH(LABEL_COOKIE || our public key): encrypts our cookie replies.
    encryption_key: Zeroizing<[u8; 32]>,
    secret: Zeroizing<[u8; 32]>,
    secret_born: Option<Duration>,
}

impl fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieChecker")
            .field("secret_born", &self.secret_born)
            .finish_non_exhaustive()
    }
}

impl CookieChecker {
    pub fn new(our_public: &PublicKey) -> Self {
        CookieChecker {
            mac1_key: hash(&[LABEL_MAC1, our_public.as_bytes()]),
            encryption_key: Zeroizing::new(hash(&[LABEL_COOKIE, our_public.as_bytes()])),
            secret: Zeroizing::new([0u8; 32]),
            secret_born: None,
        }
    }

    /// The cookie for a source address under the current secret, drawing a
    /// new secret first if the current one is older than 2 minutes.
    fn cookie_for<R: RngCore + CryptoRng>(
        &mut self,
        src: SocketAddr,
        now: Duration,
        rng: &mut R,
    ) -> [u8; 16] {
        let expired = match self.secret_born {
            None => true,
            Some(born) => now >= born + COOKIE_SECRET_MAX_AGE,
        };
        if expired {
            rng.fill_bytes(&mut self.secret[..]);
            self.secret_born = Some(now);
        }
        let port = src.port().to_be_bytes();
        match src.ip() {
            IpAddr::V4(a) => mac(&self.secret[..], &[&a.octets(), &port]),
            IpAddr::V6(a) => mac(&self.secret[..], &[&a.octets(), &port]),
        }
    }

    /// Check mac1, and mac2 too when `check_mac2` (i.e. under load).
    pub fn verify<R: RngCore + CryptoRng>(
        &mut self,
        msg: &[u8],
        src: SocketAddr,
        check_mac2: bool,
        now: Duration,
        rng: &mut R,
    ) -> MacVerdict {
        let Some(mac1_off) = msg.len().checked_sub(MACS_LEN) else {
            return MacVerdict::InvalidMac1;
        };
        let (body, macs) = msg.split_at(mac1_off);
        let (mac1, mac2) = macs.split_at(16);
        let want1 = mac(&self.mac1_key, &[body]);
        if !bool::from(want1.ct_eq(mac1)) {
            return MacVerdict::InvalidMac1;
        }
        if !check_mac2 {
            return MacVerdict::ValidMac1;
        }
        let cookie = self.cookie_for(src, now, rng);
        let want2 = mac(&cookie, &[body, mac1]);
        if bool::from(want2.ct_eq(mac2)) {
            MacVerdict::ValidMac2
        } else {
            MacVerdict::ValidMac1
        }
    }

    /// The whole decision for an incoming initiation or response, as the
    /// driver's receive path makes it.
    pub fn admit<R: RngCore + CryptoRng>(
        &mut self,
        msg: &[u8],
        src: SocketAddr,
        under_load: bool,
        now: Duration,
        rng: &mut R,
    ) -> Admission {
        admission(self.verify(msg, src, under_load, now, rng), under_load)
    }

    /// Build the cookie reply to `msg` (an initiation or response whose mac1
    /// was valid): receiver = its sender index, a random 24-byte nonce, the
    /// cookie for `src` sealed with XChaCha20-Poly1305, AAD = its mac1.
    pub fn create_reply<R: RngCore + CryptoRng>(
        &mut self,
        msg: &[u8],
        src: SocketAddr,
        now: Duration,
        rng: &mut R,
    ) -> Result<[u8; COOKIE_REPLY_LEN], CookieError> {
        let mac1_off = msg
            .len()
            .checked_sub(MACS_LEN)
            .filter(|off| *off >= 8)
            .ok_or(CookieError::TooShortForMacs(msg.len()))?;
        let mac1 = &msg[mac1_off..mac1_off + 16];
        let mut out = [0u8; COOKIE_REPLY_LEN];
        out[0] = MSG_COOKIE_REPLY;
        out[4..8].copy_from_slice(&msg[4..8]);
        rng.fill_bytes(&mut out[8..8 + NONCE_LEN]);
        let cookie = self.cookie_for(src, now, rng);
        let (head, sealed) = out.split_at_mut(32);
        let nonce = &head[8..8 + NONCE_LEN];
        let (body, tag_out) = sealed.split_at_mut(COOKIE_LEN);
        body.copy_from_slice(&cookie);
        let tag = XChaCha20Poly1305::new((&*self.encryption_key).into())
            .encrypt_in_place_detached(nonce.into(), mac1, body)
            .map_err(|_| CookieError::DecryptFailed)?;
        tag_out.copy_from_slice(&tag);
        Ok(out)
    }
}

/// Map a mac verdict and the load state to an action (driver receive.c):
/// under load only mac2-proven senders are processed and the rest get a
/// cookie; otherwise a valid mac1 suffices.
pub fn admission(verdict: MacVerdict, under_load: bool) -> Admission {
    match (verdict, under_load) {
        (MacVerdict::InvalidMac1, _) => Admission::Drop,
        (MacVerdict::ValidMac1, true) => Admission::SendCookieReply,
        (MacVerdict::ValidMac1, false) | (MacVerdict::ValidMac2, _) => Admission::Process,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use rand_core::OsRng;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A fake 148-byte initiation body with macs from `jar`.
    fn msg(jar: &mut CookieJar, now: Duration) -> [u8; 148] {
        let mut m = [0u8; 148];
        m[0] = 1;
        m[4..8].copy_from_slice(&0x1122_3344u32.to_le_bytes());
        m[8..40].fill(0xab);
        jar.add_macs(&mut m, now);
        m
    }

    #[test]
    fn mac1_checked_mac2_only_under_load_and_cookie_round_trip() {
        let responder = PrivateKey::generate().public_key();
        let mut checker = CookieChecker::new(&responder);
        let mut jar = CookieJar::new(&responder);
        let src = addr("192.0.2.7:51820");
        let t0 = Duration::from_secs(1000);

        let m = msg(&mut jar, t0);
        assert_eq!(&m[132..], &[0u8; 16], "no cookie yet: mac2 is zero");
        assert_eq!(
            checker.admit(&m, src, false, t0, &mut OsRng),
            Admission::Process
        );
        assert_eq!(
            checker.admit(&m, src, true, t0, &mut OsRng),
            Admission::SendCookieReply
        );

        let mut bad = m;
        bad[20] ^= 1;
        assert_eq!(
            checker.admit(&bad, src, false, t0, &mut OsRng),
            Admission::Drop
        );

        let reply = checker.create_reply(&m, src, t0, &mut OsRng).unwrap();
        assert_eq!(reply[0], 3);
        assert_eq!(&reply[4..8], &m[4..8]);
        jar.consume_reply(&reply, t0).unwrap();
        // A second copy of the reply is refused: the mac1 it answers is spent.
        assert_eq!(jar.consume_reply(&reply, t0), Err(CookieError::NotExpected));

        let m2 = msg(&mut jar, t0 + Duration::from_secs(1));
        assert_ne!(&m2[132..], &[0u8; 16]);
        assert_eq!(
            checker.admit(&m2, src, true, t0 + Duration::from_secs(1), &mut OsRng),
            Admission::Process
        );
        // The cookie binds the source port as well as the address.
        assert_eq!(
            checker.verify(&m2, addr("192.0.2.7:51821"), true, t0, &mut OsRng),
            MacVerdict::ValidMac1
        );
    }

    #[test]
    fn cookie_reply_for_another_mac1_is_rejected() {
        let responder = PrivateKey::generate().public_key();
        let mut checker = CookieChecker::new(&responder);
        let mut jar = CookieJar::new(&responder);
        let src = addr("[2001:db8::1]:4000");
        let now = Duration::from_secs(5);
        let first = msg(&mut jar, now);
        let reply = checker.create_reply(&first, src, now, &mut OsRng).unwrap();
        // We sent another message since: its mac1 differs, the AAD no longer matches.
        let mut other = [0u8; 148];
        other[0] = 1;
        other[9] = 9;
        jar.add_macs(&mut other, now);
        assert_eq!(
            jar.consume_reply(&reply, now),
            Err(CookieError::DecryptFailed)
        );
        // A reply encrypted for a different responder key fails too.
        let mut jar2 = CookieJar::new(&PrivateKey::generate().public_key());
        let m = msg(&mut jar2, now);
        let reply = checker.create_reply(&m, src, now, &mut OsRng).unwrap();
        assert_eq!(
            jar2.consume_reply(&reply, now),
            Err(CookieError::DecryptFailed)
        );
        // Framing errors are typed.
        assert!(matches!(
            jar.consume_reply(&reply[..63], now),
            Err(CookieError::Framing(_))
        ));
    }

    #[test]
    fn received_cookie_expires_after_115_seconds() {
        let responder = PrivateKey::generate().public_key();
        let mut checker = CookieChecker::new(&responder);
        let mut jar = CookieJar::new(&responder);
        let t0 = Duration::from_secs(50);
        let m = msg(&mut jar, t0);
        let reply = checker
            .create_reply(&m, addr("10.0.0.1:1"), t0, &mut OsRng)
            .unwrap();
        jar.consume_reply(&reply, t0).unwrap();
        let edge = t0 + COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY;
        assert_eq!(edge - t0, Duration::from_secs(115));
        assert!(jar.has_valid_cookie(edge - Duration::from_millis(1)));
        assert!(!jar.has_valid_cookie(edge));
        assert_eq!(&msg(&mut jar, edge)[132..], &[0u8; 16]);
    }

    #[test]
    fn secret_rotates_every_two_minutes() {
        let responder = PrivateKey::generate().public_key();
        let mut checker = CookieChecker::new(&responder);
        let src = addr("198.51.100.1:9");
        let t0 = Duration::from_secs(10);
        let c0 = checker.cookie_for(src, t0, &mut OsRng);
        assert_eq!(
            checker.cookie_for(src, t0 + Duration::from_secs(119), &mut OsRng),
            c0
        );
        assert_ne!(
            checker.cookie_for(src, t0 + COOKIE_SECRET_MAX_AGE, &mut OsRng),
            c0
        );
    }

    #[test]
    fn load_detector_holds_for_one_second() {
        let mut d = LoadDetector::new();
        let sig = |q, rl| LoadSignal {
            queued_handshakes: q,
            threshold: 512,
            rate_limited: rl,
        };
        let t = Duration::from_secs(100);
        assert!(!d.under_load(sig(511, false), t));
        assert!(d.under_load(sig(512, false), t));
        assert!(d.under_load(sig(0, false), t + Duration::from_millis(999)));
        assert!(!d.under_load(sig(0, false), t + Duration::from_secs(1)));
        assert!(d.under_load(sig(0, true), t + Duration::from_secs(2)));
    }

    #[test]
    fn admission_table() {
        use Admission::*;
        use MacVerdict::*;
        assert_eq!(admission(InvalidMac1, false), Drop);
        assert_eq!(admission(InvalidMac1, true), Drop);
        assert_eq!(admission(ValidMac1, false), Process);
        assert_eq!(admission(ValidMac1, true), SendCookieReply);
        assert_eq!(admission(ValidMac2, true), Process);
    }
}
