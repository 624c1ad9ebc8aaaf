//! The control plane: wires the sans-I/O protocol modules to the UDP socket,
//! the BPF maps, the tunnel interface and time.
//!
//! One task owns all state (no locks): it receives handshake messages on
//! the UDP socket (the XDP classifier passes only well-formed handshakes
//! and cookie replies there), events from the data path's ring buffer
//! ("no session, packet staged", "endpoint changed"), and a 100 ms tick
//! that polls per-peer counters into timer events and fires due timers.
//!
//! Encryption of every transport message, keepalives and staged packets
//! included, happens in BPF: the control plane injects such packets into
//! `wg0` (an AF_PACKET socket), so `tun_tx`/`crypt_tx` remain the only user
//! of each session's send counter and no nonce is ever reused.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use ipnet::IpNet;
use rand_core::{OsRng, RngCore};
use tokio::{io::unix::AsyncFd, net::UdpSocket, sync::Notify};
use wg_ebpf_common::maps::{
    ControlFrame, EventHeader, Peer as BpfPeer, PeerStats, Session as BpfSession,
    CONTROL_MAGIC_KEEPALIVE, ETH_P_WG_CONTROL, EVENT_ENDPOINT_CHANGED, EVENT_NO_SESSION,
    PEER_ACTIVE, REPLAY_WORDS, SESSION_CAN_RECV, SESSION_CAN_SEND, SESSION_CONFIRM_ON_RX,
};

use crate::{
    cookie::{Admission, CookieChecker, LoadDetector, LoadSignal},
    datapath::{AttachMode, Datapath, ModePolicy, TunnelSetup},
    keys::{PresharedKey, PrivateKey, PublicKey},
    link::{self, TunnelLink},
    noise::{self, Handshake, Identity, Message, Tai64N},
    timers::{Action, Event, PeerTimers, SendCounter, TimerConfig},
};

/// Packets kept per peer while a handshake is under way (the kernel
/// driver's MAX_STAGED_PACKETS).
const MAX_STAGED: usize = 128;
/// Control-plane tick: counter polling and timer resolution.
const TICK: Duration = Duration::from_millis(100);

/// One peer as configured.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
}

/// The interface as configured.
#[derive(Debug)]
pub struct DeviceSpec {
    pub ifname: String,
    pub private_key: PrivateKey,
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
}

/// What the timers know of a keypair: the data path owns the keys.
#[derive(Debug)]
struct BpfKeypair;

impl SendCounter for BpfKeypair {
    /// REKEY_AFTER_MESSAGES is 2^60; the data path enforces the hard limit
    /// (REJECT_AFTER_MESSAGES) per packet, so the soft one is not tracked.
    fn messages_sent(&self) -> u64 {
        0
    }
}

struct PeerState {
    id: u32,
    spec: PeerSpec,
    hs: Handshake,
    timers: PeerTimers<BpfKeypair>,
    staged: VecDeque<Vec<u8>>,
    endpoint: Option<SocketAddr>,
    stats: PeerStats,
    last_handshake: Option<SystemTime>,
}

/// A snapshot of a peer for `show`, metrics and the UAPI.
#[derive(Clone, Debug)]
pub struct PeerStatus {
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: Option<u16>,
}

pub struct Daemon {
    dp: Datapath,
    link: TunnelLink,
    handle: rtnetlink::Handle,
    identity: Identity,
    checker: CookieChecker,
    load: LoadDetector,
    peers: Vec<PeerState>,
    /// Local receiver index → peer position, for sessions and handshakes.
    by_index: HashMap<u32, usize>,
    sock: UdpSocket,
    inject: OwnedFd,
    start: Instant,
    listen_port: u16,
    wan: Vec<(String, AttachMode)>,
    tunnel_mode: AttachMode,
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

fn jitter() -> Duration {
    Duration::from_millis((OsRng.next_u32() % 334) as u64)
}

impl Daemon {
    /// Brings the interface up: link, programs, maps, socket. On error
    /// everything created so far is removed again.
    pub async fn start(spec: DeviceSpec) -> Result<Self, DaemonError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(io("opening rtnetlink"))?;
        tokio::spawn(conn);
        let tlink = link::create_tunnel(&handle, &spec.ifname, spec.mtu).await?;
        match Self::start_on(spec, tlink.clone(), handle.clone()).await {
            Ok(d) => Ok(d),
            Err(e) => {
                let _ = link::delete(&handle, &tlink.name).await;
                Err(e)
            }
        }
    }

    async fn start_on(
        spec: DeviceSpec,
        tlink: TunnelLink,
        handle: rtnetlink::Handle,
    ) -> Result<Self, DaemonError> {
        for a in &spec.addresses {
            link::add_address(&handle, tlink.index, a.addr(), a.prefix_len()).await?;
        }
        let mut dp = Datapath::load(spec.listen_port)?;
        let cpus = spec
            .cpus
            .clone()
            .unwrap_or_else(crate::datapath::online_cpus);
        // MSS: the tunnel MTU less IPv4+TCP (40) or IPv6+TCP (60) headers.
        let mss_v4 = spec.mss.unwrap_or(spec.mtu.saturating_sub(40));
        let mss_v6 = mss_v4.saturating_sub(20);
        let tunnel_mode = dp.attach_tunnel(
            &TunnelSetup {
                wg_ifname: tlink.name.clone(),
                wg_mac: tlink.mac,
                wg_ifindex: tlink.index,
                wgx_ifname: tlink.peer_name.clone(),
                wgx_ifindex: tlink.peer_index,
                mtu: spec.mtu,
                mss_v4,
                mss_v6,
                per_packet: spec.per_packet,
                cpus,
                reject_after_time_secs: 0,
            },
            spec.xdp_mode,
        )?;

        let endpoints: Vec<SocketAddr> = spec.peers.iter().filter_map(|p| p.endpoint).collect();
        let wan_names = if spec.wan.is_empty() {
            link::wan_interfaces(&handle, &endpoints).await?
        } else {
            spec.wan.clone()
        };
        if wan_names.is_empty() {
            return Err(DaemonError::NoWan);
        }
        let mut wan = Vec::new();
        for w in &wan_names {
            let mode = dp.attach_wan(w, spec.xdp_mode)?;
            wan.push((w.clone(), mode));
        }

        let sock = bind_udp(spec.listen_port)?;
        let inject = packet_socket(tlink.index)?;
        let identity = Identity::new(&spec.private_key);
        let checker = CookieChecker::new(identity.public_key());
        let mut d = Daemon {
            dp,
            link: tlink,
            handle,
            checker,
            load: LoadDetector::new(),
            peers: Vec::new(),
            by_index: HashMap::new(),
            sock,
            inject,
            start: Instant::now(),
            listen_port: spec.listen_port,
            wan,
            tunnel_mode,
            identity,
        };
        let timer_cfg = |p: &PeerSpec| TimerConfig {
            rekey_after_time: spec
                .rekey_after_time
                .unwrap_or(crate::timers::REKEY_AFTER_TIME),
            persistent_keepalive: p
                .persistent_keepalive
                .filter(|k| *k > 0)
                .map(|k| Duration::from_secs(k as u64)),
        };
        for (i, p) in spec.peers.iter().enumerate() {
            // Peer ids start at 1: an all-zero PEERS slot means "none".
            let id = i as u32 + 1;
            let hs = Handshake::new(&d.identity, p.public_key, p.preshared_key.clone());
            let state = PeerState {
                id,
                spec: p.clone(),
                hs,
                timers: PeerTimers::new(timer_cfg(p)),
                staged: VecDeque::new(),
                endpoint: p.endpoint,
                stats: PeerStats::default(),
                last_handshake: None,
            };
            d.peers.push(state);
            d.write_peer(i)?;
            for net in &p.allowed_ips {
                d.dp.add_allowed(net.network(), net.prefix_len(), id)?;
            }
        }
        tracing::info!(
            interface = %d.link.name,
            listen_port = d.listen_port,
            peers = d.peers.len(),
            tunnel_xdp = %d.tunnel_mode,
            wan = ?d.wan.iter().map(|(n, m)| format!("{n} ({m})")).collect::<Vec<_>>(),
            "interface up"
        );
        Ok(d)
    }

    pub fn link(&self) -> &TunnelLink {
        &self.link
    }

    pub fn datapath(&self) -> &Datapath {
        &self.dp
    }

    pub fn local_port(&self) -> u16 {
        self.sock
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(self.listen_port)
    }

    /// The peers as `wg show` would report them.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|p| PeerStatus {
                public_key: p.spec.public_key,
                endpoint: p.endpoint,
                allowed_ips: p.spec.allowed_ips.clone(),
                last_handshake: p.last_handshake,
                rx_bytes: p.stats.rx_bytes,
                tx_bytes: p.stats.tx_bytes,
                persistent_keepalive: p.spec.persistent_keepalive,
            })
            .collect()
    }

    /// Writes peer `pos`'s data-path slot (endpoint, current session).
    fn write_peer(&mut self, pos: usize) -> Result<(), DaemonError> {
        let p = &self.peers[pos];
        let mut slot = self.dp.peer(p.id).unwrap_or_default();
        slot.flags = PEER_ACTIVE;
        if let Some(ep) = p.endpoint {
            let (family, addr) = match ep.ip() {
                IpAddr::V4(a) => {
                    let mut b = [0u8; 16];
                    b[..4].copy_from_slice(&a.octets());
                    (4, b)
                }
                IpAddr::V6(a) => (6, a.octets()),
            };
            if slot.endpoint_addr != addr
                || slot.endpoint_port != ep.port().to_be()
                || slot.endpoint_family != family
            {
                slot.endpoint_addr = addr;
                slot.endpoint_port = ep.port().to_be();
                slot.endpoint_family = family;
                // Let the FIB pick the source again for the new endpoint.
                slot.local_addr = [0; 16];
                slot.ifindex = egress_ifindex(ep).unwrap_or(0);
            }
        }
        self.dp.set_peer(p.id, &slot)?;
        Ok(())
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
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
        // Peers with persistent keepalive or an endpoint start at once, as
        // the kernel does when a peer is configured with both.
        for pos in 0..self.peers.len() {
            if self.peers[pos]
                .spec
                .persistent_keepalive
                .is_some_and(|k| k > 0)
            {
                let now = self.now();
                let acts = self.peers[pos].timers.handle(now, Event::WantToSend);
                self.act(pos, acts).await;
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
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    async fn on_datagram(&mut self, msg: &[u8], src: SocketAddr) {
        let src = canonical(src);
        let now = self.now();
        let parsed = match Message::parse(msg) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%src, error = %e, "ignored datagram");
                return;
            }
        };
        match parsed {
            Message::Initiation(m) => {
                if !self.admit(m, src, now).await {
                    return;
                }
                let opened = match noise::open_initiation(&self.identity, m) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::debug!(%src, error = %e, "handshake initiation refused");
                        return;
                    }
                };
                let Some(pos) = self
                    .peers
                    .iter()
                    .position(|p| p.spec.public_key == *opened.peer_public())
                else {
                    tracing::debug!(%src, "initiation from an unknown public key");
                    return;
                };
                let peer_short = self.peers[pos].spec.public_key.short();
                if let Err(e) = self.peers[pos].hs.consume_initiation(opened, now) {
                    tracing::debug!(peer = %peer_short, %src, error = %e, "initiation refused");
                    return;
                }
                let local_index = self.new_index(pos);
                let (resp, keypair) = match self.peers[pos].hs.create_response(
                    &mut OsRng,
                    local_index,
                    now,
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(peer = %peer_short, error = %e, "could not build a handshake response");
                        return;
                    }
                };
                self.set_endpoint(pos, src);
                // The session must be in the data path before the response
                // leaves: the initiator answers it with data at once.
                self.install(pos, &keypair, SESSION_CAN_RECV | SESSION_CONFIRM_ON_RX);
                if let Err(e) = self.sock.send_to(&resp, src).await {
                    tracing::warn!(peer = %peer_short, %src, error = %e, "sending handshake response failed");
                    return;
                }
                self.peers[pos].last_handshake = Some(SystemTime::now());
                tracing::info!(peer = %peer_short, endpoint = %src, "handshake completed (responder)");
                let mut acts = self.peers[pos]
                    .timers
                    .handle(now, Event::HandshakeInitiationReceived);
                acts.extend(self.peers[pos].timers.handle(
                    now,
                    Event::HandshakeResponseSent {
                        keypair: BpfKeypair,
                        local_index,
                    },
                ));
                self.act(pos, acts).await;
            }
            Message::Response(m) => {
                if !self.admit(m, src, now).await {
                    return;
                }
                let Some(receiver) = noise::receiver_index(m) else {
                    return;
                };
                let Some(&pos) = self.by_index.get(&receiver) else {
                    return;
                };
                let peer_short = self.peers[pos].spec.public_key.short();
                let keypair = match self.peers[pos].hs.consume_response(m) {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::debug!(peer = %peer_short, %src, error = %e, "handshake response refused");
                        return;
                    }
                };
                self.set_endpoint(pos, src);
                self.install(pos, &keypair, SESSION_CAN_SEND | SESSION_CAN_RECV);
                self.peers[pos].last_handshake = Some(SystemTime::now());
                tracing::info!(peer = %peer_short, endpoint = %src, "handshake completed (initiator)");
                let local_index = keypair.local_index();
                let acts = self.peers[pos].timers.handle(
                    now,
                    Event::HandshakeResponseReceived {
                        keypair: BpfKeypair,
                        local_index,
                    },
                );
                self.act(pos, acts).await;
            }
            Message::CookieReply(m) => {
                let Some(receiver) = noise::receiver_index(m) else {
                    return;
                };
                let Some(&pos) = self.by_index.get(&receiver) else {
                    return;
                };
                if let Err(e) = self.peers[pos].hs.cookie.consume_reply(m, now) {
                    tracing::debug!(%src, error = %e, "cookie reply refused");
                }
            }
            Message::Transport(_) => {
                // Transport data reaches the socket only when no session
                // matched in XDP and the classifier is not steering (no
                // tunnel); nothing to do with it here.
            }
        }
    }

    /// mac1/mac2 and the cookie decision. Replies with a cookie when under
    /// load.
    async fn admit(&mut self, msg: &[u8], src: SocketAddr, now: Duration) -> bool {
        let signal = LoadSignal {
            queued_handshakes: 0,
            threshold: 512,
            rate_limited: false,
        };
        let under_load = self.load.under_load(signal, now);
        match self.checker.admit(msg, src, under_load, now, &mut OsRng) {
            Admission::Process => true,
            Admission::Drop => false,
            Admission::SendCookieReply => {
                if let Ok(reply) = self.checker.create_reply(msg, src, now, &mut OsRng) {
                    let _ = self.sock.send_to(&reply, src).await;
                }
                false
            }
        }
    }

    /// A fresh local index, unique among live ones, never 0.
    fn new_index(&mut self, pos: usize) -> u32 {
        loop {
            let i = OsRng.next_u32();
            if i != 0 && !self.by_index.contains_key(&i) {
                self.by_index.insert(i, pos);
                return i;
            }
        }
    }

    fn set_endpoint(&mut self, pos: usize, src: SocketAddr) {
        if self.peers[pos].endpoint != Some(src) {
            self.peers[pos].endpoint = Some(src);
            if let Err(e) = self.write_peer(pos) {
                tracing::warn!(error = %e, "updating the peer's endpoint in the data path failed");
            }
        }
    }

    /// Writes a session into the data path; the initiator's becomes the
    /// peer's sending session at once, the responder's on confirmation.
    fn install(&mut self, pos: usize, kp: &noise::Keypair, flags: u32) {
        let p = &self.peers[pos];
        let s = BpfSession {
            recv_key: *kp.receiving_key(),
            send_key: *kp.sending_key(),
            send_counter: 0,
            replay_next: 0,
            replay_bitmap: [0; REPLAY_WORDS],
            birth_ns: ktime_ns(),
            remote_index: kp.remote_index(),
            peer_id: p.id,
            flags,
            _pad: 0,
        };
        self.by_index.insert(kp.local_index(), pos);
        if let Err(e) = self.dp.install_session(kp.local_index(), &s) {
            tracing::warn!(error = %e, "installing the session in the data path failed");
            return;
        }
        if flags & SESSION_CAN_SEND != 0 {
            let id = p.id;
            match self.dp.peer(id) {
                Ok(mut slot) => {
                    slot.current_index = kp.local_index();
                    if let Err(e) = self.dp.set_peer(id, &slot) {
                        tracing::warn!(error = %e, "activating the session failed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the peer slot failed"),
            }
        }
    }

    async fn on_event(&mut self, item: &[u8]) {
        let hdr_len = std::mem::size_of::<EventHeader>();
        if item.len() < hdr_len {
            return;
        }
        // SAFETY: EventHeader is plain data and item holds enough bytes.
        let hdr: EventHeader =
            unsafe { std::ptr::read_unaligned(item.as_ptr() as *const EventHeader) };
        let Some(pos) = self.peers.iter().position(|p| p.id == hdr.peer_id) else {
            return;
        };
        match hdr.kind {
            EVENT_NO_SESSION => {
                let len = (hdr.len as usize).min(item.len() - hdr_len);
                let pkt = item[hdr_len..hdr_len + len].to_vec();
                let p = &mut self.peers[pos];
                if p.staged.len() >= MAX_STAGED {
                    p.staged.pop_front();
                }
                p.staged.push_back(pkt);
                let acts = p.timers.handle(self.start.elapsed(), Event::WantToSend);
                self.act(pos, acts).await;
            }
            EVENT_ENDPOINT_CHANGED => {
                if let Ok(slot) = self.dp.peer(hdr.peer_id) {
                    let ep = endpoint_of(&slot);
                    tracing::info!(peer = %self.peers[pos].spec.public_key.short(), endpoint = ?ep, "peer roamed");
                    self.peers[pos].endpoint = ep;
                }
            }
            _ => {}
        }
    }

    async fn on_tick(&mut self) {
        let now = self.now();
        for pos in 0..self.peers.len() {
            let id = self.peers[pos].id;
            let Ok(stats) = self.dp.peer_stats(id) else {
                continue;
            };
            let old = self.peers[pos].stats;
            self.peers[pos].stats = stats;
            let mut acts = Vec::new();
            if stats.rx_packets > old.rx_packets {
                let keepalive = stats.last_rx_data_ns == old.last_rx_data_ns;
                let local_index = self.received_on(pos);
                if let Some(local_index) = local_index {
                    acts.extend(self.peers[pos].timers.handle(
                        now,
                        Event::TransportReceived {
                            local_index,
                            keepalive,
                        },
                    ));
                }
            }
            if stats.tx_packets > old.tx_packets {
                let keepalive = stats.last_tx_data_ns == old.last_tx_data_ns;
                acts.extend(self.peers[pos].timers.handle(
                    now,
                    Event::TransportSent {
                        keepalive,
                        jitter: jitter(),
                    },
                ));
            }
            acts.extend(self.peers[pos].timers.tick(now));
            self.act(pos, acts).await;
        }
    }

    /// Which session the new packets arrived on: the pending `next` one if
    /// the data path has seen traffic on it (it confirms it), else current.
    fn received_on(&self, pos: usize) -> Option<u32> {
        let kp = &self.peers[pos].timers.keypairs;
        if let Some(next) = kp.next() {
            if let Ok(Some(s)) = self.dp.session(next.local_index) {
                if s.replay_next > 0 {
                    return Some(next.local_index);
                }
            }
        }
        kp.current().map(|c| c.local_index)
    }

    /// Carries out timer actions (which may produce more).
    async fn act(&mut self, pos: usize, mut acts: Vec<Action>) {
        let mut rounds = 0;
        while !acts.is_empty() && rounds < 8 {
            rounds += 1;
            let mut more = Vec::new();
            for a in acts {
                more.extend(self.act_one(pos, a).await);
            }
            acts = more;
        }
    }

    async fn act_one(&mut self, pos: usize, a: Action) -> Vec<Action> {
        let now = self.now();
        match a {
            Action::SendHandshakeInitiation => {
                let Some(ep) = self.peers[pos].endpoint else {
                    return Vec::new();
                };
                let local_index = self.new_index(pos);
                let ts = Tai64N::from_system_time(SystemTime::now());
                let msg =
                    match self.peers[pos]
                        .hs
                        .create_initiation(&mut OsRng, ts, local_index, now)
                    {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not build a handshake initiation");
                            return Vec::new();
                        }
                    };
                if let Err(e) = self.sock.send_to(&msg, ep).await {
                    tracing::debug!(endpoint = %ep, error = %e, "sending handshake initiation failed");
                }
                tracing::debug!(peer = %self.peers[pos].spec.public_key.short(), endpoint = %ep, "handshake initiation sent");
                self.peers[pos]
                    .timers
                    .handle(now, Event::HandshakeInitiationSent { jitter: jitter() })
            }
            Action::SendKeepalive => {
                if self.peers[pos].staged.is_empty() {
                    self.inject_keepalive(pos);
                } else {
                    self.inject_staged(pos);
                }
                Vec::new()
            }
            Action::SendStaged => {
                self.inject_staged(pos);
                Vec::new()
            }
            Action::PurgeStaged => {
                self.peers[pos].staged.clear();
                Vec::new()
            }
            Action::ClearHandshake => {
                self.peers[pos].hs.clear();
                Vec::new()
            }
            Action::Retire(idx) => {
                self.by_index.remove(&idx);
                if let Err(e) = self.dp.remove_session(idx) {
                    tracing::warn!(error = %e, "removing a retired session failed");
                }
                Vec::new()
            }
        }
    }

    fn inject_keepalive(&mut self, pos: usize) {
        let f = ControlFrame {
            magic: CONTROL_MAGIC_KEEPALIVE,
            peer_id: self.peers[pos].id,
        };
        let mut frame = Vec::with_capacity(14 + 8);
        frame.extend_from_slice(&self.link.mac);
        frame.extend_from_slice(&self.link.mac);
        frame.extend_from_slice(&ETH_P_WG_CONTROL.to_be_bytes());
        frame.extend_from_slice(&f.magic.to_le_bytes());
        frame.extend_from_slice(&f.peer_id.to_le_bytes());
        self.send_frame(&frame);
    }

    fn inject_staged(&mut self, pos: usize) {
        let staged: Vec<Vec<u8>> = self.peers[pos].staged.drain(..).collect();
        for pkt in staged {
            let proto: u16 = match pkt.first().map(|b| b >> 4) {
                Some(4) => 0x0800,
                Some(6) => 0x86DD,
                _ => continue,
            };
            let mut frame = Vec::with_capacity(14 + pkt.len());
            frame.extend_from_slice(&self.link.mac);
            frame.extend_from_slice(&self.link.mac);
            frame.extend_from_slice(&proto.to_be_bytes());
            frame.extend_from_slice(&pkt);
            self.send_frame(&frame);
        }
    }

    /// Writes a frame out of `wg0`; it arrives at `tun_tx` on `wg0x`.
    fn send_frame(&self, frame: &[u8]) {
        // SAFETY: valid fd and buffer.
        let rc = unsafe {
            libc::send(
                self.inject.as_raw_fd(),
                frame.as_ptr() as *const _,
                frame.len(),
                0,
            )
        };
        if rc < 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "injecting into the tunnel failed");
        }
    }

    /// Removes the interface; the programs detach when `self` drops.
    pub async fn shutdown(self) {
        let name = self.link.name.clone();
        let handle = self.handle.clone();
        drop(self);
        if let Err(e) = link::delete(&handle, &name).await {
            tracing::warn!(interface = %name, error = %e, "removing the interface failed");
        } else {
            tracing::info!(interface = %name, "interface removed");
        }
    }
}

fn endpoint_of(slot: &BpfPeer) -> Option<SocketAddr> {
    let port = u16::from_be(slot.endpoint_port);
    match slot.endpoint_family {
        4 => {
            let a = &slot.endpoint_addr;
            Some(SocketAddr::from(([a[0], a[1], a[2], a[3]], port)))
        }
        6 => Some(SocketAddr::from((slot.endpoint_addr, port))),
        _ => None,
    }
}

/// IPv4-mapped IPv6 addresses (from the dual-stack socket) as IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}

/// The interface the kernel would send to `ep` from (route lookup through a
/// connected UDP socket, which sends nothing).
fn egress_ifindex(ep: SocketAddr) -> Option<u32> {
    let bind: SocketAddr = if ep.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .ok()?;
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(ep).ok()?;
    let local = s.local_addr().ok()?.ip();
    interface_with_address(local)
}

fn interface_with_address(ip: IpAddr) -> Option<u32> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr of the family it says.
            let addr = unsafe {
                match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        Some(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()))
                    }
                    libc::AF_INET6 => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        Some(IpAddr::from(sa.sin6_addr.s6_addr))
                    }
                    _ => None,
                }
            };
            if addr == Some(ip) {
                // SAFETY: ifa_name is a NUL-terminated string.
                found = Some(unsafe { libc::if_nametoindex(ifa.ifa_name) });
                break;
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    found.filter(|i| *i != 0)
}

/// The dual-stack UDP socket for handshake messages.
fn bind_udp(port: u16) -> Result<UdpSocket, DaemonError> {
    let err = |source| DaemonError::Bind { port, source };
    let s = socket2_like::dual_stack_udp(port).map_err(err)?;
    UdpSocket::from_std(s).map_err(err)
}

mod socket2_like {
    use std::{net::UdpSocket, os::fd::FromRawFd};

    /// `[::]:port` with IPV6_V6ONLY off, non-blocking.
    pub fn dual_stack_udp(port: u16) -> std::io::Result<UdpSocket> {
        // SAFETY: plain socket calls on a descriptor we own.
        unsafe {
            let fd = libc::socket(
                libc::AF_INET6,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            );
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let sock = UdpSocket::from_raw_fd(fd);
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
                return Err(std::io::Error::last_os_error());
            }
            Ok(sock)
        }
    }
}

/// AF_PACKET socket bound to `wg0`, for injecting frames into the tunnel.
fn packet_socket(ifindex: u32) -> Result<OwnedFd, DaemonError> {
    // SAFETY: plain socket calls on a descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io("opening a packet socket on the tunnel")(
                std::io::Error::last_os_error(),
            ));
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd,
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            return Err(io("binding the packet socket to the tunnel")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(owned)
    }
}
