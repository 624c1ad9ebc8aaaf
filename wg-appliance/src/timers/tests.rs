//! Each timer rule against a fake clock. Every test pins the exact instant a
//! rule fires (one tick before: nothing; at it: the action), so a wrong
//! constant or a wrong rule fails a test.

use super::*;
use std::cell::Cell;
use std::rc::Rc;

/// A keypair stand-in whose message count the test controls.
#[derive(Debug, Clone, Default)]
struct Fake(Rc<Cell<u64>>);
impl SendCounter for Fake {
    fn messages_sent(&self) -> u64 {
        self.0.get()
    }
}

const MS: Duration = Duration::from_millis(1);
const T0: Duration = Duration::from_secs(10_000);

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn timers() -> PeerTimers<Fake> {
    PeerTimers::new(TimerConfig::default())
}

/// Initiator with a fresh current keypair (index 1) born at T0.
fn established_initiator(cfg: TimerConfig) -> (PeerTimers<Fake>, Fake) {
    let mut p = PeerTimers::new(cfg);
    let k = Fake::default();
    p.handle(
        T0,
        Event::HandshakeInitiationSent {
            jitter: Duration::ZERO,
        },
    );
    let a = p.handle(
        T0,
        Event::HandshakeResponseReceived {
            keypair: k.clone(),
            local_index: 1,
        },
    );
    assert_eq!(a, vec![Action::SendKeepalive]);
    (p, k)
}

#[test]
fn constants_are_the_protocols() {
    assert_eq!(REKEY_AFTER_TIME, s(120));
    assert_eq!(REJECT_AFTER_TIME, s(180));
    assert_eq!(REKEY_ATTEMPT_TIME, s(90));
    assert_eq!(REKEY_TIMEOUT, s(5));
    assert_eq!(KEEPALIVE_TIMEOUT, s(10));
    assert_eq!(MAX_TIMER_HANDSHAKES, 18);
    assert_eq!(ZERO_KEYS_AFTER, s(540));
    assert_eq!(REKEY_AFTER_MESSAGES, 1 << 60);
}

#[test]
fn first_packet_triggers_one_initiation_then_rate_limited() {
    let mut p = timers();
    assert_eq!(
        p.handle(T0, Event::WantToSend),
        vec![Action::SendHandshakeInitiation]
    );
    p.handle(
        T0,
        Event::HandshakeInitiationSent {
            jitter: Duration::ZERO,
        },
    );
    // More packets within REKEY_TIMEOUT: no new initiation.
    assert!(p.handle(T0 + s(5) - MS, Event::WantToSend).is_empty());
    assert_eq!(
        p.handle(T0 + s(5), Event::WantToSend),
        vec![Action::SendHandshakeInitiation]
    );
}

#[test]
fn retransmit_after_rekey_timeout_plus_jitter() {
    let mut p = timers();
    p.handle(T0, Event::HandshakeInitiationSent { jitter: 200 * MS });
    assert_eq!(p.next_deadline(), Some(T0 + s(5) + 200 * MS));
    assert!(p.tick(T0 + s(5) + 199 * MS).is_empty());
    assert_eq!(
        p.tick(T0 + s(5) + 200 * MS),
        vec![Action::SendHandshakeInitiation]
    );
    assert_eq!(p.handshake_attempts(), 1);
    // Jitter is clamped to 333 ms.
    let mut p = timers();
    p.handle(T0, Event::HandshakeInitiationSent { jitter: s(3) });
    assert_eq!(p.next_deadline(), Some(T0 + s(5) + 333 * MS));
}

#[test]
fn gives_up_after_max_attempts_and_schedules_zeroing() {
    let mut p = timers();
    let mut now = T0;
    p.handle(
        now,
        Event::HandshakeInitiationSent {
            jitter: Duration::ZERO,
        },
    );
    let mut retries = 0;
    loop {
        now += REKEY_TIMEOUT;
        let a = p.tick(now);
        if a == vec![Action::SendHandshakeInitiation] {
            retries += 1;
            p.handle(
                now,
                Event::HandshakeInitiationSent {
                    jitter: Duration::ZERO,
                },
            );
            continue;
        }
        assert_eq!(a, vec![Action::PurgeStaged]);
        break;
    }
    // As the driver: give up once attempts exceed 90 / 5 = 18.
    assert_eq!(retries, MAX_TIMER_HANDSHAKES + 1);
    assert_eq!(now - T0, REKEY_TIMEOUT * (MAX_TIMER_HANDSHAKES + 2));
    assert_eq!(p.next_deadline(), Some(now + s(540)));
    assert!(p.tick(now + s(540) - MS).is_empty());
    assert_eq!(p.tick(now + s(540)), vec![Action::ClearHandshake]);
}

#[test]
fn handshake_completion_stops_retransmits() {
    let (mut p, _) = established_initiator(TimerConfig::default());
    assert!(p.tick(T0 + s(6)).is_empty());
    assert_eq!(p.last_handshake(), Some(T0));
}

#[test]
fn passive_keepalive_after_receiving_data_and_sending_nothing() {
    let (mut p, _) = established_initiator(TimerConfig::default());
    p.handle(
        T0,
        Event::TransportSent {
            keepalive: true,
            jitter: Duration::ZERO,
        },
    );
    p.handle(
        T0 + s(1),
        Event::TransportReceived {
            local_index: 1,
            keepalive: false,
        },
    );
    assert!(p.tick(T0 + s(11) - MS).is_empty());
    assert_eq!(p.tick(T0 + s(11)), vec![Action::SendKeepalive]);
    // Sending anything in between cancels it.
    p.handle(
        T0 + s(20),
        Event::TransportReceived {
            local_index: 1,
            keepalive: false,
        },
    );
    p.handle(
        T0 + s(25),
        Event::TransportSent {
            keepalive: false,
            jitter: Duration::ZERO,
        },
    );
    assert!(!p.tick(T0 + s(31)).contains(&Action::SendKeepalive));
    // A received keepalive does not ask for one back.
    p.handle(
        T0 + s(40),
        Event::TransportReceived {
            local_index: 1,
            keepalive: true,
        },
    );
    assert!(!p.tick(T0 + s(51)).contains(&Action::SendKeepalive));
}

#[test]
fn new_handshake_when_sent_data_gets_no_answer() {
    let (mut p, _) = established_initiator(TimerConfig::default());
    p.handle(
        T0 + s(1),
        Event::TransportSent {
            keepalive: false,
            jitter: 100 * MS,
        },
    );
    let due = T0 + s(1) + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 100 * MS;
    assert!(p.tick(due - MS).is_empty());
    assert_eq!(p.tick(due), vec![Action::SendHandshakeInitiation]);
    // ...but any authenticated packet received cancels it.
    p.handle(
        T0 + s(30),
        Event::TransportSent {
            keepalive: false,
            jitter: Duration::ZERO,
        },
    );
    p.handle(
        T0 + s(31),
        Event::TransportReceived {
            local_index: 1,
            keepalive: true,
        },
    );
    assert!(p.tick(T0 + s(60)).is_empty());
}

#[test]
fn initiator_rekeys_after_rekey_after_time_on_send() {
    let (mut p, _) = established_initiator(TimerConfig::default());
    let sent = |p: &mut PeerTimers<Fake>, t| {
        p.handle(
            t,
            Event::TransportSent {
                keepalive: true,
                jitter: Duration::ZERO,
            },
        )
    };
    assert!(sent(&mut p, T0 + s(120) - MS).is_empty());
    assert_eq!(
        sent(&mut p, T0 + s(120)),
        vec![Action::SendHandshakeInitiation]
    );
}

#[test]
fn rekey_after_time_is_configurable_for_tests() {
    let cfg = TimerConfig {
        rekey_after_time: s(2),
        ..TimerConfig::default()
    };
    let (mut p, _) = established_initiator(cfg);
    // The rate limit still applies (REKEY_TIMEOUT since the last initiation).
    assert_eq!(
        p.handle(
            T0 + s(5),
            Event::TransportSent {
                keepalive: true,
                jitter: Duration::ZERO
            }
        ),
        vec![Action::SendHandshakeInitiation]
    );
    assert_eq!(REKEY_AFTER_TIME, s(120), "the constant is untouched");
}

#[test]
fn responder_does_not_rekey_on_time_when_sending() {
    let mut p = timers();
    p.handle(T0, Event::HandshakeInitiationReceived);
    p.handle(
        T0,
        Event::HandshakeResponseSent {
            keypair: Fake::default(),
            local_index: 9,
        },
    );
    p.handle(
        T0 + s(1),
        Event::TransportReceived {
            local_index: 9,
            keepalive: true,
        },
    );
    let a = p.handle(
        T0 + s(150),
        Event::TransportSent {
            keepalive: true,
            jitter: Duration::ZERO,
        },
    );
    assert!(a.is_empty(), "{a:?}");
}

#[test]
fn rekey_after_messages_either_role() {
    let (mut p, k) = established_initiator(TimerConfig::default());
    k.0.set(REKEY_AFTER_MESSAGES);
    assert!(p
        .handle(
            T0 + s(6),
            Event::TransportSent {
                keepalive: true,
                jitter: Duration::ZERO
            }
        )
        .is_empty());
    k.0.set(REKEY_AFTER_MESSAGES + 1);
    assert_eq!(
        p.handle(
            T0 + s(6),
            Event::TransportSent {
                keepalive: true,
                jitter: Duration::ZERO
            }
        ),
        vec![Action::SendHandshakeInitiation]
    );
}

#[test]
fn reject_after_time_and_messages_make_keys_unusable() {
    let (mut p, k) = established_initiator(TimerConfig::default());
    assert!(p.sending_keypair(T0 + s(180) - MS).is_some());
    assert!(p.sending_keypair(T0 + s(180)).is_none());
    assert!(p.receiving_keypair(1, T0 + s(180) - MS).is_some());
    assert!(p.receiving_keypair(1, T0 + s(180)).is_none());
    // With no usable keypair, a packet to send asks for a handshake.
    assert_eq!(
        p.handle(T0 + s(180), Event::WantToSend),
        vec![Action::SendHandshakeInitiation]
    );

    k.0.set(REJECT_AFTER_MESSAGES - 1);
    assert!(p.sending_keypair(T0 + s(1)).is_some());
    k.0.set(REJECT_AFTER_MESSAGES);
    assert!(p.sending_keypair(T0 + s(1)).is_none());
}

#[test]
fn last_minute_rekey_on_receive_only_once() {
    let (mut p, _) = established_initiator(TimerConfig::default());
    let recv = |p: &mut PeerTimers<Fake>, t| {
        p.handle(
            t,
            Event::TransportReceived {
                local_index: 1,
                keepalive: true,
            },
        )
    };
    // REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT = 165 s.
    assert!(recv(&mut p, T0 + s(165) - MS).is_empty());
    assert_eq!(
        recv(&mut p, T0 + s(165)),
        vec![Action::SendHandshakeInitiation]
    );
    assert!(recv(&mut p, T0 + s(171)).is_empty());
}

#[test]
fn keys_zeroed_three_reject_times_after_last_session() {
    let (mut p, _) = established_initiator(TimerConfig::default());
    assert!(!p.tick(T0 + s(540) - MS).contains(&Action::ClearHandshake));
    assert_eq!(
        p.tick(T0 + s(540)),
        vec![Action::Retire(1), Action::ClearHandshake]
    );
    assert!(p.keypairs.current().is_none());
}

#[test]
fn responder_waits_for_confirmation_before_sending() {
    let mut p = timers();
    p.handle(T0, Event::HandshakeInitiationReceived);
    let a = p.handle(
        T0,
        Event::HandshakeResponseSent {
            keypair: Fake::default(),
            local_index: 5,
        },
    );
    assert!(a.is_empty());
    assert!(
        p.sending_keypair(T0).is_none(),
        "next keypair is not for sending yet"
    );
    assert!(p.receiving_keypair(5, T0).is_some(), "but it can receive");
    assert_eq!(
        p.handle(T0, Event::WantToSend),
        vec![Action::SendHandshakeInitiation]
    );
    // A packet on another index confirms nothing.
    assert!(p
        .handle(
            T0 + s(1),
            Event::TransportReceived {
                local_index: 6,
                keepalive: true
            }
        )
        .is_empty());
    let a = p.handle(
        T0 + s(1),
        Event::TransportReceived {
            local_index: 5,
            keepalive: true,
        },
    );
    assert_eq!(a, vec![Action::SendStaged]);
    assert_eq!(p.sending_keypair(T0 + s(1)).map(|s| s.local_index), Some(5));
    assert_eq!(p.last_handshake(), Some(T0 + s(1)));
}

#[test]
fn keypair_rotation_slots() {
    let (mut p, _) = established_initiator(TimerConfig::default());
    // Initiator rekey: 1 → previous, 2 current.
    p.handle(
        T0 + s(120),
        Event::HandshakeInitiationSent {
            jitter: Duration::ZERO,
        },
    );
    let a = p.handle(
        T0 + s(120),
        Event::HandshakeResponseReceived {
            keypair: Fake::default(),
            local_index: 2,
        },
    );
    assert_eq!(a, vec![Action::SendKeepalive]);
    assert_eq!(p.keypairs.current().map(|s| s.local_index), Some(2));
    assert_eq!(p.keypairs.previous().map(|s| s.local_index), Some(1));
    // Another: 1 is retired.
    let a = p.handle(
        T0 + s(240),
        Event::HandshakeResponseReceived {
            keypair: Fake::default(),
            local_index: 3,
        },
    );
    assert_eq!(a, vec![Action::Retire(1), Action::SendKeepalive]);
    // Now the peer initiates: 4 goes to next, previous (2) is dropped.
    let a = p.handle(
        T0 + s(250),
        Event::HandshakeResponseSent {
            keypair: Fake::default(),
            local_index: 4,
        },
    );
    assert_eq!(a, vec![Action::Retire(2)]);
    assert_eq!(p.keypairs.current().map(|s| s.local_index), Some(3));
    assert_eq!(p.keypairs.next().map(|s| s.local_index), Some(4));
    // Confirmed: 4 current, 3 previous.
    p.handle(
        T0 + s(251),
        Event::TransportReceived {
            local_index: 4,
            keepalive: false,
        },
    );
    assert_eq!(p.keypairs.current().map(|s| s.local_index), Some(4));
    assert_eq!(p.keypairs.previous().map(|s| s.local_index), Some(3));
    assert!(p.keypairs.next().is_none());
    // Crossing handshakes: a pending next (6) becomes previous when our own
    // initiation (7) completes, and current (4) is dropped, as the driver.
    p.handle(
        T0 + s(300),
        Event::HandshakeResponseSent {
            keypair: Fake::default(),
            local_index: 6,
        },
    );
    let a = p.handle(
        T0 + s(300),
        Event::HandshakeResponseReceived {
            keypair: Fake::default(),
            local_index: 7,
        },
    );
    assert_eq!(a, vec![Action::Retire(4), Action::SendKeepalive]);
    assert_eq!(p.keypairs.current().map(|s| s.local_index), Some(7));
    assert_eq!(p.keypairs.previous().map(|s| s.local_index), Some(6));
}

#[test]
fn persistent_keepalive_after_any_traffic() {
    let mut p = timers();
    assert_eq!(
        p.set_persistent_keepalive(Some(s(25)), T0),
        vec![Action::SendKeepalive]
    );
    p.handle(
        T0,
        Event::TransportSent {
            keepalive: true,
            jitter: Duration::ZERO,
        },
    );
    assert!(p.tick(T0 + s(25) - MS).is_empty());
    assert_eq!(p.tick(T0 + s(25)), vec![Action::SendKeepalive]);
    // Traffic pushes it back.
    p.handle(
        T0 + s(30),
        Event::TransportReceived {
            local_index: 99,
            keepalive: true,
        },
    );
    assert!(p.tick(T0 + s(54)).is_empty());
    assert_eq!(p.tick(T0 + s(55)), vec![Action::SendKeepalive]);
    // Off: no more.
    p.set_persistent_keepalive(None, T0 + s(56));
    p.handle(
        T0 + s(56),
        Event::TransportSent {
            keepalive: true,
            jitter: Duration::ZERO,
        },
    );
    assert!(p.tick(T0 + s(200)).is_empty());
}

#[test]
fn restored_keypair_rekeys_on_its_real_age() {
    let mut t: PeerTimers<Fake> = PeerTimers::new(TimerConfig::default());
    let birth = Duration::from_secs(1000);
    // Restored 119 s after its birth: sending does not rekey yet...
    assert!(t.restore(Fake::default(), 7, true, birth, true).is_empty());
    let now = birth + REKEY_AFTER_TIME - Duration::from_secs(1);
    let a = t.handle(
        now,
        Event::TransportSent {
            keepalive: false,
            jitter: Duration::ZERO,
        },
    );
    assert!(!a.contains(&Action::SendHandshakeInitiation), "{a:?}");
    // ...at REKEY_AFTER_TIME it does, as for a keypair derived here.
    let now = birth + REKEY_AFTER_TIME;
    let a = t.handle(
        now,
        Event::TransportSent {
            keepalive: false,
            jitter: Duration::ZERO,
        },
    );
    assert!(a.contains(&Action::SendHandshakeInitiation), "{a:?}");
    assert_eq!(t.keypairs.current().map(|s| s.local_index), Some(7));
}
