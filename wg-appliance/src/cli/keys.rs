//! `genkey`, `pubkey` and `genpsk`, as `wg` has them.

use std::io::Read as _;

use anyhow::Context as _;
use wg_appliance::keys::{PresharedKey, PrivateKey};

pub fn genkey() -> anyhow::Result<()> {
    println!("{}", &*PrivateKey::generate().to_base64());
    Ok(())
}

pub fn pubkey() -> anyhow::Result<()> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("reading the private key from stdin")?;
    let k: PrivateKey = s
        .trim()
        .parse()
        .context("the private key on stdin. Fix: pipe in a key printed by `wg genkey` or `wg-appliance genkey`")?;
    println!("{}", k.public_key().to_base64());
    Ok(())
}

pub fn genpsk() -> anyhow::Result<()> {
    println!("{}", &*PresharedKey::generate().to_base64());
    Ok(())
}
