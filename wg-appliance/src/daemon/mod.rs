//! The control plane: wires the sans-I/O protocol modules to the UDP socket,
//! the BPF maps, the tunnel interface, the UAPI socket and time.
//!
//! One task owns all state (no locks): it receives handshake messages on
//! the UDP socket (the XDP classifier passes only well-formed handshakes
//! and cookie replies there), events from the data path's ring buffer
//! ("no session, packet staged", "endpoint changed"), commands (UAPI
//! requests, status queries for metrics), and a 100 ms tick that polls
//! per-peer counters into timer events and fires due timers.
//!
//! Encryption of every transport message, keepalives and staged packets
//! included, happens in BPF: the control plane injects such packets into
//! `wg0` (an AF_PACKET socket), so `tun_tx`/`crypt_tx` remain the only user
//! of each session's send counter and no nonce is ever reused.
//!
//! Peers are keyed by a dense id (1..): the index of their `PEERS` slot.
//!
//! This file holds the actor: its state, its mailbox ([`Command`]) and its
//! loop. The rest is split by concern, as the kernel driver splits itself:
//! - `device`: bring-up (fresh, or adopting a running data path), the UDP
//!   socket and device settings, the state saved for a restart, teardown;
//! - `peers`: the peer table and its writes to the data path's maps;
//! - `handshake`: handshake messages received, and their admission;
//! - `sessions`: sessions written into (and read back from) the data path;
//! - `events`: data-path events, the tick, and the timers' actions;
//! - `inject`: control-plane frames into the tunnel (keepalives, staged
//!   packets);
//! - `uapi`: `get`, `set` and the UAPI socket's connections;
//! - `status`: what `show`, metrics and tests read.

mod device;
mod events;
mod fast;
mod handshake;
mod hs_pool;
mod inject;
mod peers;
mod sessions;
mod status;
mod uapi;
mod udp;

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::OwnedFd,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::unix::AsyncFd,
    net::UdpSocket,
    sync::{mpsc, oneshot, Notify},
};

pub use self::device::{DeviceSpec, InterfaceOptions};
use self::peers::PeerState;
pub use self::status::{FastStatus, HandshakeStats, PeerSourceStatus, PeerStatus, Status};
pub use self::uapi::serve_uapi;
/// The peers a [`DeviceSpec`] lists. Defined with the configuration (persist
/// saves them too) and named here as well, being part of the daemon's input:
/// `daemon::PeerSpec` keeps working for the crates that build a DeviceSpec.
pub use crate::config::PeerSpec;
use crate::{
    allowed_ips::AllowedIps,
    cookie::{CookieChecker, LoadDetector},
    datapath::{AttachMode, Datapath},
    keys::{PrivateKey, PublicKey},
    link::{self, TunnelLink},
    noise::Identity,
    timers::Event,
    uapi::{format_appliance, format_errno, format_get, Request},
};

/// Control-plane tick: counter polling and timer resolution.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Datapath(#[from] crate::datapath::DatapathError),
    #[error(transparent)]
    Link(#[from] link::LinkError),
    // The cause is in the message, not a `source`: `{:#}` would print it twice.
    #[error("UDP port {port}: {error}. Fix: choose a free ListenPort or stop what holds it (`ss -lunp 'sport = :{port}'`)")]
    Bind { port: u16, error: std::io::Error },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no WAN interface found: no route to any endpoint and no default route. Fix: name one with --wan (or WAN = in [Appliance])")]
    NoWan,
    #[error("too many peers: at most {0}")]
    TooManyPeers(u32),
}

/// Requests to the daemon's task from other tasks (UAPI, metrics).
pub enum Command {
    Uapi(Request, oneshot::Sender<String>),
    Status(oneshot::Sender<Status>),
    /// The peers as configured, for a peer source to compare with.
    Specs(oneshot::Sender<Vec<PeerSpec>>),
}

/// A peer source's report, shared between its task and the daemon.
pub type SharedSourceStatus = Arc<std::sync::Mutex<PeerSourceStatus>>;

/// The control plane of one interface, owned by the one task that runs
/// [`Daemon::run`].
pub struct Daemon {
    /// The AF_XDP fast path, when it runs: first, so it stops (its workers
    /// joined) before the data path's maps and links go.
    fast: Option<crate::fastpath::FastPath>,
    dp: Datapath,
    link: TunnelLink,
    handle: rtnetlink::Handle,
    opts: InterfaceOptions,
    rekey_after_time: Option<Duration>,
    private_key: Option<PrivateKey>,
    /// When the private key was last set (configuration, `wg set`, or the
    /// saved state of the daemon that ran before).
    private_key_set_at: Option<std::time::SystemTime>,
    /// Shared with the handshake workers.
    identity: Option<Arc<Identity>>,
    checker: Option<CookieChecker>,
    load: LoadDetector,
    peers: BTreeMap<u32, PeerState>,
    /// Public key → peer id (an initiation names its peer by key; a linear
    /// search cost O(peers) per handshake). Kept by `insert_peer` and
    /// `take_peer`, the only ways in and out of `peers`.
    by_key: HashMap<PublicKey, u32>,
    /// AllowedIPs prefix → peer id, the owners of the prefixes in the
    /// peers' specs (the data path's LPM tries hold the same).
    allowed: AllowedIps<u32>,
    /// Local receiver index → peer id, for sessions and handshakes.
    by_index: HashMap<u32, u32>,
    sock: UdpSocket,
    listen_port: u16,
    fwmark: u32,
    inject: OwnedFd,
    /// Where the configuration is saved for a restarted daemon (None: a
    /// restart will not be hitless).
    state_path: Option<std::path::PathBuf>,
    /// Whether the pins outlive this daemon (a restart adopts the tunnel).
    pins: crate::persist::PinLifetime,
    wan: Vec<(String, AttachMode)>,
    tunnel_mode: AttachMode,
    hs_stats: HandshakeStats,
    /// The responder's expensive steps, off this task.
    hs_pool: hs_pool::HandshakePool,
    hs_done: mpsc::UnboundedReceiver<hs_pool::Done>,
    /// Handshakes the XDP limiter had dropped at the last look, and when
    /// that look was (monotonic).
    hs_limited_seen: u64,
    hs_limited_at: Option<Duration>,
    /// Whether the limiter's count rose at the last look.
    hs_rate_limited: bool,
    ticks: u64,
    cmd_tx: mpsc::Sender<Command>,
    cmd_rx: mpsc::Receiver<Command>,
    /// What the peer source feeding this interface reports, if one does.
    peer_source: Option<SharedSourceStatus>,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Io { what, source }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn ktime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Daemon {
    pub fn link(&self) -> &TunnelLink {
        &self.link
    }

    pub fn datapath(&self) -> &Datapath {
        &self.dp
    }

    pub fn local_port(&self) -> u16 {
        self.listen_port
    }

    /// Reports of a peer source, shown in metrics, `show` and `doctor`.
    pub fn attach_peer_source(&mut self, status: SharedSourceStatus) {
        self.peer_source = Some(status);
    }

    /// A sender for [`Command`]s to this daemon's task.
    pub fn commands(&self) -> mpsc::Sender<Command> {
        self.cmd_tx.clone()
    }

    /// CLOCK_MONOTONIC, the data path's clock: session birth times in the
    /// maps and timer deadlines compare directly, across daemon restarts.
    fn now(&self) -> Duration {
        Duration::from_nanos(ktime_ns())
    }

    /// Runs until `stop` is notified.
    pub async fn run(&mut self, stop: Arc<Notify>) -> Result<(), DaemonError> {
        let events = self.dp.take_events()?;
        // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd,
        // so the fd stays open exactly as long as it is registered.
        let mut events = unsafe { AsyncFd::register(events) }.map_err(|e| {
            io("watching the event ring buffer")(std::io::Error::other(e.to_string()))
        })?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut buf = vec![0u8; 2048];
        // Peers with persistent keepalive and an endpoint start at once.
        let ids: Vec<u32> = self.peers.keys().copied().collect();
        for id in ids {
            if self.peers[&id]
                .spec
                .persistent_keepalive
                .is_some_and(|k| k > 0)
            {
                let now = self.now();
                let acts = self
                    .peers
                    .get_mut(&id)
                    .map(|p| p.timers.handle(now, Event::WantToSend))
                    .unwrap_or_default();
                self.act(id, acts).await;
            }
        }
        loop {
            tokio::select! {
                _ = stop.notified() => return Ok(()),
                r = udp::recv(&self.sock, &mut buf) => {
                    match r {
                        Ok((n, src, local)) => {
                            let msg = buf[..n].to_vec();
                            self.on_datagram(&msg, src, local).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "UDP receive failed"),
                    }
                }
                g = events.readable_mut() => {
                    let mut guard = g.map_err(io("event ring buffer"))?;
                    let mut items = Vec::new();
                    while let Some(item) = guard.get_inner_mut().next() {
                        items.push(item.to_vec());
                    }
                    guard.clear_ready();
                    for item in items {
                        self.on_event(&item).await;
                    }
                }
                Some(cmd) = self.cmd_rx.recv() => self.on_command(cmd).await,
                Some(done) = self.hs_done.recv() => self.on_handshake_done(done).await,
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Uapi(Request::Appliance, reply) => {
                let _ = reply.send(format_appliance(&self.appliance_info()));
            }
            Command::Uapi(Request::Get, reply) => {
                let _ = reply.send(format_get(&self.snapshot()));
            }
            Command::Uapi(Request::Set(ops), reply) => {
                let errno = self.apply(ops).await;
                let _ = reply.send(format_errno(errno));
            }
            Command::Status(reply) => {
                let _ = reply.send(self.full_status());
            }
            Command::Specs(reply) => {
                let _ = reply.send(self.specs());
            }
        }
    }
}
