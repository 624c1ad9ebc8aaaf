//! wg-appliance: an XDP-accelerated, WireGuard-compatible VPN gateway.
//!
//! The protocol modules (`keys`, `noise`, `cookie`, `session`, `timers`,
//! `allowed_ips`) are sans-I/O: bytes and time in, bytes and actions out.
//! `datapath` loads and attaches the BPF programs and reads their maps; it
//! holds no protocol logic.

pub mod allowed_ips;
pub mod bench;
pub mod config;
pub mod cookie;
pub mod crypto;
pub mod daemon;
pub mod datapath;
pub mod framing;
pub mod keys;
pub mod link;
pub mod metrics;
pub mod noise;
pub mod persist;
pub mod session;
pub mod timers;
pub mod uapi;
