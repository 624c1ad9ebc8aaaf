//! Handshake tests between two instances of our own implementation; the
//! cross-implementation checks against boringtun live in `interop.rs`.

use super::*;
use crate::session::Session;
use rand_core::OsRng;

struct Side {
    id: Identity,
    hs: Handshake,
}

fn pair(psk: Option<[u8; 32]>) -> (Side, Side) {
    let a = Identity::new(&PrivateKey::generate());
    let b = Identity::new(&PrivateKey::generate());
    let ha = Handshake::new(&a, *b.public_key(), psk.map(PresharedKey::from_bytes));
    let hb = Handshake::new(&b, *a.public_key(), psk.map(PresharedKey::from_bytes));
    (Side { id: a, hs: ha }, Side { id: b, hs: hb })
}

fn ts(secs: u64) -> Tai64N {
    Tai64N::from_unix(1_700_000_000 + secs, 0)
}

fn t(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Full handshake; returns (initiator keypair, responder keypair).
fn handshake(a: &mut Side, b: &mut Side, when: u64) -> (Keypair, Keypair) {
    let init =
        a.hs.create_initiation(&mut OsRng, ts(when), 0x100 + when as u32, t(when * 1000))
            .unwrap();
    let opened = open_initiation(&b.id, &init).unwrap();
    assert_eq!(opened.peer_public(), a.id.public_key());
    b.hs.consume_initiation(opened, t(when * 1000)).unwrap();
    let (resp, kb) =
        b.hs.create_response(&mut OsRng, 0x200 + when as u32, t(when * 1000))
            .unwrap();
    let ka = a.hs.consume_response(&resp).unwrap();
    (ka, kb)
}

#[test]
fn constants_hash_to_the_known_initial_chaining_key() {
    // HASH(CONSTRUCTION) is a well-known value (it starts every WireGuard
    // handshake; e.g. the driver precomputes it as handshake_init_chaining_key).
    let (ck, _) = initial_chain();
    assert_eq!(
        ck,
        [
            0x60, 0xe2, 0x6d, 0xae, 0xf3, 0x27, 0xef, 0xc0, 0x2e, 0xc3, 0x35, 0xe2, 0xa0, 0x25,
            0xd2, 0xd0, 0x16, 0xeb, 0x42, 0x06, 0xf8, 0x72, 0x77, 0xf5, 0x2d, 0x38, 0xd1, 0x98,
            0x8b, 0x78, 0xcd, 0x36
        ]
    );
}

#[test]
fn handshake_round_trip_with_and_without_psk() {
    for psk in [None, Some([9u8; 32])] {
        let (mut a, mut b) = pair(psk);
        let (ka, kb) = handshake(&mut a, &mut b, 1);
        assert_eq!(ka.sending_key(), kb.receiving_key());
        assert_eq!(ka.receiving_key(), kb.sending_key());
        assert_ne!(ka.sending_key(), ka.receiving_key());
        assert!(ka.is_initiator() && !kb.is_initiator());
        assert_eq!(ka.remote_index(), kb.local_index());
        assert_eq!(kb.remote_index(), ka.local_index());
        assert_eq!(a.hs.state(), HandshakeState::Zeroed);
        assert_eq!(b.hs.state(), HandshakeState::Zeroed);

        // Data flows both ways with the derived keys.
        let sa = Session::new(&ka);
        let mut sb = Session::new(&kb);
        let (mut m, mut out) = (Vec::new(), Vec::new());
        sa.seal(b"ping", 1420, &mut m).unwrap();
        sb.open(&m, &mut out).unwrap();
        assert_eq!(&out[..4], b"ping");
    }
}

#[test]
fn mismatched_psk_fails_at_the_response() {
    let a = Identity::new(&PrivateKey::generate());
    let b = Identity::new(&PrivateKey::generate());
    let mut ha = Handshake::new(&a, *b.public_key(), Some(PresharedKey::from_bytes([1; 32])));
    let mut hb = Handshake::new(&b, *a.public_key(), None);
    let init = ha.create_initiation(&mut OsRng, ts(1), 1, t(0)).unwrap();
    hb.consume_initiation(open_initiation(&b, &init).unwrap(), t(0))
        .unwrap();
    let (resp, _) = hb.create_response(&mut OsRng, 2, t(0)).unwrap();
    assert_eq!(
        ha.consume_response(&resp).unwrap_err(),
        NoiseError::DecryptFailed
    );
    // The failed response did not destroy the initiation in flight.
    assert_eq!(ha.state(), HandshakeState::CreatedInitiation);
}

#[test]
fn initiation_for_someone_else_does_not_open() {
    let (mut a, _b) = pair(None);
    let stranger = Identity::new(&PrivateKey::generate());
    let init = a.hs.create_initiation(&mut OsRng, ts(1), 1, t(0)).unwrap();
    assert_eq!(
        open_initiation(&stranger, &init).unwrap_err(),
        NoiseError::DecryptFailed
    );
}

#[test]
fn replayed_or_old_initiation_is_rejected() {
    let (mut a, mut b) = pair(None);
    let init = a.hs.create_initiation(&mut OsRng, ts(10), 1, t(0)).unwrap();
    b.hs.consume_initiation(open_initiation(&b.id, &init).unwrap(), t(0))
        .unwrap();
    // Exact replay, long after the flood limit: refused by the timestamp.
    let again = open_initiation(&b.id, &init).unwrap();
    assert_eq!(
        b.hs.consume_initiation(again, t(60_000)),
        Err(NoiseError::ReplayedTimestamp)
    );
    // A fresh initiation with an older timestamp: refused.
    let old = a.hs.create_initiation(&mut OsRng, ts(9), 2, t(0)).unwrap();
    let old = open_initiation(&b.id, &old).unwrap();
    assert_eq!(
        b.hs.consume_initiation(old, t(60_000)),
        Err(NoiseError::ReplayedTimestamp)
    );
    // Newer timestamp but within 20 ms of the last accepted one: flood.
    let soon = a.hs.create_initiation(&mut OsRng, ts(11), 3, t(0)).unwrap();
    let soon_o = open_initiation(&b.id, &soon).unwrap();
    assert_eq!(
        b.hs.consume_initiation(soon_o, t(19)),
        Err(NoiseError::InitiationTooSoon)
    );
    let soon_o = open_initiation(&b.id, &soon).unwrap();
    assert_eq!(b.hs.consume_initiation(soon_o, t(20)), Ok(()));
}

#[test]
fn tai64n_order_and_whitening() {
    let a = Tai64N::from_unix(100, 0);
    let b = Tai64N::from_unix(100, 16_777_215);
    let c = Tai64N::from_unix(100, 16_777_216);
    assert_eq!(a, b, "nanoseconds below 2^24 are whitened away");
    assert!(c > a);
    assert!(Tai64N::from_unix(101, 0) > Tai64N::from_unix(100, 999_999_999));
    assert_eq!(
        &a.to_bytes()[..8],
        &(0x4000_0000_0000_000au64 + 100).to_be_bytes()
    );
}

#[test]
fn response_checks_state_and_receiver_index() {
    let (mut a, mut b) = pair(None);
    let init =
        a.hs.create_initiation(&mut OsRng, ts(1), 0xaaaa, t(0))
            .unwrap();
    b.hs.consume_initiation(open_initiation(&b.id, &init).unwrap(), t(0))
        .unwrap();
    let (mut resp, _) = b.hs.create_response(&mut OsRng, 0xbbbb, t(0)).unwrap();
    assert_eq!(noise_receiver(&resp), 0xaaaa);
    // No response is possible twice.
    assert_eq!(
        b.hs.create_response(&mut OsRng, 1, t(0)).unwrap_err(),
        NoiseError::NothingToRespond
    );
    resp[8] ^= 1;
    assert!(matches!(
        a.hs.consume_response(&resp),
        Err(NoiseError::WrongReceiverIndex { .. })
    ));
    resp[8] ^= 1;
    resp[50] ^= 1; // corrupt the empty AEAD
    assert_eq!(
        a.hs.consume_response(&resp).unwrap_err(),
        NoiseError::DecryptFailed
    );
    resp[50] ^= 1;
    assert!(a.hs.consume_response(&resp).is_ok());
    assert_eq!(
        a.hs.consume_response(&resp).unwrap_err(),
        NoiseError::UnexpectedResponse
    );
}

fn noise_receiver(m: &[u8]) -> u32 {
    receiver_index(m).unwrap()
}

#[test]
fn wrong_peer_is_reported() {
    let (mut a, _) = pair(None);
    let b_id = Identity::new(&PrivateKey::generate());
    let c = PrivateKey::generate().public_key();
    // b's handshake state is for c, but a initiates to b.
    let mut a2 = Handshake::new(&a.id, *b_id.public_key(), None);
    let mut hb_for_c = Handshake::new(&b_id, c, None);
    let init = a2.create_initiation(&mut OsRng, ts(1), 1, t(0)).unwrap();
    let opened = open_initiation(&b_id, &init).unwrap();
    assert!(matches!(
        hb_for_c.consume_initiation(opened, t(0)),
        Err(NoiseError::WrongPeer { .. })
    ));
    let _ = &mut a.hs;
}

#[test]
fn low_order_peer_key_is_refused() {
    let a = Identity::new(&PrivateKey::generate());
    let mut h = Handshake::new(&a, PublicKey::from_bytes([0u8; 32]), None);
    assert_eq!(
        h.create_initiation(&mut OsRng, ts(1), 1, t(0)).unwrap_err(),
        NoiseError::NoStaticSharedSecret
    );
    // An initiation carrying a low-order ephemeral is refused, not panicked on.
    let (mut x, y) = pair(None);
    let mut init = x.hs.create_initiation(&mut OsRng, ts(1), 1, t(0)).unwrap();
    init[8..40].fill(0);
    assert_eq!(
        open_initiation(&y.id, &init).unwrap_err(),
        NoiseError::WeakPublicKey
    );
}

#[test]
fn message_parse_is_total() {
    assert!(matches!(
        Message::parse(&[]),
        Err(NoiseError::NotWireguard(_))
    ));
    assert_eq!(
        Message::parse(&[1, 0, 1, 0]),
        Err(NoiseError::ReservedNotZero)
    );
    assert!(matches!(
        Message::parse(&[1, 0, 0, 0]),
        Err(NoiseError::WrongLength { expected: 148, .. })
    ));
    assert!(matches!(
        Message::parse(&[9, 0, 0, 0]),
        Err(NoiseError::NotWireguard(9))
    ));
    let mut m = [0u8; 148];
    m[0] = 1;
    assert!(matches!(Message::parse(&m), Ok(Message::Initiation(_))));
    let mut m = [0u8; 92];
    m[0] = 2;
    assert!(matches!(Message::parse(&m), Ok(Message::Response(_))));
    let mut m = [0u8; 64];
    m[0] = 3;
    assert!(matches!(Message::parse(&m), Ok(Message::CookieReply(_))));
    let mut m = [0u8; 32];
    m[0] = 4;
    assert!(matches!(Message::parse(&m), Ok(Message::Transport(_))));
    assert!(Message::parse(&m[..31]).is_err());
    // Every truncation of a real initiation is a typed error.
    let (mut a, b) = pair(None);
    let init = a.hs.create_initiation(&mut OsRng, ts(1), 1, t(0)).unwrap();
    for n in 0..init.len() {
        assert!(open_initiation(&b.id, &init[..n]).is_err());
    }
    let mut wrong_type = init;
    wrong_type[0] = 2;
    assert_eq!(
        open_initiation(&b.id, &wrong_type).unwrap_err(),
        NoiseError::WrongType {
            expected: 1,
            got: 2
        }
    );
}

#[test]
fn rekey_produces_fresh_keys() {
    let (mut a, mut b) = pair(None);
    let (k1, _) = handshake(&mut a, &mut b, 1);
    let (k2, k2b) = handshake(&mut a, &mut b, 2);
    assert_ne!(k1.sending_key(), k2.sending_key());
    assert_eq!(k2.sending_key(), k2b.receiving_key());
    // The responder may also start the next handshake.
    let (k3b, k3a) = handshake(&mut b, &mut a, 3);
    assert_eq!(k3b.sending_key(), k3a.receiving_key());
}

#[test]
fn debug_output_hides_key_material() {
    let (mut a, mut b) = pair(Some([5u8; 32]));
    let (ka, _) = handshake(&mut a, &mut b, 1);
    let d = format!("{ka:?} {:?} {:?}", a.hs, a.id);
    let hex_byte = format!("{:?}", ka.sending_key());
    assert!(!d.contains(&hex_byte), "{d}");
    assert!(d.contains("local_index"));
}

/// The load generator's shared ephemeral: every initiation built with it
/// completes a full handshake with a responder that does all its work, and
/// one made for another responder is refused.
#[test]
fn reused_ephemeral_initiations_complete_and_name_their_responder() {
    let (mut a, mut b) = pair(None);
    let eph = ReusedEphemeral::new(&mut OsRng, *b.id.public_key()).unwrap();
    for when in [1u64, 2] {
        let init =
            a.hs.create_initiation_reusing(&eph, ts(when), 0x300 + when as u32, t(when * 1000))
                .unwrap();
        let opened = open_initiation(&b.id, &init).unwrap();
        b.hs.consume_initiation(opened, t(when * 1000)).unwrap();
        let (resp, kb) =
            b.hs.create_response(&mut OsRng, 0x400 + when as u32, t(when * 1000))
                .unwrap();
        let ka = a.hs.consume_response(&resp).unwrap();
        assert_eq!(ka.sending_key(), kb.receiving_key());
        assert_eq!(ka.receiving_key(), kb.sending_key());
    }
    let other = Identity::new(&PrivateKey::generate());
    let wrong = ReusedEphemeral::new(&mut OsRng, *other.public_key()).unwrap();
    assert!(matches!(
        a.hs.create_initiation_reusing(&wrong, ts(3), 1, t(3000)),
        Err(NoiseError::WrongPeer { .. })
    ));
}
