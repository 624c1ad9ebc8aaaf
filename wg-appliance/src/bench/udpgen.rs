//! The small-packet workload's generator and sink (`udp64`).
//!
//! iperf3 sends one datagram per system call from one socket: about 77 kpps
//! (13 µs a datagram) on the bench machine, far above the tunnel's own cost
//! per packet, so with iperf3 the small-packet figure measured the sender.
//! Here the sender is a connected UDP socket in the client's namespace fed
//! with `sendmmsg` in batches of [`BATCH`] (one system call per batch), and
//! the receiver a UDP socket in the server's namespace drained with
//! `recvmmsg`. The figure is what arrives: datagrams counted by the sink over
//! the sender's time. The sender never waits for the tunnel: what the tunnel
//! cannot take is lost before it (veth or tun queue) or inside it, and is
//! counted as sent minus received.
//!
//! Both sockets are made inside their namespaces ([`super::lab::Netns::enter`])
//! and used from plain threads afterwards: a socket keeps the namespace it
//! was created in.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// Datagrams per `sendmmsg`/`recvmmsg` call.
pub const BATCH: usize = 64;
/// Largest datagram the sink takes whole.
const RX_BUF: usize = 2048;

/// What the sender did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sent {
    pub datagrams: u64,
    /// Failed `sendmmsg` calls (ENOBUFS from a full queue, ECONNREFUSED
    /// after an ICMP error): the sender goes on.
    pub errors: u64,
    pub elapsed: Duration,
}

/// The sender's socket, connected to `target`; call inside the client's
/// namespace.
pub fn source(target: SocketAddr) -> Result<UdpSocket> {
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = UdpSocket::bind(bind).context("binding the generator's socket")?;
    s.connect(target)
        .with_context(|| format!("connecting the generator's socket to {target}"))?;
    Ok(s)
}

/// The sink's socket on `addr`, with a large receive buffer and a short
/// read timeout (so it sees the end of the run); call inside the server's
/// namespace.
pub fn sink(addr: SocketAddr) -> Result<UdpSocket> {
    let s = UdpSocket::bind(addr).with_context(|| format!("binding the sink on {addr}"))?;
    let size: libc::c_int = 8 << 20;
    // SAFETY: a valid socket and an int option value. RCVBUFFORCE (root)
    // passes net.core.rmem_max; a failure leaves the default, which only
    // makes the figure lower for every variant alike.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    Ok(s)
}

/// Sends datagrams of `len` bytes (a counter in the first 8 bytes) on the
/// connected socket `s` as fast as one thread can, for `duration` or until
/// `stop`, at most `max` of them.
pub fn blast(s: &UdpSocket, len: usize, duration: Duration, max: u64, stop: &AtomicBool) -> Sent {
    let len = len.max(8);
    let mut bufs = vec![vec![0u8; len]; BATCH];
    let mut rep = Sent::default();
    let fd = s.as_raw_fd();
    let start = Instant::now();
    while rep.datagrams < max && !stop.load(Ordering::Relaxed) && start.elapsed() < duration {
        let n = ((max - rep.datagrams) as usize).min(BATCH);
        for (i, b) in bufs[..n].iter_mut().enumerate() {
            b[..8].copy_from_slice(&(rep.datagrams + i as u64).to_le_bytes());
        }
        let mut iov: Vec<libc::iovec> = bufs[..n]
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: mmsghdr is plain data; all-zero is a valid value.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: `hdrs` points at `iov`, which points at `bufs`; all live
        // across the call. The socket is connected, so no addresses.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            rep.errors += 1;
        } else {
            rep.datagrams += r as u64;
        }
    }
    rep.elapsed = start.elapsed();
    rep
}

/// Counts the datagrams arriving on `s` until `done` is set (and the
/// socket has been quiet for one read timeout).
pub fn count(s: &UdpSocket, done: &AtomicBool) -> u64 {
    let mut bufs = vec![[0u8; RX_BUF]; BATCH];
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: RX_BUF,
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: as in `blast`.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let fd = s.as_raw_fd();
    let mut got = 0u64;
    loop {
        // SAFETY: `hdrs` points at `iov`, which points at `bufs`, all live
        // and writable across the call; no timeout pointer (the socket's
        // SO_RCVTIMEO bounds the wait).
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r > 0 {
            got += r as u64;
        } else if done.load(Ordering::Relaxed) {
            return got;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On loopback every datagram sent in a bounded burst arrives, and the
    /// sink counts exactly that many.
    #[test]
    fn loopback_counts_what_was_sent() {
        let rx = sink("127.0.0.1:0".parse().unwrap()).unwrap();
        let tx = source(rx.local_addr().unwrap()).unwrap();
        let done = AtomicBool::new(false);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let h = s.spawn(|| count(&rx, &done));
            // 1,000 datagrams fit the 8 MiB receive buffer: no loss.
            let sent = blast(&tx, 64, Duration::from_secs(10), 1000, &stop);
            assert_eq!(sent.datagrams, 1000);
            assert_eq!(sent.errors, 0);
            std::thread::sleep(Duration::from_millis(100));
            done.store(true, Ordering::Relaxed);
            assert_eq!(h.join().unwrap(), 1000);
        });
    }

    /// `stop` ends the sender at once.
    #[test]
    fn stop_ends_the_sender() {
        let rx = sink("127.0.0.1:0".parse().unwrap()).unwrap();
        let tx = source(rx.local_addr().unwrap()).unwrap();
        let stop = AtomicBool::new(true);
        let sent = blast(&tx, 64, Duration::from_secs(10), u64::MAX, &stop);
        assert_eq!(sent.datagrams, 0);
        assert!(sent.elapsed < Duration::from_secs(1));
    }
}
