//! The handshake socket's datagrams with their local address: each message
//! is received with the address it was sent to (IP_PKTINFO /
//! IPV6_PKTINFO), and answered from that address.
//!
//! A gateway with several addresses (an anycast address on `lo` beside its
//! own, a secondary address, two uplinks) must answer from the address the
//! peer wrote to: WireGuard peers take the source of every authenticated
//! handshake message as the new endpoint, so a response from the FIB's
//! choice of source would move a client off the anycast address onto one
//! gateway's own, and a NAT or firewall on the way would drop it. The data
//! path already sends from the address it last received on
//! (`Peer::local_addr`); this is the same for handshake messages, as the
//! kernel driver keeps its per-endpoint source cache.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd as _, RawFd},
};

use tokio::{io::Interest, net::UdpSocket};

/// Asks the kernel for the destination address of every datagram (both
/// families on the dual-stack socket).
pub(super) fn enable_pktinfo(fd: RawFd) {
    let on: libc::c_int = 1;
    for (level, opt) in [
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
        (libc::IPPROTO_IP, libc::IP_PKTINFO),
    ] {
        // SAFETY: setsockopt reads one c_int from a live local.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                &on as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as u32,
            );
        }
    }
}

/// Room for one in_pktinfo or in6_pktinfo control message and then some.
const CMSG_ROOM: usize = 128;

/// Receives one datagram: (length, source with IPv4-mapped addresses as
/// IPv4, the local address it was sent to when the kernel said). Cancel-safe: nothing is read until the socket
/// is readable.
pub(super) async fn recv(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    loop {
        sock.readable().await?;
        match sock.try_io(Interest::READABLE, || recv_raw(sock.as_raw_fd(), buf)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

fn recv_raw(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    // SAFETY: every pointer in `msg` refers to a local (or `buf`) that
    // outlives the call, with its true length; the control buffer is
    // 8-byte aligned; the cmsg walk stays inside msg_controllen as the
    // CMSG_* macros guarantee, and each payload is read unaligned.
    unsafe {
        let mut name: libc::sockaddr_storage = zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; CMSG_ROOM / 8];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_ROOM;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let src = sockaddr_to_std(&name).map(canonical).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "a datagram from no address")
        })?;
        let mut local = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let pi = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    let a = Ipv6Addr::from(pi.ipi6_addr.s6_addr);
                    local = Some(a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4));
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO) if local.is_none() => {
                    let pi = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                    local = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr))));
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Ok((n as usize, src, local))
    }
}

fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// IPv4-mapped IPv6 addresses (the dual-stack socket's form of IPv4) as
/// IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}

/// Sends `buf` to `dst`, from `local` when given (and of `dst`'s family),
/// else from the FIB's choice.
pub(super) async fn send(
    sock: &UdpSocket,
    buf: &[u8],
    dst: SocketAddr,
    local: Option<IpAddr>,
) -> io::Result<usize> {
    loop {
        sock.writable().await?;
        match sock.try_io(Interest::WRITABLE, || {
            send_raw(sock.as_raw_fd(), buf, dst, local)
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

fn send_raw(fd: RawFd, buf: &[u8], dst: SocketAddr, local: Option<IpAddr>) -> io::Result<usize> {
    // A v4-mapped destination is sent as IPv4 (the kernel does the same).
    let dst = canonical(dst);
    // SAFETY: as in recv_raw: locals outlive the call, lengths are true,
    // the control buffer is aligned and sized for the one message written
    // into it through CMSG_FIRSTHDR.
    unsafe {
        let mut name: libc::sockaddr_storage = zeroed();
        let namelen;
        let mut control = [0u64; CMSG_ROOM / 8];
        let mut msg: libc::msghdr = zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        match dst {
            SocketAddr::V4(d) => {
                let a = (&mut name as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                (*a).sin_family = libc::AF_INET as libc::sa_family_t;
                (*a).sin_port = d.port().to_be();
                (*a).sin_addr.s_addr = u32::from(*d.ip()).to_be();
                namelen = size_of::<libc::sockaddr_in>();
            }
            SocketAddr::V6(d) => {
                let a = (&mut name as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                (*a).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*a).sin6_port = d.port().to_be();
                (*a).sin6_addr.s6_addr = d.ip().octets();
                (*a).sin6_scope_id = d.scope_id();
                namelen = size_of::<libc::sockaddr_in6>();
            }
        }
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = namelen as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        let pktinfo = match (dst, local) {
            (SocketAddr::V4(_), Some(IpAddr::V4(l))) => {
                let len = size_of::<libc::in_pktinfo>() as u32;
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = libc::CMSG_SPACE(len) as usize;
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::IPPROTO_IP;
                (*c).cmsg_type = libc::IP_PKTINFO;
                (*c).cmsg_len = libc::CMSG_LEN(len) as usize;
                let pi = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(l).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), pi);
                true
            }
            (SocketAddr::V6(_), Some(IpAddr::V6(l))) => {
                let len = size_of::<libc::in6_pktinfo>() as u32;
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = libc::CMSG_SPACE(len) as usize;
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::IPPROTO_IPV6;
                (*c).cmsg_type = libc::IPV6_PKTINFO;
                (*c).cmsg_len = libc::CMSG_LEN(len) as usize;
                let pi = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: l.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>(), pi);
                true
            }
            _ => false,
        };
        let n = libc::sendmsg(fd, &msg, 0);
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        // The address went away (an anycast address withdrawn from lo):
        // send from the FIB's choice rather than not at all. (The kernel
        // says EINVAL or ENETUNREACH for a source that is not local.)
        if pktinfo
            && matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENETUNREACH | libc::EADDRNOTAVAIL)
            )
        {
            msg.msg_control = std::ptr::null_mut();
            msg.msg_controllen = 0;
            let n = libc::sendmsg(fd, &msg, 0);
            if n >= 0 {
                return Ok(n as usize);
            }
            return Err(io::Error::last_os_error());
        }
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram sent to a second local address is received with that
    /// address, and an answer sent from it arrives from it; without a local
    /// address the FIB chooses. Loopback only (127.0.0.1 and 127.0.0.2
    /// are both local on lo).
    #[tokio::test]
    async fn answers_leave_from_the_address_they_came_to() {
        // The daemon's own socket: dual-stack, IPv4 arrives v4-mapped.
        let sock = super::super::device::bind_udp(0).expect("bind");
        let port = sock.local_addr().expect("addr").port();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("peer");
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let second: IpAddr = "127.0.0.2".parse().expect("ip");
        peer.send_to(b"hello", (second, port)).expect("send");
        let mut buf = [0u8; 64];
        let (n, src, local) = recv(&sock, &mut buf).await.expect("recv");
        assert_eq!(&buf[..n], b"hello");
        // IPv4 comes back as IPv4, not v4-mapped.
        assert_eq!(src, peer.local_addr().expect("addr"));
        assert_eq!(local, Some(second));

        send(&sock, b"from .2", src, local).await.expect("send");
        let (n, from) = peer.recv_from(&mut buf).expect("answer");
        assert_eq!((&buf[..n], from.ip()), (&b"from .2"[..], second));

        send(&sock, b"fib", src, None).await.expect("send");
        let (_, from) = peer.recv_from(&mut buf).expect("answer");
        assert_eq!(from.ip(), "127.0.0.1".parse::<IpAddr>().expect("ip"));

        // An address that is not ours: sent from the FIB's choice instead.
        send(
            &sock,
            b"fallback",
            src,
            Some("192.0.2.77".parse().expect("ip")),
        )
        .await
        .expect("send");
        let (n, from) = peer.recv_from(&mut buf).expect("answer");
        assert_eq!(
            (&buf[..n], from.ip()),
            (&b"fallback"[..], "127.0.0.1".parse::<IpAddr>().expect("ip"))
        );
    }
}
