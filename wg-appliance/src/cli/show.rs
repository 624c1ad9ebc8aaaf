//! `show`: each interface run by wg-appliance as `wg show` prints it,
//! read over the UAPI socket (private keys never shown).

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::Context as _;

use super::UAPI_DIR;

/// The answer of one UAPI socket to `request` (`get=1\n\n`, ...).
fn uapi_ask(path: &Path, request: &[u8]) -> anyhow::Result<String> {
    let mut s =
        UnixStream::connect(path).with_context(|| format!("connecting to {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request)?;
    let mut out = String::new();
    let mut buf = [0u8; 4096];
    while !out.ends_with("\n\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    Ok(out)
}

/// Prints `ifname`, or every interface with a socket in [`UAPI_DIR`].
pub fn show(ifname: Option<&str>) -> anyhow::Result<()> {
    let mut names = Vec::new();
    match ifname {
        Some(i) => names.push(i.to_owned()),
        None => {
            if let Ok(dir) = std::fs::read_dir(UAPI_DIR) {
                for e in dir.flatten() {
                    if let Some(n) = e.file_name().to_str().and_then(|n| n.strip_suffix(".sock")) {
                        names.push(n.to_owned());
                    }
                }
            }
            names.sort();
        }
    }
    for name in names {
        let sock = format!("{UAPI_DIR}/{name}.sock");
        if !Path::new(&sock).exists() {
            anyhow::bail!("{name} is not run by wg-appliance here (no {sock}). Fix: `wg-appliance show` lists the interfaces it runs; `ip link show {name}` tells whether it exists at all");
        }
        let reply = uapi_ask(Path::new(&sock), b"get=1\n\n")?;
        println!("interface: {name}");
        // What only wg-appliance knows (an older daemon answers an errno).
        let extra = uapi_ask(Path::new(&sock), b"appliance=1\n\n").unwrap_or_default();
        for line in extra.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "pins" => println!("  pins: {v}"),
                "data_path" => println!("  data path: {v}"),
                "peer_source" => println!("  peer source: {v}"),
                "peer_source_state" => println!("  peer source state: {v}"),
                "tunnel_xdp" => println!("  XDP on the tunnel: {v}"),
                "wan_xdp" => println!("  XDP on WAN: {v}"),
                _ => {}
            }
        }
        for line in reply.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "private_key" => println!("  private key: (hidden)"),
                "listen_port" => println!("  listening port: {v}"),
                "fwmark" => println!("  fwmark: {v}"),
                "public_key" => println!("\npeer (hex): {v}"),
                "endpoint" => println!("  endpoint: {v}"),
                "allowed_ip" => println!("  allowed ip: {v}"),
                "last_handshake_time_sec" if v != "0" => {
                    println!("  latest handshake: {v} (unix time)")
                }
                "rx_bytes" => println!("  received: {v} B"),
                "tx_bytes" => println!("  sent: {v} B"),
                "persistent_keepalive_interval" if v != "0" => {
                    println!("  persistent keepalive: every {v} s")
                }
                _ => {}
            }
        }
        println!();
    }
    Ok(())
}
