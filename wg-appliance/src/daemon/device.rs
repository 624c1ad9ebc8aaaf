//! The device's life: bring-up (fresh, or adopting the data path a killed
//! daemon left running), the UDP socket and settings, saved state, teardown.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use ipnet::IpNet;
use tokio::{net::UdpSocket, sync::mpsc};

use super::inject::packet_socket;
use super::peers::endpoint_of;
use super::{io, Daemon, DaemonError, HandshakeStats};
use crate::{
    allowed_ips::AllowedIps,
    config::PeerSpec,
    cookie::LoadDetector,
    datapath::{AttachMode, Datapath, ModePolicy, TunnelSetup},
    keys::PrivateKey,
    link::{self, TunnelLink},
};

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
    /// AF_XDP fast path or BPF (`DataPath =`).
    pub data_path: crate::config::DataPathSetting,
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
    /// AF_XDP fast path or BPF (`DataPath =`).
    pub data_path: crate::config::DataPathSetting,
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
    pins: crate::persist::PinLifetime,
    wan: Vec<(String, AttachMode)>,
    tunnel_mode: AttachMode,
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
            data_path: spec.data_path,
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
            if let Some(d) = Self::adopt_or_clear(&opts, &handle).await {
                return Ok(d);
            }
        }
        let ifname = opts.ifname.clone();
        // No such interface here: pins or state under its name are stale (a
        // namespace that died and whose inode number a new one reuses).
        if link::ifindex(&ifname).is_none() {
            crate::persist::remove_pins_and_state(&ifname);
        }
        let tlink = link::create_tunnel(&handle, &ifname, opts.mtu).await?;
        match Self::start_on(opts, listen_port, endpoints, tlink.clone(), handle.clone()).await {
            Ok(d) => Ok(d),
            Err(e) => {
                // Nothing half made: the link, and the pins made before the
                // failure (programs, links and maps die with them).
                crate::persist::remove_pins_and_state(&ifname);
                let _ = link::delete(&handle, &tlink.name).await;
                Err(e)
            }
        }
    }

    /// The interface exists already. A daemon that died left its data path
    /// running: adopt it. Pins the appliance made are its own, so where
    /// they cannot be adopted (they died with a daemon that had to mount
    /// its own pin file system, or it was killed before it was configured,
    /// or the state is damaged), its tunnel pair is removed with them and
    /// the caller starts afresh: a restart never refuses. An interface the
    /// appliance did not make is left alone (creating it then fails with a
    /// clear error).
    async fn adopt_or_clear(opts: &InterfaceOptions, handle: &rtnetlink::Handle) -> Option<Self> {
        let ifname = &opts.ifname;
        if !link::is_appliance_tunnel(handle, ifname).await {
            return None;
        }
        let why = match (
            crate::persist::pin_dir(ifname),
            crate::persist::state_path(ifname),
        ) {
            (Ok(dir), Some(state)) if dir.exists() && state.exists() => {
                match Self::adopt(opts.clone(), handle.clone(), dir, state).await {
                    Ok(d) => return Some(d),
                    Err(e) => format!("adopting it failed ({e})"),
                }
            }
            (Ok(dir), _) if !dir.exists() => {
                "its pins are gone (they died with a daemon that mounted its own pin file system)"
                    .to_owned()
            }
            _ => {
                "it has no saved state (its daemon was killed before it was configured)".to_owned()
            }
        };
        tracing::warn!(
            interface = %ifname,
            "{ifname} was left by an earlier daemon, but {why}: removing it and starting it afresh (its peers re-handshake)"
        );
        crate::persist::remove_pins_and_state(ifname);
        if let Err(e) = link::delete(handle, ifname).await {
            tracing::warn!(interface = %ifname, error = %e, "removing the leftover interface failed");
        }
        None
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
            pins: crate::persist::pin_lifetime(),
            wan,
            tunnel_mode,
        });
        d.set_private_key(state.private_key.clone());
        // Key ages go on from where the daemon before left them.
        if let Some(t) = state.private_key_set_at {
            d.private_key_set_at = Some(from_unix_secs(t));
        }
        let now = d.now();
        for (id, spec) in state.peers {
            let mut st = d.new_peer_state(spec);
            if let (Some(t), Some(_)) = (state.psk_set_at.get(&id), &st.spec.preshared_key) {
                st.psk_set_at = Some(from_unix_secs(*t));
            }
            // Where the data path last sent to (it may have roamed), and
            // its counters so far.
            st.endpoint =
                d.dp.peer(id)
                    .ok()
                    .as_ref()
                    .and_then(endpoint_of)
                    .or(st.spec.endpoint);
            st.stats = d.dp.peer_stats(id).unwrap_or_default();
            d.restore_sessions(id, &mut st, now)?;
            for net in &st.spec.allowed_ips {
                d.allowed.insert(*net, id);
            }
            tracing::info!(peer = %st.spec.public_key.short(), id, "peer adopted");
            d.insert_peer(id, st);
        }
        tracing::info!(
            interface = %d.link.name,
            listen_port = d.listen_port,
            sessions = d.by_index.len(),
            "adopted the running data path (hitless restart)"
        );
        d.start_fast_path()?;
        Ok(d)
    }

    /// A daemon over a data path, link and sockets, with no key or peers yet.
    fn assemble(p: Parts) -> Self {
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (done_tx, hs_done) = mpsc::unbounded_channel();
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        Daemon {
            rekey_after_time: p.opts.rekey_after_time,
            dp: p.dp,
            link: p.link,
            handle: p.handle,
            opts: p.opts,
            private_key: None,
            private_key_set_at: None,
            identity: None,
            checker: None,
            load: LoadDetector::new(),
            peers: BTreeMap::new(),
            by_key: HashMap::new(),
            allowed: AllowedIps::new(),
            by_index: HashMap::new(),
            sock: p.sock,
            listen_port: p.listen_port,
            fwmark: p.fwmark,
            inject: p.inject,
            state_path: p.state_path,
            pins: p.pins,
            wan: p.wan,
            tunnel_mode: p.tunnel_mode,
            hs_stats: HandshakeStats::default(),
            hs_pool: super::hs_pool::HandshakePool::new(workers, done_tx),
            hs_done,
            hs_limited_seen: 0,
            hs_limited_at: None,
            hs_rate_limited: false,
            ticks: 0,
            cmd_tx,
            cmd_rx,
            peer_source: None,
            fast: None,
        }
    }

    /// Saves the configuration for a restarted daemon (see `persist`).
    pub(super) fn save_state(&self) {
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
            private_key_set_at: self.private_key_set_at.and_then(unix_secs),
            psk_set_at: self
                .peers
                .iter()
                .filter_map(|(id, p)| Some((*id, unix_secs(p.psk_set_at?)?)))
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
        let (state_path, pins) = match crate::persist::pin_dir(&opts.ifname)
            .and_then(|dir| dp.persist(&dir).map_err(|e| e.to_string()))
        {
            Ok(()) => (
                crate::persist::state_path(&opts.ifname),
                crate::persist::pin_lifetime(),
            ),
            Err(e) => (None, crate::persist::PinLifetime::NotPinned(e)),
        };
        if !pins.hitless() {
            tracing::warn!(interface = %opts.ifname, "{}", pins.describe());
        }
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
            pins,
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
        d.start_fast_path()?;
        Ok(d)
    }

    /// Attaches `wan_rx` where traffic to `endpoints` (or the default
    /// route) leaves, unless WAN interfaces were named. Idempotent.
    pub(super) async fn attach_wans(
        &mut self,
        endpoints: &[SocketAddr],
    ) -> Result<(), DaemonError> {
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

    /// Handshake messages per second and source let through by XDP.
    pub fn set_handshake_rate(&mut self, per_second: u32) -> Result<(), DaemonError> {
        self.opts.handshake_rate = Some(per_second);
        Ok(self.dp.set_handshake_rate(per_second)?)
    }

    pub(super) async fn set_listen_port(&mut self, port: u16) -> Result<(), DaemonError> {
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
        self.fast_sync();
        tracing::info!(listen_port = port, "listening");
        Ok(())
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

pub(super) fn apply_fwmark(sock: &UdpSocket, mark: u32) {
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
pub(super) fn bind_udp(port: u16) -> Result<UdpSocket, DaemonError> {
    let err = |error| DaemonError::Bind { port, error };
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
        // Room for a burst of handshake messages (4 MiB: ~28,000 of them,
        // beyond the 4,096 the worker queue holds) so a legitimate peer's
        // retry is not lost behind a flood's burst; past rmem_max as root,
        // best effort otherwise.
        let rcvbuf: libc::c_int = 4 << 20;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            if libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &rcvbuf as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            ) == 0
            {
                break;
            }
        }
        super::udp::enable_pktinfo(fd);
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

fn unix_secs(t: std::time::SystemTime) -> Option<u64> {
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

fn from_unix_secs(secs: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(secs)
}
