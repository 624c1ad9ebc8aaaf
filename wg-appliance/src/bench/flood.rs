//! Generators of the `junk` and `handshakes` workloads, and the process
//! CPU accounting both report.
//!
//! Both generators run on a thread of the bench that entered the client's
//! namespace (`Netns::enter`), send to the server end's WireGuard port over
//! the veth (not through the tunnel), and are bounded in time and count.
//!
//! * [`junk`]: a fixed set of malformed WireGuard datagrams (bad type, bad
//!   reserved bytes, handshake messages of the wrong length, transport data
//!   shorter than 32 bytes) and well-formed transport data with unknown
//!   receiver indexes, sent with `sendmmsg` as fast as one thread can.
//! * [`handshakes`]: complete Noise IKpsk2 handshakes with our protocol core
//!   from many client identities (each a peer of the server, each sending
//!   from its own source address), a window of initiations in flight, each
//!   identity used at most once per [`PEER_GAP`]: WireGuard refuses
//!   initiations from one peer closer than 20 ms apart (and the TAI64N
//!   timestamp must increase), and wg-appliance's XDP lets at most 20
//!   handshake messages per second through from one source address by
//!   default.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use rand_core::OsRng;

use crate::{
    keys::PublicKey,
    noise::{self, Handshake, Identity, Message, ReusedEphemeral, Tai64N},
};

/// The junk datagrams: every one of them must be dropped by a WireGuard
/// receiver. The transport messages (type 4, ≥ 32 bytes) carry receiver
/// index 0 here; [`junk`] writes a fresh pseudo-random index into them.
pub fn junk_set() -> Vec<Vec<u8>> {
    let msg = |ty: u8, reserved: [u8; 3], len: usize| {
        let mut v = vec![0xa5u8; len];
        v[0] = ty;
        v[1..4].copy_from_slice(&reserved);
        v
    };
    let z = [0, 0, 0];
    vec![
        // Bad types.
        msg(0, z, 148),
        msg(5, z, 32),
        msg(0xff, z, 64),
        // Bad reserved bytes (right lengths otherwise).
        msg(1, [1, 0, 0], 148),
        msg(2, [0, 0, 1], 92),
        msg(4, [0, 1, 0], 48),
        // Handshake messages of the wrong length.
        msg(1, z, 147),
        msg(1, z, 149),
        msg(2, z, 91),
        msg(2, z, 93),
        msg(3, z, 63),
        msg(3, z, 65),
        // Transport data shorter than 32 bytes.
        msg(4, z, 4),
        msg(4, z, 16),
        msg(4, z, 31),
        // Transport data with unknown receiver indexes (index patched in).
        msg(4, z, 32),
        msg(4, z, 96),
        msg(4, z, 160),
        msg(4, z, 1200),
    ]
}

/// Whether `m` is a well-formed transport message (its receiver index is
/// then randomized per datagram).
fn is_transport(m: &[u8]) -> bool {
    matches!(Message::parse(m), Ok(Message::Transport(_)))
}

/// What a generator did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JunkReport {
    pub sent: u64,
    pub send_errors: u64,
    pub elapsed: Duration,
}

impl JunkReport {
    pub fn rate(&self) -> f64 {
        per_second(self.sent, self.elapsed)
    }
}

/// `n` per second over `d` (0 for no time).
pub fn per_second(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// Datagrams per `sendmmsg` call.
const BATCH: usize = 64;

/// Floods `target` with [`junk_set`] for `duration` or `max` datagrams,
/// whichever comes first. Must run in the client's namespace.
pub fn junk(target: SocketAddr, duration: Duration, max: u64) -> Result<JunkReport> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("binding the junk generator's socket")?;
    sock.connect(target)?;
    let mut bufs: Vec<Vec<u8>> = junk_set();
    let transport: Vec<usize> = (0..bufs.len())
        .filter(|&i| is_transport(&bufs[i]))
        .collect();
    // The batch cycles through the set.
    let order: Vec<usize> = (0..BATCH).map(|i| i % bufs.len()).collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut next = move || {
        // xorshift64*
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        (rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    };
    let mut rep = JunkReport::default();
    let start = Instant::now();
    let fd = sock.as_raw_fd();
    while rep.sent < max {
        if start.elapsed() >= duration {
            break;
        }
        for &i in &transport {
            let idx = next();
            bufs[i][4..8].copy_from_slice(&idx.to_le_bytes());
            bufs[i][8..16].copy_from_slice(&u64::from(next()).to_le_bytes());
        }
        let n = ((max - rep.sent) as usize).min(BATCH);
        let mut iov: Vec<libc::iovec> = order[..n]
            .iter()
            .map(|&i| libc::iovec {
                iov_base: bufs[i].as_ptr() as *mut libc::c_void,
                iov_len: bufs[i].len(),
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
            // ECONNREFUSED (an ICMP error from the last datagram), ENOBUFS:
            // keep going.
            rep.send_errors += 1;
        } else {
            rep.sent += r as u64;
        }
    }
    rep.elapsed = start.elapsed();
    Ok(rep)
}

/// Minimum time between two initiations from one identity (and its source
/// address): under 20 per second, with a margin.
pub const PEER_GAP: Duration = Duration::from_millis(60);
/// An initiation unanswered this long is given up (counted as timed out).
pub const HS_TIMEOUT: Duration = Duration::from_millis(500);

/// What the handshake generator did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HandshakeReport {
    pub initiations: u64,
    pub completed: u64,
    /// Responses that did not authenticate or matched nothing in flight.
    pub rejected: u64,
    pub cookie_replies: u64,
    pub timed_out: u64,
    pub elapsed: Duration,
}

impl HandshakeReport {
    pub fn rate(&self) -> f64 {
        per_second(self.completed, self.elapsed)
    }
}

/// Initiations in flight, by our sender index: which identity sent it, and
/// when. Pure bookkeeping, unit-tested.
#[derive(Debug, Default)]
pub struct Window {
    in_flight: HashMap<u32, (usize, Instant)>,
    /// When each identity last sent an initiation.
    last_sent: Vec<Option<Instant>>,
    /// Whether each identity has an initiation in flight.
    busy: Vec<bool>,
    next_index: u32,
    cursor: usize,
}

impl Window {
    pub fn new(identities: usize) -> Self {
        Self {
            in_flight: HashMap::new(),
            last_sent: vec![None; identities],
            busy: vec![false; identities],
            next_index: 1,
            cursor: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// The next identity free to initiate at `now` (round robin; none in
    /// flight, last initiation at least `gap` ago) and a fresh sender index
    /// for it, recorded as in flight.
    pub fn start(&mut self, now: Instant, gap: Duration) -> Option<(usize, u32)> {
        let n = self.last_sent.len();
        for k in 0..n {
            let peer = (self.cursor + k) % n;
            let ready = self.last_sent[peer].is_none_or(|t| now.duration_since(t) >= gap);
            if ready && !self.busy[peer] {
                self.cursor = (peer + 1) % n;
                let idx = self.next_index;
                self.next_index = self.next_index.wrapping_add(1).max(1);
                self.in_flight.insert(idx, (peer, now));
                self.last_sent[peer] = Some(now);
                self.busy[peer] = true;
                return Some((peer, idx));
            }
        }
        None
    }

    /// The identity whose initiation used sender index `idx`, removed from
    /// the window.
    pub fn finish(&mut self, idx: u32) -> Option<usize> {
        let (p, _) = self.in_flight.remove(&idx)?;
        self.busy[p] = false;
        Some(p)
    }

    /// The identity of `idx` without removing it.
    pub fn peer_of(&self, idx: u32) -> Option<usize> {
        self.in_flight.get(&idx).map(|(p, _)| *p)
    }

    /// Drops initiations older than `timeout`; how many.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> u64 {
        let before = self.in_flight.len();
        let busy = &mut self.busy;
        self.in_flight.retain(|_, (p, t)| {
            let keep = now.duration_since(*t) < timeout;
            if !keep {
                busy[*p] = false;
            }
            keep
        });
        (before - self.in_flight.len()) as u64
    }
}

/// Sends `buf` to `dst` from local address `src` (IP_PKTINFO), on an
/// unconnected socket bound to the wildcard address.
fn send_from(
    sock: &UdpSocket,
    src: Ipv4Addr,
    dst: SocketAddrV4,
    buf: &[u8],
) -> std::io::Result<()> {
    // SAFETY: plain C structs, zeroed then filled; every pointer in `msg`
    // refers to a local that outlives the sendmsg call, and the control
    // buffer is 8-byte aligned and large enough for one in_pktinfo.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = dst.port().to_be();
        addr.sin_addr.s_addr = u32::from_ne_bytes(dst.ip().octets());
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut cbuf = [0u64; 8];
        let pi_len = std::mem::size_of::<libc::in_pktinfo>() as u32;
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(pi_len) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::IPPROTO_IP;
        (*cmsg).cmsg_type = libc::IP_PKTINFO;
        (*cmsg).cmsg_len = libc::CMSG_LEN(pi_len) as usize;
        let pi = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from_ne_bytes(src.octets()),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), pi);
        if libc::sendmsg(sock.as_raw_fd(), &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs complete handshakes against `server` (public key `server_pk`) from
/// `identities` for `duration` or until `max` completed, `window`
/// initiations in flight; identity `i` sends from `sources[i % len]` (local
/// addresses of the client's namespace). Must run in the client's
/// namespace.
pub fn handshakes(
    target: SocketAddrV4,
    server_pk: PublicKey,
    identities: &[Identity],
    sources: &[Ipv4Addr],
    window: usize,
    duration: Duration,
    max: u64,
) -> Result<HandshakeReport> {
    if identities.is_empty() || sources.is_empty() {
        bail!("no client identities or source addresses");
    }
    let sock = UdpSocket::bind("0.0.0.0:0").context("binding the handshake generator's socket")?;
    sock.set_nonblocking(true)?;
    // One ephemeral key for every initiation: the generator then spends its
    // CPU on verifying responses, not on building initiations, and drives
    // the server harder on these two cores (see noise::ReusedEphemeral).
    let eph =
        ReusedEphemeral::new(&mut OsRng, server_pk).context("the generator's ephemeral key")?;
    let mut hs: Vec<Handshake> = identities
        .iter()
        .map(|id| Handshake::new(id, server_pk, None))
        .collect();
    let mut w = Window::new(identities.len());
    let mut rep = HandshakeReport::default();
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if now.duration_since(start) >= duration || rep.completed >= max {
            break;
        }
        rep.timed_out += w.expire(now, HS_TIMEOUT);
        while w.len() < window {
            let Some((peer, idx)) = w.start(now, PEER_GAP) else {
                break;
            };
            let init = hs[peer]
                .create_initiation_reusing(
                    &eph,
                    Tai64N::from_system_time(SystemTime::now()),
                    idx,
                    start.elapsed(),
                )
                .context("creating an initiation")?;
            // On ECONNREFUSED/ENOBUFS the slot times out.
            if send_from(&sock, sources[peer % sources.len()], target, &init).is_ok() {
                rep.initiations += 1;
            }
        }
        // Wait up to 2 ms for a response, then drain what arrived.
        wait_readable(&sock, Duration::from_millis(2));
        loop {
            let n = match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == SocketAddr::V4(target) => n,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(_) => break,
            };
            let m = &buf[..n];
            match Message::parse(m) {
                Ok(Message::Response(r)) => {
                    let Some(peer) = noise::receiver_index(r).and_then(|i| w.finish(i)) else {
                        rep.rejected += 1;
                        continue;
                    };
                    match hs[peer].consume_response(r) {
                        Ok(_) => rep.completed += 1,
                        Err(_) => rep.rejected += 1,
                    }
                }
                Ok(Message::CookieReply(c)) => {
                    rep.cookie_replies += 1;
                    // Remember the cookie (the identity's next initiation
                    // carries mac2) and free the slot.
                    if let Some(peer) = noise::receiver_index(c).and_then(|i| w.finish(i)) {
                        let _ = hs[peer].cookie.consume_reply(c, start.elapsed());
                    }
                }
                _ => {}
            }
        }
    }
    rep.elapsed = start.elapsed();
    Ok(rep)
}

/// Blocks until `sock` is readable or `timeout` passes.
fn wait_readable(sock: &UdpSocket, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// utime + stime (clock ticks) of a process from `/proc/<pid>/stat` text.
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses: fields start
    // after the last ')'. utime and stime are fields 14 and 15 (1-based),
    // i.e. 12 and 13 after the state field.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The parent pid from `/proc/<pid>/stat` text.
fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU ticks of `pid` and every process descending from it.
pub fn tree_cpu_ticks(pid: u32) -> Option<u64> {
    let mut procs: Vec<(u32, u32, u64)> = Vec::new();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            if let (Some(pp), Some(t)) = (parse_stat_ppid(&s), parse_stat_cpu(&s)) {
                procs.push((p, pp, t));
            }
        }
    }
    procs.iter().find(|(p, _, _)| *p == pid)?;
    Some(tree_sum(&procs, pid))
}

/// Sum of ticks of `root` and its descendants in `(pid, ppid, ticks)`.
fn tree_sum(procs: &[(u32, u32, u64)], root: u32) -> u64 {
    let mut total = 0;
    let mut todo = vec![root];
    let mut seen = std::collections::HashSet::new();
    while let Some(p) = todo.pop() {
        if !seen.insert(p) {
            continue;
        }
        for &(pid, ppid, t) in procs {
            if pid == p {
                total += t;
            }
            if ppid == p && pid != p {
                todo.push(pid);
            }
        }
    }
    total
}

/// Clock ticks per second.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Percent of one CPU: `ticks` over `wall`.
pub fn cpu_pct(ticks: u64, tck: f64, wall: Duration) -> Option<f64> {
    let s = wall.as_secs_f64();
    (s > 0.0 && tck > 0.0).then(|| ticks as f64 / tck / s * 100.0)
}

/// Host-wide (busy, softirq, total) jiffies from /proc/stat text.
pub fn parse_host_cpu(stat: &str) -> Option<(u64, u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, *v.get(6)?, total))
}

pub fn host_cpu() -> Option<(u64, u64, u64)> {
    parse_host_cpu(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// (busy %, softirq %) of all CPUs between two [`host_cpu`] readings.
pub fn host_pct(a: (u64, u64, u64), b: (u64, u64, u64)) -> Option<(f64, f64)> {
    let t = b.2.checked_sub(a.2).filter(|t| *t > 0)? as f64;
    Some((
        b.0.saturating_sub(a.0) as f64 * 100.0 / t,
        b.1.saturating_sub(a.1) as f64 * 100.0 / t,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_junk_datagram_is_rejected_or_unknown_transport() {
        let set = junk_set();
        let mut transport = 0;
        for m in &set {
            match Message::parse(m) {
                Err(_) => {}
                Ok(Message::Transport(t)) => {
                    transport += 1;
                    assert!(t.len() >= 32);
                }
                Ok(other) => panic!("well-formed junk: {other:?}"),
            }
        }
        assert_eq!(transport, 4);
        assert!(set.len() - transport >= 15);
    }

    #[test]
    fn proc_stat() {
        let s =
            "1234 (wire guard) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_cpu(s), Some(325));
        assert_eq!(parse_stat_ppid(s), Some(1));
        let odd = "77 (a) b) R 5 77 77 0 -1 0 0 0 0 0 1 2 0 0";
        assert_eq!(parse_stat_cpu(odd), Some(3));
        assert_eq!(parse_stat_ppid(odd), Some(5));
        assert_eq!(parse_stat_cpu("garbage"), None);
        let procs = [(10, 1, 5), (11, 10, 7), (12, 11, 1), (13, 1, 100)];
        assert_eq!(tree_sum(&procs, 10), 13);
        assert_eq!(tree_sum(&procs, 13), 100);
        assert_eq!(cpu_pct(50, 100.0, Duration::from_secs(2)), Some(25.0));
        assert_eq!(cpu_pct(50, 100.0, Duration::ZERO), None);
        assert_eq!(per_second(10, Duration::from_secs(4)), 2.5);
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
    }

    #[test]
    fn host_stat() {
        let a = parse_host_cpu("cpu  100 0 50 800 50 0 10 0 0 0\ncpu0 1\n").unwrap();
        assert_eq!(a, (160, 10, 1010));
        let b = parse_host_cpu("cpu  150 0 100 850 50 0 60 0 0 0\n").unwrap();
        let (busy, si) = host_pct(a, b).unwrap();
        assert!((busy - 150.0 * 100.0 / 200.0).abs() < 1e-9);
        assert!((si - 25.0).abs() < 1e-9);
        assert_eq!(host_pct(b, b), None);
    }

    #[test]
    fn window_bookkeeping() {
        let t0 = Instant::now();
        let gap = Duration::from_millis(30);
        let mut w = Window::new(3);
        let a = w.start(t0, gap).unwrap();
        let b = w.start(t0, gap).unwrap();
        let c = w.start(t0, gap).unwrap();
        assert_eq!((a.0, b.0, c.0), (0, 1, 2));
        assert!(a.1 != b.1 && b.1 != c.1);
        // Every identity busy.
        assert_eq!(w.start(t0, gap), None);
        assert_eq!(w.len(), 3);
        assert_eq!(w.peer_of(b.1), Some(1));
        assert_eq!(w.finish(b.1), Some(1));
        assert_eq!(w.finish(b.1), None);
        // Free but too soon.
        assert_eq!(w.start(t0 + Duration::from_millis(10), gap), None);
        let d = w.start(t0 + gap, gap).unwrap();
        assert_eq!(d.0, 1);
        assert_ne!(d.1, b.1);
        // a and c expire, d (younger) stays.
        assert_eq!(
            w.expire(t0 + Duration::from_millis(100), Duration::from_millis(80)),
            2
        );
        assert_eq!(w.len(), 1);
        assert!(!w.is_empty());
        // An expired identity is free again; d's (1) is still busy.
        let later = t0 + Duration::from_millis(200);
        assert_eq!(w.start(later, gap).map(|(p, _)| p), Some(2));
        assert_eq!(w.start(later, gap).map(|(p, _)| p), Some(0));
        assert_eq!(w.start(later, gap), None);
    }
}
