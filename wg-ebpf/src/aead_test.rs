//! Test programs for `wg_ebpf_common::aead`: they run the AEAD inside the
//! kernel on a packet that carries its own key, so userspace can compare the
//! result with the `chacha20poly1305` crate through BPF_PROG_TEST_RUN, and
//! time it. They are never attached to an interface.
//!
//! Packet layout (both programs), a 64-byte header then the message:
//!
//! | bytes  | field                                               |
//! |--------|-----------------------------------------------------|
//! | 0..32  | key                                                 |
//! | 32..44 | nonce (WireGuard: 4 zero bytes, counter LE)         |
//! | 44     | AAD length, at most 16 (WireGuard: 0)               |
//! | 45     | flags: bit 0 `KEEP_LEN` (see below)                 |
//! | 46..48 | zero                                                |
//! | 48..64 | AAD, zero-padded                                    |
//! | 64..   | `aead_seal_test`: plaintext, 0..=1440 bytes         |
//! |        | `aead_open_test`: ciphertext (0..=1440) then tag    |
//!
//! `aead_seal_test` encrypts in place, grows the tail by 16 for the tag and
//! returns `XDP_TX`. `aead_open_test` decrypts in place and returns `XDP_TX`
//! with the tag trimmed off when the tag matches, `XDP_DROP` (packet left
//! half-decrypted, as the data path would drop it) when it does not. A packet
//! outside the layout's bounds, or a failing helper, gives `XDP_PASS` with
//! the packet unchanged as far as it got.
//!
//! `KEEP_LEN` is for timing with BPF_PROG_TEST_RUN's `repeat`, which runs the
//! program again and again on the same buffer: seal then shrinks the tail
//! back after storing the tag, open leaves the tag in place, so every
//! repetition sees the same length and does the same work.
//!
//! After the header (one 64-byte load into the per-CPU scratch) they run the
//! data path's own chunk loop, `aead_glue::crypt_started`: what is tested and
//! timed here is what the tunnel runs.

use aya_ebpf::{
    bindings::xdp_action,
    cty::c_void,
    helpers::{bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    macros::xdp,
    programs::XdpContext,
};
use wg_ebpf_common::aead::{CHUNK_LEN, MAX_PAYLOAD, TAG_LEN};

use crate::{aead_glue::crypt_started, maps::AEAD_SCRATCH};

const HDR_LEN: u32 = 64;
const MAX_AAD: u32 = 16;
const KEEP_LEN: u32 = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Seal,
    Open,
}

#[xdp]
pub fn aead_seal_test(ctx: XdpContext) -> u32 {
    run(&ctx, Dir::Seal).unwrap_or(xdp_action::XDP_PASS)
}

#[xdp]
pub fn aead_open_test(ctx: XdpContext) -> u32 {
    run(&ctx, Dir::Open).unwrap_or(xdp_action::XDP_PASS)
}

/// Copies `len` packet bytes at `off` into `dst`. The helper bounds-checks
/// against the packet; `len` must be a constant or verifier-bounded.
#[inline(always)]
fn load(ctx: &XdpContext, off: u32, dst: *mut u32, len: u32) -> Result<(), ()> {
    // SAFETY: dst points into the per-CPU scratch with at least len bytes.
    let rc = unsafe { bpf_xdp_load_bytes(ctx.ctx, off, dst as *mut c_void, len) };
    if rc != 0 {
        return Err(());
    }
    Ok(())
}

#[inline(always)]
fn store(ctx: &XdpContext, off: u32, src: *mut u32, len: u32) -> Result<(), ()> {
    // SAFETY: src points into the per-CPU scratch with at least len bytes.
    let rc = unsafe { bpf_xdp_store_bytes(ctx.ctx, off, src as *mut c_void, len) };
    if rc != 0 {
        return Err(());
    }
    Ok(())
}

#[inline(always)]
fn crypt_started_dir(ctx: &XdpContext, dir: Dir, off: usize, len: usize) -> bool {
    match dir {
        Dir::Seal => crypt_started::<true>(ctx, off, len),
        Dir::Open => crypt_started::<false>(ctx, off, len),
    }
}

#[inline(always)]
fn run(ctx: &XdpContext, dir: Dir) -> Result<u32, ()> {
    let pkt_len = (ctx.data_end() - ctx.data()) as u32;
    let trailer = if dir == Dir::Open { TAG_LEN as u32 } else { 0 };
    if pkt_len < HDR_LEN + trailer || pkt_len > HDR_LEN + trailer + MAX_PAYLOAD as u32 {
        return Err(());
    }
    let msg_len = pkt_len - HDR_LEN - trailer;

    let s = AEAD_SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: per-CPU map value, and XDP does not nest on a CPU.
    let s = unsafe { &mut *s };

    let buf = s.buf.as_mut_ptr();
    load(ctx, 0, buf, CHUNK_LEN as u32)?;
    let h = s.buf;
    let key = [h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]];
    let nonce = [h[8], h[9], h[10]];
    let aad_len = u32::from_le(h[11]) & 0xff;
    let flags = (u32::from_le(h[11]) >> 8) & 0xff;
    if aad_len > MAX_AAD {
        return Err(());
    }
    s.start_nonce(&key, &nonce);
    if aad_len != 0 {
        s.buf = [
            h[12], h[13], h[14], h[15], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        s.aad(aad_len);
    }

    // The data path's own chunk loop and finish.
    if !crypt_started_dir(ctx, dir, HDR_LEN as usize, msg_len as usize) {
        return Err(());
    }

    let tag_off = HDR_LEN + msg_len;
    match dir {
        Dir::Seal => {
            // SAFETY: ctx.ctx is this program's context.
            if unsafe { bpf_xdp_adjust_tail(ctx.ctx, TAG_LEN as i32) } != 0 {
                return Err(());
            }
            store(ctx, tag_off, s.tag.as_mut_ptr(), TAG_LEN as u32)?;
            // SAFETY: as above.
            if flags & KEEP_LEN != 0
                && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(TAG_LEN as i32)) } != 0
            {
                return Err(());
            }
            Ok(xdp_action::XDP_TX)
        }
        Dir::Open => {
            load(ctx, tag_off, buf, TAG_LEN as u32)?;
            if !s.tag_matches(&[s.buf[0], s.buf[1], s.buf[2], s.buf[3]]) {
                return Ok(xdp_action::XDP_DROP);
            }
            if flags & KEEP_LEN != 0 {
                return Ok(xdp_action::XDP_TX);
            }
            // SAFETY: ctx.ctx is this program's context.
            if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(TAG_LEN as i32)) } != 0 {
                return Err(());
            }
            Ok(xdp_action::XDP_TX)
        }
    }
}
