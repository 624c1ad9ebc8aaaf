//! The receive replay window of a BPF session, with the semantics of the
//! kernel driver's `counter_validate` (drivers/net/wireguard/receive.c):
//! a ring of `REPLAY_BITS_TOTAL` bits, `next` one more than the greatest
//! counter accepted, counters up to `REPLAY_WINDOW` behind `next` still
//! accepted once, and nothing at or beyond `REJECT_AFTER_MESSAGES`.
//!
//! Split in two because the data path must not touch the window before the
//! Poly1305 tag has verified: [`precheck`] (read-only, before decrypting)
//! and [`update`] (after). The bit is set with an atomic fetch-or, so two
//! CPUs that both passed the pre-check for the same counter cannot both win
//! the update. Advancing `next` is a plain store: two CPUs advancing at once
//! can at worst forget a few bits they cleared for each other, which only
//! rejects (never accepts twice) a packet inside the window; per-peer
//! steering (the default) keeps a session on one CPU and so has no race.

use crate::{
    maps::{REPLAY_BITS_TOTAL, REPLAY_WINDOW, REPLAY_WORDS},
    REJECT_AFTER_MESSAGES,
};

const WORD_MASK: u64 = (REPLAY_WORDS as u64) - 1;

/// Cheap check before decryption: false if `counter` is certainly a replay
/// or too old.
#[inline(always)]
pub fn precheck(next: u64, bitmap: &[u64; REPLAY_WORDS], counter: u64) -> bool {
    if next > REJECT_AFTER_MESSAGES || counter >= REJECT_AFTER_MESSAGES {
        return false;
    }
    let c = counter + 1;
    if REPLAY_WINDOW + c < next {
        return false;
    }
    if c > next {
        return true;
    }
    let word = ((c >> 6) & WORD_MASK) as usize;
    let bit = 1u64 << (c & 63);
    match bitmap.get(word) {
        Some(w) => *w & bit == 0,
        None => false,
    }
}

/// Records `counter` as received after its tag verified. Returns false when
/// it must be dropped (replayed, too old, or past the message limit).
///
/// # Safety
/// `next` and `bitmap` must point into a live session (a map value), valid
/// for concurrent atomic access.
#[inline(always)]
pub unsafe fn update(next: *mut u64, bitmap: *mut [u64; REPLAY_WORDS], counter: u64) -> bool {
    // SAFETY: caller guarantees validity.
    let cur = unsafe { core::ptr::read_volatile(next) };
    if cur > REJECT_AFTER_MESSAGES || counter >= REJECT_AFTER_MESSAGES {
        return false;
    }
    let c = counter + 1;
    if REPLAY_WINDOW + c < cur {
        return false;
    }
    let index = c >> 6;
    if c > cur {
        let index_current = cur >> 6;
        let mut top = index - index_current;
        if top > REPLAY_BITS_TOTAL / 64 {
            top = REPLAY_BITS_TOTAL / 64;
        }
        let mut i = 1u64;
        while i <= top && i <= REPLAY_WORDS as u64 {
            let w = ((i + index_current) & WORD_MASK) as usize;
            // SAFETY: w < REPLAY_WORDS by the mask.
            unsafe { (*bitmap)[w] = 0 };
            i += 1;
        }
        // SAFETY: caller guarantees validity.
        unsafe { core::ptr::write_volatile(next, c) };
    }
    let w = (index & WORD_MASK) as usize;
    let bit = 1u64 << (c & 63);
    // SAFETY: w < REPLAY_WORDS; the word is 8-byte aligned inside the map value.
    unsafe { crate::atomic::fetch_or_u64(&mut (*bitmap)[w], bit) & bit == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct W {
        next: u64,
        bitmap: [u64; REPLAY_WORDS],
    }

    impl W {
        fn new() -> Self {
            Self {
                next: 0,
                bitmap: [0; REPLAY_WORDS],
            }
        }
        fn accept(&mut self, c: u64) -> bool {
            let pre = precheck(self.next, &self.bitmap, c);
            let upd = unsafe { update(&mut self.next, &mut self.bitmap, c) };
            // The pre-check may only be more permissive than the update,
            // never less.
            assert!(pre || !upd, "precheck rejected {c} that update accepted");
            upd
        }
    }

    /// The cases of the kernel driver's counter self-test, written afresh.
    #[test]
    fn kernel_counter_semantics() {
        let mut w = W::new();
        let t = REPLAY_WINDOW;
        assert!(w.accept(0));
        assert!(!w.accept(0));
        assert!(w.accept(1));
        assert!(!w.accept(1));
        assert!(w.accept(9));
        assert!(w.accept(8));
        assert!(w.accept(7));
        assert!(!w.accept(7));
        assert!(w.accept(t + 1));
        assert!(w.accept(t));
        assert!(!w.accept(0), "counter 0 fell out of the window");
        assert!(w.accept(t + 10));
        assert!(!w.accept(9), "window moved past 9");
        assert!(w.accept(2 * t + 20));
        assert!(!w.accept(t + 10));
        assert!(w.accept(t + 21), "still inside the window");
        assert!(!w.accept(t + 19), "just outside");
        assert!(w.accept(t + 20), "the oldest counter still inside");
        assert!(!w.accept(REJECT_AFTER_MESSAGES));
        assert!(w.accept(REJECT_AFTER_MESSAGES - 1));
        assert!(!w.accept(REJECT_AFTER_MESSAGES - 1));
        assert!(!w.accept(5), "nothing after the limit");
    }

    #[test]
    fn every_counter_once_in_reverse_within_window() {
        let mut w = W::new();
        let n = REPLAY_WINDOW;
        for c in (0..n).rev() {
            assert!(w.accept(c), "{c}");
        }
        for c in 0..n {
            assert!(!w.accept(c), "{c} twice");
        }
    }

    #[test]
    fn big_jumps_clear_the_ring() {
        let mut w = W::new();
        for c in 0..200 {
            assert!(w.accept(c));
        }
        let far = 1_000_000;
        assert!(w.accept(far));
        for c in (far - REPLAY_WINDOW + 1)..far {
            if c % 97 == 0 {
                assert!(w.accept(c), "{c} inside the window after a jump");
            }
        }
    }
}
