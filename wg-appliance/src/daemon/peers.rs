//! The peer table (spec, handshake, timers, staged packets, counters, owners
//! of AllowedIPs) and its writes to the data path's peer slots and LPM tries.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use wg_ebpf_common::maps::{Peer as BpfPeer, PeerStats, PEER_ACTIVE};

use super::{Daemon, DaemonError};
use crate::{
    config::PeerSpec,
    cookie::CookieChecker,
    keys::{PresharedKey, PrivateKey, PublicKey},
    link::egress_ifindex,
    noise::{Handshake, Identity},
    timers::{Action, PeerTimers, SendCounter, TimerConfig},
};

/// What the timers know of a keypair: the data path owns the keys and the
/// counter. It reports (EVENT_REKEY_WANTED) when a session's counter reaches
/// REKEY_AFTER_MESSAGES; until then the count the timers see is 0, which is
/// all the soft limit needs. The hard limit is enforced per packet in BPF.
#[derive(Debug, Default)]
pub(super) struct BpfKeypair {
    pub(super) sent: u64,
}

impl SendCounter for BpfKeypair {
    fn messages_sent(&self) -> u64 {
        self.sent
    }
}

/// One peer in the table, keyed by its id (the index of its `PEERS` slot).
pub(super) struct PeerState {
    pub(super) spec: PeerSpec,
    pub(super) hs: Handshake,
    pub(super) timers: PeerTimers<BpfKeypair>,
    pub(super) staged: VecDeque<Vec<u8>>,
    pub(super) endpoint: Option<SocketAddr>,
    /// Our address the peer last sent a handshake message to: what we
    /// answer and initiate from (see `udp`), and the data path's source
    /// for it until a data packet tells it otherwise.
    pub(super) local_addr: Option<IpAddr>,
    pub(super) stats: PeerStats,
    pub(super) last_handshake: Option<SystemTime>,
    pub(super) handshakes: u64,
    /// Handshake message bytes, counted into the transfer figures as the
    /// kernel driver counts them (the data path counts transport data).
    pub(super) hs_rx_bytes: u64,
    pub(super) hs_tx_bytes: u64,
    /// Counts consumed initiations: a response built by a worker is used
    /// only if no newer initiation was consumed meanwhile.
    pub(super) responder_generation: u64,
    /// When this daemon saw the preshared key change (None: no key). A
    /// restarted daemon starts counting again; `rotate-psk` resets it.
    pub(super) psk_set_at: Option<SystemTime>,
}

impl PeerState {
    pub(super) fn rx_bytes(&self) -> u64 {
        self.stats.rx_bytes + self.hs_rx_bytes
    }
    pub(super) fn tx_bytes(&self) -> u64 {
        self.stats.tx_bytes + self.hs_tx_bytes
    }
}

/// The data-path form of an address: IPv4 in the first 4 bytes.
fn slot_addr(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// The local address a data-path peer slot sends from (None: the FIB
/// chooses), in the endpoint's family.
pub(super) fn local_of(slot: &BpfPeer) -> Option<IpAddr> {
    if slot.local_addr == [0u8; 16] {
        return None;
    }
    let a = &slot.local_addr;
    match slot.endpoint_family {
        4 => Some(IpAddr::from([a[0], a[1], a[2], a[3]])),
        6 => Some(IpAddr::from(*a)),
        _ => None,
    }
}

/// The endpoint a data-path peer slot holds (written by us, or learnt by
/// the data path when the peer roamed).
pub(super) fn endpoint_of(slot: &BpfPeer) -> Option<SocketAddr> {
    let port = u16::from_be(slot.endpoint_port);
    match slot.endpoint_family {
        4 => {
            let a = &slot.endpoint_addr;
            Some(SocketAddr::from(([a[0], a[1], a[2], a[3]], port)))
        }
        6 => Some(SocketAddr::from((slot.endpoint_addr, port))),
        _ => None,
    }
}

impl Daemon {
    pub(super) fn timer_config(&self, keepalive: Option<u16>) -> TimerConfig {
        TimerConfig {
            rekey_after_time: self
                .rekey_after_time
                .unwrap_or(crate::timers::REKEY_AFTER_TIME),
            persistent_keepalive: keepalive
                .filter(|k| *k > 0)
                .map(|k| Duration::from_secs(k as u64)),
        }
    }

    pub(super) fn set_private_key(&mut self, key: Option<PrivateKey>) {
        let same = match (&self.private_key, &key) {
            (Some(a), Some(b)) => a.as_bytes() == b.as_bytes(),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        self.identity = key.as_ref().map(|k| std::sync::Arc::new(Identity::new(k)));
        self.checker = self
            .identity
            .as_ref()
            .map(|i| CookieChecker::new(i.public_key()));
        self.private_key_set_at = key.as_ref().map(|_| std::time::SystemTime::now());
        self.private_key = key;
        // Handshakes depend on our static key: start them afresh.
        if let Some(identity) = &self.identity {
            for p in self.peers.values_mut() {
                p.hs = Handshake::new(identity, p.spec.public_key, p.spec.preshared_key.clone());
            }
        }
    }

    /// Creates a peer (or returns the existing one's id).
    pub(super) fn add_peer(&mut self, public_key: PublicKey) -> Result<u32, DaemonError> {
        if let Some(id) = self.peer_id(&public_key) {
            return Ok(id);
        }
        let max = wg_ebpf_common::maps::MAX_PEERS;
        // The id after the highest one in use, or else the first gap: ids
        // are handed out in order, so a bulk load (`wg addconf` of 10,000
        // peers) does not search the table once per peer (that search
        // was 83% of a 3 s load).
        let next = self.peers.keys().next_back().map_or(1, |k| k + 1);
        let id = if next < max {
            next
        } else {
            (1..max)
                .find(|i| !self.peers.contains_key(i))
                .ok_or(DaemonError::TooManyPeers(max - 1))?
        };
        let state = self.new_peer_state(PeerSpec {
            public_key,
            preshared_key: None,
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
        });
        self.insert_peer(id, state);
        self.write_peer(id)?;
        tracing::info!(peer = %public_key.short(), id, "peer added");
        Ok(id)
    }

    /// The state of a peer that has done nothing yet: its handshake and
    /// idle timers. Without our key yet, the handshake is a placeholder
    /// that set_private_key replaces; it cannot complete without an
    /// identity anyway.
    pub(super) fn new_peer_state(&self, spec: PeerSpec) -> PeerState {
        let placeholder;
        let identity = match &self.identity {
            Some(i) => i,
            None => {
                placeholder = Identity::new(&PrivateKey::generate());
                &placeholder
            }
        };
        let spec_psk_set = spec.preshared_key.is_some();
        PeerState {
            hs: Handshake::new(identity, spec.public_key, spec.preshared_key.clone()),
            timers: PeerTimers::new(self.timer_config(spec.persistent_keepalive)),
            endpoint: spec.endpoint,
            local_addr: None,
            spec,
            staged: VecDeque::new(),
            stats: PeerStats::default(),
            last_handshake: None,
            handshakes: 0,
            hs_rx_bytes: 0,
            hs_tx_bytes: 0,
            responder_generation: 0,
            psk_set_at: spec_psk_set.then(SystemTime::now),
        }
    }

    pub(super) fn peer_id(&self, key: &PublicKey) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// Adds peer `id` to the table and to the key index.
    pub(super) fn insert_peer(&mut self, id: u32, state: PeerState) {
        self.take_peer(id);
        self.by_key.insert(state.spec.public_key, id);
        self.peers.insert(id, state);
    }

    /// Removes peer `id` from the table and from the key index.
    pub(super) fn take_peer(&mut self, id: u32) -> Option<PeerState> {
        let p = self.peers.remove(&id)?;
        if self.by_key.get(&p.spec.public_key) == Some(&id) {
            self.by_key.remove(&p.spec.public_key);
        }
        Some(p)
    }

    /// Applies a full peer specification to peer `id`.
    pub(super) fn configure_peer(&mut self, id: u32, spec: &PeerSpec) -> Result<(), DaemonError> {
        self.set_psk(id, spec.preshared_key.clone());
        if let Some(ep) = spec.endpoint {
            self.set_peer_endpoint(id, ep)?;
        }
        self.set_keepalive(id, spec.persistent_keepalive.unwrap_or(0));
        for net in &spec.allowed_ips {
            self.add_allowed(id, *net)?;
        }
        Ok(())
    }

    pub(super) fn set_psk(&mut self, id: u32, psk: Option<PresharedKey>) {
        let psk = psk.filter(|k| !k.is_zero());
        if let Some(p) = self.peers.get_mut(&id) {
            let same = match (&p.spec.preshared_key, &psk) {
                (Some(a), Some(b)) => a.as_bytes() == b.as_bytes(),
                (None, None) => true,
                _ => false,
            };
            if !same {
                p.psk_set_at = psk.as_ref().map(|_| SystemTime::now());
            }
            p.hs.set_preshared_key(psk.clone());
            p.spec.preshared_key = psk;
        }
    }

    pub(super) fn set_peer_endpoint(&mut self, id: u32, ep: SocketAddr) -> Result<(), DaemonError> {
        if let Some(p) = self.peers.get_mut(&id) {
            p.spec.endpoint = Some(ep);
            p.endpoint = Some(ep);
        }
        self.write_peer(id)
    }

    pub(super) fn set_keepalive(&mut self, id: u32, secs: u16) -> Vec<Action> {
        let now = self.now();
        let Some(p) = self.peers.get_mut(&id) else {
            return Vec::new();
        };
        p.spec.persistent_keepalive = (secs > 0).then_some(secs);
        let interval = (secs > 0).then(|| Duration::from_secs(secs as u64));
        p.timers.set_persistent_keepalive(interval, now)
    }

    /// Routes `net` to peer `id`; a prefix belongs to one peer, so it
    /// moves from whoever had it. As kernel WireGuard does, silently there;
    /// here with a warning, since two peers claiming one prefix in a
    /// configuration is usually a mistake.
    pub(super) fn add_allowed(&mut self, id: u32, net: IpNet) -> Result<(), DaemonError> {
        let net = net.trunc();
        if let Some(other) = self.allowed.insert(net, id) {
            self.prefix_moved(net, other, id);
        }
        if let Some(p) = self.peers.get_mut(&id) {
            if !p.spec.allowed_ips.contains(&net) {
                p.spec.allowed_ips.push(net);
            }
        }
        self.dp.add_allowed(net.network(), net.prefix_len(), id)?;
        self.fast_sync();
        Ok(())
    }

    /// `net` was peer `from`'s and is now `to`'s: out of `from`'s spec, and
    /// a warning naming both (by their short public keys).
    fn prefix_moved(&mut self, net: IpNet, from: u32, to: u32) {
        let Some(old) = self.peers.get_mut(&from) else {
            return;
        };
        old.spec.allowed_ips.retain(|n| *n != net);
        let from_peer = old.spec.public_key.short();
        let to_peer = self
            .peers
            .get(&to)
            .map(|p| p.spec.public_key.short())
            .unwrap_or_default();
        tracing::warn!(
            prefix = %net,
            %from_peer,
            %to_peer,
            "AllowedIPs overlap between two peers: the prefix moves to the later one, as in kernel WireGuard. Fix: give each prefix to one peer"
        );
    }

    pub(super) fn clear_allowed(&mut self, id: u32) -> Result<(), DaemonError> {
        let nets = self
            .peers
            .get_mut(&id)
            .map(|p| std::mem::take(&mut p.spec.allowed_ips))
            .unwrap_or_default();
        for net in &nets {
            self.allowed.remove(*net);
        }
        self.fast_sync();
        for net in nets {
            self.dp.remove_allowed(net.network(), net.prefix_len())?;
        }
        Ok(())
    }

    pub(super) fn remove_peer(&mut self, id: u32) -> Result<(), DaemonError> {
        self.clear_allowed(id)?;
        let indexes: Vec<u32> = self
            .by_index
            .iter()
            .filter(|(_, p)| **p == id)
            .map(|(i, _)| *i)
            .collect();
        for i in indexes {
            self.by_index.remove(&i);
            self.dp.remove_session(i)?;
            self.fast_sync();
        }
        self.dp.set_current(id, 0)?;
        self.dp.set_peer(id, &BpfPeer::default())?;
        if let Some(p) = self.take_peer(id) {
            tracing::info!(peer = %p.spec.public_key.short(), "peer removed");
        }
        Ok(())
    }

    /// Writes peer `id`'s data-path slot (endpoint, flags); keeps what
    /// roaming learnt unless the endpoint changed. Writes nothing when the
    /// slot already says the same: the data path updates the slot on
    /// roaming, and a write is a whole-slot read-modify-write that could put
    /// back the old endpoint if a roam landed in between.
    pub(super) fn write_peer(&mut self, id: u32) -> Result<(), DaemonError> {
        let Some(p) = self.peers.get(&id) else {
            return Ok(());
        };
        let before = self.dp.peer(id).unwrap_or_default();
        let mut slot = before;
        slot.flags = PEER_ACTIVE;
        if let Some(ep) = p.endpoint {
            let family = if ep.is_ipv4() { 4 } else { 6 };
            let addr = slot_addr(ep.ip());
            // Our address it reached us at, when of its family; otherwise
            // the FIB picks the source.
            let local = p
                .local_addr
                .filter(|l| l.is_ipv4() == ep.is_ipv4())
                .map_or([0; 16], slot_addr);
            if slot.endpoint_addr != addr
                || slot.endpoint_port != ep.port().to_be()
                || slot.endpoint_family != family
            {
                slot.endpoint_addr = addr;
                slot.endpoint_port = ep.port().to_be();
                slot.endpoint_family = family;
                slot.local_addr = local;
                slot.ifindex = egress_ifindex(ep).unwrap_or(0);
            } else if local != [0; 16] {
                slot.local_addr = local;
            }
        }
        if slot != before {
            self.dp.set_peer(id, &slot)?;
            // The workers forget the addresses they learnt.
            self.fast_sync();
        }
        Ok(())
    }
}
