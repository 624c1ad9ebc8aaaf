//! wg-appliance: an XDP-accelerated, WireGuard-compatible VPN gateway.
//!
//! # Layers
//!
//! The modules stand in layers. A module uses modules of its own layer or
//! of lower ones, never a higher one, and no modules use each other in a
//! circle. `layers_test` reads this table and checks both against the code
//! (test code aside), so the table is the layering, not a picture of it.
//!
//! | Layer | Modules | What they are |
//! |-------|---------|---------------|
//! | 0 protocol | `keys` `crypto` `framing` `cookie` `noise` `session` `timers` `allowed_ips` `config` `uapi` | Sans-I/O: bytes and time in, bytes and actions out. |
//! | 1 kernel I/O | `link` `persist` `datapath` `build_info` `fastpath` `uapi_client` `gateway` | The tunnel interfaces (rtnetlink), pins and saved state, the BPF programs and maps, what this build is (version, commit, BPF object hash), the AF_XDP workers (the data path's per-packet steps in userspace, beside BPF), a running daemon asked through its UAPI socket, return routing and masquerade around a tunnel (rtnetlink, one nftables table); no control-plane logic. |
//! | 2 control plane | `daemon` | One task that wires the protocol to the kernel, the UDP and UAPI sockets and time. |
//! | 3 services | `metrics` `bench` `doctor` `health` `peer_source` | Beside a daemon: the Prometheus endpoint, the A/B bench, the layered troubleshooting walk, the one-line health check for routing daemons, peers fed from etcd. |
//! | 4 command | `cli` | The binary: `main.rs` parses, `cli/` runs each command. |
//!
//! Within and across layers, `a ─> b` reads "a uses b":
//!
//! ```text
//! 4  cli
//!     │
//! 3  metrics ─> daemon           bench ─> noise, keys    doctor ─> uapi_client, config
//!    health ─> doctor, uapi_client                            peer_source ─> daemon, config, uapi
//!     │
//! 2  daemon/ (mod: the actor; device, peers, handshake, sessions, events,
//!     │       inject, uapi, status)
//!     │
//! 1  fastpath ─> datapath ─> persist ─> config       link       uapi_client ─> keys    gateway ─> config
//!        └─> allowed_ips
//!     │
//! 0  timers ─> session ─> noise ─> cookie ─> crypto, framing, keys ─> crypto
//!    uapi ─> keys     config ─> keys     allowed_ips
//! ```

pub mod allowed_ips;
pub mod bench;
pub mod build_info;
pub mod config;
pub mod cookie;
pub mod crypto;
pub mod daemon;
pub mod datapath;
pub mod doctor;
pub mod fastpath;
pub mod framing;
pub mod gateway;
pub mod health;
pub mod keys;
pub mod link;
pub mod metrics;
pub mod noise;
#[cfg(feature = "etcd")]
pub mod peer_source;
pub mod persist;
pub mod session;
pub mod timers;
pub mod uapi;
pub mod uapi_client;

#[cfg(test)]
mod layers_test;
