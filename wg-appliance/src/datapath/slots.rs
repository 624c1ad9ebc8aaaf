//! Slots of `SESSION_STATE`: which are in use, and when a freed one may be
//! given to a new session.
//!
//! A BPF program or a worker that looked a session up just before it was
//! removed may still touch its slot for a moment (BPF runs under RCU; a
//! worker re-checks `owner_index` per batch). Handing the slot to a new
//! session at once would let such a straggler take a counter of the new
//! session with the old key, or mark a counter of the new session as seen.
//! So a freed slot waits [`GRACE`] before it is reused; fresh slots are
//! used first.

use std::{
    collections::{HashSet, VecDeque},
    time::{Duration, Instant},
};

/// How long a freed slot rests before reuse: far longer than any BPF
/// program runs and than a worker's batch.
pub const GRACE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Slots {
    capacity: u32,
    /// Slots below this were handed out at some time (slot 0 never is).
    next_fresh: u32,
    in_use: HashSet<u32>,
    /// Freed slots, oldest first, with when they were freed.
    resting: VecDeque<(Instant, u32)>,
}

impl Slots {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            next_fresh: 1,
            in_use: HashSet::new(),
            resting: VecDeque::new(),
        }
    }

    /// After adopting a data path: `used` are the slots of the sessions in
    /// it; every other slot below the highest may have been freed just now
    /// by the previous daemon, so it rests.
    pub fn adopt(capacity: u32, used: impl IntoIterator<Item = u32>, now: Instant) -> Self {
        let mut s = Self::new(capacity);
        s.in_use = used
            .into_iter()
            .filter(|&x| x != 0 && x < capacity)
            .collect();
        s.next_fresh = s.in_use.iter().max().map_or(1, |m| m + 1);
        for x in 1..s.next_fresh {
            if !s.in_use.contains(&x) {
                s.resting.push_back((now, x));
            }
        }
        s
    }

    /// A slot for a new session, or None when all are in use or resting.
    pub fn take(&mut self, now: Instant) -> Option<u32> {
        let slot = if self.next_fresh < self.capacity {
            self.next_fresh += 1;
            self.next_fresh - 1
        } else {
            match self.resting.front() {
                Some(&(t, x)) if now.saturating_duration_since(t) >= GRACE => {
                    self.resting.pop_front();
                    x
                }
                _ => return None,
            }
        };
        self.in_use.insert(slot);
        Some(slot)
    }

    /// Gives `slot` back; it rests before reuse. Unknown slots are ignored.
    pub fn free(&mut self, slot: u32, now: Instant) {
        if self.in_use.remove(&slot) {
            self.resting.push_back((now, slot));
        }
    }

    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_first_then_rested_only_after_grace() {
        let t0 = Instant::now();
        let mut s = Slots::new(4);
        assert_eq!(s.take(t0), Some(1));
        assert_eq!(s.take(t0), Some(2));
        assert_eq!(s.take(t0), Some(3));
        assert_eq!(s.take(t0), None, "slot 0 is never given");
        s.free(2, t0);
        s.free(2, t0);
        assert_eq!(s.take(t0 + GRACE / 2), None, "still resting");
        assert_eq!(s.take(t0 + GRACE), Some(2));
        assert_eq!(s.take(t0 + GRACE), None);
        assert_eq!(s.in_use(), 3);
    }

    #[test]
    fn adopted_gaps_rest() {
        let t0 = Instant::now();
        let mut s = Slots::adopt(8, [3, 5], t0);
        assert_eq!(s.in_use(), 2);
        assert_eq!(s.take(t0), Some(6));
        assert_eq!(s.take(t0), Some(7));
        assert_eq!(s.take(t0), None, "1, 2, 4 rest");
        assert_eq!(s.take(t0 + GRACE), Some(1));
    }
}
