//! Path MTU to an endpoint, probed with ICMP echo requests that may not be
//! fragmented (IPv4 DF, IPv6 never fragments in routers): the largest one
//! answered is what the path carries, and a router that cannot forward one
//! says so with "fragmentation needed" / "packet too big" and its MTU.
//!
//! Raw ICMP sockets (root). The sockets ignore the kernel's cached path
//! MTU (`IP_PMTUDISC_PROBE`), so a probe measures the path as it is now;
//! the errors routers send still update that cache, as any traffic would.
//! Every wait is bounded: a probe answers within [`WAIT`] or counts as lost.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

/// How long one probe waits for its answer.
const WAIT: Duration = Duration::from_millis(600);
/// The smallest probe: an IPv4 header, ICMP and a little payload.
const SMALL: u16 = 96;

/// What probing found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMtu {
    /// Probes of `mtu` bytes (the egress interface's MTU) are answered.
    Full(u16),
    /// A router reported `mtu`, and probes of that size are answered.
    Reported(u16),
    /// Nothing reported, but probes above `mtu` vanish (ICMP errors
    /// filtered on the way: a black hole for large packets).
    Silent(u16),
    /// The endpoint answers no echo request at all.
    NoEcho,
    /// Probing failed here (no raw socket...).
    Error(String),
}

/// One probe's answer.
enum Answer {
    Reply,
    TooBig(u16),
    Lost,
}

struct Prober {
    fd: OwnedFd,
    dst: IpAddr,
    id: u16,
    seq: u16,
}

/// Probes `dst`, starting at `max` bytes (the egress interface's MTU).
pub fn probe(dst: IpAddr, max: u16) -> PathMtu {
    let mut p = match Prober::open(dst) {
        Ok(p) => p,
        Err(e) => return PathMtu::Error(e),
    };
    let max = max.max(SMALL);
    // Two tries each: one lost echo is not a finding.
    let ask = |p: &mut Prober, size: u16| -> Answer {
        for _ in 0..2 {
            match p.once(size) {
                Answer::Lost => continue,
                a => return a,
            }
        }
        Answer::Lost
    };
    match ask(&mut p, max) {
        Answer::Reply => return PathMtu::Full(max),
        Answer::TooBig(m) if m >= SMALL && m < max => {
            if let Answer::Reply = ask(&mut p, m) {
                return PathMtu::Reported(m);
            }
        }
        _ => {}
    }
    if !matches!(ask(&mut p, SMALL), Answer::Reply) {
        return PathMtu::NoEcho;
    }
    // Largest answered size, by bisection.
    let (mut lo, mut hi) = (SMALL, max);
    let mut reported = None;
    while hi - lo > 4 {
        let mid = lo + (hi - lo) / 2;
        match ask(&mut p, mid) {
            Answer::Reply => lo = mid,
            Answer::TooBig(m) => {
                reported = Some(m);
                hi = mid.min(m.max(lo + 1));
                if m > lo && m < mid && matches!(ask(&mut p, m), Answer::Reply) {
                    lo = m;
                    hi = m + 1;
                }
            }
            Answer::Lost => hi = mid,
        }
    }
    match reported {
        Some(m) if m == lo => PathMtu::Reported(m),
        _ => PathMtu::Silent(lo),
    }
}

impl Prober {
    fn open(dst: IpAddr) -> Result<Self, String> {
        let (domain, proto) = match dst {
            IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
            IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
        };
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(format!(
                "raw ICMP socket: {} (the probe needs root)",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a descriptor we own from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let set = |level: libc::c_int, opt: libc::c_int, v: libc::c_int| -> Result<(), String> {
            // SAFETY: an int option with its size.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    level,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(format!("setsockopt: {}", std::io::Error::last_os_error()));
            }
            Ok(())
        };
        match dst {
            IpAddr::V4(_) => set(
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_PROBE,
            )?,
            IpAddr::V6(_) => {
                set(
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MTU_DISCOVER,
                    libc::IPV6_PMTUDISC_PROBE,
                )?;
                set(libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)?;
            }
        }
        // A random identifier: other pings on this host are not ours.
        let id = rand_core::RngCore::next_u32(&mut rand_core::OsRng) as u16;
        Ok(Prober {
            fd,
            dst,
            id,
            seq: 0,
        })
    }

    /// Sends one echo request of `size` bytes (IP header included) and
    /// waits for what comes back for it.
    fn once(&mut self, size: u16) -> Answer {
        self.seq = self.seq.wrapping_add(1);
        let v6 = self.dst.is_ipv6();
        let ip_hdr = if v6 { 40 } else { 20 };
        let len = usize::from(size).saturating_sub(ip_hdr).max(8);
        let mut pkt = vec![0u8; len];
        pkt[0] = if v6 { 128 } else { 8 };
        pkt[4..6].copy_from_slice(&self.id.to_be_bytes());
        pkt[6..8].copy_from_slice(&self.seq.to_be_bytes());
        for (i, b) in pkt[8..].iter_mut().enumerate() {
            *b = i as u8;
        }
        if !v6 {
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
        }
        let sa = socket_addr(SocketAddr::new(self.dst, 0));
        // SAFETY: a buffer and a sockaddr of the given lengths.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&sa.0 as *const libc::sockaddr_storage).cast(),
                sa.1,
            )
        };
        if r < 0 {
            // EMSGSIZE (larger than the egress interface takes) included:
            // that size does not get through.
            return Answer::Lost;
        }
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Answer::Lost;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) };
            if n <= 0 {
                continue;
            }
            // SAFETY: a buffer of its length.
            let got = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if got <= 0 {
                continue;
            }
            if let Some(a) = self.parse(&buf[..got as usize]) {
                return a;
            }
        }
    }

    /// Our answer in a received ICMP message, if it is one.
    fn parse(&self, msg: &[u8]) -> Option<Answer> {
        // IPv4 raw sockets hand over the IP header too; IPv6 ones do not.
        let icmp = if self.dst.is_ipv6() {
            msg
        } else {
            let ihl = usize::from(*msg.first()? & 0x0f) * 4;
            msg.get(ihl..)?
        };
        let (ty, code) = (*icmp.first()?, *icmp.get(1)?);
        let ours = |id_seq: &[u8]| {
            id_seq.len() >= 4
                && id_seq[0..2] == self.id.to_be_bytes()
                && id_seq[2..4] == self.seq.to_be_bytes()
        };
        if self.dst.is_ipv6() {
            match ty {
                129 if ours(icmp.get(4..8)?) => Some(Answer::Reply),
                2 => {
                    // Packet too big: MTU, then our packet (IPv6 header, ICMPv6).
                    let mtu = u32::from_be_bytes(icmp.get(4..8)?.try_into().ok()?);
                    let inner = icmp.get(8 + 40..)?;
                    (inner.first() == Some(&128) && ours(inner.get(4..8)?))
                        .then(|| Answer::TooBig(mtu.min(u32::from(u16::MAX)) as u16))
                }
                _ => None,
            }
        } else {
            match (ty, code) {
                (0, _) if ours(icmp.get(4..8)?) => Some(Answer::Reply),
                (3, 4) => {
                    let mtu = u16::from_be_bytes(icmp.get(6..8)?.try_into().ok()?);
                    let inner_ip = icmp.get(8..)?;
                    let ihl = usize::from(*inner_ip.first()? & 0x0f) * 4;
                    let inner = inner_ip.get(ihl..)?;
                    (inner.first() == Some(&8) && ours(inner.get(4..8)?))
                        .then_some(Answer::TooBig(mtu))
                }
                _ => None,
            }
        }
    }
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum = sum.wrapping_add(u32::from(w));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn socket_addr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zero is a valid start.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    #[test]
    fn checksum_is_rfc1071() {
        // RFC 1071's example words 0001 f203 f4f5 f6f7 sum to ddf2.
        assert_eq!(
            super::checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }
}
