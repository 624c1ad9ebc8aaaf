//! Seal and open a packet region in place with `wg_ebpf_common::aead`,
//! 64 bytes at a time through a per-CPU scratch (the BPF stack is too small
//! for the cipher state and a chunk). Full chunks move between the packet
//! and the scratch with direct packet access inside a `bpf_loop` callback;
//! the 1..=63-byte tail and the tag go through `bpf_xdp_load_bytes` /
//! `store_bytes`, whose length the verifier can bound.

use aya_ebpf::{
    bindings::xdp_md,
    cty::c_void,
    helpers::{bpf_loop, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    programs::XdpContext,
};
use wg_ebpf_common::aead::{key_words, AeadScratch, CHUNK_LEN, MAX_PAYLOAD, TAG_LEN};

use crate::maps::AEAD_SCRATCH;

/// Full chunks in the largest payload.
const MAX_CHUNKS: u64 = (MAX_PAYLOAD / CHUNK_LEN) as u64;

/// State the bpf_loop callback needs from its caller.
#[repr(C)]
struct LoopCtx {
    xdp: *mut xdp_md,
    /// The per-CPU scratch, looked up once per packet rather than per chunk.
    s: *mut AeadScratch,
    off: u64,
    /// Cleared by the callback on a chunk outside the packet.
    ok: u64,
}

unsafe extern "C" fn seal_cb(i: u64, c: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the LoopCtx given to it.
    unsafe { chunk::<true>(i, c) }
}

unsafe extern "C" fn open_cb(i: u64, c: *mut c_void) -> i64 {
    // SAFETY: as seal_cb.
    unsafe { chunk::<false>(i, c) }
}

/// One 64-byte chunk at index `i`. Returns 1 to stop the loop early.
#[inline(always)]
unsafe fn chunk<const SEAL: bool>(i: u64, c: *mut c_void) -> i64 {
    // SAFETY: c is the caller's LoopCtx.
    let c = unsafe { &mut *(c as *mut LoopCtx) };
    // bpf_loop's index is not bounded for the verifier: bound it again.
    if i >= MAX_CHUNKS {
        c.ok = 0;
        return 1;
    }
    if c.s.is_null() {
        c.ok = 0;
        return 1;
    }
    // SAFETY: the per-CPU value the caller looked up; XDP programs do not
    // nest on a CPU.
    let s = unsafe { &mut *c.s };
    let o = c.off + i * CHUNK_LEN as u64;
    // Offsets past any frame we build would only be a bug; they also give
    // the verifier the bound it needs on the packet pointer below.
    if o > MAX_CHUNK_OFF {
        c.ok = 0;
        return 1;
    }
    // SAFETY: c.xdp is the program's context; data and data_end are
    // maintained by the kernel.
    let (data, end) = unsafe { ((*c.xdp).data as usize, (*c.xdp).data_end as usize) };
    let p = data + o as usize;
    // The programs are not frags-aware, so the whole frame is linear and a
    // chunk past data_end means a length the caller did not check.
    if p + CHUNK_LEN > end {
        c.ok = 0;
        return 1;
    }
    // Direct packet access: two helper calls (bpf_xdp_load_bytes and
    // store_bytes) per chunk were ~10% of a busy tunnel's CPU (perf, TCP
    // single stream).
    // SAFETY: p..p+64 is inside the packet (checked just above).
    unsafe { copy_in(p as *const u8, &mut s.buf) };
    if SEAL {
        s.seal_chunk();
    } else {
        s.open_chunk();
    }
    // SAFETY: as above.
    unsafe { copy_out(&s.buf, p as *mut u8) };
    0
}

/// Largest chunk offset: a 1,440-byte payload behind the longest outer
/// headers (Ethernet + IPv6 + UDP + WireGuard header, 78 bytes) ends well
/// below this.
const MAX_CHUNK_OFF: u64 = 2048;

/// Invokes `$m!(k, 8k)` for the eight 8-byte words of a chunk (asm offsets
/// must be literals).
macro_rules! eight_words {
    ($m:ident) => {
        $m!(0, 0);
        $m!(1, 8);
        $m!(2, 16);
        $m!(3, 24);
        $m!(4, 32);
        $m!(5, 40);
        $m!(6, 48);
        $m!(7, 56);
    };
}

/// Copies 64 packet bytes at `src` (any alignment) into the scratch buffer.
///
/// LLVM splits an unaligned load into bytes for BPF (and the target feature
/// that stops it also merges stack slots into misaligned accesses the
/// verifier refuses), so the eight 8-byte loads are written as instructions.
/// The verifier accepts misaligned packet access where the CPU does (x86-64,
/// arm64).
///
/// # Safety
/// `src..src+64` must be readable packet memory.
#[inline(always)]
unsafe fn copy_in(src: *const u8, buf: &mut [u32; 16]) {
    let d = buf.as_mut_ptr() as *mut u64;
    macro_rules! word {
        ($k:literal, $off:literal) => {
            let v: u64;
            // SAFETY: src + $off .. + 8 is inside the range the caller
            // vouched for; d is 8-aligned (buf is the first field of a
            // repr(C) struct holding a u64).
            unsafe {
                core::arch::asm!(
                    concat!("{v} = *(u64 *)({p} + ", $off, ")"),
                    p = in(reg) src,
                    v = lateout(reg) v,
                    options(readonly, nostack, preserves_flags)
                );
                d.add($k).write(v);
            }
        };
    }
    eight_words!(word);
}

/// Copies the scratch buffer back to 64 packet bytes at `dst` (any
/// alignment); see [`copy_in`].
///
/// # Safety
/// `dst..dst+64` must be writable packet memory.
#[inline(always)]
unsafe fn copy_out(buf: &[u32; 16], dst: *mut u8) {
    let s = buf.as_ptr() as *const u64;
    macro_rules! word {
        ($k:literal, $off:literal) => {
            // SAFETY: as copy_in.
            unsafe {
                core::arch::asm!(
                    concat!("*(u64 *)({p} + ", $off, ") = {v}"),
                    p = in(reg) dst,
                    v = in(reg) s.add($k).read(),
                    options(nostack, preserves_flags)
                );
            }
        };
    }
    eight_words!(word);
}

#[inline(always)]
fn load(ctx: &XdpContext, off: usize, dst: *mut u32, len: usize) -> bool {
    // SAFETY: dst points into the per-CPU scratch with at least len bytes;
    // the helper checks the packet bounds.
    unsafe { bpf_xdp_load_bytes(ctx.ctx, off as u32, dst as *mut c_void, len as u32) == 0 }
}

#[inline(always)]
fn store(ctx: &XdpContext, off: usize, src: *mut u32, len: usize) -> bool {
    // SAFETY: as `load`.
    unsafe { bpf_xdp_store_bytes(ctx.ctx, off as u32, src as *mut c_void, len as u32) == 0 }
}

/// Runs the cipher over `len` bytes at `off`; `SEAL` picks the direction
/// (a const parameter: BPF functions take at most five arguments).
///
/// Returns whether it succeeded; the tag is then in the per-CPU scratch.
/// (A plain bool: see `crypt::pack` on what BTF does with Rust enums.)
#[inline(never)]
fn crypt<const SEAL: bool>(
    ctx: &XdpContext,
    off: usize,
    len: usize,
    key: &[u8; 32],
    counter: u64,
) -> bool {
    let Some(s) = AEAD_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU value; XDP programs do not nest on a CPU.
    unsafe { (*s).start(&key_words(key), counter) };
    // Inlined here (not a call to crypt_started): the callers' stack frames
    // plus start's leave no room for one more frame within 512 bytes.
    crypt_inner::<SEAL>(ctx, off, len).is_some()
}

/// The body of a seal or open after [`AeadScratch::start`] (or
/// `start_nonce` and `aad`, as the test programs do) on the per-CPU scratch:
/// every chunk of the `len` bytes at `off`, in place, then
/// [`AeadScratch::finish`]. Returns whether it succeeded; the tag is then in
/// the scratch.
#[inline(never)]
pub fn crypt_started<const SEAL: bool>(ctx: &XdpContext, off: usize, len: usize) -> bool {
    crypt_inner::<SEAL>(ctx, off, len).is_some()
}

#[inline(always)]
fn crypt_inner<const SEAL: bool>(
    ctx: &XdpContext,
    off: usize,
    len: usize,
) -> Option<&'static mut AeadScratch> {
    if len > MAX_PAYLOAD {
        return None;
    }
    let s = AEAD_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU value; XDP programs do not nest on a CPU.
    let s = unsafe { &mut *s };
    let buf = s.buf.as_mut_ptr();
    let full = len / CHUNK_LEN;
    // The full chunks go through bpf_loop: its callback is verified once,
    // where a bounded loop is walked chunk by chunk for every path through
    // the program (hundreds of thousands of instructions, seconds of load
    // time, for a 1,440-byte packet).
    let mut lc = LoopCtx {
        xdp: ctx.ctx,
        s: s as *mut AeadScratch,
        off: off as u64,
        ok: 1,
    };
    let cb = if SEAL {
        seal_cb as *mut c_void
    } else {
        open_cb as *mut c_void
    };
    // SAFETY: the callback has the signature bpf_loop expects and only
    // touches `lc` and the per-CPU scratch.
    let rc = unsafe { bpf_loop(full as u32, cb, &mut lc as *mut LoopCtx as *mut c_void, 0) };
    if rc < 0 || lc.ok == 0 {
        return None;
    }
    // black_box: keep the 1..=63 bound where the verifier can see it (LLVM
    // otherwise reorders the check away from the helper calls).
    let rem = core::hint::black_box(len & (CHUNK_LEN - 1));
    if rem >= 1 && rem < CHUNK_LEN {
        let o = off + full * CHUNK_LEN;
        if !load(ctx, o, buf, rem) {
            return None;
        }
        if SEAL {
            s.seal_partial(rem as u32);
        } else {
            s.open_partial(rem as u32);
        }
        if !store(ctx, o, buf, rem) {
            return None;
        }
    }
    s.finish();
    Some(s)
}

/// Encrypts `len` bytes at `off` in place and writes the tag right after
/// them (the caller made room).
#[inline(always)]
pub fn seal(ctx: &XdpContext, off: usize, len: usize, key: &[u8; 32], counter: u64) -> bool {
    if !crypt::<true>(ctx, off, len, key, counter) {
        return false;
    }
    let Some(s) = AEAD_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU value; XDP programs do not nest on a CPU.
    let s = unsafe { &mut *s };
    store(ctx, off + len, s.tag.as_mut_ptr(), TAG_LEN)
}

/// Verifies the tag after `len` bytes at `off` and decrypts in place. On
/// false the region may be half-decrypted: the caller drops the packet.
#[inline(always)]
pub fn open(ctx: &XdpContext, off: usize, len: usize, key: &[u8; 32], counter: u64) -> bool {
    if !crypt::<false>(ctx, off, len, key, counter) {
        return false;
    }
    let Some(s) = AEAD_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU value; XDP programs do not nest on a CPU.
    let s = unsafe { &mut *s };
    let buf = s.buf.as_mut_ptr();
    if !load(ctx, off + len, buf, TAG_LEN) {
        return false;
    }
    s.tag_matches(&[s.buf[0], s.buf[1], s.buf[2], s.buf[3]])
}
