//! Replay-window vectors (our own sequences exercising the same cases as the
//! driver's selftest: in order, out of order, duplicates, window edges,
//! ring wrap, the message limit), AEAD round trips, and property tests
//! against simple models.

use super::*;
use proptest::prelude::*;
use std::collections::HashSet;

const LIM: u64 = COUNTER_WINDOW_SIZE + 1;
const R: u64 = REJECT_AFTER_MESSAGES;

fn run(w: &mut ReplayWindow, steps: &[(u64, bool)]) {
    for (i, &(n, want)) in steps.iter().enumerate() {
        assert_eq!(w.would_accept(n), want, "pre-check, step {i}: counter {n}");
        assert_eq!(w.check_and_update(n), want, "step {i}: counter {n}");
    }
}

#[test]
fn window_constants() {
    assert_eq!(COUNTER_WINDOW_SIZE, 8128);
    assert_eq!(R, u64::MAX - 8192);
}

#[test]
fn replay_vectors_basic_and_edges() {
    let mut w = ReplayWindow::new();
    run(
        &mut w,
        &[
            (0, true),
            (0, false),
            (5, true),
            (3, true),
            (4, true),
            (4, false),
            (5, false),
            // Jump to exactly the window size: 0 is now just out of reach...
            (LIM, true),
            (LIM - 1, true),
            (LIM - 1, false),
            (1, true), // LIM - (LIM - 1): the oldest still inside
            (1, false),
            (LIM + 20, true),
            (6, false), // fell out when the window slid by 20
            (LIM + 20, false),
            // Far jump: everything behind is cleared, edges checked again.
            (LIM * 3, true),
            (LIM * 3 - (LIM - 1), true),
            (LIM * 3 - LIM, false),
            (LIM * 3 - (LIM + 1), false),
            (LIM * 3 - (LIM - 2), true),
            (LIM * 3 + 1 - LIM, false), // already taken (= LIM*3 - LIM + 1, seen above)
            (2, false),
        ],
    );
}

#[test]
fn replay_vectors_message_limit() {
    let mut w = ReplayWindow::new();
    run(
        &mut w,
        &[
            (R, false),
            (R + 7, false),
            (u64::MAX, false),
            (R - 1, true),
            (R - 1, false),
            (R, false),
            (R - 2, true),
            (R + 1, false),
            (R - 2, false),
            (R - 5, true),
            (0, false),
        ],
    );
}

#[test]
fn replay_full_window_forward_then_zero() {
    let mut w = ReplayWindow::new();
    for i in 1..=COUNTER_WINDOW_SIZE {
        assert!(w.check_and_update(i), "{i}");
    }
    // 0 is exactly at the trailing edge: still accepted, once.
    assert!(w.check_and_update(0));
    assert!(!w.check_and_update(0));

    let mut w = ReplayWindow::new();
    for i in 2..=COUNTER_WINDOW_SIZE + 1 {
        assert!(w.check_and_update(i), "{i}");
    }
    assert!(w.check_and_update(1));
    assert!(!w.check_and_update(0), "0 is one past the trailing edge");
}

#[test]
fn replay_full_window_backwards() {
    let mut w = ReplayWindow::new();
    for i in (0..=COUNTER_WINDOW_SIZE).rev() {
        assert!(w.check_and_update(i), "{i}");
    }
    let mut w = ReplayWindow::new();
    for i in (1..=COUNTER_WINDOW_SIZE + 1).rev() {
        assert!(w.check_and_update(i), "{i}");
    }
    assert!(!w.check_and_update(0));

    let mut w = ReplayWindow::new();
    for i in (1..=COUNTER_WINDOW_SIZE).rev() {
        assert!(w.check_and_update(i), "{i}");
    }
    assert!(w.check_and_update(COUNTER_WINDOW_SIZE + 1));
    assert!(!w.check_and_update(0));

    let mut w = ReplayWindow::new();
    for i in (1..=COUNTER_WINDOW_SIZE).rev() {
        assert!(w.check_and_update(i), "{i}");
    }
    assert!(w.check_and_update(0));
    assert!(w.check_and_update(COUNTER_WINDOW_SIZE + 1));
}

#[test]
fn ring_wrap_clears_stale_bits() {
    // Accept n, then jump exactly one ring (8192) ahead: the word that held
    // n's bit is reused and must have been cleared, so n + 8192 is fresh.
    let mut w = ReplayWindow::new();
    assert!(w.check_and_update(100));
    assert!(w.check_and_update(100 + COUNTER_BITS_TOTAL));
    assert!(!w.check_and_update(100 + COUNTER_BITS_TOTAL));
    assert!(!w.check_and_update(100));
}

/// Model: a set of accepted counters and the highest one; a counter is
/// acceptable if unseen, below the limit, and not more than the window
/// behind the highest. The driver's bitmap is exact for the 8128 counters
/// behind the top and may remember up to 63 more; the model checks only the
/// region where the semantics are exact.
#[derive(Default)]
struct Model {
    seen: HashSet<u64>,
    top: Option<u64>,
}

impl Model {
    fn accept(&mut self, n: u64) -> Option<bool> {
        if n >= R {
            return Some(false);
        }
        if let Some(top) = self.top {
            if n + COUNTER_WINDOW_SIZE < top {
                // Definitely too old for the driver (it refuses below top+1-window).
                return Some(false);
            }
        }
        let fresh = !self.seen.contains(&n);
        self.seen.insert(n);
        self.top = Some(self.top.map_or(n, |t| t.max(n)));
        Some(fresh)
    }
}

proptest! {
    #[test]
    fn replay_window_matches_model(
        start in prop_oneof![Just(0u64), 0u64..1_000_000, Just(R - 20_000)],
        steps in proptest::collection::vec((0i64..=20_000i64, any::<bool>()), 1..400)
    ) {
        let mut w = ReplayWindow::new();
        let mut m = Model::default();
        let mut cur = start as i64;
        for (delta, back) in steps {
            let n = if back { cur - delta / 4 } else { cur + delta / 2 };
            if n < 0 { continue; }
            let n = n as u64;
            cur = cur.max(n as i64);
            let want = m.accept(n).unwrap();
            prop_assert_eq!(w.would_accept(n), want, "pre-check {}", n);
            prop_assert_eq!(w.check_and_update(n), want, "counter {}", n);
        }
    }

    #[test]
    fn seal_open_round_trip(
        key in any::<[u8; 32]>(),
        idx in any::<u32>(),
        counter in prop_oneof![0u64..1000, (R - 1000)..R],
        payload in proptest::collection::vec(any::<u8>(), 0..1500),
        mtu in 1280usize..1500
    ) {
        let tx = SendingKey::new(&key, idx);
        let rx = ReceivingKey::new(&key, idx);
        let mut msg = Vec::new();
        tx.seal(counter, &payload, mtu, &mut msg).unwrap();
        prop_assert_eq!(msg.len(), message_len(payload.len(), mtu));
        prop_assert!(msg.len() >= TRANSPORT_MIN_LEN);
        let mut out = Vec::new();
        let hdr = rx.open(&msg, &mut out).unwrap();
        prop_assert_eq!(hdr.counter, counter);
        prop_assert_eq!(hdr.receiver_index, idx);
        prop_assert_eq!(&out[..payload.len()], &payload[..]);
        prop_assert!(out[payload.len()..].iter().all(|&b| b == 0));
        // Any single flipped bit after the header breaks the tag.
        let mut bad = msg.clone();
        let at = TRANSPORT_HEADER_LEN + (payload.len() % (msg.len() - TRANSPORT_HEADER_LEN));
        bad[at] ^= 0x40;
        prop_assert_eq!(rx.open(&bad, &mut out), Err(SessionError::DecryptFailed));
        // So does a different counter in the header (it is the nonce).
        let mut bad = msg.clone();
        bad[8] ^= 1;
        prop_assert!(rx.open(&bad, &mut out).is_err());
    }
}

#[test]
fn padding_rules() {
    assert_eq!(padded_len(0, 1420), 0, "keepalive stays empty");
    assert_eq!(padded_len(1, 1420), 16);
    assert_eq!(padded_len(16, 1420), 16);
    assert_eq!(padded_len(17, 1420), 32);
    // Not past the MTU: a full 1420-byte packet is not padded to 1424.
    assert_eq!(padded_len(1420, 1420), 1420);
    assert_eq!(padded_len(1419, 1420), 1420);
    assert_eq!(padded_len(1500, 1420), 1500);
    assert_eq!(message_len(0, 1420), 32);
}

#[test]
fn session_pair_keepalive_replay_and_counter_limit() {
    let a_key = [1u8; 32];
    let b_key = [2u8; 32];
    let tx = SendingKey::new(&a_key, 7);
    let mut rx = Session {
        sending: SendingKey::new(&b_key, 9),
        receiving: ReceivingKey::new(&a_key, 7),
        send_counter: AtomicU64::new(0),
        replay: ReplayWindow::new(),
        initiator: false,
    };
    let shared = AtomicU64::new(0);
    let mut msg = Vec::new();
    let mut out = Vec::new();
    assert_eq!(tx.seal_next(&shared, &[], 1420, &mut msg).unwrap(), 0);
    assert_eq!(msg.len(), 32);
    let o = rx.open(&msg, &mut out).unwrap();
    assert!(o.keepalive && o.counter == 0);
    assert_eq!(rx.open(&msg, &mut out), Err(SessionError::Replayed(0)));
    assert_eq!(tx.seal_next(&shared, b"hello", 1420, &mut msg).unwrap(), 1);
    assert_eq!(shared.load(Ordering::Relaxed), 2);
    let o = rx.open(&msg, &mut out).unwrap();
    assert_eq!(&out[..5], b"hello");
    assert_eq!(o.len, 16);

    // The sender refuses to seal at the limit; the receiver refuses it too.
    let at_limit = AtomicU64::new(R);
    assert_eq!(
        tx.seal_next(&at_limit, b"x", 1420, &mut msg),
        Err(SessionError::CounterExhausted(R))
    );
    tx.seal(R - 1, b"x", 1420, &mut msg).unwrap();
    assert!(rx.open(&msg, &mut out).is_ok());
    msg[8..16].copy_from_slice(&R.to_le_bytes());
    assert_eq!(rx.open(&msg, &mut out), Err(SessionError::Replayed(R)));
    assert_eq!(
        rx.receiving.open(&msg, &mut out),
        Err(SessionError::CounterExhausted(R))
    );

    // Wrong receiver index is reported as such.
    tx.seal(5, b"x", 1420, &mut msg).unwrap();
    msg[4] ^= 1;
    assert!(matches!(
        rx.receiving.open(&msg, &mut out),
        Err(SessionError::WrongReceiver { .. })
    ));
}

#[test]
fn parse_transport_rejects_bad_framing() {
    assert_eq!(parse_transport(&[4u8; 31]), Err(SessionError::TooShort(31)));
    let mut m = [0u8; 32];
    m[0] = 1;
    assert_eq!(parse_transport(&m), Err(SessionError::NotTransport(1)));
    m[0] = 4;
    m[2] = 1;
    assert_eq!(parse_transport(&m), Err(SessionError::ReservedNotZero));
    // 33 bytes (not a multiple of 16) is legal framing.
    let mut m33 = [0u8; 33];
    m33[0] = 4;
    assert!(parse_transport(&m33).is_ok());
}

#[test]
fn inner_packet_length() {
    let mut v4 = vec![0u8; 48];
    v4[0] = 0x45;
    v4[2..4].copy_from_slice(&40u16.to_be_bytes());
    assert_eq!(inner_packet_len(&v4), Ok(40));
    v4[2..4].copy_from_slice(&49u16.to_be_bytes());
    assert!(matches!(
        inner_packet_len(&v4),
        Err(SessionError::BadInnerLength { .. })
    ));
    v4[2..4].copy_from_slice(&19u16.to_be_bytes());
    assert!(matches!(
        inner_packet_len(&v4),
        Err(SessionError::BadInnerLength { .. })
    ));
    let mut v6 = vec![0u8; 64];
    v6[0] = 0x60;
    v6[4..6].copy_from_slice(&8u16.to_be_bytes());
    assert_eq!(inner_packet_len(&v6), Ok(48));
    assert_eq!(inner_packet_len(&[0x45; 10]), Err(SessionError::NotIp));
    assert_eq!(inner_packet_len(&[]), Err(SessionError::NotIp));
    assert_eq!(inner_packet_len(&[0x10; 64]), Err(SessionError::NotIp));
}
