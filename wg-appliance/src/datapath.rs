//! Loading, attaching and reading the BPF data path.
//!
//! This module owns the BPF object embedded at build time (see `build.rs`),
//! attaches programs to interfaces (native XDP first, generic only when the
//! driver refuses native), and reads and writes the maps through typed
//! methods. It holds no protocol logic. Programs attached through bpf_link
//! detach when the [`Datapath`] is dropped, so a failed start leaves nothing
//! half-attached.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, RawFd},
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, CpuMap, DevMapHash, HashMap, IterableMap as _, MapData, PerCpuArray, RingBuf,
        XskMap,
    },
    programs::{Xdp, XdpMode},
    Ebpf,
};
use wg_ebpf_common::{
    maps::{Peer, PeerStats, Session, SessionState, TunnelConfig, MAX_CPUS, MAX_SESSIONS},
    Counter, DatapathConfig, CONFIG_KEY,
};

/// The BPF object built from `wg-ebpf` by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("WG_EBPF_OBJ"));

/// The embedded BPF object (empty in a build without BPF programs).
pub fn ebpf_object() -> &'static [u8] {
    EBPF_OBJECT
}

/// Program names in the object.
pub const WAN_RX: &str = "wan_rx";
pub const TUN_TX: &str = "tun_tx";
pub const WG_PASS: &str = "wg_pass";
pub const CRYPT_RX: &str = "crypt_rx";
pub const CRYPT_TX: &str = "crypt_tx";

/// Frames queued per CPU in front of the crypto programs. 2,048 absorbs a
/// 64 KiB TCP burst of full-size packets several times over.
const CPUMAP_QUEUE: u32 = 2048;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "this binary was built without BPF programs (WG_APPLIANCE_SKIP_EBPF=1); rebuild without it"
    )]
    NoObject,
    #[error("loading the BPF programs failed: {0}. Fix: run as root (or with CAP_BPF and CAP_NET_ADMIN) on a kernel with BTF (/sys/kernel/btf/vmlinux)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the BPF object has no {0}; the build is inconsistent, rebuild wg-appliance")]
    Missing(&'static str),
    #[error("BPF program {prog}: {source}")]
    Program {
        prog: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("BPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("BPF map {map}: {source}")]
    XdpMap {
        map: &'static str,
        #[source]
        source: Box<aya::maps::xdp::XdpMapError>,
    },
    #[error("attaching XDP to {ifname} failed in native mode ({native}) and in generic mode ({generic}). Fix: check that the interface exists in this network namespace (`ip link show {ifname}`) and that no other XDP program holds it (`ip link set dev {ifname} xdp off`)")]
    Attach {
        ifname: String,
        native: Box<aya::programs::ProgramError>,
        generic: Box<aya::programs::ProgramError>,
    },
    #[error("pinning: {0}. Fix: check that /run/wg-appliance/bpf is a BPF file system (mount -t bpf bpf /run/wg-appliance/bpf)")]
    Pin(String),
    #[error("BPF map {0} is full")]
    Full(&'static str),
    #[error("CPU {0} is not usable for steering (at most {MAX_CPUS} CPUs, numbered from 0, and online). Fix: choose CPUs from /sys/devices/system/cpu/online")]
    BadCpu(u32),
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map {
        map,
        source: source.into(),
    }
}

fn xdp_map_err(map: &'static str) -> impl FnOnce(aya::maps::xdp::XdpMapError) -> DatapathError {
    move |source| DatapathError::XdpMap {
        map,
        source: source.into(),
    }
}

fn prog_err(prog: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> DatapathError {
    move |source| DatapathError::Program {
        prog,
        source: source.into(),
    }
}

/// The XDP mode an attachment ended up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Run by the driver (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// Run by the kernel's generic path (`XDP_FLAGS_SKB_MODE`), slower.
    Generic,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

/// Which modes an attach may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModePolicy {
    /// Native, falling back to generic when the driver refuses native.
    #[default]
    Auto,
    Native,
    Generic,
}

/// What the tunnel programs need to know about the interface pair.
#[derive(Clone, Debug)]
pub struct TunnelSetup {
    /// `wg0`: the interface the kernel and the user see.
    pub wg_ifname: String,
    pub wg_mac: [u8; 6],
    pub wg_ifindex: u32,
    /// `wg0x`: its veth peer, where `tun_tx` runs.
    pub wgx_ifname: String,
    pub wgx_ifindex: u32,
    /// MTU of `wg0`.
    pub mtu: u16,
    /// TCP MSS to clamp to for inner IPv4 / IPv6 (0: off).
    pub mss_v4: u16,
    pub mss_v6: u16,
    /// Spread one tunnel per packet (true) or keep a peer on one CPU.
    pub per_packet: bool,
    /// CPUs to steer over.
    pub cpus: Vec<u32>,
    /// Test hook: REJECT_AFTER_TIME override in seconds (0: the protocol's).
    pub reject_after_time_secs: u32,
}

/// The loaded data path.
///
/// Maps are held by name apart from the object, so a data path loaded now
/// and one adopted from pins (after a control-plane restart) look the same
/// to the daemon. With [`Datapath::persist`], maps, the `wan_rx` program and
/// every XDP link are pinned in a directory of a BPF file system: they
/// outlive this process, and the tunnel keeps forwarding while no daemon
/// runs.
pub struct Datapath {
    /// The loaded object (None when adopted from pins).
    ebpf: Option<Ebpf>,
    maps: std::collections::HashMap<String, aya::maps::Map>,
    /// Programs reopened from pins, by name.
    adopted: std::collections::HashMap<&'static str, Xdp>,
    attached: Vec<(String, AttachMode)>,
    /// Where maps, programs and links are pinned, if they are.
    pins: Option<std::path::PathBuf>,
    /// Which `SESSION_STATE` slots are taken.
    slots: slots::Slots,
}

impl Datapath {
    /// Loads the programs and maps into the kernel and writes the
    /// configuration. Nothing is attached yet.
    pub fn load(listen_port: u16) -> Result<Self, DatapathError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(|e| DatapathError::Load(e.into()))?;
        let names: Vec<String> = ebpf.maps().map(|(n, _)| n.to_owned()).collect();
        let maps = names
            .into_iter()
            .filter_map(|n| ebpf.take_map(&n).map(|m| (n, m)))
            .collect();
        let mut dp = Self {
            ebpf: Some(ebpf),
            maps,
            adopted: Default::default(),
            attached: Vec::new(),
            pins: None,
            slots: slots::Slots::new(MAX_SESSIONS),
        };
        {
            let mut config: Array<_, DatapathConfig> =
                Array::try_from(dp.map_mut("CONFIG")?).map_err(map_err("CONFIG"))?;
            let value = DatapathConfig {
                listen_port,
                ..Default::default()
            };
            config
                .set(CONFIG_KEY, value, 0)
                .map_err(map_err("CONFIG"))?;
        }
        for name in [WAN_RX, WG_PASS, TUN_TX, CRYPT_RX, CRYPT_TX] {
            dp.xdp(name)?.load().map_err(prog_err(name))?;
        }
        Ok(dp)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DatapathError> {
        self.maps.get_mut(name).ok_or(DatapathError::Missing(name))
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DatapathError> {
        self.maps.get(name).ok_or(DatapathError::Missing(name))
    }

    fn xdp(&mut self, name: &'static str) -> Result<&mut Xdp, DatapathError> {
        if let Some(p) = self.adopted.get_mut(name) {
            return Ok(p);
        }
        let prog = self
            .ebpf
            .as_mut()
            .and_then(|e| e.program_mut(name))
            .ok_or(DatapathError::Missing(name))?;
        prog.try_into().map_err(prog_err(name))
    }

    /// Pins every map and the `wan_rx` program in `dir` (a directory on a
    /// BPF file system, created here), and every XDP link attached from now
    /// on. Call before attaching.
    pub fn persist(&mut self, dir: &std::path::Path) -> Result<(), DatapathError> {
        let pin_err =
            |what: String| move |e: aya::pin::PinError| DatapathError::Pin(format!("{what}: {e}"));
        // Only called for a data path loaded afresh: whatever is pinned there
        // belongs to an interface that no longer exists.
        let _ = std::fs::remove_dir_all(dir);
        // A second try: a daemon of another interface in this namespace
        // going down removes the (then empty) namespace directory, and can
        // do so between create_dir_all's parent and child.
        std::fs::create_dir_all(dir)
            .or_else(|_| std::fs::create_dir_all(dir))
            .map_err(|e| DatapathError::Pin(format!("creating {}: {e}", dir.display())))?;
        let mut r = Ok(());
        for (name, map) in &self.maps {
            // .rodata/.bss: the loader's own data sections, frozen and
            // reachable through the programs; nothing to adopt there.
            if name.starts_with('.') {
                continue;
            }
            r = map
                .pin(dir.join(format!("map_{name}")))
                .map_err(pin_err(format!("map {name}")));
            if r.is_err() {
                break;
            }
        }
        if r.is_ok() {
            r = self.xdp(WAN_RX).and_then(|p| {
                p.pin(dir.join(format!("prog_{WAN_RX}")))
                    .map_err(pin_err(WAN_RX.to_owned()))
            });
        }
        if r.is_err() {
            // Half a pin set would be adopted wrongly later.
            let _ = std::fs::remove_dir_all(dir);
            return r;
        }
        self.pins = Some(dir.to_owned());
        Ok(())
    }

    /// Reopens a data path pinned by an earlier [`Datapath::persist`]: its
    /// maps, its `wan_rx` program and the interfaces its links hold.
    pub fn adopt(dir: &std::path::Path) -> Result<Self, DatapathError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| DatapathError::Pin(format!("reading {}: {e}", dir.display())))?;
        let mut dp = Self {
            ebpf: None,
            maps: Default::default(),
            adopted: Default::default(),
            attached: Vec::new(),
            pins: Some(dir.to_owned()),
            slots: slots::Slots::new(MAX_SESSIONS),
        };
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = file.strip_prefix("map_") {
                let data = MapData::from_pin(e.path()).map_err(|source| DatapathError::Map {
                    map: "pinned map",
                    source: source.into(),
                })?;
                let map =
                    aya::maps::Map::from_map_data(data).map_err(|source| DatapathError::Map {
                        map: "pinned map",
                        source: source.into(),
                    })?;
                dp.maps.insert(name.to_owned(), map);
            } else if file == format!("prog_{WAN_RX}") {
                let p = Xdp::from_pin(e.path(), aya_obj::programs::XdpAttachType::Interface)
                    .map_err(prog_err(WAN_RX))?;
                dp.adopted.insert(WAN_RX, p);
            } else if let Some(rest) = file.strip_prefix("link_") {
                // link_<mode>_<ifname>
                if let Some((mode, ifname)) = rest.split_once('_') {
                    let mode = if mode == "generic" {
                        AttachMode::Generic
                    } else {
                        AttachMode::Native
                    };
                    dp.attached.push((ifname.to_owned(), mode));
                }
            }
        }
        if !dp.maps.contains_key("SESSIONS") {
            return Err(DatapathError::Pin(format!(
                "{} holds no pinned data path",
                dir.display()
            )));
        }
        if !dp.maps.contains_key("SESSION_STATE") {
            return Err(DatapathError::Pin(format!(
                "{} holds a data path of an older layout (no SESSION_STATE); restart the tunnel",
                dir.display()
            )));
        }
        let used: Vec<u32> = dp.sessions()?.iter().map(|(_, s)| s.slot).collect();
        dp.slots = slots::Slots::adopt(MAX_SESSIONS, used, std::time::Instant::now());
        Ok(dp)
    }

    /// Removes the pins: the links detach and the maps are freed once this
    /// process lets go of them (on `down`).
    pub fn unpin(&self) {
        if let Some(dir) = &self.pins {
            let _ = std::fs::remove_dir_all(dir);
            crate::persist::remove_empty_parent(dir);
        }
    }

    /// Where the data path is pinned, if it is.
    pub fn pin_dir(&self) -> Option<&std::path::Path> {
        self.pins.as_deref()
    }

    fn attach(
        &mut self,
        prog: &'static str,
        ifname: &str,
        policy: ModePolicy,
    ) -> Result<AttachMode, DatapathError> {
        let xdp = self.xdp(prog)?;
        let (mode, link_id) = match policy {
            ModePolicy::Native => (
                AttachMode::Native,
                xdp.attach(ifname, XdpMode::Driver)
                    .map_err(prog_err(prog))?,
            ),
            ModePolicy::Generic => (
                AttachMode::Generic,
                xdp.attach(ifname, XdpMode::Skb).map_err(prog_err(prog))?,
            ),
            ModePolicy::Auto => match xdp.attach(ifname, XdpMode::Driver) {
                Ok(id) => (AttachMode::Native, id),
                Err(native) => match xdp.attach(ifname, XdpMode::Skb) {
                    Ok(id) => {
                        tracing::warn!(interface = ifname, program = prog, error = %native, "native XDP refused; using generic XDP (slower)");
                        (AttachMode::Generic, id)
                    }
                    Err(generic) => {
                        return Err(DatapathError::Attach {
                            ifname: ifname.to_owned(),
                            native: native.into(),
                            generic: generic.into(),
                        })
                    }
                },
            },
        };
        if let Some(dir) = self.pins.clone() {
            // The link outlives this process through its pin.
            let link = self.xdp(prog)?.take_link(link_id).map_err(prog_err(prog))?;
            let link: aya::programs::links::FdLink =
                link.try_into()
                    .map_err(|e: aya::programs::links::LinkError| {
                        DatapathError::Pin(format!("link of {prog} on {ifname}: {e}"))
                    })?;
            link.pin(dir.join(format!("link_{mode}_{ifname}")))
                .map_err(|e| {
                    DatapathError::Pin(format!("pinning the link of {prog} on {ifname}: {e}"))
                })?;
        }
        tracing::info!(interface = ifname, program = prog, mode = %mode, "XDP program attached");
        self.attached.push((ifname.to_owned(), mode));
        Ok(mode)
    }

    /// Attaches `wan_rx` to `ifname` in the calling thread's network
    /// namespace, and registers it as an egress port. Returns the mode used.
    pub fn attach_wan(
        &mut self,
        ifname: &str,
        policy: ModePolicy,
    ) -> Result<AttachMode, DatapathError> {
        let mode = self.attach(WAN_RX, ifname, policy)?;
        if let Some(ifindex) = ifindex(ifname) {
            let mut ports =
                DevMapHash::try_from(self.map_mut("TX_PORTS")?).map_err(map_err("TX_PORTS"))?;
            ports
                .insert(ifindex, ifindex, None, 0)
                .map_err(xdp_map_err("TX_PORTS"))?;
        }
        Ok(mode)
    }

    /// Sets up the tunnel side: `wg_pass` on `wg0`, `tun_tx` on `wg0x`,
    /// the crypto programs on every steering CPU, and the tunnel config.
    /// Returns the XDP mode of `tun_tx`.
    pub fn attach_tunnel(
        &mut self,
        t: &TunnelSetup,
        policy: ModePolicy,
    ) -> Result<AttachMode, DatapathError> {
        let online = online_cpus();
        let mut cfg = TunnelConfig {
            wg_mac: t.wg_mac,
            mss_v4: t.mss_v4,
            mss_v6: t.mss_v6,
            mtu: t.mtu,
            wgx_ifindex: t.wgx_ifindex,
            steering: if t.per_packet {
                wg_ebpf_common::maps::STEER_PER_PACKET
            } else {
                wg_ebpf_common::maps::STEER_PER_PEER
            },
            reject_after_time_secs: t.reject_after_time_secs,
            wg_ifindex: t.wg_ifindex,
            ..Default::default()
        };
        for (i, &cpu) in t.cpus.iter().enumerate() {
            if cpu >= MAX_CPUS || !online.contains(&cpu) || i >= MAX_CPUS as usize {
                return Err(DatapathError::BadCpu(cpu));
            }
            cfg.cpus[i] = cpu;
        }
        cfg.ncpus = t.cpus.len() as u32;
        {
            let rx_fd = self
                .xdp(CRYPT_RX)?
                .fd()
                .map_err(prog_err(CRYPT_RX))?
                .try_clone()
                .map_err(|e| DatapathError::Program {
                    prog: CRYPT_RX,
                    source: Box::new(aya::programs::ProgramError::IOError(e)),
                })?;
            let tx_fd = self
                .xdp(CRYPT_TX)?
                .fd()
                .map_err(prog_err(CRYPT_TX))?
                .try_clone()
                .map_err(|e| DatapathError::Program {
                    prog: CRYPT_TX,
                    source: Box::new(aya::programs::ProgramError::IOError(e)),
                })?;
            for (name, fd) in [("CPUS_RX", &rx_fd), ("CPUS_TX", &tx_fd)] {
                let mut cpumap = CpuMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
                for &cpu in &t.cpus {
                    cpumap
                        .set(cpu, CPUMAP_QUEUE, Some(fd), 0)
                        .map_err(xdp_map_err(name))?;
                }
            }
        }
        {
            let mut ports =
                DevMapHash::try_from(self.map_mut("TX_PORTS")?).map_err(map_err("TX_PORTS"))?;
            ports
                .insert(t.wgx_ifindex, t.wgx_ifindex, None, 0)
                .map_err(xdp_map_err("TX_PORTS"))?;
        }
        // The config goes in before the programs are attached, so that
        // `wan_rx` starts steering only once everything behind it exists.
        self.attach(WG_PASS, &t.wg_ifname, policy)?;
        let mode = self.attach(TUN_TX, &t.wgx_ifname, policy)?;
        let mut tunnel: Array<_, TunnelConfig> =
            Array::try_from(self.map_mut("TUNNEL")?).map_err(map_err("TUNNEL"))?;
        tunnel.set(0, cfg, 0).map_err(map_err("TUNNEL"))?;
        Ok(mode)
    }

    /// Changes the UDP port the classifier treats as WireGuard's.
    pub fn set_listen_port(&mut self, listen_port: u16) -> Result<(), DatapathError> {
        self.update_config(|c| c.listen_port = listen_port)
    }

    /// Handshake messages per second accepted from one source address in
    /// XDP (0: the built-in default).
    pub fn set_handshake_rate(&mut self, per_second: u32) -> Result<(), DatapathError> {
        self.update_config(|c| c.hs_rate = per_second)
    }

    fn update_config(&mut self, f: impl FnOnce(&mut DatapathConfig)) -> Result<(), DatapathError> {
        let mut config: Array<_, DatapathConfig> =
            Array::try_from(self.map_mut("CONFIG")?).map_err(map_err("CONFIG"))?;
        let mut value = config.get(&CONFIG_KEY, 0).map_err(map_err("CONFIG"))?;
        f(&mut value);
        config.set(CONFIG_KEY, value, 0).map_err(map_err("CONFIG"))
    }

    /// Interfaces attached so far and their modes.
    pub fn attached(&self) -> &[(String, AttachMode)] {
        &self.attached
    }

    /// Writes a peer slot.
    pub fn set_peer(&mut self, id: u32, peer: &Peer) -> Result<(), DatapathError> {
        let mut peers: Array<_, Peer> =
            Array::try_from(self.map_mut("PEERS")?).map_err(map_err("PEERS"))?;
        peers.set(id, peer, 0).map_err(map_err("PEERS"))
    }

    /// Sets the session peer `id` sends with (its local receiver index; 0:
    /// none). One u32 in a map of its own, so it never overwrites what the
    /// data path writes into the peer slot.
    pub fn set_current(&mut self, id: u32, index: u32) -> Result<(), DatapathError> {
        let mut m: Array<_, u32> =
            Array::try_from(self.map_mut("PEER_CURRENT")?).map_err(map_err("PEER_CURRENT"))?;
        m.set(id, index, 0).map_err(map_err("PEER_CURRENT"))
    }

    /// The session peer `id` sends with (0: none); the data path switches it
    /// when a responder's session is confirmed.
    pub fn current(&self, id: u32) -> Result<u32, DatapathError> {
        let m: Array<_, u32> =
            Array::try_from(self.map("PEER_CURRENT")?).map_err(map_err("PEER_CURRENT"))?;
        m.get(&id, 0).map_err(map_err("PEER_CURRENT"))
    }

    /// Reads a peer slot (the data path updates endpoints on roaming).
    pub fn peer(&self, id: u32) -> Result<Peer, DatapathError> {
        let peers: Array<_, Peer> =
            Array::try_from(self.map("PEERS")?).map_err(map_err("PEERS"))?;
        peers.get(&id, 0).map_err(map_err("PEERS"))
    }

    /// Routes `prefix` to peer `id` (and accepts it as a source from them).
    pub fn add_allowed(
        &mut self,
        addr: IpAddr,
        prefix_len: u8,
        id: u32,
    ) -> Result<(), DatapathError> {
        match addr {
            IpAddr::V4(a) => {
                let mut t: LpmTrie<_, [u8; 4], u32> =
                    LpmTrie::try_from(self.map_mut("ALLOWED_V4")?)
                        .map_err(map_err("ALLOWED_V4"))?;
                t.insert(&Key::new(prefix_len as u32, a.octets()), id, 0)
                    .map_err(map_err("ALLOWED_V4"))
            }
            IpAddr::V6(a) => {
                let mut t: LpmTrie<_, [u8; 16], u32> =
                    LpmTrie::try_from(self.map_mut("ALLOWED_V6")?)
                        .map_err(map_err("ALLOWED_V6"))?;
                t.insert(&Key::new(prefix_len as u32, a.octets()), id, 0)
                    .map_err(map_err("ALLOWED_V6"))
            }
        }
    }

    /// Removes a prefix (absent prefixes are not an error).
    pub fn remove_allowed(&mut self, addr: IpAddr, prefix_len: u8) -> Result<(), DatapathError> {
        let r = match addr {
            IpAddr::V4(a) => {
                let mut t: LpmTrie<_, [u8; 4], u32> =
                    LpmTrie::try_from(self.map_mut("ALLOWED_V4")?)
                        .map_err(map_err("ALLOWED_V4"))?;
                t.remove(&Key::new(prefix_len as u32, a.octets()))
            }
            IpAddr::V6(a) => {
                let mut t: LpmTrie<_, [u8; 16], u32> =
                    LpmTrie::try_from(self.map_mut("ALLOWED_V6")?)
                        .map_err(map_err("ALLOWED_V6"))?;
                t.remove(&Key::new(prefix_len as u32, a.octets()))
            }
        };
        match r {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("ALLOWED")(e)),
        }
    }

    /// The peer whose AllowedIPs cover `addr` (longest prefix match, as the
    /// data path looks it up), if any. One map lookup syscall.
    pub fn lookup_allowed(&self, addr: IpAddr) -> Result<Option<u32>, DatapathError> {
        let r = match addr {
            IpAddr::V4(a) => {
                let t: LpmTrie<_, [u8; 4], u32> =
                    LpmTrie::try_from(self.map("ALLOWED_V4")?).map_err(map_err("ALLOWED_V4"))?;
                t.get(&Key::new(32, a.octets()), 0)
            }
            IpAddr::V6(a) => {
                let t: LpmTrie<_, [u8; 16], u32> =
                    LpmTrie::try_from(self.map("ALLOWED_V6")?).map_err(map_err("ALLOWED_V6"))?;
                t.get(&Key::new(128, a.octets()), 0)
            }
        };
        match r {
            Ok(id) => Ok(Some(id)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("ALLOWED")(e)),
        }
    }

    /// Installs the session for local receiver index `index` (replacing one
    /// of the same index): takes a `SESSION_STATE` slot, zeroes it for
    /// `index`, then writes the keys pointing at it. `s.slot` is ignored.
    pub fn install_session(&mut self, index: u32, s: &Session) -> Result<(), DatapathError> {
        let now = std::time::Instant::now();
        let old = self.session(index)?;
        let slot = self
            .slots
            .take(now)
            .ok_or(DatapathError::Full("SESSION_STATE"))?;
        let r = self
            .write_state(slot, &SessionState::new(index))
            .and_then(|()| {
                let mut m: HashMap<_, u32, Session> =
                    HashMap::try_from(self.map_mut("SESSIONS")?).map_err(map_err("SESSIONS"))?;
                m.insert(index, Session { slot, ..*s }, 0)
                    .map_err(map_err("SESSIONS"))
            });
        match (&r, old) {
            (Err(_), _) => self.slots.free(slot, now),
            (Ok(()), Some(o)) => self.slots.free(o.slot, now),
            (Ok(()), None) => {}
        }
        r
    }

    fn write_state(&mut self, slot: u32, st: &SessionState) -> Result<(), DatapathError> {
        let mut a: Array<_, SessionState> =
            Array::try_from(self.map_mut("SESSION_STATE")?).map_err(map_err("SESSION_STATE"))?;
        a.set(slot, st, 0).map_err(map_err("SESSION_STATE"))
    }

    /// The counters and replay window of session `index`, if it exists.
    pub fn session_state(&self, index: u32) -> Result<Option<SessionState>, DatapathError> {
        let Some(s) = self.session(index)? else {
            return Ok(None);
        };
        let a: Array<_, SessionState> =
            Array::try_from(self.map("SESSION_STATE")?).map_err(map_err("SESSION_STATE"))?;
        let st = a.get(&s.slot, 0).map_err(map_err("SESSION_STATE"))?;
        Ok((st.owner_index == index).then_some(st))
    }

    /// A file descriptor of `SESSION_STATE` of its own, to mmap (the fast
    /// path's workers share the counters and replay windows through it).
    pub fn session_state_fd(&self) -> Result<std::os::fd::OwnedFd, DatapathError> {
        let a: Array<&MapData, SessionState> =
            Array::try_from(self.map("SESSION_STATE")?).map_err(map_err("SESSION_STATE"))?;
        a.map().fd().as_fd().try_clone_to_owned().map_err(|e| {
            map_err("SESSION_STATE")(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            }))
        })
    }

    /// A file descriptor of its own for map `name` (to mmap a
    /// `BPF_F_MMAPABLE` array).
    pub fn map_fd(&self, name: &'static str) -> Result<std::os::fd::OwnedFd, DatapathError> {
        let m = self.map(name)?;
        let data: &MapData = match m {
            aya::maps::Map::Array(d) => d,
            _ => return Err(DatapathError::Missing(name)),
        };
        data.fd().as_fd().try_clone_to_owned().map_err(|e| {
            map_err(name)(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            }))
        })
    }

    /// Registers the worker's AF_XDP socket on `wg0x` queue `queue` in
    /// `XSKS_TX` (`tun_tx` hands it the packets of `FAST_TX` peers).
    pub fn set_xsk_tx(&mut self, queue: u32, fd: &impl AsRawFd) -> Result<(), DatapathError> {
        let mut m = XskMap::try_from(self.map_mut("XSKS_TX")?).map_err(map_err("XSKS_TX"))?;
        m.set(queue, fd.as_raw_fd(), 0).map_err(map_err("XSKS_TX"))
    }

    /// Number of `SESSION_STATE` slots.
    pub fn session_state_entries(&self) -> u32 {
        MAX_SESSIONS
    }

    /// A handle of its own on map `name` (for a thread beside the daemon).
    pub fn dup_map(&self, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
        let m = self.map(name)?;
        let data: &MapData = match m {
            aya::maps::Map::Array(d)
            | aya::maps::Map::HashMap(d)
            | aya::maps::Map::PerCpuArray(d) => d,
            _ => return Err(DatapathError::Missing(name)),
        };
        let id = data.info().map_err(map_err(name))?.id();
        let data = MapData::from_id(id).map_err(map_err(name))?;
        aya::maps::Map::from_map_data(data).map_err(map_err(name))
    }

    /// Registers the AF_XDP socket of the worker serving WAN receive queue
    /// `queue` in `XSKS` (`wan_rx` redirects the queue's data there).
    pub fn set_xsk(&mut self, queue: u32, fd: &impl AsRawFd) -> Result<(), DatapathError> {
        let mut m = XskMap::try_from(self.map_mut("XSKS")?).map_err(map_err("XSKS"))?;
        m.set(queue, fd.as_raw_fd(), 0).map_err(map_err("XSKS"))
    }

    /// Sessions installed (slots in use).
    pub fn session_slots_in_use(&self) -> usize {
        self.slots.in_use()
    }

    /// Reads a session back (tests, and the control plane's view of the
    /// send counter).
    pub fn session(&self, index: u32) -> Result<Option<Session>, DatapathError> {
        let m: HashMap<_, u32, Session> =
            HashMap::try_from(self.map("SESSIONS")?).map_err(map_err("SESSIONS"))?;
        match m.get(&index, 0) {
            Ok(s) => Ok(Some(s)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("SESSIONS")(e)),
        }
    }

    /// Every session in the data path.
    pub fn sessions(&self) -> Result<Vec<(u32, Session)>, DatapathError> {
        let m: HashMap<_, u32, Session> =
            HashMap::try_from(self.map("SESSIONS")?).map_err(map_err("SESSIONS"))?;
        let mut out = Vec::new();
        for item in m.iter() {
            let (k, v) = item.map_err(map_err("SESSIONS"))?;
            out.push((k, v));
        }
        Ok(out)
    }

    /// Removes a session; absent is fine. Its state slot rests before
    /// reuse (see `slots`).
    pub fn remove_session(&mut self, index: u32) -> Result<(), DatapathError> {
        let old = self.session(index)?;
        let mut m: HashMap<_, u32, Session> =
            HashMap::try_from(self.map_mut("SESSIONS")?).map_err(map_err("SESSIONS"))?;
        match m.remove(&index) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err("SESSIONS")(e)),
        }
        if let Some(o) = old {
            self.slots.free(o.slot, std::time::Instant::now());
        }
        Ok(())
    }

    /// A peer's traffic counters summed over CPUs; the timestamps are the
    /// latest of any CPU.
    pub fn peer_stats(&self, id: u32) -> Result<PeerStats, DatapathError> {
        let m: PerCpuArray<_, PeerStats> =
            PerCpuArray::try_from(self.map("PEER_STATS")?).map_err(map_err("PEER_STATS"))?;
        let per_cpu = m.get(&id, 0).map_err(map_err("PEER_STATS"))?;
        let mut out = PeerStats::default();
        for s in per_cpu.iter() {
            out.rx_bytes += s.rx_bytes;
            out.rx_packets += s.rx_packets;
            out.tx_bytes += s.tx_bytes;
            out.tx_packets += s.tx_packets;
            out.last_rx_ns = out.last_rx_ns.max(s.last_rx_ns);
            out.last_tx_ns = out.last_tx_ns.max(s.last_tx_ns);
            out.last_rx_data_ns = out.last_rx_data_ns.max(s.last_rx_data_ns);
            out.last_tx_data_ns = out.last_tx_data_ns.max(s.last_tx_data_ns);
        }
        Ok(out)
    }

    /// Takes the event ring buffer (once) for the control plane's loop.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, DatapathError> {
        let map = self
            .maps
            .remove("EVENTS")
            .ok_or(DatapathError::Missing("EVENTS"))?;
        RingBuf::try_from(map).map_err(map_err("EVENTS"))
    }

    /// All counters, summed over all CPUs.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let per_cpu = self.counters_per_cpu()?;
        Ok(Counters(
            per_cpu
                .into_iter()
                .map(|(c, v)| (c, v.iter().sum()))
                .collect(),
        ))
    }

    /// One counter, summed over CPUs: one map lookup, where
    /// [`Datapath::counters`] makes one per counter.
    pub fn counter(&self, c: Counter) -> Result<u64, DatapathError> {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map("STATS")?).map_err(map_err("STATS"))?;
        let per_cpu = stats.get(&(c as u32), 0).map_err(map_err("STATS"))?;
        Ok(per_cpu.iter().sum())
    }

    /// All counters, one value per possible CPU (index = CPU number).
    pub fn counters_per_cpu(&self) -> Result<BTreeMap<Counter, Vec<u64>>, DatapathError> {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map("STATS")?).map_err(map_err("STATS"))?;
        let mut out = BTreeMap::new();
        for c in Counter::ALL {
            let per_cpu = stats.get(&(c as u32), 0).map_err(map_err("STATS"))?;
            out.insert(c, per_cpu.iter().copied().collect());
        }
        Ok(out)
    }

    /// The raw fd of a loaded program, for BPF_PROG_TEST_RUN.
    pub fn prog_fd(&mut self, name: &'static str) -> Result<RawFd, DatapathError> {
        let fd = self.xdp(name)?.fd().map_err(prog_err(name))?;
        Ok(fd.as_fd().as_raw_fd())
    }

    /// The raw fd of the `wan_rx` program, for BPF_PROG_TEST_RUN.
    pub fn wan_rx_fd(&mut self) -> Result<RawFd, DatapathError> {
        self.prog_fd(WAN_RX)
    }
}

/// ifindex of `ifname` in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> Option<u32> {
    let c = std::ffi::CString::new(ifname).ok()?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// CPUs currently online (from /sys; all possible CPUs if unreadable).
pub fn online_cpus() -> Vec<u32> {
    let parsed = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()));
    parsed.unwrap_or_else(|| {
        (0..std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1))
            .collect()
    })
}

/// Parses a kernel CPU list such as `0-3,6,8-9`.
pub fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().ok()?),
        }
    }
    Some(out)
}

/// A snapshot of the data path's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<Counter, u64>);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0.get(&c).copied().unwrap_or(0)
    }

    /// Counter-wise difference `self - earlier` (saturating).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .map(|(c, v)| (*c, v.saturating_sub(earlier.get(*c))))
                .collect(),
        )
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (c, v) in &self.0 {
            writeln!(f, "{:<28} {v}", c.name())?;
        }
        Ok(())
    }
}

pub mod aead_probe;
mod slots;
pub mod test_run;

#[cfg(test)]
mod tests {
    use super::parse_cpu_list;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6"), Some(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
