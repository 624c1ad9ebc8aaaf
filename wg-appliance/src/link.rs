//! The tunnel interface pair and WAN discovery, through rtnetlink.
//!
//! `wg0` is what the kernel and the user see (addresses, routes, MTU);
//! `wg0x`, its veth peer, belongs to the appliance: `tun_tx` runs there and
//! decrypted frames are redirected into it. Invariants set here, all of them
//! needed by the data path (see docs/architecture.md, veth facts):
//! - `wg0` is NOARP (routed packets reach `wg0x` without neighbours) and has
//!   no IPv6 link-local address (no ND/MLD chatter into the tunnel);
//! - `wg0` has tx checksumming, scatter-gather, TSO and GSO off, so every
//!   packet reaching `tun_tx` is a single, fully checksummed IP packet;
//! - both ends are up and have the tunnel MTU.

use std::{
    ffi::CString,
    net::{IpAddr, SocketAddr, UdpSocket},
};

use futures::TryStreamExt as _;
use rtnetlink::{Handle, LinkUnspec, LinkVeth};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("netlink: {0}. Fix: run as root (CAP_NET_ADMIN) in the intended network namespace")]
    Netlink(String),
    #[error("interface name {0:?} is not usable: it must be 1 to 14 characters (the appliance adds an \"x\" for its side), without '/', ':' or whitespace. Fix: choose a name such as wg0")]
    BadName(String),
    #[error("interface {0} already exists. Fix: choose another name, or remove it (`ip link del {0}`) if it is left over")]
    Exists(String),
    #[error("interface {0} not found")]
    NotFound(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn nl<E: std::fmt::Display>(e: E) -> LinkError {
    LinkError::Netlink(e.to_string())
}

/// Name of the appliance's side of the pair.
pub fn peer_name(ifname: &str) -> String {
    format!("{ifname}x")
}

/// Checks an interface name for `wg0`, leaving room for the `x` suffix.
pub fn check_name(ifname: &str) -> Result<(), LinkError> {
    let ok = !ifname.is_empty()
        && ifname.len() <= 14
        && !ifname.contains(['/', ':'])
        && !ifname.chars().any(char::is_whitespace)
        && ifname != "."
        && ifname != "..";
    if ok {
        Ok(())
    } else {
        Err(LinkError::BadName(ifname.to_owned()))
    }
}

/// Interface index of `name` in this thread's network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The created pair.
#[derive(Debug, Clone)]
pub struct TunnelLink {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    pub peer_name: String,
    pub peer_index: u32,
    pub mtu: u16,
}

/// Creates `ifname`/`ifname`x with the invariants of this module.
pub async fn create_tunnel(
    handle: &Handle,
    ifname: &str,
    mtu: u16,
) -> Result<TunnelLink, LinkError> {
    check_name(ifname)?;
    let peer = peer_name(ifname);
    for n in [ifname, peer.as_str()] {
        if ifindex(n).is_some() {
            return Err(LinkError::Exists(n.to_owned()));
        }
    }
    handle
        .link()
        .add(LinkVeth::new(ifname, &peer).build())
        .execute()
        .await
        .map_err(nl)?;
    let result = configure(handle, ifname, &peer, mtu).await;
    if result.is_err() {
        // Leave nothing half made.
        let _ = delete(handle, ifname).await;
    }
    result
}

async fn configure(
    handle: &Handle,
    ifname: &str,
    peer: &str,
    mtu: u16,
) -> Result<TunnelLink, LinkError> {
    let index = ifindex(ifname).ok_or_else(|| LinkError::NotFound(ifname.to_owned()))?;
    let peer_index = ifindex(peer).ok_or_else(|| LinkError::NotFound(peer.to_owned()))?;
    // No IPv6 link-local on wg0 (set before it goes up) and no duplicate
    // address detection: the tunnel is point to point.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{ifname}/addr_gen_mode"),
        "1",
    );
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad"), "0");
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{peer}/disable_ipv6"), "1");
    // The XDP FIB lookup that routes encrypted packets is made as if they
    // arrived on wg0, and the kernel answers it only for interfaces with
    // forwarding on. (It also lets the kernel route tunnel traffic onward,
    // which a gateway does anyway; AllowedIPs still bound the sources.)
    for fam in ["ipv4", "ipv6"] {
        std::fs::write(format!("/proc/sys/net/{fam}/conf/{ifname}/forwarding"), "1").map_err(
            |source| LinkError::Io {
                what: format!("enabling {fam} forwarding on {ifname}"),
                source,
            },
        )?;
    }
    ethtool_off(ifname)?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .arp(false)
                // As a kernel WireGuard interface: no multicast (no IGMP/MLD
                // reports into a tunnel with no peer for them).
                .multicast(false)
                .mtu(mtu as u32)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl)?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(peer_index)
                .mtu(mtu as u32 + 100)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl)?;
    let mac = mac_of(ifname)?;
    Ok(TunnelLink {
        name: ifname.to_owned(),
        index,
        mac,
        peer_name: peer.to_owned(),
        peer_index,
        mtu,
    })
}

/// The pair as it already exists (a restarted daemon adopting it).
pub fn existing(ifname: &str) -> Result<TunnelLink, LinkError> {
    let peer = peer_name(ifname);
    let index = ifindex(ifname).ok_or_else(|| LinkError::NotFound(ifname.to_owned()))?;
    let peer_index = ifindex(&peer).ok_or_else(|| LinkError::NotFound(peer.clone()))?;
    let mtu = std::fs::read_to_string(format!("/sys/class/net/{ifname}/mtu"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1420);
    Ok(TunnelLink {
        name: ifname.to_owned(),
        index,
        mac: mac_of(ifname)?,
        peer_name: peer,
        peer_index,
        mtu,
    })
}

/// Whether `ifname` is a tunnel pair this appliance made: a veth whose peer
/// is `<ifname>x`, each the other's link. (A restart that finds one without
/// pins to adopt may remove it; anything else it must leave alone.)
pub async fn is_appliance_tunnel(handle: &Handle, ifname: &str) -> bool {
    use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
    let (Some(index), Some(peer_index)) = (ifindex(ifname), ifindex(&peer_name(ifname))) else {
        return false;
    };
    let mut links = handle.link().get().match_index(index).execute();
    let Ok(Some(msg)) = links.try_next().await else {
        return false;
    };
    let mut is_veth = false;
    let mut link = None;
    for a in &msg.attributes {
        match a {
            LinkAttribute::Link(l) => link = Some(*l),
            LinkAttribute::LinkInfo(infos) => {
                is_veth |= infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    is_veth && link == Some(peer_index)
}

/// Deletes `ifname` (and with it its veth peer). Absent is fine.
pub async fn delete(handle: &Handle, ifname: &str) -> Result<(), LinkError> {
    let Some(index) = ifindex(ifname) else {
        return Ok(());
    };
    handle.link().del(index).execute().await.map_err(nl)
}

/// Adds an address to an interface.
pub async fn add_address(
    handle: &Handle,
    index: u32,
    addr: IpAddr,
    prefix: u8,
) -> Result<(), LinkError> {
    match handle.address().add(index, addr, prefix).execute().await {
        Ok(()) => Ok(()),
        // Already there (an adopted interface keeps its addresses).
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(nl(e)),
    }
}

/// Makes the kernel resolve the neighbour (ARP/NDP) `addr` on `index`, as
/// `ip neigh replace <addr> dev <if> use` does (NTF_USE: "treat as used",
/// which starts resolution of an entry that is missing or stale). The data
/// path needs valid entries for `bpf_fib_lookup` to give it MACs, and its
/// own traffic never makes the kernel resolve one. The entry, if created, is
/// an ordinary one (not permanent: it ages and is collected as usual).
pub async fn resolve_neighbour(handle: &Handle, index: u32, addr: IpAddr) -> Result<(), LinkError> {
    use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
    handle
        .neighbours()
        .add(index, addr)
        .state(NeighbourState::None)
        .flags(NeighbourFlags::Use)
        .replace()
        .execute()
        .await
        .map_err(nl)
}

/// The interfaces whose routes carry traffic to `endpoints`, plus those with
/// a default route: where `wan_rx` belongs by default; failing both, every
/// interface with an address. (The caller skips its own tunnel pair.) Found by asking the
/// kernel which source address it would use (a connected UDP socket sends
/// nothing) and which interface holds that address.
pub async fn wan_interfaces(
    handle: &Handle,
    endpoints: &[SocketAddr],
) -> Result<Vec<String>, LinkError> {
    let mut names = Vec::new();
    let mut probes: Vec<SocketAddr> = endpoints.to_vec();
    probes.push("192.0.2.1:9".parse().expect("literal")); // TEST-NET-1: the default route
    probes.push("[2001:db8::1]:9".parse().expect("literal"));
    let mut local_addrs = Vec::new();
    for p in probes {
        let bind: SocketAddr = if p.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .expect("literal");
        if let Ok(s) = UdpSocket::bind(bind) {
            if s.connect(p).is_ok() {
                if let Ok(local) = s.local_addr() {
                    local_addrs.push(local.ip());
                }
            }
        }
    }
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.map_err(nl)? {
        use rtnetlink::packet_route::address::AddressAttribute;
        let has = msg.attributes.iter().any(|a| match a {
            AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => local_addrs.contains(ip),
            _ => false,
        });
        if has {
            if let Some(name) = ifname_of(msg.header.index) {
                if name != "lo" && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    if names.is_empty() {
        // No default route and no endpoint yet (a server whose peers roam
        // in): every interface with an address may receive WireGuard.
        let mut addrs = handle.address().get().execute();
        while let Some(msg) = addrs.try_next().await.map_err(nl)? {
            if let Some(name) = ifname_of(msg.header.index) {
                if name != "lo" && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    Ok(names)
}

/// The interface the kernel would send to `ep` from (route lookup through a
/// connected UDP socket, which sends nothing).
pub fn egress_ifindex(ep: SocketAddr) -> Option<u32> {
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

fn ifname_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as the call requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// MAC address of an interface (from sysfs of this namespace's view; a
/// fallback via ioctl keeps it working where /sys belongs to another one).
pub fn mac_of(ifname: &str) -> Result<[u8; 6], LinkError> {
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    copy_name(&mut req, ifname)?;
    let fd = ioctl_socket()?;
    // SAFETY: valid socket and ifreq.
    let rc = unsafe { libc::ioctl(fd.0, libc::SIOCGIFHWADDR, &mut req) };
    if rc != 0 {
        return Err(LinkError::Io {
            what: format!("reading the MAC address of {ifname}"),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: SIOCGIFHWADDR filled ifru_hwaddr.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
}

struct Fd(libc::c_int);
impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

fn ioctl_socket() -> Result<Fd, LinkError> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(LinkError::Io {
            what: "socket for interface ioctls".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(Fd(fd))
}

fn copy_name(req: &mut libc::ifreq, ifname: &str) -> Result<(), LinkError> {
    let b = ifname.as_bytes();
    if b.len() >= libc::IFNAMSIZ {
        return Err(LinkError::BadName(ifname.to_owned()));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    Ok(())
}

/// Turns off tx checksumming, scatter-gather, TSO and GSO (legacy ethtool
/// ioctls: one u32 on/off value each, no feature-string tables needed).
fn ethtool_off(ifname: &str) -> Result<(), LinkError> {
    const ETHTOOL_STXCSUM: u32 = 0x17;
    const ETHTOOL_SSG: u32 = 0x19;
    const ETHTOOL_STSO: u32 = 0x1f;
    const ETHTOOL_SGSO: u32 = 0x24;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let fd = ioctl_socket()?;
    // Order matters: SG depends on csum, TSO on SG.
    for cmd in [ETHTOOL_STSO, ETHTOOL_SGSO, ETHTOOL_SSG, ETHTOOL_STXCSUM] {
        let mut v = EthtoolValue { cmd, data: 0 };
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        copy_name(&mut req, ifname)?;
        req.ifr_ifru.ifru_data = &mut v as *mut EthtoolValue as *mut libc::c_char;
        // SAFETY: valid socket, ifreq pointing at a live ethtool_value.
        let rc = unsafe { libc::ioctl(fd.0, libc::SIOCETHTOOL, &mut req) };
        if rc != 0 {
            return Err(LinkError::Io {
                what: format!("turning offload 0x{cmd:x} off on {ifname}"),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}
