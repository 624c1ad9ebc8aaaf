//! Sessions in the data path: installing a handshake's keys, taking back an
//! adopted data path's sessions, seeing a pending one confirmed by traffic.

use std::time::{Duration, SystemTime};

use wg_ebpf_common::maps::{Session as BpfSession, SESSION_CAN_SEND, SESSION_INITIATOR};

use super::peers::{BpfKeypair, PeerState};
use super::{ktime_ns, Daemon, DaemonError};
use crate::{noise, timers::Action};

impl Daemon {
    /// Writes a session into the data path; the initiator's becomes the
    /// peer's sending session at once, the responder's on confirmation.
    pub(super) fn install(&mut self, id: u32, kp: &noise::Keypair, flags: u32) {
        let s = BpfSession {
            recv_key: *kp.receiving_key(),
            send_key: *kp.sending_key(),
            birth_ns: ktime_ns(),
            remote_index: kp.remote_index(),
            peer_id: id,
            flags,
            // Assigned by the data path.
            slot: 0,
        };
        self.by_index.insert(kp.local_index(), id);
        if let Err(e) = self.dp.install_session(kp.local_index(), &s) {
            tracing::warn!(error = %e, "installing the session in the data path failed");
            return;
        }
        if flags & SESSION_CAN_SEND != 0 {
            if let Err(e) = self.dp.set_current(id, kp.local_index()) {
                tracing::warn!(error = %e, "activating the session failed");
            }
        }
    }

    /// The pending `next` session of peer `id` if the data path has seen
    /// traffic on it (which confirms it).
    pub(super) fn next_confirmed(&self, id: u32) -> Option<u32> {
        let next = self.peers.get(&id)?.timers.keypairs.next()?.local_index;
        match self.dp.session_state(next) {
            Ok(Some(s)) if s.replay_next > 0 => Some(next),
            _ => None,
        }
    }

    /// Takes the sessions the data path holds for adopted peer `id` back
    /// into its timers: the sending one is current, the others previous
    /// (newest first).
    pub(super) fn restore_sessions(
        &mut self,
        id: u32,
        st: &mut PeerState,
        now: Duration,
    ) -> Result<(), DaemonError> {
        let current = self.dp.current(id).unwrap_or(0);
        let mut sessions: Vec<(u32, BpfSession)> = self
            .dp
            .sessions()?
            .into_iter()
            .filter(|(_, s)| s.peer_id == id)
            .collect();
        sessions.sort_by_key(|(i, s)| (*i != current, std::cmp::Reverse(s.birth_ns)));
        for (n, (index, s)) in sessions.into_iter().enumerate() {
            let birth = Duration::from_nanos(s.birth_ns);
            let initiator = s.flags & SESSION_INITIATOR != 0;
            if n == 0 && index == current {
                let age = now.saturating_sub(birth);
                st.last_handshake = SystemTime::now().checked_sub(age);
            }
            if n >= 2 {
                // Older than previous: WireGuard keeps no such keys.
                self.dp.remove_session(index)?;
                continue;
            }
            self.by_index.insert(index, id);
            for a in st.timers.restore(
                BpfKeypair::default(),
                index,
                initiator,
                birth,
                n == 0 && index == current,
            ) {
                if let Action::Retire(i) = a {
                    self.by_index.remove(&i);
                    self.dp.remove_session(i)?;
                }
            }
        }
        Ok(())
    }
}
