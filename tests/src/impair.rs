//! An impairment relay: a userspace UDP forwarder in a middle namespace that
//! drops, duplicates, reorders and delays the tunnel's datagrams, since this
//! kernel has no netem.
//!
//! Each side's appliance uses the relay's address on its own link as the
//! peer's endpoint; the relay forwards between its two sockets. Decisions
//! come from a seeded PRNG, so a run is reproducible, and every impairment
//! is counted by message type, so the tests can demand exact outcomes (each
//! duplicated transport message is one replay drop at the receiver).

use std::{
    collections::BinaryHeap,
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::Netns;

/// What the relay does to each datagram, per direction. Probabilities are in
/// parts per thousand; `delay` applies to every datagram, and a reordered one
/// waits `reorder_hold` longer, so the ones after it overtake it.
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    pub drop_permille: u32,
    pub dup_permille: u32,
    pub reorder_permille: u32,
    pub delay: Duration,
    pub reorder_hold: Duration,
    pub seed: u64,
}

impl Impairment {
    /// No impairment at all.
    pub fn none(seed: u64) -> Self {
        Self {
            drop_permille: 0,
            dup_permille: 0,
            reorder_permille: 0,
            delay: Duration::ZERO,
            reorder_hold: Duration::ZERO,
            seed,
        }
    }
}

/// Counts for one direction. Index by WireGuard message type (1..=4; 0 for
/// anything else).
#[derive(Default, Debug)]
pub struct DirStats {
    pub received: [AtomicU64; 5],
    pub dropped: [AtomicU64; 5],
    pub duplicated: [AtomicU64; 5],
    pub reordered: [AtomicU64; 5],
    pub forwarded: [AtomicU64; 5],
    /// Sends that failed (none expected: the sockets block).
    pub send_failed: [AtomicU64; 5],
}

impl DirStats {
    pub fn get(field: &[AtomicU64; 5], ty: usize) -> u64 {
        field[ty].load(Ordering::Relaxed)
    }
}

/// A running relay; stopped (threads joined) on drop.
pub struct Relay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Datagrams travelling from side A (first socket) to side B.
    pub a_to_b: Arc<DirStats>,
    /// Datagrams travelling from side B to side A.
    pub b_to_a: Arc<DirStats>,
}

/// One datagram waiting for its release time.
struct Pending {
    at: Instant,
    seq: u64,
    bytes: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    // A max-heap ordered so that the earliest release pops first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// xorshift64*: small, seeded, good enough to pick impairments.
struct Rng(u64);

impl Rng {
    fn permille(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as u32 % 1000
    }
}

impl Relay {
    /// Binds `a_bind` and `b_bind` inside `ns` and relays: what arrives on
    /// the A socket goes to `b_peer` from the B socket, and what arrives on
    /// the B socket goes to `a_peer` from the A socket.
    pub fn start(
        ns: &Netns,
        a_bind: SocketAddr,
        a_peer: SocketAddr,
        b_bind: SocketAddr,
        b_peer: SocketAddr,
        a_to_b: Impairment,
        b_to_a: Impairment,
    ) -> Result<Self> {
        let (sa, sb) = ns.enter(|| -> Result<(UdpSocket, UdpSocket)> {
            Ok((
                UdpSocket::bind(a_bind).with_context(|| format!("binding {a_bind}"))?,
                UdpSocket::bind(b_bind).with_context(|| format!("binding {b_bind}"))?,
            ))
        })??;
        for s in [&sa, &sb] {
            big_buffers(s)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stats_ab = Arc::new(DirStats::default());
        let stats_ba = Arc::new(DirStats::default());
        let mut threads = Vec::new();
        for (rx, tx, to, imp, stats) in [
            (
                sa.try_clone()?,
                sb.try_clone()?,
                b_peer,
                a_to_b,
                Arc::clone(&stats_ab),
            ),
            (sb, sa, a_peer, b_to_a, Arc::clone(&stats_ba)),
        ] {
            let stop = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                forward(&rx, &tx, to, imp, &stats, &stop);
            }));
        }
        Ok(Self {
            stop,
            threads,
            a_to_b: stats_ab,
            b_to_a: stats_ba,
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// 8 MiB socket buffers (forced past rmem_max/wmem_max: root), so the
/// relay itself loses nothing under a burst; every loss is a decision.
fn big_buffers(s: &UdpSocket) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let size: libc::c_int = 8 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: setsockopt with a valid fd and an int option.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            anyhow::bail!(
                "setting relay socket buffers: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

fn msg_type(b: &[u8]) -> usize {
    match b.first() {
        Some(&t @ 1..=4) => usize::from(t),
        _ => 0,
    }
}

/// One direction: receive, decide, queue by release time, send when due.
fn forward(
    rx: &UdpSocket,
    tx: &UdpSocket,
    to: SocketAddr,
    imp: Impairment,
    stats: &DirStats,
    stop: &AtomicBool,
) {
    let mut rng = Rng(imp.seed | 1);
    let mut queue = BinaryHeap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = queue
            .peek()
            .map_or(Duration::from_millis(20), |p: &Pending| {
                p.at.saturating_duration_since(now)
            })
            .clamp(Duration::from_micros(100), Duration::from_millis(20));
        let _ = rx.set_read_timeout(Some(wait));
        if let Ok((n, _)) = rx.recv_from(&mut buf) {
            let bytes = buf[..n].to_vec();
            let ty = msg_type(&bytes);
            stats.received[ty].fetch_add(1, Ordering::Relaxed);
            if rng.permille() < imp.drop_permille {
                stats.dropped[ty].fetch_add(1, Ordering::Relaxed);
            } else {
                let now = Instant::now();
                let mut at = now + imp.delay;
                if rng.permille() < imp.reorder_permille {
                    stats.reordered[ty].fetch_add(1, Ordering::Relaxed);
                    at += imp.reorder_hold;
                }
                if rng.permille() < imp.dup_permille {
                    stats.duplicated[ty].fetch_add(1, Ordering::Relaxed);
                    seq += 1;
                    queue.push(Pending {
                        at: at + Duration::from_micros(50),
                        seq,
                        bytes: bytes.clone(),
                    });
                }
                seq += 1;
                queue.push(Pending { at, seq, bytes });
            }
        }
        let now = Instant::now();
        while queue.peek().is_some_and(|p| p.at <= now) {
            let Some(p) = queue.pop() else { break };
            let ty = msg_type(&p.bytes);
            if tx.send_to(&p.bytes, to).is_ok() {
                stats.forwarded[ty].fetch_add(1, Ordering::Relaxed);
            } else {
                stats.send_failed[ty].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
