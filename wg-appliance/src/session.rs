//! Transport data messages (type 4): sealing, opening and the replay window.
//!
//! A message is `type(1) reserved(3) receiver(4, LE) counter(8, LE)` and the
//! ChaCha20-Poly1305 ciphertext of the inner packet padded with zeros to a
//! multiple of 16 (never beyond the MTU), under the nonce `0u32 || counter
//! LE`. An empty plaintext is a keepalive.
//!
//! Invariants: a counter is never used twice for sealing (it comes from an
//! atomic `fetch_add` that BPF may share) and no counter at or above
//! REJECT_AFTER_MESSAGES is sealed or accepted; the replay window has exactly
//! the Linux driver's `counter_validate` semantics (8192 bits, of which
//! 8192 − 64 are a usable window) and is updated only after the tag
//! verified; no input makes these functions panic.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};

use crate::crypto::aead_nonce;
use crate::noise::Keypair;
use wg_ebpf_common::{
    AEAD_TAG_LEN, MSG_TRANSPORT_DATA, REJECT_AFTER_MESSAGES, TRANSPORT_HEADER_LEN,
    TRANSPORT_MIN_LEN,
};

/// Bits in the replay bitmap (the driver's COUNTER_BITS_TOTAL).
pub const COUNTER_BITS_TOTAL: u64 = 8192;
/// One word of the bitmap is always being recycled (COUNTER_REDUNDANT_BITS).
pub const COUNTER_REDUNDANT_BITS: u64 = 64;
/// How far behind the highest counter seen a packet may still be accepted.
pub const COUNTER_WINDOW_SIZE: u64 = COUNTER_BITS_TOTAL - COUNTER_REDUNDANT_BITS;
/// Plaintexts are padded to a multiple of this.
pub const PADDING_MULTIPLE: usize = 16;

const WORDS: usize = (COUNTER_BITS_TOTAL / 64) as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("transport message is {0} bytes; the minimum is {TRANSPORT_MIN_LEN} (16-byte header + 16-byte tag); drop it")]
    TooShort(usize),
    #[error("message type {0} is not transport data (4); dispatch on the type byte first")]
    NotTransport(u8),
    #[error("the three reserved header bytes are not zero (not a WireGuard message; drop it)")]
    ReservedNotZero,
    #[error("transport message is for receiver index {got:#010x}, but this session is {expected:#010x} (look the session up by receiver index)")]
    WrongReceiver { expected: u32, got: u32 },
    #[error("counter {0} is at or beyond REJECT_AFTER_MESSAGES; this session must not be used any more (rekey)")]
    CounterExhausted(u64),
    #[error(
        "authentication tag did not verify (corrupted, forged, or for another session); drop it"
    )]
    DecryptFailed,
    #[error("counter {0} was already received or is too old for the replay window (replayed or badly reordered); drop it")]
    Replayed(u64),
    #[error(
        "decrypted payload is not an IPv4 or IPv6 packet (the peer sent something else; drop it)"
    )]
    NotIp,
    #[error("inner IP header claims {claimed} bytes but only {available} were decrypted (dishonest packet size; drop it)")]
    BadInnerLength { claimed: usize, available: usize },
}

/// The header fields of a transport message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportHeader {
    pub receiver_index: u32,
    pub counter: u64,
}

/// Parse the header of a transport message; returns it and the ciphertext
/// (including the tag). Lengths other than "at least 32" are legal: a
/// full-MTU packet is not padded past the MTU, so the ciphertext need not be
/// a multiple of 16.
pub fn parse_transport(msg: &[u8]) -> Result<(TransportHeader, &[u8]), SessionError> {
    if msg.len() < TRANSPORT_MIN_LEN {
        return Err(SessionError::TooShort(msg.len()));
    }
    let (hdr, ct) = msg.split_at(TRANSPORT_HEADER_LEN);
    if hdr[0] != MSG_TRANSPORT_DATA {
        return Err(SessionError::NotTransport(hdr[0]));
    }
    if hdr[1..4] != [0, 0, 0] {
        return Err(SessionError::ReservedNotZero);
    }
    let mut idx = [0u8; 4];
    idx.copy_from_slice(&hdr[4..8]);
    let mut ctr = [0u8; 8];
    ctr.copy_from_slice(&hdr[8..16]);
    Ok((
        TransportHeader {
            receiver_index: u32::from_le_bytes(idx),
            counter: u64::from_le_bytes(ctr),
        },
        ct,
    ))
}

/// Padded plaintext length: the next multiple of 16, but not past the MTU
/// (and never shorter than the packet itself).
pub fn padded_len(len: usize, mtu: usize) -> usize {
    let aligned = len.div_ceil(PADDING_MULTIPLE) * PADDING_MULTIPLE;
    aligned.min(mtu.max(len))
}

/// Total transport message length for a payload of `len` bytes.
pub fn message_len(len: usize, mtu: usize) -> usize {
    TRANSPORT_HEADER_LEN + padded_len(len, mtu) + AEAD_TAG_LEN
}

/// The sending half of a session: a key and the peer's receiver index.
pub struct SendingKey {
    cipher: ChaCha20Poly1305,
    remote_index: u32,
}

impl fmt::Debug for SendingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendingKey")
            .field("remote_index", &self.remote_index)
            .finish_non_exhaustive()
    }
}

impl SendingKey {
    pub fn new(key: &[u8; 32], remote_index: u32) -> Self {
        SendingKey {
            cipher: ChaCha20Poly1305::new(key.into()),
            remote_index,
        }
    }

    /// Seal `payload` with an explicit `counter` (the caller guarantees it is
    /// fresh) into `out` (cleared first). Empty payload = keepalive.
    pub fn seal(
        &self,
        counter: u64,
        payload: &[u8],
        mtu: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(SessionError::CounterExhausted(counter));
        }
        let padded = padded_len(payload.len(), mtu);
        out.clear();
        out.reserve(TRANSPORT_HEADER_LEN + padded + AEAD_TAG_LEN);
        out.extend_from_slice(&[MSG_TRANSPORT_DATA, 0, 0, 0]);
        out.extend_from_slice(&self.remote_index.to_le_bytes());
        out.extend_from_slice(&counter.to_le_bytes());
        out.extend_from_slice(payload);
        out.resize(TRANSPORT_HEADER_LEN + padded, 0);
        let tag = self
            .cipher
            .encrypt_in_place_detached(
                &aead_nonce(counter).into(),
                &[],
                &mut out[TRANSPORT_HEADER_LEN..],
            )
            .map_err(|_| SessionError::TooShort(0))?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Take the next counter from `counter` (shared with the BPF data path,
    /// so a plain atomic fetch-add) and seal. Returns the counter used.
    pub fn seal_next(
        &self,
        counter: &AtomicU64,
        payload: &[u8],
        mtu: usize,
        out: &mut Vec<u8>,
    ) -> Result<u64, SessionError> {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        self.seal(n, payload, mtu, out)?;
        Ok(n)
    }
}

/// The receiving half of a session.
pub struct ReceivingKey {
    cipher: ChaCha20Poly1305,
    local_index: u32,
}

impl fmt::Debug for ReceivingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivingKey")
            .field("local_index", &self.local_index)
            .finish_non_exhaustive()
    }
}

impl ReceivingKey {
    pub fn new(key: &[u8; 32], local_index: u32) -> Self {
        ReceivingKey {
            cipher: ChaCha20Poly1305::new(key.into()),
            local_index,
        }
    }

    /// Verify and decrypt `msg` into `out` (cleared first; holds the padded
    /// plaintext). Does not touch any replay window: check that after.
    pub fn open(&self, msg: &[u8], out: &mut Vec<u8>) -> Result<TransportHeader, SessionError> {
        let (hdr, ct) = parse_transport(msg)?;
        if hdr.receiver_index != self.local_index {
            return Err(SessionError::WrongReceiver {
                expected: self.local_index,
                got: hdr.receiver_index,
            });
        }
        if hdr.counter >= REJECT_AFTER_MESSAGES {
            return Err(SessionError::CounterExhausted(hdr.counter));
        }
        // parse_transport guaranteed ct.len() >= AEAD_TAG_LEN.
        let (body, tag) = ct.split_at(ct.len() - AEAD_TAG_LEN);
        out.clear();
        out.extend_from_slice(body);
        self.cipher
            .decrypt_in_place_detached(&aead_nonce(hdr.counter).into(), &[], out, tag.into())
            .map_err(|_| {
                out.clear();
                SessionError::DecryptFailed
            })?;
        Ok(hdr)
    }
}

/// The receive replay window, bit for bit the driver's `counter_validate`:
/// `counter` is one past the highest counter accepted, `backtrack` a ring
/// of 128 64-bit words indexed by (counter + 1) / 64.
#[derive(Clone)]
pub struct ReplayWindow {
    counter: u64,
    backtrack: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("next", &self.counter)
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    pub fn new() -> Self {
        ReplayWindow {
            counter: 0,
            backtrack: [0; WORDS],
        }
    }

    /// One past the highest counter accepted so far (0 before any).
    pub fn next_expected(&self) -> u64 {
        self.counter
    }

    /// Would `their` be accepted now? Cheap check before decrypting; it does
    /// not change the window.
    pub fn would_accept(&self, their: u64) -> bool {
        if self.counter > REJECT_AFTER_MESSAGES || their >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let their = their + 1;
        if COUNTER_WINDOW_SIZE + their < self.counter {
            return false;
        }
        if their > self.counter {
            return true;
        }
        let word = ((their >> 6) as usize) & (WORDS - 1);
        self.backtrack[word] & (1u64 << (their & 63)) == 0
    }

    /// Accept `their` (true) or reject it as replayed / too old / beyond the
    /// message limit (false), recording it when accepted. Call only after
    /// the packet's tag verified.
    pub fn check_and_update(&mut self, their: u64) -> bool {
        // Bounds first so `their + 1` cannot overflow.
        if self.counter > REJECT_AFTER_MESSAGES || their >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let their = their + 1;
        if COUNTER_WINDOW_SIZE + their < self.counter {
            return false;
        }
        let index = their >> 6;
        if their > self.counter {
            // Clear the words the window slides over (at most the whole ring).
            let index_current = self.counter >> 6;
            let top = (index - index_current).min(WORDS as u64);
            for i in 1..=top {
                self.backtrack[((i + index_current) as usize) & (WORDS - 1)] = 0;
            }
            self.counter = their;
        }
        let word = (index as usize) & (WORDS - 1);
        let bit = 1u64 << (their & 63);
        let fresh = self.backtrack[word] & bit == 0;
        self.backtrack[word] |= bit;
        fresh
    }
}

/// What [`Session::open`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub counter: u64,
    /// Padded plaintext length in the output buffer.
    pub len: usize,
    /// True for a keepalive (empty plaintext).
    pub keepalive: bool,
}

/// A full transport session: both keys, the send counter and the replay
/// window. The daemon keeps it behind whatever lock it needs; the send
/// counter is an atomic so it can live in memory shared with BPF instead
/// (use [`SendingKey::seal_next`] with that counter).
pub struct Session {
    pub sending: SendingKey,
    pub receiving: ReceivingKey,
    pub send_counter: AtomicU64,
    pub replay: ReplayWindow,
    initiator: bool,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("local_index", &self.receiving.local_index)
            .field("remote_index", &self.sending.remote_index)
            .field("send_counter", &self.send_counter.load(Ordering::Relaxed))
            .field("replay", &self.replay)
            .finish()
    }
}

impl Session {
    pub fn new(kp: &Keypair) -> Self {
        Session {
            sending: SendingKey::new(kp.sending_key(), kp.remote_index()),
            receiving: ReceivingKey::new(kp.receiving_key(), kp.local_index()),
            send_counter: AtomicU64::new(0),
            replay: ReplayWindow::new(),
            initiator: kp.is_initiator(),
        }
    }

    pub fn local_index(&self) -> u32 {
        self.receiving.local_index
    }
    pub fn remote_index(&self) -> u32 {
        self.sending.remote_index
    }
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }
    /// Messages sealed so far (the next counter).
    pub fn messages_sent(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }

    /// Seal with this session's own counter. Returns the counter used.
    pub fn seal(&self, payload: &[u8], mtu: usize, out: &mut Vec<u8>) -> Result<u64, SessionError> {
        self.sending
            .seal_next(&self.send_counter, payload, mtu, out)
    }

    /// Pre-check the counter, decrypt, then update the replay window.
    pub fn open(&mut self, msg: &[u8], out: &mut Vec<u8>) -> Result<Opened, SessionError> {
        if let Ok((hdr, _)) = parse_transport(msg) {
            if !self.replay.would_accept(hdr.counter) {
                return Err(SessionError::Replayed(hdr.counter));
            }
        }
        let hdr = self.receiving.open(msg, out)?;
        if !self.replay.check_and_update(hdr.counter) {
            out.clear();
            return Err(SessionError::Replayed(hdr.counter));
        }
        Ok(Opened {
            counter: hdr.counter,
            len: out.len(),
            keepalive: out.is_empty(),
        })
    }
}

/// Length of the IP packet at the start of a decrypted (padded) plaintext,
/// from its own header, as the driver trims it: IPv4 total length (at least
/// 20), IPv6 payload length + 40; it must fit in what was decrypted.
pub fn inner_packet_len(plain: &[u8]) -> Result<usize, SessionError> {
    let claimed = match plain.first().map(|b| b >> 4) {
        Some(4) if plain.len() >= 20 => {
            let l = usize::from(u16::from_be_bytes([plain[2], plain[3]]));
            if l < 20 {
                return Err(SessionError::BadInnerLength {
                    claimed: l,
                    available: plain.len(),
                });
            }
            l
        }
        Some(6) if plain.len() >= 40 => usize::from(u16::from_be_bytes([plain[4], plain[5]])) + 40,
        _ => return Err(SessionError::NotIp),
    };
    if claimed > plain.len() {
        return Err(SessionError::BadInnerLength {
            claimed,
            available: plain.len(),
        });
    }
    Ok(claimed)
}

#[cfg(test)]
mod tests;
