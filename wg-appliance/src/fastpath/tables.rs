//! What the workers read from the control plane: session keys, AllowedIPs,
//! the tunnel's settings. The daemon publishes a new immutable snapshot on
//! every change; a worker picks it up between batches (one atomic load per
//! batch, a short lock only when it changed), so it never waits on the
//! daemon.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use ring::aead::{LessSafeKey, UnboundKey, CHACHA20_POLY1305};
use wg_ebpf_common::maps::Session;

use crate::allowed_ips::AllowedIps;

/// A session as a worker uses it: keys expanded once.
pub struct WorkerSession {
    pub recv: LessSafeKey,
    pub send: LessSafeKey,
    pub slot: u32,
    pub peer_id: u32,
    pub remote_index: u32,
    pub birth_ns: u64,
    pub flags: u32,
}

impl WorkerSession {
    pub fn new(s: &Session) -> Option<Self> {
        Some(Self {
            recv: LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &s.recv_key).ok()?),
            send: LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &s.send_key).ok()?),
            slot: s.slot,
            peer_id: s.peer_id,
            remote_index: s.remote_index,
            birth_ns: s.birth_ns,
            flags: s.flags,
        })
    }
}

impl std::fmt::Debug for WorkerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No keys in any output.
        f.debug_struct("WorkerSession")
            .field("slot", &self.slot)
            .field("peer_id", &self.peer_id)
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

/// One snapshot.
#[derive(Clone, Default)]
pub struct Tables {
    /// Local receiver index → session.
    pub sessions: HashMap<u32, Arc<WorkerSession>>,
    pub allowed: AllowedIps<u32>,
    pub wg_mac: [u8; 6],
    pub mss_v4: u16,
    pub mss_v6: u16,
    pub reject_after_ns: u64,
    /// Our UDP port (outer source port of what we send).
    pub listen_port: u16,
    /// MTU of `wg0`: padding never goes past it.
    pub mtu: u16,
}

/// The published snapshot and its generation.
#[derive(Default)]
pub struct Published {
    tables: Mutex<Arc<Tables>>,
    generation: AtomicU64,
}

impl Published {
    /// Replaces the snapshot (control plane).
    pub fn publish(&self, t: Tables) {
        let mut g = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        *g = Arc::new(t);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current snapshot (control plane: to derive the next one).
    pub fn current(&self) -> Arc<Tables> {
        self.tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Worker: the snapshot if it changed since `seen`.
    pub fn refresh(&self, seen: &mut u64) -> Option<Arc<Tables>> {
        let g = self.generation.load(Ordering::Acquire);
        if g == *seen {
            return None;
        }
        *seen = g;
        Some(self.current())
    }
}
