//! AF_XDP over plain `libc`: UMEM registration, the four rings, bind (with
//! a shared UMEM across devices), need_wakeup, statistics.
//!
//! Written from the kernel's UAPI (`linux/if_xdp.h`) and
//! `Documentation/networking/af_xdp.rst`, first in the issue #13 probe
//! (`/work/fastpath-probe`), moved here. Why no crate: `xdpilone` is
//! EUPL-1.2, `afxdp`/`xsk-rs` build libbpf/libxdp from C; this is ~250
//! lines over `libc`, whose ring protocol (acquire on the other side's
//! index, release on ours) is all there is to it.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A page-aligned anonymous mapping holding the packet frames.
pub struct Umem {
    base: NonNull<u8>,
    len: usize,
    frame_size: u32,
}

// SAFETY: plain memory; which thread touches which frame is governed by
// the rings (one owner at a time).
unsafe impl Send for Umem {}

impl Umem {
    pub fn new(frames: u32, frame_size: u32) -> io::Result<Self> {
        let len = frames as usize * frame_size as usize;
        // SAFETY: a fresh anonymous mapping, no aliasing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p as *mut u8).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Umem {
            base,
            len,
            frame_size,
        })
    }

    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    pub fn frames(&self) -> u32 {
        (self.len / self.frame_size as usize) as u32
    }

    /// The whole frame holding `addr` (from its start), and `addr`'s offset
    /// in it; None for an address outside the UMEM.
    #[allow(clippy::mut_from_ref)]
    pub fn frame(&self, addr: u64) -> Option<(&mut [u8], usize)> {
        let fs = self.frame_size as u64;
        let start = addr / fs * fs;
        if start + fs > self.len as u64 {
            return None;
        }
        // SAFETY: inside the mapping; the caller owns this frame (it came
        // off the rx ring and is not on any ring until given back).
        let f = unsafe {
            std::slice::from_raw_parts_mut(self.base.as_ptr().add(start as usize), fs as usize)
        };
        Some((f, (addr - start) as usize))
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr() as *mut _, self.len) };
    }
}

/// One single-producer/single-consumer ring shared with the kernel. `T`
/// is `u64` (fill/completion: frame addresses) or `libc::xdp_desc` (rx/tx).
pub struct Ring<T> {
    map: *mut libc::c_void,
    map_len: usize,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    desc: *mut T,
    mask: u32,
    size: u32,
    cached_prod: u32,
    cached_cons: u32,
}

// SAFETY: the ring is used by one thread at a time (the worker owning it).
unsafe impl<T> Send for Ring<T> {}

impl<T> Ring<T> {
    fn map(fd: RawFd, off: &libc::xdp_ring_offset, pgoff: u64, size: u32) -> io::Result<Self> {
        let map_len = off.desc as usize + size as usize * size_of::<T>();
        // SAFETY: mapping the ring the kernel made for this socket.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let b = map as *mut u8;
        // SAFETY: the offsets are the kernel's, inside the mapping.
        unsafe {
            Ok(Ring {
                map,
                map_len,
                producer: b.add(off.producer as usize) as *const AtomicU32,
                consumer: b.add(off.consumer as usize) as *const AtomicU32,
                flags: b.add(off.flags as usize) as *const AtomicU32,
                desc: b.add(off.desc as usize) as *mut T,
                mask: size - 1,
                size,
                cached_prod: 0,
                cached_cons: 0,
            })
        }
    }

    fn prod(&self) -> &AtomicU32 {
        // SAFETY: inside the live mapping, aligned by the kernel.
        unsafe { &*self.producer }
    }

    fn cons(&self) -> &AtomicU32 {
        // SAFETY: as `prod`.
        unsafe { &*self.consumer }
    }

    /// XDP_RING_NEED_WAKEUP is set (meaningful on fill and tx rings).
    pub fn needs_wakeup(&self) -> bool {
        // SAFETY: as `prod`.
        unsafe { (*self.flags).load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0 }
    }

    // Producer side (fill, tx).

    /// Free slots, refreshing the view of the consumer when fewer than
    /// `want` seem free.
    pub fn free(&mut self, want: u32) -> u32 {
        let mut f = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        if f < want {
            self.cached_cons = self.cons().load(Ordering::Acquire);
            f = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        }
        f
    }

    /// Writes entry `i` past the producer index (valid for i < free()).
    pub fn put(&mut self, i: u32, v: T) {
        let at = (self.cached_prod.wrapping_add(i) & self.mask) as usize;
        // SAFETY: at < size, inside the descriptor array.
        unsafe { self.desc.add(at).write(v) }
    }

    pub fn submit(&mut self, n: u32) {
        self.cached_prod = self.cached_prod.wrapping_add(n);
        self.prod().store(self.cached_prod, Ordering::Release);
    }

    // Consumer side (rx, completion).

    /// Entries ready, at most `max`.
    pub fn peek(&mut self, max: u32) -> u32 {
        let mut a = self.cached_prod.wrapping_sub(self.cached_cons);
        if a == 0 {
            self.cached_prod = self.prod().load(Ordering::Acquire);
            a = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        a.min(max)
    }

    pub fn get(&self, i: u32) -> &T {
        let at = (self.cached_cons.wrapping_add(i) & self.mask) as usize;
        // SAFETY: at < size; the kernel published it (peek).
        unsafe { &*self.desc.add(at) }
    }

    pub fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.cons().store(self.cached_cons, Ordering::Release);
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

pub fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = cvt(unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setopt<V>(fd: RawFd, level: libc::c_int, name: libc::c_int, v: &V) -> io::Result<()> {
    // SAFETY: v is a valid V of the size passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            v as *const V as *const _,
            size_of::<V>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

pub fn umem_reg(fd: RawFd, umem: &Umem, headroom: u32) -> io::Result<()> {
    // SAFETY: all-zero is a valid xdp_umem_reg.
    let mut r: libc::xdp_umem_reg = unsafe { std::mem::zeroed() };
    r.addr = umem.base.as_ptr() as u64;
    r.len = umem.len as u64;
    r.chunk_size = umem.frame_size;
    r.headroom = headroom;
    setopt(fd, libc::SOL_XDP, libc::XDP_UMEM_REG, &r)
}

fn mmap_offsets(fd: RawFd) -> io::Result<libc::xdp_mmap_offsets> {
    // SAFETY: all-zero is valid; the kernel fills it.
    let mut o: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
    // SAFETY: o and len are valid for the kernel to write.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libc::XDP_MMAP_OFFSETS,
            &mut o as *mut _ as *mut _,
            &mut len,
        )
    })?;
    if len as usize != size_of::<libc::xdp_mmap_offsets>() {
        return Err(io::Error::other(
            "kernel without ring flags (pre-5.4 mmap offsets)",
        ));
    }
    Ok(o)
}

/// Fill and completion rings of the UMEM (or of a socket sharing it on
/// another device or queue).
pub fn umem_rings(fd: RawFd, fill: u32, comp: u32) -> io::Result<(Ring<u64>, Ring<u64>)> {
    setopt(fd, libc::SOL_XDP, libc::XDP_UMEM_FILL_RING, &fill)?;
    setopt(fd, libc::SOL_XDP, libc::XDP_UMEM_COMPLETION_RING, &comp)?;
    let o = mmap_offsets(fd)?;
    Ok((
        Ring::map(fd, &o.fr, libc::XDP_UMEM_PGOFF_FILL_RING, fill)?,
        Ring::map(fd, &o.cr, libc::XDP_UMEM_PGOFF_COMPLETION_RING, comp)?,
    ))
}

pub fn rx_ring(fd: RawFd, size: u32) -> io::Result<Ring<libc::xdp_desc>> {
    setopt(fd, libc::SOL_XDP, libc::XDP_RX_RING, &size)?;
    let o = mmap_offsets(fd)?;
    Ring::map(fd, &o.rx, libc::XDP_PGOFF_RX_RING as u64, size)
}

pub fn tx_ring(fd: RawFd, size: u32) -> io::Result<Ring<libc::xdp_desc>> {
    setopt(fd, libc::SOL_XDP, libc::XDP_TX_RING, &size)?;
    let o = mmap_offsets(fd)?;
    Ring::map(fd, &o.tx, libc::XDP_PGOFF_TX_RING as u64, size)
}

/// Copy-mode tx holds a frame in an skb until the far end frees it; the
/// default socket send buffer caps how many are in flight. SO_SNDBUF is
/// silently capped at `net.core.wmem_max` (212,992 by default: about 185
/// frames, below the worker's own cap), so SO_SNDBUFFORCE first (the
/// daemon has CAP_NET_ADMIN), SO_SNDBUF where it is refused.
pub fn set_sndbuf(fd: RawFd, bytes: i32) -> io::Result<()> {
    match setopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &bytes) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            setopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &bytes)
        }
        r => r,
    }
}

/// bind(2). `shared`: the fd owning the UMEM; then only XDP_SHARED_UMEM
/// may be passed (the kernel inherits copy/zero-copy and need_wakeup).
pub fn bind(
    fd: RawFd,
    ifindex: u32,
    queue: u32,
    flags: u16,
    shared: Option<RawFd>,
) -> io::Result<()> {
    // SAFETY: all-zero is a valid sockaddr_xdp.
    let mut a: libc::sockaddr_xdp = unsafe { std::mem::zeroed() };
    a.sxdp_family = libc::AF_XDP as u16;
    a.sxdp_ifindex = ifindex;
    a.sxdp_queue_id = queue;
    a.sxdp_flags = flags;
    if let Some(s) = shared {
        a.sxdp_flags = libc::XDP_SHARED_UMEM;
        a.sxdp_shared_umem_fd = s as u32;
    }
    // SAFETY: a valid sockaddr_xdp of the size passed.
    cvt(unsafe {
        libc::bind(
            fd,
            &a as *const _ as *const libc::sockaddr,
            size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Tx kick. In copy mode the transmit (skb build, device xmit) happens in
/// this syscall, at most 32 frames a call (then EAGAIN: call again).
pub fn kick_tx(fd: &impl AsRawFd) -> isize {
    // SAFETY: a zero-length send on our socket.
    unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    }
}

/// XDP_OPTIONS: XDP_OPTIONS_ZEROCOPY when the socket is in zero-copy mode.
pub fn options(fd: RawFd) -> io::Result<u32> {
    // SAFETY: all-zero is valid; the kernel fills it.
    let mut s: libc::xdp_options = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::xdp_options>() as libc::socklen_t;
    // SAFETY: s and len are valid for the kernel to write.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libc::XDP_OPTIONS,
            &mut s as *mut _ as *mut _,
            &mut len,
        )
    })?;
    Ok(s.flags)
}

/// XDP_STATISTICS of a socket (drops for lack of fill entries, ...).
pub fn statistics(fd: RawFd) -> io::Result<libc::xdp_statistics> {
    // SAFETY: all-zero is valid; the kernel fills it.
    let mut s: libc::xdp_statistics = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::xdp_statistics>() as libc::socklen_t;
    // SAFETY: s and len are valid for the kernel to write.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libc::XDP_STATISTICS,
            &mut s as *mut _ as *mut _,
            &mut len,
        )
    })?;
    Ok(s)
}
