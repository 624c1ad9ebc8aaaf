//! What drives the peers' timers: data-path events, the 100 ms tick that
//! reads per-peer counters, and the actions the timers return.

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use rand_core::{OsRng, RngCore};
use wg_ebpf_common::maps::{
    EventHeader, EVENT_ENDPOINT_CHANGED, EVENT_NO_SESSION, EVENT_REKEY_WANTED,
};

use super::peers::endpoint_of;
use super::Daemon;
use crate::{
    link,
    noise::Tai64N,
    timers::{Action, Event},
};

/// Packets kept per peer while a handshake is under way (the kernel
/// driver's MAX_STAGED_PACKETS).
const MAX_STAGED: usize = 128;

/// The timers take their jitter from the caller (they read no RNG): 0 to
/// 333 ms, the driver's REKEY_TIMEOUT_JITTER_MAX (HZ / 3).
fn jitter() -> Duration {
    Duration::from_millis((OsRng.next_u32() % 334) as u64)
}

impl Daemon {
    pub(super) async fn on_event(&mut self, item: &[u8]) {
        let hdr_len = std::mem::size_of::<EventHeader>();
        if item.len() < hdr_len {
            return;
        }
        // SAFETY: EventHeader is plain data and item holds enough bytes.
        let hdr: EventHeader =
            unsafe { std::ptr::read_unaligned(item.as_ptr() as *const EventHeader) };
        let id = hdr.peer_id;
        match hdr.kind {
            EVENT_NO_SESSION => {
                let now = self.now();
                let Some(p) = self.peers.get_mut(&id) else {
                    return;
                };
                let len = (hdr.len as usize).min(item.len() - hdr_len);
                if p.staged.len() >= MAX_STAGED {
                    p.staged.pop_front();
                }
                p.staged.push_back(item[hdr_len..hdr_len + len].to_vec());
                let acts = p.timers.handle(now, Event::WantToSend);
                self.act(id, acts).await;
            }
            EVENT_REKEY_WANTED => {
                // The current session's counter reached REKEY_AFTER_MESSAGES:
                // let the timers see it, and the next send rekeys.
                let now = self.now();
                let Some(p) = self.peers.get_mut(&id) else {
                    return;
                };
                if let Some(cur) = p.timers.keypairs.current().map(|c| c.local_index) {
                    if let Some(slot) = p.timers.keypairs.find_mut(cur) {
                        slot.keypair.sent = wg_ebpf_common::REKEY_AFTER_MESSAGES + 1;
                    }
                }
                tracing::info!(peer = %p.spec.public_key.short(), "session reached REKEY_AFTER_MESSAGES");
                let acts = p.timers.handle(
                    now,
                    Event::TransportSent {
                        keepalive: false,
                        jitter: jitter(),
                    },
                );
                self.act(id, acts).await;
            }
            EVENT_ENDPOINT_CHANGED => {
                if let (Ok(slot), Some(p)) = (self.dp.peer(id), self.peers.get_mut(&id)) {
                    let ep = endpoint_of(&slot);
                    tracing::info!(peer = %p.spec.public_key.short(), endpoint = ?ep, "peer roamed");
                    p.endpoint = ep;
                }
            }
            wg_ebpf_common::maps::EVENT_NEIGH_MISSING => {
                use wg_ebpf_common::maps::NeighMissing;
                if item.len() < std::mem::size_of::<NeighMissing>() {
                    return;
                }
                // SAFETY: plain data; the record holds enough bytes.
                let ev: NeighMissing =
                    unsafe { std::ptr::read_unaligned(item.as_ptr() as *const NeighMissing) };
                if let Some(hop) = ev.next_hop() {
                    tracing::debug!(%hop, ifindex = ev.ifindex, "resolving a missing neighbour");
                    if let Err(e) = link::resolve_neighbour(&self.handle, ev.ifindex, hop).await {
                        tracing::debug!(%hop, error = %e, "neighbour resolution request failed");
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) async fn on_tick(&mut self) {
        self.fast_events().await;
        let now = self.now();
        // Routes change under us (a new uplink, a moved default route):
        // every 5 s, attach wan_rx wherever traffic to the peers now leaves.
        self.ticks = self.ticks.wrapping_add(1);
        if self.opts.wan.is_empty() && self.ticks.is_multiple_of(50) {
            let endpoints: Vec<SocketAddr> =
                self.peers.values().filter_map(|p| p.endpoint).collect();
            if let Err(e) = self.attach_wans(&endpoints).await {
                tracing::warn!(error = %e, "re-evaluating WAN interfaces failed");
            }
        }
        let ids: Vec<u32> = self.peers.keys().copied().collect();
        for id in ids {
            // Only peers with a session can have moved traffic: reading the
            // counters is a syscall per peer, and a table of 10,000 idle
            // peers polled every tick costs the data path a core's share.
            let idle = self.peers.get(&id).is_some_and(|p| {
                p.timers.keypairs.current().is_none()
                    && p.timers.keypairs.next().is_none()
                    && p.timers.keypairs.previous().is_none()
            });
            if idle {
                let acts = match self.peers.get_mut(&id) {
                    Some(p) => p.timers.tick(now),
                    None => continue,
                };
                self.act(id, acts).await;
                continue;
            }
            let Ok(stats) = self.peer_stats(id) else {
                continue;
            };
            let next_seen = self.next_confirmed(id);
            let Some(p) = self.peers.get_mut(&id) else {
                continue;
            };
            let old = p.stats;
            p.stats = stats;
            let mut acts = Vec::new();
            if stats.rx_packets > old.rx_packets {
                let keepalive = stats.last_rx_data_ns == old.last_rx_data_ns;
                let local_index =
                    next_seen.or_else(|| p.timers.keypairs.current().map(|c| c.local_index));
                if let Some(local_index) = local_index {
                    acts.extend(p.timers.handle(
                        now,
                        Event::TransportReceived {
                            local_index,
                            keepalive,
                        },
                    ));
                }
            }
            if stats.tx_packets > old.tx_packets {
                let keepalive = stats.last_tx_data_ns == old.last_tx_data_ns;
                acts.extend(p.timers.handle(
                    now,
                    Event::TransportSent {
                        keepalive,
                        jitter: jitter(),
                    },
                ));
            }
            acts.extend(p.timers.tick(now));
            self.act(id, acts).await;
        }
    }

    /// Carries out timer actions (which may produce more).
    pub(super) async fn act(&mut self, id: u32, mut acts: Vec<Action>) {
        let mut rounds = 0;
        while !acts.is_empty() && rounds < 8 {
            rounds += 1;
            let mut more = Vec::new();
            for a in acts {
                more.extend(self.act_one(id, a).await);
            }
            acts = more;
        }
    }

    async fn act_one(&mut self, id: u32, a: Action) -> Vec<Action> {
        let now = self.now();
        match a {
            Action::SendHandshakeInitiation => {
                let Some(ep) = self.peers.get(&id).and_then(|p| p.endpoint) else {
                    return Vec::new();
                };
                if self.identity.is_none() {
                    return Vec::new();
                }
                let local_index = self.new_index(id);
                let Some(p) = self.peers.get_mut(&id) else {
                    return Vec::new();
                };
                let ts = Tai64N::from_system_time(SystemTime::now());
                let msg = match p.hs.create_initiation(&mut OsRng, ts, local_index, now) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not build a handshake initiation");
                        return Vec::new();
                    }
                };
                let short = p.spec.public_key.short();
                let acts = p
                    .timers
                    .handle(now, Event::HandshakeInitiationSent { jitter: jitter() });
                // From our address the peer last reached us at: the data
                // path's (learnt from its packets), else the handshake's.
                let local = self
                    .dp
                    .peer(id)
                    .ok()
                    .as_ref()
                    .and_then(super::peers::local_of)
                    .or_else(|| self.peers.get(&id).and_then(|p| p.local_addr));
                match super::udp::send(&self.sock, &msg, ep, local).await {
                    Ok(_) => {
                        self.hs_stats.initiations_sent += 1;
                        if let Some(p) = self.peers.get_mut(&id) {
                            p.hs_tx_bytes += msg.len() as u64;
                        }
                        tracing::debug!(peer = %short, endpoint = %ep, "handshake initiation sent");
                    }
                    Err(e) => {
                        tracing::debug!(endpoint = %ep, error = %e, "sending handshake initiation failed")
                    }
                }
                acts
            }
            Action::SendKeepalive => {
                if self.peers.get(&id).is_some_and(|p| p.staged.is_empty()) {
                    self.inject_keepalive(id);
                } else {
                    self.inject_staged(id);
                }
                Vec::new()
            }
            Action::SendStaged => {
                self.inject_staged(id);
                Vec::new()
            }
            Action::PurgeStaged => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.staged.clear();
                }
                Vec::new()
            }
            Action::ClearHandshake => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.hs.clear();
                }
                Vec::new()
            }
            Action::Retire(idx) => {
                self.by_index.remove(&idx);
                self.fast_sync();
                if let Err(e) = self.dp.remove_session(idx) {
                    tracing::warn!(error = %e, "removing a retired session failed");
                }
                Vec::new()
            }
        }
    }
}
