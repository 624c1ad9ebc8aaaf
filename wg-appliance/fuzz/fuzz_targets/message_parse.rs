//! Classification of any UDP payload, and the index accessors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wg_appliance::noise::{receiver_index, sender_index, Message};

fuzz_target!(|data: &[u8]| {
    let _ = Message::parse(data);
    let _ = receiver_index(data);
    let _ = sender_index(data);
});
