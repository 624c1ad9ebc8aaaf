//! A transport data message off the wire: framing, decryption, replay window
//! and inner-packet length, against a session with fixed keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wg_appliance::session::{
    inner_packet_len, parse_transport, ReceivingKey, ReplayWindow, SendingKey,
};

fuzz_target!(|data: &[u8]| {
    let key = [0x33u8; 32];
    let tx = SendingKey::new(&key, 5);
    let rx = ReceivingKey::new(&key, 5);
    let mut window = ReplayWindow::new();

    // First byte odd: seal the rest as a payload (counter from the next 8
    // bytes), then flip one byte chosen by the input, and open it.
    let msg = match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 && rest.len() >= 8 => {
            let mut c = [0u8; 8];
            c.copy_from_slice(&rest[..8]);
            let mut m = Vec::new();
            if tx
                .seal(u64::from_le_bytes(c), &rest[8..], 1420, &mut m)
                .is_err()
            {
                return;
            }
            if mode & 2 == 2 {
                let at = usize::from(*mode) % m.len();
                m[at] ^= 0x80;
            }
            m
        }
        _ => data.to_vec(),
    };

    let _ = parse_transport(&msg);
    let mut out = Vec::new();
    if let Ok(hdr) = rx.open(&msg, &mut out) {
        let first = window.check_and_update(hdr.counter);
        assert!(first, "a fresh window accepts any valid counter once");
        assert!(!window.check_and_update(hdr.counter), "and never twice");
        let _ = inner_packet_len(&out);
    }
});
