//! A cookie reply off the wire, for a peer that has sent a handshake message.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use wg_appliance::cookie::CookieChecker;

fuzz_target!(|data: &[u8]| {
    let mut rng = common::TestRng(0x0bad_cafe_f00d_0001);
    let ((_, mut hi), (r, _)) = common::pair();
    let init = hi
        .create_initiation(&mut rng, common::timestamp(), 7, common::NOW)
        .expect("fixture keys are valid");
    let mut checker = CookieChecker::new(r.public_key());
    let src = "[2001:db8::1]:4500".parse().expect("literal address");
    let valid = checker
        .create_reply(&init, src, common::NOW, &mut rng)
        .expect("reply to a full-size message");

    let msg = common::mutate(&valid, data);
    let _ = wg_appliance::noise::receiver_index(&msg);
    if hi.cookie.consume_reply(&msg, common::NOW).is_ok() {
        // With the cookie held, the next initiation carries mac2.
        let _ = hi.create_initiation(&mut rng, common::timestamp(), 8, common::NOW);
    }
});
