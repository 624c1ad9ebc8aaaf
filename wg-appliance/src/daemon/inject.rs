//! Control-plane frames into the tunnel: keepalives and staged packets leave
//! through `wg0` so that `tun_tx` encrypts them (BPF owns every send counter).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use wg_ebpf_common::maps::{ControlFrame, CONTROL_MAGIC_KEEPALIVE, ETH_P_WG_CONTROL};

use super::{io, Daemon, DaemonError};

impl Daemon {
    pub(super) fn inject_keepalive(&mut self, id: u32) {
        let f = ControlFrame {
            magic: CONTROL_MAGIC_KEEPALIVE,
            peer_id: id,
        };
        let mut frame = Vec::with_capacity(14 + 8);
        frame.extend_from_slice(&self.link.mac);
        frame.extend_from_slice(&self.link.mac);
        frame.extend_from_slice(&ETH_P_WG_CONTROL.to_be_bytes());
        frame.extend_from_slice(&f.magic.to_le_bytes());
        frame.extend_from_slice(&f.peer_id.to_le_bytes());
        self.send_frame(&frame);
    }

    pub(super) fn inject_staged(&mut self, id: u32) {
        let staged: Vec<Vec<u8>> = match self.peers.get_mut(&id) {
            Some(p) => p.staged.drain(..).collect(),
            None => return,
        };
        for pkt in staged {
            let proto: u16 = match pkt.first().map(|b| b >> 4) {
                Some(4) => 0x0800,
                Some(6) => 0x86DD,
                _ => continue,
            };
            let mut frame = Vec::with_capacity(14 + pkt.len());
            frame.extend_from_slice(&self.link.mac);
            frame.extend_from_slice(&self.link.mac);
            frame.extend_from_slice(&proto.to_be_bytes());
            frame.extend_from_slice(&pkt);
            self.send_frame(&frame);
        }
    }

    /// Writes a frame out of `wg0`; it arrives at `tun_tx` on `wg0x`.
    fn send_frame(&self, frame: &[u8]) {
        // SAFETY: valid fd and buffer.
        let rc = unsafe {
            libc::send(
                self.inject.as_raw_fd(),
                frame.as_ptr() as *const _,
                frame.len(),
                0,
            )
        };
        if rc < 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "injecting into the tunnel failed");
        }
    }
}

/// AF_PACKET socket bound to `wg0`, for injecting frames into the tunnel.
pub(super) fn packet_socket(ifindex: u32) -> Result<OwnedFd, DaemonError> {
    // SAFETY: plain socket calls on a descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io("opening a packet socket on the tunnel")(
                std::io::Error::last_os_error(),
            ));
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd,
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            return Err(io("binding the packet socket to the tunnel")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(owned)
    }
}
