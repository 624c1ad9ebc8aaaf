//! The shared session state, seen from userspace: `SESSION_STATE` (a
//! `BPF_F_MMAPABLE` array) mapped into this process. Every word the BPF
//! programs update atomically is updated here atomically too (AtomicU64
//! over the mapping), so a session may be served by BPF and by a worker
//! in any interleaving without a nonce used twice or a counter accepted
//! twice. Replay semantics: `wg_ebpf_common::replay`, the same code BPF
//! runs (its host build uses AtomicU64 for the fetch-or).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use wg_ebpf_common::{
    maps::{SessionState, REPLAY_BITS_TOTAL, REPLAY_WINDOW, REPLAY_WORDS},
    replay, REJECT_AFTER_MESSAGES,
};

const STRIDE: usize = std::mem::size_of::<SessionState>();

/// A mapping of `SESSION_STATE` (or, for tests, of anonymous memory).
pub struct StateMap {
    base: *mut u8,
    len: usize,
    entries: u32,
}

// SAFETY: the memory is only accessed through atomics (and the replay
// code's word clears, which the BPF side does the same way).
unsafe impl Send for StateMap {}
// SAFETY: as above.
unsafe impl Sync for StateMap {}

impl StateMap {
    /// Maps the array behind `fd` (`entries` values of `SessionState`).
    pub fn map(fd: BorrowedFd<'_>, entries: u32) -> io::Result<Self> {
        Self::mmap(Some(fd.as_raw_fd()), entries)
    }

    /// Anonymous memory of the same shape (tests).
    pub fn anonymous(entries: u32) -> io::Result<Self> {
        Self::mmap(None, entries)
    }

    fn mmap(fd: Option<i32>, entries: u32) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (entries as usize * STRIDE).div_ceil(page) * page;
        let (flags, fd) = match fd {
            Some(fd) => (libc::MAP_SHARED, fd),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: a new mapping; the kernel checks the fd and the length
        // against the map (BPF_F_MMAPABLE arrays allow MAP_SHARED).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            base: p as *mut u8,
            len,
            entries,
        })
    }

    /// Slot `slot` if it is in range and still belongs to `owner` (the
    /// session's local index).
    pub fn slot(&self, slot: u32, owner: u32) -> Option<Slot<'_>> {
        if slot == 0 || slot >= self.entries {
            return None;
        }
        // SAFETY: slot < entries, inside the mapping; 8-byte aligned
        // (page-aligned base, stride a multiple of 8).
        let p = unsafe { self.base.add(slot as usize * STRIDE) } as *mut SessionState;
        let s = Slot {
            p,
            _map: std::marker::PhantomData,
        };
        (s.owner() == owner).then_some(s)
    }

    /// Test helper: makes `slot` fresh for `owner`, as the control plane
    /// does before installing a session.
    pub fn reset(&self, slot: u32, owner: u32) {
        if slot < self.entries {
            // SAFETY: in range; no one else uses a slot being reset.
            unsafe {
                let p = self.base.add(slot as usize * STRIDE) as *mut SessionState;
                p.write_volatile(SessionState::new(owner));
            }
        }
    }
}

impl Drop for StateMap {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.base as *mut _, self.len) };
    }
}

/// A mapping of an array of u32 (`PEER_CURRENT`), read atomically. Array
/// maps store each value at a multiple of 8 bytes (the kernel rounds the
/// element size up to 8).
pub struct U32Map {
    base: *mut u8,
    len: usize,
    entries: u32,
}

// SAFETY: only read through atomics.
unsafe impl Send for U32Map {}

impl U32Map {
    pub fn map(fd: BorrowedFd<'_>, entries: u32) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (entries as usize * 8).div_ceil(page) * page;
        // SAFETY: a new shared read-only mapping of the map's memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            base: p as *mut u8,
            len,
            entries,
        })
    }

    /// Entry `i` (0 out of range).
    pub fn get(&self, i: u32) -> u32 {
        if i >= self.entries {
            return 0;
        }
        // SAFETY: in range, 8-byte aligned in the mapping; read atomically
        // (BPF and the control plane write it whole).
        unsafe { AtomicU32::from_ptr(self.base.add(i as usize * 8) as *mut u32) }
            .load(Ordering::Relaxed)
    }
}

impl Drop for U32Map {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.base as *mut _, self.len) };
    }
}

/// One session's state inside the mapping.
pub struct Slot<'a> {
    p: *mut SessionState,
    _map: std::marker::PhantomData<&'a StateMap>,
}

impl Slot<'_> {
    fn owner(&self) -> u32 {
        // SAFETY: a live, aligned u32 inside the mapping.
        unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*self.p).owner_index)) }
            .load(Ordering::Acquire)
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        // SAFETY: i < REPLAY_WORDS (callers mask); aligned u64 in the mapping.
        unsafe { AtomicU64::from_ptr(std::ptr::addr_of_mut!((*self.p).replay_bitmap[i])) }
    }

    fn next(&self) -> &AtomicU64 {
        // SAFETY: an aligned u64 in the mapping.
        unsafe { AtomicU64::from_ptr(std::ptr::addr_of_mut!((*self.p).replay_next)) }
    }

    /// Reserves the next send counter (atomic fetch-add, shared with BPF).
    pub fn take_send_counter(&self) -> u64 {
        // SAFETY: an aligned u64 in the mapping, only used atomically.
        unsafe { AtomicU64::from_ptr(std::ptr::addr_of_mut!((*self.p).send_counter)) }
            .fetch_add(1, Ordering::Relaxed)
    }

    /// `replay::precheck` over the shared words (read one at a time).
    pub fn replay_precheck(&self, counter: u64) -> bool {
        let next = self.next().load(Ordering::Relaxed);
        if next > REJECT_AFTER_MESSAGES || counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let c = counter + 1;
        if REPLAY_WINDOW + c < next {
            return false;
        }
        if c > next {
            return true;
        }
        let w = ((c >> 6) & (REPLAY_WORDS as u64 - 1)) as usize;
        self.word(w).load(Ordering::Relaxed) & (1u64 << (c & 63)) == 0
    }

    /// `replay::update`: records `counter` after its tag verified; false
    /// when it must be dropped.
    pub fn replay_update(&self, counter: u64) -> bool {
        const _: () = assert!(REPLAY_BITS_TOTAL / 64 == REPLAY_WORDS as u64);
        // SAFETY: pointers into the live mapping; `update` writes `next`
        // volatile, clears words whole and sets the bit with an atomic
        // fetch-or (AtomicU64 on the host), as BPF does on the same words.
        unsafe {
            replay::update(
                std::ptr::addr_of_mut!((*self.p).replay_next),
                std::ptr::addr_of_mut!((*self.p).replay_bitmap),
                counter,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_check_their_owner_and_count_like_replay() {
        let m = StateMap::anonymous(8).expect("anonymous map");
        m.reset(3, 77);
        assert!(m.slot(3, 78).is_none(), "another owner");
        assert!(m.slot(0, 0).is_none(), "slot 0 is never a session's");
        assert!(m.slot(8, 77).is_none(), "out of range");
        let s = m.slot(3, 77).expect("slot");
        assert_eq!(s.take_send_counter(), 0);
        assert_eq!(s.take_send_counter(), 1);
        for c in [5u64, 3, 9, 4] {
            assert!(s.replay_precheck(c));
            assert!(s.replay_update(c), "{c}");
            assert!(!s.replay_precheck(c), "{c} again");
            assert!(!s.replay_update(c), "{c} again");
        }
        assert!(s.replay_update(REPLAY_WINDOW + 20));
        assert!(!s.replay_precheck(3), "fell out of the window");
    }
}
