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

mod events;
mod handshake;
mod inject;
mod peers;
mod sessions;
mod status;
mod uapi;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use tokio::{
    io::unix::AsyncFd,
    net::UdpSocket,
    sync::{mpsc, oneshot, Notify},
};

use self::inject::packet_socket;
use self::peers::{endpoint_of, BpfKeypair, PeerState};
pub use self::status::{HandshakeStats, PeerStatus, Status};
pub use self::uapi::serve_uapi;
use crate::{
    config::PeerSpec,
    cookie::{CookieChecker, LoadDetector},
    datapath::{AttachMode, Datapath, ModePolicy, TunnelSetup},
    keys::PrivateKey,
    link::{self, TunnelLink},
    noise::{Handshake, Identity},
    timers::{Event, PeerTimers},
    uapi::{format_errno, format_get, Request},
};
/// Control-plane tick: counter polling and timer resolution.
const TICK: Duration = Duration::from_millis(100);

/// The interface as configured.
#[derive(Debug)]
pub struct DeviceSpec {
    pub ifname: String,
    pub private_key: PrivateKey,
    /// 0: a random free port.
    pub listen_port: u16,
    pub peers: Vec<PeerSpec>,
    pub addresses: Vec<IpNet>,
    pub mtu: u16,
    /// WAN interfaces; empty: discover (routes to endpoints, default route).
    pub wan: Vec<String>,
    pub xdp_mode: ModePolicy,
    pub per_packet: bool,
    /// Steering CPUs; None: all online CPUs.
    pub cpus: Option<Vec<u32>>,
    /// MSS clamp for inner IPv4 (IPv6 is 20 less); None: from the MTU.
    pub mss: Option<u16>,
    /// Test hook: shorter REKEY_AFTER_TIME. Never set in production.
    pub rekey_after_time: Option<Duration>,
}

/// How a daemon without a configuration file starts (`wg-appliance wg0`):
/// the interface comes up empty and `wg`/`wg-quick` configure it over UAPI.
#[derive(Debug, Clone)]
pub struct InterfaceOptions {
    pub ifname: String,
    pub mtu: u16,
    pub wan: Vec<String>,
    pub xdp_mode: ModePolicy,
    pub per_packet: bool,
    pub cpus: Option<Vec<u32>>,
    pub mss: Option<u16>,
    /// Test hook: shorter REKEY_AFTER_TIME. Never set in production.
    pub rekey_after_time: Option<Duration>,
    /// Handshake messages per second per source let through by XDP
    /// (None: the built-in default).
    pub handshake_rate: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Datapath(#[from] crate::datapath::DatapathError),
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error("UDP port {port}: {source}. Fix: choose a free ListenPort or stop what holds it (`ss -lunp 'sport = :{port}'`)")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
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

/// What [`Daemon::assemble`] puts together.
struct Parts {
    dp: Datapath,
    link: TunnelLink,
    handle: rtnetlink::Handle,
    opts: InterfaceOptions,
    sock: UdpSocket,
    listen_port: u16,
    fwmark: u32,
    inject: OwnedFd,
    state_path: Option<std::path::PathBuf>,
    wan: Vec<(String, AttachMode)>,
    tunnel_mode: AttachMode,
}

/// Requests to the daemon's task from other tasks (UAPI, metrics).
pub enum Command {
    Uapi(Request, oneshot::Sender<String>),
    Status(oneshot::Sender<Status>),
}

pub struct Daemon {
    dp: Datapath,
    link: TunnelLink,
    handle: rtnetlink::Handle,
    opts: InterfaceOptions,
    rekey_after_time: Option<Duration>,
    private_key: Option<PrivateKey>,
    identity: Option<Identity>,
    checker: Option<CookieChecker>,
    load: LoadDetector,
    peers: BTreeMap<u32, PeerState>,
    /// Local receiver index → peer id, for sessions and handshakes.
    by_index: HashMap<u32, u32>,
    sock: UdpSocket,
    listen_port: u16,
    fwmark: u32,
    inject: OwnedFd,
    /// Where the configuration is saved for a restarted daemon (None: a
    /// restart will not be hitless).
    state_path: Option<std::path::PathBuf>,
    wan: Vec<(String, AttachMode)>,
    tunnel_mode: AttachMode,
    hs_stats: HandshakeStats,
    /// Handshakes the XDP limiter had dropped at the last look.
    hs_limited_seen: u64,
    ticks: u64,
    cmd_tx: mpsc::Sender<Command>,
    cmd_rx: mpsc::Receiver<Command>,
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
    /// Brings the interface up from a full specification (configuration
    /// file or test). On error everything created so far is removed again.
    pub async fn start(spec: DeviceSpec) -> Result<Self, DaemonError> {
        let opts = InterfaceOptions {
            ifname: spec.ifname.clone(),
            mtu: spec.mtu,
            wan: spec.wan.clone(),
            xdp_mode: spec.xdp_mode,
            per_packet: spec.per_packet,
            cpus: spec.cpus.clone(),
            mss: spec.mss,
            rekey_after_time: spec.rekey_after_time,
            handshake_rate: None,
        };
        let endpoints: Vec<SocketAddr> = spec.peers.iter().filter_map(|p| p.endpoint).collect();
        let mut d = Self::start_empty(opts, spec.listen_port, &endpoints).await?;
        let r = async {
            for a in &spec.addresses {
                link::add_address(&d.handle, d.link.index, a.addr(), a.prefix_len()).await?;
            }
            d.set_private_key(Some(spec.private_key.clone()));
            for p in &spec.peers {
                let id = d.add_peer(p.public_key)?;
                d.configure_peer(id, p)?;
            }
            Ok::<(), DaemonError>(())
        }
        .await;
        match r {
            Ok(()) => {
                d.save_state();
                Ok(d)
            }
            Err(e) => {
                d.shutdown().await;
                Err(e)
            }
        }
    }

    /// Brings an empty interface up (no key, no peers), for configuration
    /// over UAPI. On error everything created so far is removed again.
    pub async fn start_empty(
        opts: InterfaceOptions,
        listen_port: u16,
        endpoints: &[SocketAddr],
    ) -> Result<Self, DaemonError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(io("opening rtnetlink"))?;
        tokio::spawn(conn);
        if link::ifindex(&opts.ifname).is_some() {
            // A daemon died and left its data path running: adopt it.
            if let (Ok(dir), Some(state)) = (
                crate::persist::pin_dir(&opts.ifname),
                crate::persist::state_path(&opts.ifname),
            ) {
                if dir.exists() && state.exists() {
                    return Self::adopt(opts, handle, dir, state).await;
                }
            }
        }
        let tlink = link::create_tunnel(&handle, &opts.ifname, opts.mtu).await?;
        match Self::start_on(opts, listen_port, endpoints, tlink.clone(), handle.clone()).await {
            Ok(d) => Ok(d),
            Err(e) => {
                let _ = link::delete(&handle, &tlink.name).await;
                Err(e)
            }
        }
    }

    /// Takes over a data path a previous daemon left running (it was
    /// killed): the pinned maps and links keep forwarding meanwhile; the
    /// saved configuration and the sessions in the maps give back the
    /// state, including when each session must be rekeyed.
    async fn adopt(
        opts: InterfaceOptions,
        handle: rtnetlink::Handle,
        dir: std::path::PathBuf,
        state_path: std::path::PathBuf,
    ) -> Result<Self, DaemonError> {
        let state = crate::persist::SavedState::load(&state_path)
            .map_err(|e| io("reading the saved state")(std::io::Error::other(e.to_string())))?;
        let dp = Datapath::adopt(&dir)?;
        let tlink = link::existing(&opts.ifname)?;
        let sock = bind_udp(state.listen_port)?;
        apply_fwmark(&sock, state.fwmark);
        let listen_port = sock
            .local_addr()
            .map_err(io("reading the bound port"))?
            .port();
        let inject = packet_socket(tlink.index)?;
        let mut tunnel_mode = AttachMode::Native;
        let mut wan = Vec::new();
        for (name, mode) in dp.attached() {
            if *name == tlink.peer_name {
                tunnel_mode = *mode;
            } else if *name != tlink.name {
                wan.push((name.clone(), *mode));
            }
        }
        let mut d = Daemon::assemble(Parts {
            dp,
            link: tlink,
            handle,
            opts,
            sock,
            listen_port,
            fwmark: state.fwmark,
            inject,
            state_path: Some(state_path),
            wan,
            tunnel_mode,
        });
        d.set_private_key(state.private_key.clone());
        let now = d.now();
        for (id, spec) in state.peers {
            let placeholder;
            let identity = match &d.identity {
                Some(i) => i,
                None => {
                    placeholder = Identity::new(&PrivateKey::generate());
                    &placeholder
                }
            };
            let hs = Handshake::new(identity, spec.public_key, spec.preshared_key.clone());
            let mut st = PeerState {
                hs,
                timers: PeerTimers::new(d.timer_config(spec.persistent_keepalive)),
                endpoint: d
                    .dp
                    .peer(id)
                    .ok()
                    .as_ref()
                    .and_then(endpoint_of)
                    .or(spec.endpoint),
                spec,
                staged: VecDeque::new(),
                stats: d.dp.peer_stats(id).unwrap_or_default(),
                last_handshake: None,
                handshakes: 0,
                hs_rx_bytes: 0,
                hs_tx_bytes: 0,
            };
            d.restore_sessions(id, &mut st, now)?;
            tracing::info!(peer = %st.spec.public_key.short(), id, "peer adopted");
            d.peers.insert(id, st);
        }
        tracing::info!(
            interface = %d.link.name,
            listen_port = d.listen_port,
            sessions = d.by_index.len(),
            "adopted the running data path (hitless restart)"
        );
        Ok(d)
    }

    /// A daemon over a data path, link and sockets, with no key or peers yet.
    fn assemble(p: Parts) -> Self {
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        Daemon {
            rekey_after_time: p.opts.rekey_after_time,
            dp: p.dp,
            link: p.link,
            handle: p.handle,
            opts: p.opts,
            private_key: None,
            identity: None,
            checker: None,
            load: LoadDetector::new(),
            peers: BTreeMap::new(),
            by_index: HashMap::new(),
            sock: p.sock,
            listen_port: p.listen_port,
            fwmark: p.fwmark,
            inject: p.inject,
            state_path: p.state_path,
            wan: p.wan,
            tunnel_mode: p.tunnel_mode,
            hs_stats: HandshakeStats::default(),
            hs_limited_seen: 0,
            ticks: 0,
            cmd_tx,
            cmd_rx,
        }
    }

    /// Saves the configuration for a restarted daemon (see `persist`).
    fn save_state(&self) {
        let Some(path) = &self.state_path else { return };
        let st = crate::persist::SavedState {
            private_key: self.private_key.clone(),
            listen_port: self.listen_port,
            fwmark: self.fwmark,
            peers: self
                .peers
                .iter()
                .map(|(id, p)| (*id, p.spec.clone()))
                .collect(),
        };
        if let Err(e) = st.save(path) {
            tracing::warn!(error = %e, "saving the state failed: a restart will not be hitless");
        }
    }

    async fn start_on(
        opts: InterfaceOptions,
        listen_port: u16,
        endpoints: &[SocketAddr],
        tlink: TunnelLink,
        handle: rtnetlink::Handle,
    ) -> Result<Self, DaemonError> {
        let sock = bind_udp(listen_port)?;
        let listen_port = sock
            .local_addr()
            .map_err(io("reading the bound port"))?
            .port();
        let mut dp = Datapath::load(listen_port)?;
        if let Some(rate) = opts.handshake_rate {
            dp.set_handshake_rate(rate)?;
        }
        // Pin before attaching, so the links are pinned too.
        let state_path = match crate::persist::pin_dir(&opts.ifname)
            .and_then(|dir| dp.persist(&dir).map_err(|e| e.to_string()))
        {
            Ok(()) => crate::persist::state_path(&opts.ifname),
            Err(e) => {
                tracing::warn!(error = %e, "the data path is not pinned: a restart of the daemon will not be hitless");
                None
            }
        };
        let cpus = opts
            .cpus
            .clone()
            .unwrap_or_else(crate::datapath::online_cpus);
        // MSS: the tunnel MTU less IPv4+TCP (40) or IPv6+TCP (60) headers.
        let mss_v4 = opts.mss.unwrap_or(opts.mtu.saturating_sub(40));
        let mss_v6 = mss_v4.saturating_sub(20);
        let tunnel_mode = dp.attach_tunnel(
            &TunnelSetup {
                wg_ifname: tlink.name.clone(),
                wg_mac: tlink.mac,
                wg_ifindex: tlink.index,
                wgx_ifname: tlink.peer_name.clone(),
                wgx_ifindex: tlink.peer_index,
                mtu: opts.mtu,
                mss_v4,
                mss_v6,
                per_packet: opts.per_packet,
                cpus,
                reject_after_time_secs: 0,
            },
            opts.xdp_mode,
        )?;
        let inject = packet_socket(tlink.index)?;
        let mut d = Daemon::assemble(Parts {
            dp,
            link: tlink,
            handle,
            opts,
            sock,
            listen_port,
            fwmark: 0,
            inject,
            state_path,
            wan: Vec::new(),
            tunnel_mode,
        });
        d.attach_wans(endpoints).await?;
        if d.wan.is_empty() {
            return Err(DaemonError::NoWan);
        }
        tracing::info!(
            interface = %d.link.name,
            listen_port = d.listen_port,
            tunnel_xdp = %d.tunnel_mode,
            wan = ?d.wan.iter().map(|(n, m)| format!("{n} ({m})")).collect::<Vec<_>>(),
            "interface up"
        );
        Ok(d)
    }

    /// Attaches `wan_rx` where traffic to `endpoints` (or the default
    /// route) leaves, unless WAN interfaces were named. Idempotent.
    async fn attach_wans(&mut self, endpoints: &[SocketAddr]) -> Result<(), DaemonError> {
        let names = if self.opts.wan.is_empty() {
            link::wan_interfaces(&self.handle, endpoints).await?
        } else {
            self.opts.wan.clone()
        };
        for w in names {
            if self.wan.iter().any(|(n, _)| *n == w)
                || w == self.link.name
                || w == self.link.peer_name
            {
                continue;
            }
            let mode = self.dp.attach_wan(&w, self.opts.xdp_mode)?;
            self.wan.push((w, mode));
        }
        Ok(())
    }

    pub fn link(&self) -> &TunnelLink {
        &self.link
    }

    pub fn datapath(&self) -> &Datapath {
        &self.dp
    }

    pub fn local_port(&self) -> u16 {
        self.listen_port
    }

    /// Handshake messages per second and source let through by XDP.
    pub fn set_handshake_rate(&mut self, per_second: u32) -> Result<(), DaemonError> {
        self.opts.handshake_rate = Some(per_second);
        Ok(self.dp.set_handshake_rate(per_second)?)
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

    async fn set_listen_port(&mut self, port: u16) -> Result<(), DaemonError> {
        if port == self.listen_port && port != 0 {
            return Ok(());
        }
        let sock = bind_udp(port)?;
        let port = sock
            .local_addr()
            .map_err(io("reading the bound port"))?
            .port();
        apply_fwmark(&sock, self.fwmark);
        self.sock = sock;
        self.listen_port = port;
        self.dp.set_listen_port(port)?;
        tracing::info!(listen_port = port, "listening");
        Ok(())
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
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
        }
    }

    // ----- the loop ----------------------------------------------------------

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
                r = self.sock.recv_from(&mut buf) => {
                    match r {
                        Ok((n, src)) => {
                            let msg = buf[..n].to_vec();
                            self.on_datagram(&msg, src).await;
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
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    /// Removes the interface; the programs detach when `self` drops.
    pub async fn shutdown(self) {
        let name = self.link.name.clone();
        let handle = self.handle.clone();
        // Going down for good: nothing may be left to adopt.
        self.dp.unpin();
        if let Some(p) = &self.state_path {
            let _ = std::fs::remove_file(p);
            crate::persist::remove_empty_parent(p);
        }
        drop(self);
        if let Err(e) = link::delete(&handle, &name).await {
            tracing::warn!(interface = %name, error = %e, "removing the interface failed");
        } else {
            tracing::info!(interface = %name, "interface removed");
        }
    }
}

fn apply_fwmark(sock: &UdpSocket, mark: u32) {
    // SAFETY: setsockopt on a valid fd with a u32 value.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            &mark as *const u32 as *const libc::c_void,
            std::mem::size_of::<u32>() as u32,
        );
    }
}

/// The dual-stack UDP socket for handshake messages: `[::]:port` with
/// IPV6_V6ONLY off, non-blocking. Port 0 picks a free one.
fn bind_udp(port: u16) -> Result<UdpSocket, DaemonError> {
    let err = |source| DaemonError::Bind { port, source };
    // SAFETY: plain socket calls on a descriptor we own.
    let std_sock = unsafe {
        let fd = libc::socket(
            libc::AF_INET6,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        let sock = std::net::UdpSocket::from_raw_fd(fd);
        let off: libc::c_int = 0;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            &off as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
        sa.sin6_family = libc::AF_INET6 as u16;
        sa.sin6_port = port.to_be();
        if libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in6>() as u32,
        ) != 0
        {
            return Err(err(std::io::Error::last_os_error()));
        }
        sock
    };
    UdpSocket::from_std(std_sock).map_err(err)
}
