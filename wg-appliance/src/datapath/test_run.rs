//! `BPF_PROG_TEST_RUN` for XDP programs: runs a loaded program on a packet
//! given as bytes and returns its verdict and the packet as it left.
//!
//! aya 0.14 has no wrapper for this command, so this is the one place that
//! issues the raw `bpf(2)` syscall. Used by the BPF program tests and the
//! micro-benchmarks.

use std::{io, os::fd::RawFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// What a test run returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value (the XDP action).
    pub verdict: u32,
    /// The packet after the program, as the kernel copied it out.
    pub data: Vec<u8>,
    /// Mean run time per repetition in nanoseconds, as the kernel measured it.
    pub duration_ns: u32,
}

/// Runs the program `prog_fd` `repeat` times (at least once) on `packet`.
pub fn run_xdp(prog_fd: RawFd, packet: &[u8], repeat: u32) -> io::Result<TestRunOutput> {
    // Room for programs that grow the packet (encapsulation adds headers).
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        ..Default::default()
    };
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix whose
    // pointers outlive the call; the kernel writes at most data_size_out bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate((attr.data_size_out as usize).min(out.len()));
    Ok(TestRunOutput {
        verdict: attr.retval,
        data: out,
        duration_ns: attr.duration,
    })
}
