//! The WireGuard handshake: Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, exactly
//! as the WireGuard paper (section 5.4) and the Linux driver's `noise.c`
//! specify it, with no I/O, no clock and no RNG of its own.
//!
//! Roles: the initiator calls [`Handshake::create_initiation`] and later
//! [`Handshake::consume_response`]; the responder calls [`open_initiation`]
//! (which needs only the local [`Identity`] and reveals which peer sent it),
//! then [`Handshake::consume_initiation`] on that peer's state, then
//! [`Handshake::create_response`]. Both ends get a [`Keypair`] from which
//! `session` builds the transport keys.
//!
//! Invariants: a message is parsed with exact-length and reserved-byte checks
//! before any cryptography; state changes only after every check passed, so
//! a forged or replayed message can never disturb a handshake in flight;
//! an initiation whose TAI64N timestamp is not strictly greater than the last
//! accepted one from that peer is rejected (replay), as is one arriving less
//! than 1/50 s after the last accepted one (flood). mac1/mac2 are written
//! by the peer's [`CookieJar`] and checked by `cookie::CookieChecker` before
//! these functions run. Ephemeral secrets and chaining keys are zeroed when
//! a handshake completes or is dropped.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::cookie::CookieJar;
use crate::crypto::{aead_nonce, hash, kdf, DhSecret, CONSTRUCTION, HASH_LEN, IDENTIFIER};
use crate::framing::{expect_fixed, fixed, FramingError};
use crate::keys::{PresharedKey, PrivateKey, PublicKey, KEY_LEN};

pub use wg_ebpf_common::{
    COOKIE_REPLY_LEN, HANDSHAKE_INITIATION_LEN, HANDSHAKE_RESPONSE_LEN, MSG_COOKIE_REPLY,
    MSG_HANDSHAKE_INITIATION, MSG_HANDSHAKE_RESPONSE, MSG_TRANSPORT_DATA, TRANSPORT_MIN_LEN,
};

/// The responder accepts at most this many initiations per second per peer
/// (the driver's INITIATIONS_PER_SECOND); also sets the timestamp whitening.
pub const INITIATIONS_PER_SECOND: u64 = 50;
/// TAI64N label for 1970-01-01 (2^62 + 10 leap seconds), as `tai64n_now`.
const TAI64_EPOCH: u64 = 0x4000_0000_0000_000a;
/// Nanoseconds are rounded down to this power of two so that the timestamp
/// does not leak a precise clock (rounddown_pow_of_two(1e9 / 50) = 2^24).
const TAI64N_WHITENING_NS: u32 = 1 << 24;

const TAG_LEN: usize = 16;
const TIMESTAMP_LEN: usize = 12;
/// Byte offsets inside the handshake messages (paper section 5.4.2, 5.4.3).
const INIT_SENDER: usize = 4;
const INIT_EPHEMERAL: usize = 8;
const INIT_STATIC: usize = 40;
const INIT_TIMESTAMP: usize = 88;
const INIT_MAC1: usize = 116;
const RESP_SENDER: usize = 4;
const RESP_RECEIVER: usize = 8;
const RESP_EPHEMERAL: usize = 12;
const RESP_EMPTY: usize = 44;
const RESP_MAC1: usize = 60;

// ---------------------------------------------------------------------------
// Handshake steps on top of `crate::crypto`: AEAD with nonce 0, DH.

/// Seal `buf` in place (counter 0: every handshake key is used once).
fn seal(key: &[u8; 32], buf: &mut [u8], aad: &[u8]) -> [u8; TAG_LEN] {
    let cipher = ChaCha20Poly1305::new(key.into());
    let nonce = aead_nonce(0);
    match cipher.encrypt_in_place_detached(&nonce.into(), aad, buf) {
        Ok(tag) => tag.into(),
        // Only fails for buffers over 256 GiB; ours are at most 32 bytes.
        Err(_) => unreachable!("handshake plaintexts are tiny"),
    }
}

fn open(key: &[u8; 32], buf: &mut [u8], tag: &[u8; TAG_LEN], aad: &[u8]) -> Result<(), NoiseError> {
    let cipher = ChaCha20Poly1305::new(key.into());
    let nonce = aead_nonce(0);
    cipher
        .decrypt_in_place_detached(&nonce.into(), aad, buf, tag.into())
        .map_err(|_| NoiseError::DecryptFailed)
}

fn dh(secret: &DhSecret, public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, NoiseError> {
    // An all-zero result means a low-order point: the driver refuses it.
    secret.dh(public).ok_or(NoiseError::WeakPublicKey)
}

/// A fresh ephemeral key and its public half.
fn ephemeral<R: RngCore + CryptoRng>(rng: &mut R) -> (DhSecret, [u8; 32]) {
    let e = DhSecret::random(rng);
    let e_pub = e.public();
    (e, e_pub)
}

/// Chaining key and hash before any key is mixed in: HASH(CONSTRUCTION) and
/// HASH(HASH(CONSTRUCTION) || IDENTIFIER).
fn initial_chain() -> ([u8; HASH_LEN], [u8; HASH_LEN]) {
    let ck = hash(&[CONSTRUCTION]);
    let h = hash(&[&ck, IDENTIFIER]);
    (ck, h)
}

fn take<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    // Callers pass fixed-size messages whose lengths were checked.
    out.copy_from_slice(&b[at..at + N]);
    out
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(take::<4>(b, at))
}

// ---------------------------------------------------------------------------
// Errors and wire framing.

/// Why a handshake message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoiseError {
    #[error("{what} is {got} bytes; WireGuard requires exactly {expected} (drop it: truncated, padded or not WireGuard)")]
    WrongLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("message type {got} where type {expected} was expected (the caller dispatched on the wrong type byte)")]
    WrongType { expected: u8, got: u8 },
    #[error("message is shorter than the 4-byte WireGuard header, or its type {0} is not 1..=4 (not WireGuard traffic)")]
    NotWireguard(u8),
    #[error("the three reserved header bytes are not zero (not a WireGuard message; drop it)")]
    ReservedNotZero,
    #[error("decryption failed: the message was not made for this key (wrong peer public key or pre-shared key on one side, or a forged message)")]
    DecryptFailed,
    #[error("a public key in the handshake is a low-order point (invalid or malicious peer key)")]
    WeakPublicKey,
    #[error("the initiation came from {got:?}, not from this peer {expected:?} (look the peer up by the key from open_initiation)")]
    WrongPeer { expected: PublicKey, got: PublicKey },
    #[error("this peer's static key gives an all-zero shared secret with ours; no handshake is possible (fix the peer's public key)")]
    NoStaticSharedSecret,
    #[error("initiation timestamp is not newer than the last accepted one (replayed initiation, or the peer's clock went backwards)")]
    ReplayedTimestamp,
    #[error("initiation arrived less than 1/{INITIATIONS_PER_SECOND} s after the previous one from this peer (flood; drop it)")]
    InitiationTooSoon,
    #[error("response received but no initiation is in flight (stale or unsolicited response)")]
    UnexpectedResponse,
    #[error("response is addressed to sender index {got:#010x}, but our initiation used {expected:#010x} (stale response)")]
    WrongReceiverIndex { expected: u32, got: u32 },
    #[error("no initiation has been consumed for this peer, so there is nothing to respond to")]
    NothingToRespond,
}

/// A classified WireGuard message, lengths already checked for the fixed
/// types. Transport data only has its minimum length checked here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Initiation(&'a [u8; HANDSHAKE_INITIATION_LEN]),
    Response(&'a [u8; HANDSHAKE_RESPONSE_LEN]),
    CookieReply(&'a [u8; COOKIE_REPLY_LEN]),
    Transport(&'a [u8]),
}

impl<'a> Message<'a> {
    /// Classify a UDP payload. Never panics.
    pub fn parse(b: &'a [u8]) -> Result<Self, NoiseError> {
        let (ty, rest) = match b {
            [ty, r0, r1, r2, ..] => {
                if (*r0, *r1, *r2) != (0, 0, 0) {
                    return Err(NoiseError::ReservedNotZero);
                }
                (*ty, b)
            }
            _ => return Err(NoiseError::NotWireguard(0)),
        };
        match ty {
            MSG_HANDSHAKE_INITIATION => {
                Ok(Message::Initiation(fixed(rest, "handshake initiation")?))
            }
            MSG_HANDSHAKE_RESPONSE => Ok(Message::Response(fixed(rest, "handshake response")?)),
            MSG_COOKIE_REPLY => Ok(Message::CookieReply(fixed(rest, "cookie reply")?)),
            MSG_TRANSPORT_DATA if rest.len() >= TRANSPORT_MIN_LEN => Ok(Message::Transport(rest)),
            MSG_TRANSPORT_DATA => Err(NoiseError::WrongLength {
                what: "transport data message",
                expected: TRANSPORT_MIN_LEN,
                got: rest.len(),
            }),
            other => Err(NoiseError::NotWireguard(other)),
        }
    }
}

/// Framing errors keep their names and wording as handshake errors.
impl From<FramingError> for NoiseError {
    fn from(e: FramingError) -> Self {
        match e {
            FramingError::WrongLength {
                what,
                expected,
                got,
            } => NoiseError::WrongLength {
                what,
                expected,
                got,
            },
            FramingError::WrongType { expected, got } => NoiseError::WrongType { expected, got },
            FramingError::ReservedNotZero => NoiseError::ReservedNotZero,
        }
    }
}

// ---------------------------------------------------------------------------
// TAI64N.

/// A TAI64N timestamp as carried in the initiation: 8 bytes of seconds
/// (big-endian, 2^62 + 10 at the Unix epoch) and 4 bytes of nanoseconds.
/// Byte order makes `Ord` on the bytes the chronological order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tai64N([u8; TIMESTAMP_LEN]);

impl Tai64N {
    /// From Unix time; nanoseconds whitened (rounded down to 2^24 ns) as
    /// the driver does, so the timestamp does not reveal a fine clock.
    pub fn from_unix(secs: u64, nanos: u32) -> Self {
        let mut b = [0u8; TIMESTAMP_LEN];
        b[..8].copy_from_slice(&TAI64_EPOCH.wrapping_add(secs).to_be_bytes());
        let nanos = nanos.min(999_999_999);
        b[8..].copy_from_slice(&(nanos - nanos % TAI64N_WHITENING_NS).to_be_bytes());
        Tai64N(b)
    }

    /// From a wall-clock reading the caller took (this module has no clock).
    pub fn from_system_time(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Self::from_unix(d.as_secs(), d.subsec_nanos())
    }

    pub const fn from_bytes(b: [u8; TIMESTAMP_LEN]) -> Self {
        Tai64N(b)
    }

    pub const fn to_bytes(self) -> [u8; TIMESTAMP_LEN] {
        self.0
    }
}

impl fmt::Debug for Tai64N {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = u64::from_be_bytes(take::<8>(&self.0, 0));
        let nanos = u32::from_be_bytes(take::<4>(&self.0, 8));
        write!(
            f,
            "Tai64N(unix {}.{:09})",
            secs.wrapping_sub(TAI64_EPOCH),
            nanos
        )
    }
}

// ---------------------------------------------------------------------------
// Identities, keypairs, handshake state.

/// The local static identity: private key, public key, and the derived
/// values every responder step needs.
#[derive(Clone)]
pub struct Identity {
    secret: DhSecret,
    public: PublicKey,
}

impl Identity {
    pub fn new(private: &PrivateKey) -> Self {
        Identity {
            secret: private.to_dh_secret(),
            public: private.public_key(),
        }
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// Transport keys from a completed handshake, with the indexes that name the
/// session on the wire. Keys are zeroed on drop and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Keypair {
    sending: [u8; 32],
    receiving: [u8; 32],
    #[zeroize(skip)]
    local_index: u32,
    #[zeroize(skip)]
    remote_index: u32,
    #[zeroize(skip)]
    initiator: bool,
}

impl Keypair {
    pub fn sending_key(&self) -> &[u8; 32] {
        &self.sending
    }
    pub fn receiving_key(&self) -> &[u8; 32] {
        &self.receiving
    }
    /// Our index: peers put it in the receiver field of packets to us.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }
    /// The peer's index: we put it in the receiver field of packets we send.
    pub fn remote_index(&self) -> u32 {
        self.remote_index
    }
    /// True if we sent the initiation. Only the initiator rekeys on
    /// REKEY_AFTER_TIME; only the responder waits for confirmation.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("initiator", &self.initiator)
            .finish_non_exhaustive()
    }
}

/// Where a handshake stands, as the driver's `noise_handshake_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeState {
    Zeroed,
    CreatedInitiation,
    ConsumedInitiation,
}

/// Result of the responder's first step: the message decrypted far enough to
/// know who sent it. Feed it to that peer's [`Handshake::consume_initiation`].
pub struct InitiationOpened {
    peer: PublicKey,
    sender_index: u32,
    ephemeral: [u8; 32],
    chaining_key: Zeroizing<[u8; HASH_LEN]>,
    hash: [u8; HASH_LEN],
    encrypted_timestamp: [u8; TIMESTAMP_LEN + TAG_LEN],
}

impl InitiationOpened {
    /// The initiator's static public key: look the peer up by it.
    pub fn peer_public(&self) -> &PublicKey {
        &self.peer
    }
    pub fn sender_index(&self) -> u32 {
        self.sender_index
    }
}

impl fmt::Debug for InitiationOpened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitiationOpened")
            .field("peer", &self.peer)
            .field("sender_index", &self.sender_index)
            .finish_non_exhaustive()
    }
}

/// Responder step 1: check framing, then decrypt the initiator's static key
/// with our identity. mac1 must already have been verified
/// (`cookie::CookieChecker`). Never panics on any input.
pub fn open_initiation(local: &Identity, msg: &[u8]) -> Result<InitiationOpened, NoiseError> {
    let m: &[u8; HANDSHAKE_INITIATION_LEN] =
        expect_fixed(msg, MSG_HANDSHAKE_INITIATION, "handshake initiation")?;
    let sender_index = le32(m, INIT_SENDER);
    let ephemeral: [u8; 32] = take(m, INIT_EPHEMERAL);

    let (ck0, h0) = initial_chain();
    let h = hash(&[&h0, local.public.as_bytes()]);
    let [ck, _, _] = kdf(&ck0, &ephemeral);
    let h = hash(&[&h, &ephemeral]);
    let ee = dh(&local.secret, &ephemeral)?;
    let [ck, k, _] = kdf(&ck, &ee[..]);

    let enc_static: [u8; KEY_LEN + TAG_LEN] = take(m, INIT_STATIC);
    let mut peer = [0u8; KEY_LEN];
    peer.copy_from_slice(&enc_static[..KEY_LEN]);
    open(&k, &mut peer, &take(&enc_static, KEY_LEN), &h)?;
    let h = hash(&[&h, &enc_static]);

    Ok(InitiationOpened {
        peer: PublicKey::from_bytes(peer),
        sender_index,
        ephemeral,
        chaining_key: ck,
        hash: h,
        encrypted_timestamp: take(m, INIT_TIMESTAMP),
    })
}

/// A consumed initiation's state, ready for the response (see
/// [`Handshake::take_responder`]); zeroed on drop.
pub struct Responder {
    peer: PublicKey,
    psk: PresharedKey,
    chaining_key: Zeroizing<[u8; HASH_LEN]>,
    hash: [u8; HASH_LEN],
    remote_ephemeral: [u8; 32],
    remote_index: u32,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.hash.zeroize();
        self.remote_ephemeral.zeroize();
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("peer", &self.peer)
            .field("remote_index", &self.remote_index)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Builds the response (92 bytes, macs still zero) and derives the
    /// transport keypair: an ephemeral key, DH(e, e_i), DH(e, s_i), the PSK.
    pub fn respond<R: RngCore + CryptoRng>(
        &self,
        rng: &mut R,
        local_index: u32,
    ) -> Result<([u8; HANDSHAKE_RESPONSE_LEN], Keypair), NoiseError> {
        let mut msg = [0u8; HANDSHAKE_RESPONSE_LEN];
        msg[0] = MSG_HANDSHAKE_RESPONSE;
        msg[RESP_SENDER..RESP_SENDER + 4].copy_from_slice(&local_index.to_le_bytes());
        msg[RESP_RECEIVER..RESP_RECEIVER + 4].copy_from_slice(&self.remote_index.to_le_bytes());

        let (e, e_pub) = ephemeral(rng);
        msg[RESP_EPHEMERAL..RESP_EPHEMERAL + 32].copy_from_slice(&e_pub);
        let [ck, _, _] = kdf(&self.chaining_key, &e_pub);
        let h = hash(&[&self.hash, &e_pub]);
        let ee = dh(&e, &self.remote_ephemeral)?;
        let [ck, _, _] = kdf(&ck, &ee[..]);
        let se = dh(&e, self.peer.as_bytes())?;
        let [ck, _, _] = kdf(&ck, &se[..]);
        let [ck, t, k] = kdf(&ck, self.psk.as_bytes());
        let h = hash(&[&h, &t[..]]);
        let tag = seal(&k, &mut [], &h);
        msg[RESP_EMPTY..RESP_MAC1].copy_from_slice(&tag);
        Ok((
            msg,
            derive_keypair(&ck, local_index, self.remote_index, false),
        ))
    }
}

/// An ephemeral key kept for many initiations to one responder, with its
/// DH against the responder's static key computed once.
///
/// For load generation only (`wg-appliance bench --workloads handshakes`):
/// initiations that share an ephemeral key lose forward secrecy between
/// them, so no tunnel ever uses one. The responder cannot tell and does its
/// full work for each; the generator saves a key generation and a DH per
/// initiation and spends its CPU on verifying the responses (two DH each),
/// which lets it drive a responder harder on the same cores.
pub struct ReusedEphemeral {
    secret: DhSecret,
    public: [u8; 32],
    responder: PublicKey,
    es: Zeroizing<[u8; 32]>,
}

impl ReusedEphemeral {
    pub fn new<R: RngCore + CryptoRng>(
        rng: &mut R,
        responder: PublicKey,
    ) -> Result<Self, NoiseError> {
        let (secret, public) = ephemeral(rng);
        let es = dh(&secret, responder.as_bytes())?;
        Ok(ReusedEphemeral {
            secret,
            public,
            responder,
            es,
        })
    }
}

impl fmt::Debug for ReusedEphemeral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReusedEphemeral")
            .field("responder", &self.responder)
            .finish_non_exhaustive()
    }
}

/// Per-peer handshake state for both roles, plus the peer's cookie jar
/// (which writes mac1/mac2 on our messages to that peer).
pub struct Handshake {
    local: Identity,
    peer: PublicKey,
    /// DH(our static, their static), computed once as the driver does.
    static_static: Option<Zeroizing<[u8; 32]>>,
    psk: PresharedKey,
    state: HandshakeState,
    chaining_key: Zeroizing<[u8; HASH_LEN]>,
    hash: [u8; HASH_LEN],
    ephemeral: Option<DhSecret>,
    remote_ephemeral: [u8; 32],
    local_index: u32,
    remote_index: u32,
    latest_timestamp: Tai64N,
    last_initiation_consumed: Option<Duration>,
    /// mac1/mac2 writer and cookie store for messages we send to this peer.
    pub cookie: CookieJar,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("peer", &self.peer)
            .field("state", &self.state)
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// `psk` None means no pre-shared key (the all-zero key, per Noise).
    pub fn new(local: &Identity, peer: PublicKey, psk: Option<PresharedKey>) -> Self {
        let static_static = dh(&local.secret, peer.as_bytes()).ok();
        Handshake {
            local: local.clone(),
            peer,
            static_static,
            psk: psk.unwrap_or_else(PresharedKey::zero),
            state: HandshakeState::Zeroed,
            chaining_key: Zeroizing::new([0u8; HASH_LEN]),
            hash: [0u8; HASH_LEN],
            ephemeral: None,
            remote_ephemeral: [0u8; 32],
            local_index: 0,
            remote_index: 0,
            latest_timestamp: Tai64N::default(),
            last_initiation_consumed: None,
            cookie: CookieJar::new(&peer),
        }
    }

    pub fn peer_public(&self) -> &PublicKey {
        &self.peer
    }

    pub fn state(&self) -> HandshakeState {
        self.state
    }

    /// Our sender index of the handshake in flight (valid after
    /// `create_initiation` or `create_response`).
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// Replace the pre-shared key (`wg set ... preshared-key`).
    pub fn set_preshared_key(&mut self, psk: Option<PresharedKey>) {
        self.psk = psk.unwrap_or_else(PresharedKey::zero);
    }

    /// Forget the handshake in flight (the driver's `wg_noise_handshake_clear`),
    /// keeping the replay state (latest timestamp) as the driver does.
    pub fn clear(&mut self) {
        self.state = HandshakeState::Zeroed;
        self.chaining_key.zeroize();
        self.hash.zeroize();
        self.ephemeral = None;
        self.remote_ephemeral.zeroize();
    }

    /// Initiator: build a handshake initiation (148 bytes, mac1 and mac2
    /// filled in). `timestamp` is the current TAI64N, `now` the monotonic
    /// time (for cookie expiry), `local_index` a fresh unique index.
    pub fn create_initiation<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        timestamp: Tai64N,
        local_index: u32,
        now: Duration,
    ) -> Result<[u8; HANDSHAKE_INITIATION_LEN], NoiseError> {
        if self.static_static.is_none() {
            return Err(NoiseError::NoStaticSharedSecret);
        }
        let (e, e_pub) = ephemeral(rng);
        let es = dh(&e, self.peer.as_bytes())?;
        self.initiation_with(e, e_pub, &es, timestamp, local_index, now)
    }

    /// [`Handshake::create_initiation`] with an ephemeral key shared by many
    /// initiations to this responder, and its DH computed once: for load
    /// generation only (see [`ReusedEphemeral`]).
    pub fn create_initiation_reusing(
        &mut self,
        eph: &ReusedEphemeral,
        timestamp: Tai64N,
        local_index: u32,
        now: Duration,
    ) -> Result<[u8; HANDSHAKE_INITIATION_LEN], NoiseError> {
        if eph.responder != self.peer {
            return Err(NoiseError::WrongPeer {
                expected: self.peer,
                got: eph.responder,
            });
        }
        self.initiation_with(
            eph.secret.clone(),
            eph.public,
            &eph.es,
            timestamp,
            local_index,
            now,
        )
    }

    fn initiation_with(
        &mut self,
        e: DhSecret,
        e_pub: [u8; 32],
        es: &[u8; 32],
        timestamp: Tai64N,
        local_index: u32,
        now: Duration,
    ) -> Result<[u8; HANDSHAKE_INITIATION_LEN], NoiseError> {
        let ss = self
            .static_static
            .clone()
            .ok_or(NoiseError::NoStaticSharedSecret)?;
        let mut msg = [0u8; HANDSHAKE_INITIATION_LEN];
        msg[0] = MSG_HANDSHAKE_INITIATION;
        msg[INIT_SENDER..INIT_SENDER + 4].copy_from_slice(&local_index.to_le_bytes());

        let (ck0, h0) = initial_chain();
        let h = hash(&[&h0, self.peer.as_bytes()]);
        msg[INIT_EPHEMERAL..INIT_EPHEMERAL + 32].copy_from_slice(&e_pub);
        let [ck, _, _] = kdf(&ck0, &e_pub);
        let h = hash(&[&h, &e_pub]);

        let [ck, k, _] = kdf(&ck, &es[..]);
        let (body, tag) = msg[INIT_STATIC..INIT_TIMESTAMP].split_at_mut(KEY_LEN);
        body.copy_from_slice(self.local.public.as_bytes());
        tag.copy_from_slice(&seal(&k, body, &h));
        let h = hash(&[&h, &msg[INIT_STATIC..INIT_TIMESTAMP]]);

        let [ck, k, _] = kdf(&ck, &ss[..]);
        let (body, tag) = msg[INIT_TIMESTAMP..INIT_MAC1].split_at_mut(TIMESTAMP_LEN);
        body.copy_from_slice(&timestamp.to_bytes());
        tag.copy_from_slice(&seal(&k, body, &h));
        let h = hash(&[&h, &msg[INIT_TIMESTAMP..INIT_MAC1]]);

        self.cookie.add_macs(&mut msg, now);
        self.state = HandshakeState::CreatedInitiation;
        self.chaining_key = ck;
        self.hash = h;
        self.ephemeral = Some(e);
        self.local_index = local_index;
        Ok(msg)
    }

    /// Responder step 2: finish consuming an initiation from this peer:
    /// static-static DH, timestamp decryption, replay and flood checks.
    /// `now` is monotonic time. Leaves the state untouched on any error.
    pub fn consume_initiation(
        &mut self,
        opened: InitiationOpened,
        now: Duration,
    ) -> Result<(), NoiseError> {
        if opened.peer != self.peer {
            return Err(NoiseError::WrongPeer {
                expected: self.peer,
                got: opened.peer,
            });
        }
        let ss = self
            .static_static
            .clone()
            .ok_or(NoiseError::NoStaticSharedSecret)?;
        let mut ck_in = [0u8; HASH_LEN];
        ck_in.copy_from_slice(&opened.chaining_key[..]);
        let ck_in = Zeroizing::new(ck_in);
        let [ck, k, _] = kdf(&ck_in, &ss[..]);
        let mut ts = [0u8; TIMESTAMP_LEN];
        ts.copy_from_slice(&opened.encrypted_timestamp[..TIMESTAMP_LEN]);
        open(
            &k,
            &mut ts,
            &take(&opened.encrypted_timestamp, TIMESTAMP_LEN),
            &opened.hash,
        )?;
        let h = hash(&[&opened.hash, &opened.encrypted_timestamp]);
        let ts = Tai64N::from_bytes(ts);

        if ts <= self.latest_timestamp {
            return Err(NoiseError::ReplayedTimestamp);
        }
        if let Some(last) = self.last_initiation_consumed {
            if now < last + Duration::from_secs(1) / INITIATIONS_PER_SECOND as u32 {
                return Err(NoiseError::InitiationTooSoon);
            }
        }

        self.latest_timestamp = ts;
        self.last_initiation_consumed = Some(now);
        self.state = HandshakeState::ConsumedInitiation;
        self.chaining_key = ck;
        self.hash = h;
        self.ephemeral = None;
        self.remote_ephemeral = opened.ephemeral;
        self.remote_index = opened.sender_index;
        Ok(())
    }

    /// Responder step 3: build the response (92 bytes, macs filled in) and
    /// derive the transport keypair. The responder must not send data with it
    /// until the initiator's first packet confirms it (see `timers::Keypairs`).
    /// The same as [`Handshake::take_responder`], [`Responder::respond`] and
    /// the macs, in one call.
    pub fn create_response<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        local_index: u32,
        now: Duration,
    ) -> Result<([u8; HANDSHAKE_RESPONSE_LEN], Keypair), NoiseError> {
        let (mut msg, keypair) = self.take_responder()?.respond(rng, local_index)?;
        self.cookie.add_macs(&mut msg, now);
        Ok((msg, keypair))
    }

    /// Responder step 3, first half: what building the response needs, taken
    /// out of the consumed handshake (which is cleared), so the expensive
    /// part ([`Responder::respond`]: an ephemeral key and two DH) can run on
    /// another thread. Add the macs with `self.cookie` afterwards.
    pub fn take_responder(&mut self) -> Result<Responder, NoiseError> {
        if self.state != HandshakeState::ConsumedInitiation {
            return Err(NoiseError::NothingToRespond);
        }
        let r = Responder {
            peer: self.peer,
            psk: self.psk.clone(),
            chaining_key: self.chaining_key.clone(),
            hash: self.hash,
            remote_ephemeral: self.remote_ephemeral,
            remote_index: self.remote_index,
        };
        self.clear();
        Ok(r)
    }

    /// Initiator: consume the response to our initiation and derive the
    /// transport keypair. mac1 must already have been verified. Leaves the
    /// state untouched on any error, so a forged response cannot cancel the
    /// handshake in flight.
    pub fn consume_response(&mut self, msg: &[u8]) -> Result<Keypair, NoiseError> {
        let m: &[u8; HANDSHAKE_RESPONSE_LEN] =
            expect_fixed(msg, MSG_HANDSHAKE_RESPONSE, "handshake response")?;
        if self.state != HandshakeState::CreatedInitiation {
            return Err(NoiseError::UnexpectedResponse);
        }
        let receiver = le32(m, RESP_RECEIVER);
        if receiver != self.local_index {
            return Err(NoiseError::WrongReceiverIndex {
                expected: self.local_index,
                got: receiver,
            });
        }
        let e = self
            .ephemeral
            .as_ref()
            .ok_or(NoiseError::UnexpectedResponse)?;
        let sender = le32(m, RESP_SENDER);
        let e_r: [u8; 32] = take(m, RESP_EPHEMERAL);

        let [ck, _, _] = kdf(&self.chaining_key, &e_r);
        let h = hash(&[&self.hash, &e_r]);
        let ee = dh(e, &e_r)?;
        let [ck, _, _] = kdf(&ck, &ee[..]);
        let se = dh(&self.local.secret, &e_r)?;
        let [ck, _, _] = kdf(&ck, &se[..]);
        let [ck, t, k] = kdf(&ck, self.psk.as_bytes());
        let h = hash(&[&h, &t[..]]);
        open(&k, &mut [], &take(m, RESP_EMPTY), &h)?;

        let keypair = derive_keypair(&ck, self.local_index, sender, true);
        self.clear();
        Ok(keypair)
    }
}

fn derive_keypair(
    ck: &[u8; HASH_LEN],
    local_index: u32,
    remote_index: u32,
    initiator: bool,
) -> Keypair {
    let [t1, t2, _] = kdf(ck, &[]);
    let (sending, receiving) = if initiator { (*t1, *t2) } else { (*t2, *t1) };
    Keypair {
        sending,
        receiving,
        local_index,
        remote_index,
        initiator,
    }
}

/// The sender index of an initiation or response (for a cookie reply's
/// receiver field), or the receiver index of a response, cookie reply or
/// transport message (to find our state). None if the message is too short.
pub fn sender_index(msg: &[u8]) -> Option<u32> {
    msg.get(4..8)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
}

/// The receiver index carried by a response (offset 8), cookie reply or
/// transport message (offset 4). None for other types or short messages.
pub fn receiver_index(msg: &[u8]) -> Option<u32> {
    let at = match msg.first()? {
        &MSG_HANDSHAKE_RESPONSE => 8,
        &MSG_COOKIE_REPLY | &MSG_TRANSPORT_DATA => 4,
        _ => return None,
    };
    msg.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod interop;
