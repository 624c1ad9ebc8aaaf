//! Key strings from config files and the UAPI: parse must never panic, and
//! whatever parses must print back to the same canonical 44 characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wg_appliance::keys::{PresharedKey, PrivateKey, PublicKey};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(k) = s.parse::<PublicKey>() {
        assert_eq!(
            k.to_base64(),
            s.trim_matches(|c: char| c.is_ascii_whitespace())
        );
    }
    if let Ok(k) = s.parse::<PrivateKey>() {
        assert_eq!(k.to_base64().len(), 44);
        let _ = k.public_key();
    }
    let _ = s.parse::<PresharedKey>();
});
