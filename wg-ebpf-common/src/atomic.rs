//! Atomic read-modify-write on map memory, for both sides.
//!
//! The `bpfel-unknown-none` target declares no compare-and-swap, so core's
//! `AtomicU64::fetch_*` do not exist there, although BPF (v3) has the
//! instructions. On BPF these go through the compiler intrinsics, which
//! lower to `BPF_ATOMIC | BPF_FETCH`; on the host, through `AtomicU64`.

/// Atomically `*p += v`, returning the old value.
///
/// # Safety
/// `p` must be valid, 8-byte aligned, and only accessed atomically by others.
#[inline(always)]
pub unsafe fn fetch_add_u64(p: *mut u64, v: u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        // SAFETY: forwarded from the caller.
        unsafe {
            // SeqCst, not Relaxed: LLVM's BPF backend lowers a relaxed
            // fetch-add to the legacy non-fetching XADD even when the old
            // value is used (seen with LLVM 22: every packet got the same
            // counter). SeqCst gets BPF_ADD | BPF_FETCH.
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::SeqCst }>(
                p, v,
            )
        }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // SAFETY: forwarded from the caller.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(p) }
            .fetch_add(v, core::sync::atomic::Ordering::Relaxed)
    }
}

/// Atomically `*p |= v`, returning the old value.
///
/// # Safety
/// As [`fetch_add_u64`].
#[inline(always)]
pub unsafe fn fetch_or_u64(p: *mut u64, v: u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        // SAFETY: forwarded from the caller.
        unsafe {
            core::intrinsics::atomic_or::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p, v,
            )
        }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // SAFETY: forwarded from the caller.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(p) }
            .fetch_or(v, core::sync::atomic::Ordering::Relaxed)
    }
}
