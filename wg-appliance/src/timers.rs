//! Per-peer WireGuard timers and keypair rotation as a pure state machine.
//!
//! The daemon reports what happened ([`Event`]) and the time (`now`, a
//! monotonic `Duration` from any fixed origin), calls [`PeerTimers::tick`]
//! at [`PeerTimers::next_deadline`], and carries out the returned
//! [`Action`]s. The rules are those of the Linux driver's `timers.c`,
//! `send.c`/`receive.c` (`keep_key_fresh`) and `noise.c` (keypair slots):
//!
//! - handshake retransmit every REKEY_TIMEOUT (+ up to 333 ms jitter), giving
//!   up after REKEY_ATTEMPT_TIME / REKEY_TIMEOUT retries; initiations at most
//!   one per REKEY_TIMEOUT;
//! - passive keepalive KEEPALIVE_TIMEOUT after data is received if we sent
//!   nothing; a new handshake KEEPALIVE_TIMEOUT + REKEY_TIMEOUT after data is
//!   sent if nothing came back; persistent keepalive after any traffic;
//! - the initiator rekeys after REKEY_AFTER_TIME (configurable for tests)
//!   and once more shortly before REJECT_AFTER_TIME on receive; either side
//!   after REKEY_AFTER_MESSAGES; keys older than REJECT_AFTER_TIME or with
//!   REJECT_AFTER_MESSAGES used are refused; all key material is zeroed
//!   3 × REJECT_AFTER_TIME after the last session was derived;
//! - keypairs sit in current/previous/next slots: the initiator uses a new
//!   keypair at once; the responder puts it in `next` and may not send with
//!   it until the initiator's first packet on it confirms it.
//!
//! Invariant: this module never reads a clock or an RNG; jitter is an input.

use std::time::Duration;

use wg_ebpf_common::{
    KEEPALIVE_TIMEOUT_SECS, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME_SECS, REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME_SECS, REKEY_ATTEMPT_TIME_SECS, REKEY_TIMEOUT_SECS,
};

pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(REKEY_AFTER_TIME_SECS);
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(REJECT_AFTER_TIME_SECS);
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(REKEY_ATTEMPT_TIME_SECS);
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(REKEY_TIMEOUT_SECS);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(KEEPALIVE_TIMEOUT_SECS);
/// Largest jitter added to handshake timers (the driver's HZ / 3).
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
/// Retries before giving up (the driver's MAX_TIMER_HANDSHAKES = 90 / 5).
pub const MAX_TIMER_HANDSHAKES: u32 = (REKEY_ATTEMPT_TIME_SECS / REKEY_TIMEOUT_SECS) as u32;
/// Key material is zeroed this long after the last session was derived.
pub const ZERO_KEYS_AFTER: Duration = Duration::from_secs(3 * REJECT_AFTER_TIME_SECS);

/// Per-peer timer configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// REKEY_AFTER_TIME; only tests should change it (the constant stays).
    pub rekey_after_time: Duration,
    /// `PersistentKeepalive`, None when off.
    pub persistent_keepalive: Option<Duration>,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            rekey_after_time: REKEY_AFTER_TIME,
            persistent_keepalive: None,
        }
    }
}

/// How many messages a keypair has sealed; the timers need it for
/// REKEY_AFTER_MESSAGES and REJECT_AFTER_MESSAGES.
pub trait SendCounter {
    fn messages_sent(&self) -> u64;
}

impl SendCounter for crate::session::Session {
    fn messages_sent(&self) -> u64 {
        crate::session::Session::messages_sent(self)
    }
}

/// A keypair in a slot, with what the rotation rules need to know about it.
#[derive(Debug)]
pub struct Slot<K> {
    pub keypair: K,
    pub local_index: u32,
    pub initiator: bool,
    /// When the keys were derived.
    pub birth: Duration,
}

/// The current/previous/next keypair slots of one peer.
#[derive(Debug)]
pub struct Keypairs<K> {
    current: Option<Slot<K>>,
    previous: Option<Slot<K>>,
    next: Option<Slot<K>>,
}

impl<K> Default for Keypairs<K> {
    fn default() -> Self {
        Keypairs {
            current: None,
            previous: None,
            next: None,
        }
    }
}

impl<K> Keypairs<K> {
    pub fn current(&self) -> Option<&Slot<K>> {
        self.current.as_ref()
    }
    pub fn previous(&self) -> Option<&Slot<K>> {
        self.previous.as_ref()
    }
    pub fn next(&self) -> Option<&Slot<K>> {
        self.next.as_ref()
    }

    /// The slot holding `local_index`, in any position.
    pub fn find(&self, local_index: u32) -> Option<&Slot<K>> {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .find(|s| s.local_index == local_index)
    }

    pub fn find_mut(&mut self, local_index: u32) -> Option<&mut Slot<K>> {
        [&mut self.current, &mut self.previous, &mut self.next]
            .into_iter()
            .flatten()
            .find(|s| s.local_index == local_index)
    }

    /// Add a freshly derived keypair; returns the slots it pushed out.
    fn insert(&mut self, new: Slot<K>) -> Vec<Slot<K>> {
        let mut evicted = Vec::new();
        if new.initiator {
            // Usable at once. A pending `next` (we were responder in a
            // crossing handshake) becomes `previous`, as in the driver, and
            // the current is dropped; otherwise current slides to previous.
            if let Some(next) = self.next.take() {
                evicted.extend(self.previous.replace(next));
                evicted.extend(self.current.take());
            } else {
                evicted.extend(self.previous.take());
                self.previous = self.current.take();
            }
            self.current = Some(new);
        } else {
            // Not usable until confirmed: replace `next`, drop `previous`.
            evicted.extend(self.next.replace(new));
            evicted.extend(self.previous.take());
        }
        evicted
    }

    /// A packet arrived on `local_index`. If that is `next`, it is
    /// confirmed: next → current → previous. Returns (confirmed, evicted).
    fn received_with(&mut self, local_index: u32) -> (bool, Vec<Slot<K>>) {
        match &self.next {
            Some(n) if n.local_index == local_index => {
                let mut evicted = Vec::new();
                evicted.extend(self.previous.take());
                self.previous = self.current.take();
                self.current = self.next.take();
                (true, evicted)
            }
            _ => (false, Vec::new()),
        }
    }

    fn clear(&mut self) -> Vec<Slot<K>> {
        [self.current.take(), self.previous.take(), self.next.take()]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Something that happened to the peer. `jitter` is a random duration the
/// caller draws (it is clamped to [`REKEY_TIMEOUT_JITTER_MAX`]).
#[derive(Debug)]
pub enum Event<K> {
    /// We sent a handshake initiation.
    HandshakeInitiationSent { jitter: Duration },
    /// We consumed a valid initiation from the peer (and will respond).
    HandshakeInitiationReceived,
    /// We sent our response; its keypair waits in `next` for confirmation.
    HandshakeResponseSent { keypair: K, local_index: u32 },
    /// We consumed the peer's response; the keypair becomes current.
    HandshakeResponseReceived { keypair: K, local_index: u32 },
    /// We sent a transport message on the current keypair.
    TransportSent { keepalive: bool, jitter: Duration },
    /// We received a valid (authenticated, not replayed) transport message.
    TransportReceived { local_index: u32, keepalive: bool },
    /// A packet for the peer is waiting to be sent.
    WantToSend,
}

/// What the daemon must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Create and send a handshake initiation, then report
    /// [`Event::HandshakeInitiationSent`].
    SendHandshakeInitiation,
    /// Send the staged packets, or an empty (keepalive) message if none.
    SendKeepalive,
    /// A keypair became usable: send the staged packets.
    SendStaged,
    /// The handshake gave up: drop the staged packets.
    PurgeStaged,
    /// Erase the handshake state (`noise::Handshake::clear`).
    ClearHandshake,
    /// This local index no longer names a keypair: remove it from the index
    /// table and the data-path maps (its keys are dropped here).
    Retire(u32),
}

/// All timers of one peer plus its keypair slots.
#[derive(Debug)]
pub struct PeerTimers<K> {
    cfg: TimerConfig,
    pub keypairs: Keypairs<K>,
    retransmit_handshake: Option<Duration>,
    send_keepalive: Option<Duration>,
    new_handshake: Option<Duration>,
    zero_key_material: Option<Duration>,
    persistent_keepalive: Option<Duration>,
    handshake_attempts: u32,
    need_another_keepalive: bool,
    sent_lastminute_handshake: bool,
    last_sent_handshake: Option<Duration>,
    last_handshake_completed: Option<Duration>,
}

fn clamp_jitter(j: Duration) -> Duration {
    j.min(REKEY_TIMEOUT_JITTER_MAX)
}

/// `birth + age <= now`: the driver's `wg_birthdate_has_expired`.
fn expired(birth: Duration, age: Duration, now: Duration) -> bool {
    birth + age <= now
}

impl<K: SendCounter> PeerTimers<K> {
    pub fn new(cfg: TimerConfig) -> Self {
        PeerTimers {
            cfg,
            keypairs: Keypairs::default(),
            retransmit_handshake: None,
            send_keepalive: None,
            new_handshake: None,
            zero_key_material: None,
            persistent_keepalive: None,
            handshake_attempts: 0,
            need_another_keepalive: false,
            sent_lastminute_handshake: false,
            last_sent_handshake: None,
            last_handshake_completed: None,
        }
    }

    pub fn config(&self) -> &TimerConfig {
        &self.cfg
    }

    /// When the last handshake completed (for `wg show` / metrics).
    pub fn last_handshake(&self) -> Option<Duration> {
        self.last_handshake_completed
    }

    /// Retries made for the handshake in flight.
    pub fn handshake_attempts(&self) -> u32 {
        self.handshake_attempts
    }

    /// Change `PersistentKeepalive`; turning it on sends a keepalive at once,
    /// as `wg set` does.
    pub fn set_persistent_keepalive(
        &mut self,
        interval: Option<Duration>,
        now: Duration,
    ) -> Vec<Action> {
        let was_off = self.cfg.persistent_keepalive.is_none();
        self.cfg.persistent_keepalive = interval.filter(|d| !d.is_zero());
        match self.cfg.persistent_keepalive {
            None => {
                self.persistent_keepalive = None;
                Vec::new()
            }
            Some(i) => {
                self.persistent_keepalive = Some(now + i);
                if was_off {
                    vec![Action::SendKeepalive]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// The keypair to send with, if any: current, younger than
    /// REJECT_AFTER_TIME, and below REJECT_AFTER_MESSAGES.
    pub fn sending_keypair(&self, now: Duration) -> Option<&Slot<K>> {
        self.keypairs.current().filter(|s| {
            !expired(s.birth, REJECT_AFTER_TIME, now)
                && s.keypair.messages_sent() < REJECT_AFTER_MESSAGES
        })
    }

    /// The keypair a packet for `local_index` may be received on: any slot,
    /// younger than REJECT_AFTER_TIME.
    pub fn receiving_keypair(&self, local_index: u32, now: Duration) -> Option<&Slot<K>> {
        self.keypairs
            .find(local_index)
            .filter(|s| !expired(s.birth, REJECT_AFTER_TIME, now))
    }

    /// The earliest pending timer.
    pub fn next_deadline(&self) -> Option<Duration> {
        [
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_key_material,
            self.persistent_keepalive,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Handshake initiation wanted: rate-limited to one per REKEY_TIMEOUT.
    /// A non-retry starts a new attempt count.
    fn request_handshake(&mut self, now: Duration, is_retry: bool, out: &mut Vec<Action>) {
        if !is_retry {
            self.handshake_attempts = 0;
        }
        if matches!(self.last_sent_handshake, Some(t) if now < t + REKEY_TIMEOUT) {
            return;
        }
        out.push(Action::SendHandshakeInitiation);
    }

    fn traversal(&mut self, now: Duration) {
        if let Some(i) = self.cfg.persistent_keepalive {
            self.persistent_keepalive = Some(now + i);
        }
    }

    fn session_derived(&mut self, now: Duration) {
        self.zero_key_material = Some(now + ZERO_KEYS_AFTER);
    }

    fn handshake_complete(&mut self, now: Duration) {
        self.retransmit_handshake = None;
        self.handshake_attempts = 0;
        self.sent_lastminute_handshake = false;
        self.last_handshake_completed = Some(now);
    }

    fn retire(evicted: Vec<Slot<K>>, out: &mut Vec<Action>) {
        out.extend(evicted.into_iter().map(|s| Action::Retire(s.local_index)));
    }

    /// After a control-plane restart: a keypair the data path still holds,
    /// derived at `birth` (same clock as `now`), goes back into the `current`
    /// slot (or `previous`), so the rekey and expiry rules run on its real
    /// age. Returns what it pushed out of that slot, to retire.
    pub fn restore(
        &mut self,
        keypair: K,
        local_index: u32,
        initiator: bool,
        birth: Duration,
        current: bool,
    ) -> Vec<Action> {
        let slot = Slot {
            keypair,
            local_index,
            initiator,
            birth,
        };
        let mut out = Vec::new();
        let old = if current {
            self.last_handshake_completed = Some(birth);
            self.session_derived(birth);
            self.keypairs.current.replace(slot)
        } else {
            self.keypairs.previous.replace(slot)
        };
        Self::retire(old.into_iter().collect(), &mut out);
        out
    }

    /// Feed one event; returns the actions to take now.
    pub fn handle(&mut self, now: Duration, event: Event<K>) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::HandshakeInitiationSent { jitter } => {
                self.last_sent_handshake = Some(now);
                self.traversal(now);
                self.send_keepalive = None;
                self.retransmit_handshake = Some(now + REKEY_TIMEOUT + clamp_jitter(jitter));
            }
            Event::HandshakeInitiationReceived => {
                self.new_handshake = None;
                self.traversal(now);
            }
            Event::HandshakeResponseSent {
                keypair,
                local_index,
            } => {
                self.traversal(now);
                self.send_keepalive = None;
                let evicted = self.keypairs.insert(Slot {
                    keypair,
                    local_index,
                    initiator: false,
                    birth: now,
                });
                Self::retire(evicted, &mut out);
                self.session_derived(now);
            }
            Event::HandshakeResponseReceived {
                keypair,
                local_index,
            } => {
                self.new_handshake = None;
                self.traversal(now);
                let evicted = self.keypairs.insert(Slot {
                    keypair,
                    local_index,
                    initiator: true,
                    birth: now,
                });
                Self::retire(evicted, &mut out);
                self.session_derived(now);
                self.handshake_complete(now);
                // Confirm the session to the responder right away: staged
                // packets if there are any, else a keepalive.
                out.push(Action::SendKeepalive);
            }
            Event::TransportSent { keepalive, jitter } => {
                self.traversal(now);
                self.send_keepalive = None;
                if !keepalive && self.new_handshake.is_none() {
                    self.new_handshake =
                        Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + clamp_jitter(jitter));
                }
                self.keep_key_fresh_on_send(now, &mut out);
            }
            Event::TransportReceived {
                local_index,
                keepalive,
            } => {
                let (confirmed, evicted) = self.keypairs.received_with(local_index);
                Self::retire(evicted, &mut out);
                if confirmed {
                    self.handshake_complete(now);
                    out.push(Action::SendStaged);
                }
                self.keep_key_fresh_on_receive(now, &mut out);
                self.new_handshake = None;
                self.traversal(now);
                if !keepalive {
                    if self.send_keepalive.is_none() {
                        self.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
                    } else {
                        self.need_another_keepalive = true;
                    }
                }
            }
            Event::WantToSend => {
                if self.sending_keypair(now).is_some() {
                    out.push(Action::SendStaged);
                } else {
                    self.request_handshake(now, false, &mut out);
                }
            }
        }
        out
    }

    /// After sending: rekey if the current keypair has sent
    /// REKEY_AFTER_MESSAGES, or (initiator only) is REKEY_AFTER_TIME old.
    fn keep_key_fresh_on_send(&mut self, now: Duration, out: &mut Vec<Action>) {
        let stale = self.keypairs.current().is_some_and(|s| {
            s.keypair.messages_sent() > REKEY_AFTER_MESSAGES
                || (s.initiator && expired(s.birth, self.cfg.rekey_after_time, now))
        });
        if stale {
            self.request_handshake(now, false, out);
        }
    }

    /// After receiving: an initiator whose keypair is about to hit
    /// REJECT_AFTER_TIME (less the time a handshake takes) rekeys once, so a
    /// peer that only receives still gets a fresh session in time.
    fn keep_key_fresh_on_receive(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.sent_lastminute_handshake {
            return;
        }
        let age = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT;
        let stale = self
            .keypairs
            .current()
            .is_some_and(|s| s.initiator && expired(s.birth, age, now));
        if stale {
            self.sent_lastminute_handshake = true;
            self.request_handshake(now, false, out);
        }
    }

    /// Fire every timer due at `now` (each at most once per call).
    pub fn tick(&mut self, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        let due = |t: &mut Option<Duration>| match *t {
            Some(d) if d <= now => {
                *t = None;
                true
            }
            _ => false,
        };

        if due(&mut self.retransmit_handshake) {
            if self.handshake_attempts > MAX_TIMER_HANDSHAKES {
                // Give up: stop keepalives, drop what was waiting, and make
                // sure the keys do not linger.
                self.send_keepalive = None;
                out.push(Action::PurgeStaged);
                if self.zero_key_material.is_none() {
                    self.zero_key_material = Some(now + ZERO_KEYS_AFTER);
                }
            } else {
                self.handshake_attempts += 1;
                self.request_handshake(now, true, &mut out);
            }
        }
        if due(&mut self.send_keepalive) {
            out.push(Action::SendKeepalive);
            if self.need_another_keepalive {
                self.need_another_keepalive = false;
                self.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
            }
        }
        if due(&mut self.new_handshake) {
            self.request_handshake(now, false, &mut out);
        }
        if due(&mut self.zero_key_material) {
            let evicted = self.keypairs.clear();
            Self::retire(evicted, &mut out);
            out.push(Action::ClearHandshake);
        }
        if due(&mut self.persistent_keepalive) && self.cfg.persistent_keepalive.is_some() {
            out.push(Action::SendKeepalive);
        }
        out
    }
}

#[cfg(test)]
mod tests;
