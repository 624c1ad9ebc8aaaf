//! An initiation off the wire: mac checks, open with our identity, consume
//! with the peer's state, and (if it got that far) respond.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use wg_appliance::cookie::CookieChecker;
use wg_appliance::noise::open_initiation;

fuzz_target!(|data: &[u8]| {
    let mut rng = common::TestRng(0x9e37_79b9_7f4a_7c15);
    let ((_, mut hi), (r, mut hr)) = common::pair();
    let valid = hi
        .create_initiation(&mut rng, common::timestamp(), 7, common::NOW)
        .expect("fixture keys are valid");
    let msg = common::mutate(&valid, data);

    let mut checker = CookieChecker::new(r.public_key());
    let src = "192.0.2.1:51820".parse().expect("literal address");
    let _ = checker.admit(&msg, src, data.len() % 2 == 0, common::NOW, &mut rng);
    let _ = wg_appliance::noise::Message::parse(&msg);
    if let Ok(opened) = open_initiation(&r, &msg) {
        if hr.consume_initiation(opened, common::NOW).is_ok() {
            let _ = hr.create_response(&mut rng, 9, common::NOW);
        }
    }
});
