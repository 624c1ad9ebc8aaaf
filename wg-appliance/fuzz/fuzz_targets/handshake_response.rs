//! A response off the wire, consumed by an initiator with an initiation in
//! flight; on success the keys must work for a transport round trip.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use wg_appliance::noise::open_initiation;
use wg_appliance::session::Session;

fuzz_target!(|data: &[u8]| {
    let mut rng = common::TestRng(0x1234_5678_9abc_def1);
    let ((_, mut hi), (r, mut hr)) = common::pair();
    let init = hi
        .create_initiation(&mut rng, common::timestamp(), 7, common::NOW)
        .expect("fixture keys are valid");
    let opened = open_initiation(&r, &init).expect("own initiation opens");
    hr.consume_initiation(opened, common::NOW)
        .expect("fresh state accepts");
    let (valid, _) = hr
        .create_response(&mut rng, 9, common::NOW)
        .expect("responds");

    let msg = common::mutate(&valid, data);
    if let Ok(kp) = hi.consume_response(&msg) {
        let s = Session::new(&kp);
        let mut out = Vec::new();
        let _ = s.seal(b"x", 1420, &mut out);
    }
});
