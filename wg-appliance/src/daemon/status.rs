//! What the daemon reports: each peer as `wg show` and the tests see it,
//! and the whole [`Status`] the metrics endpoint reads at scrape time.

use std::{collections::BTreeMap, net::SocketAddr, time::SystemTime};

use ipnet::IpNet;

use super::Daemon;
use crate::{
    datapath::{AttachMode, Counters},
    keys::PublicKey,
};

/// A snapshot of a peer for `show`, metrics and tests.
#[derive(Clone, Debug)]
pub struct PeerStatus {
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: Option<u16>,
    /// Handshakes completed with this peer since the daemon started.
    pub handshakes: u64,
    /// When the preshared key was last set (None: the peer has none).
    pub psk_set_at: Option<SystemTime>,
}

/// Handshake outcomes, for metrics.
#[derive(Clone, Debug, Default)]
pub struct HandshakeStats {
    pub completed_initiator: u64,
    pub completed_responder: u64,
    pub initiations_sent: u64,
    pub rejected: u64,
    /// `rejected`, by reason (`bad_mac`, `queue_full`, `unknown_peer`,
    /// `replayed_timestamp`, `initiation_too_soon`, `decrypt_failed`, ...).
    pub rejections: std::collections::BTreeMap<&'static str, u64>,
    pub cookie_replies_sent: u64,
}

impl HandshakeStats {
    /// Counts a refused handshake message under `reason`.
    pub(super) fn reject(&mut self, reason: &'static str) {
        self.rejected += 1;
        *self.rejections.entry(reason).or_default() += 1;
    }
}

/// Everything the metrics endpoint reports, read at scrape time.
#[derive(Clone, Debug)]
pub struct Status {
    pub interface: String,
    pub listen_port: u16,
    pub peers: Vec<PeerStatus>,
    pub counters: Counters,
    pub per_cpu: BTreeMap<wg_ebpf_common::Counter, Vec<u64>>,
    pub handshakes: HandshakeStats,
    pub sessions: usize,
    pub tunnel_mode: AttachMode,
    pub wan: Vec<(String, AttachMode)>,
    /// The AF_XDP fast path, when it runs.
    pub fast: Option<FastStatus>,
    /// Whether the pins outlive the daemon (a restart is hitless).
    pub pins: crate::persist::PinLifetime,
    /// When the interface's private key was set (None: it has none).
    pub private_key_set_at: Option<SystemTime>,
    /// The peer source, when one feeds this interface.
    pub peer_source: Option<PeerSourceStatus>,
}

/// What a peer source (etcd) reports: written by its task, read by
/// metrics, `show` and `doctor` through the daemon.
#[derive(Clone, Debug, Default)]
pub struct PeerSourceStatus {
    /// The source's URL (never with credentials).
    pub url: String,
    /// Whether the watch is running now.
    pub connected: bool,
    /// When `connected` last changed (or the task started).
    pub since: Option<SystemTime>,
    /// Why it is not connected (or the last failure to apply).
    pub last_error: Option<String>,
    /// The etcd revision the peers are in step with.
    pub revision: i64,
    /// Peers the source defines now (valid values, distinct keys).
    pub peers: usize,
    /// Keys whose value is not a valid `[Peer]` (their peer left as it was).
    pub invalid: usize,
    /// Changes applied to the daemon (a snapshot, watch batch or periodic
    /// check that found a difference).
    pub updates: u64,
    /// Fresh snapshots after a disconnect or compaction.
    pub resyncs: u64,
    /// When the last snapshot or watch event was applied.
    pub last_applied: Option<SystemTime>,
}

/// The fast path at scrape time.
#[derive(Clone, Debug, Default)]
pub struct FastStatus {
    /// (device, queue, "zerocopy" or "copy") per socket on a WAN device.
    pub modes: Vec<(String, u32, &'static str)>,
    /// Per worker: (queue, rx packets, rx bytes, tx packets, tx bytes).
    pub workers: Vec<(u32, u64, u64, u64, u64)>,
    pub socket_drops: crate::fastpath::SocketDrops,
}

impl Daemon {
    /// Handshake messages by outcome since the daemon started.
    pub fn handshake_stats(&self) -> &HandshakeStats {
        &self.hs_stats
    }

    /// The peers as `wg show` would report them.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.peers
            .values()
            .map(|p| PeerStatus {
                public_key: p.spec.public_key,
                endpoint: p.endpoint,
                allowed_ips: p.spec.allowed_ips.clone(),
                last_handshake: p.last_handshake,
                rx_bytes: p.rx_bytes(),
                tx_bytes: p.tx_bytes(),
                persistent_keepalive: p.spec.persistent_keepalive,
                handshakes: p.handshakes,
                psk_set_at: p.psk_set_at,
            })
            .collect()
    }

    pub(super) fn full_status(&self) -> Status {
        Status {
            interface: self.link.name.clone(),
            listen_port: self.listen_port,
            peers: self.status(),
            counters: self.counters().unwrap_or_default(),
            per_cpu: self.dp.counters_per_cpu().unwrap_or_default(),
            handshakes: self.hs_stats.clone(),
            sessions: self.by_index.len(),
            tunnel_mode: self.tunnel_mode,
            wan: self.wan.clone(),
            fast: self.fast_path().map(|f| {
                use std::sync::atomic::Ordering::Relaxed;
                FastStatus {
                    modes: f
                        .modes()
                        .iter()
                        .map(|m| (m.ifname.clone(), m.queue, m.mode))
                        .collect(),
                    workers: f
                        .shared()
                        .stats
                        .iter()
                        .map(|w| {
                            (
                                w.queue,
                                w.rx_packets.load(Relaxed),
                                w.rx_bytes.load(Relaxed),
                                w.tx_packets.load(Relaxed),
                                w.tx_bytes.load(Relaxed),
                            )
                        })
                        .collect(),
                    socket_drops: f.socket_drops(),
                }
            }),
            pins: self.pins.clone(),
            private_key_set_at: self.private_key_set_at,
            peer_source: self.peer_source_status(),
        }
    }

    /// The peer source's report, when one runs.
    pub(super) fn peer_source_status(&self) -> Option<PeerSourceStatus> {
        self.peer_source
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// The peers as configured (keys, AllowedIPs, configured endpoint,
    /// keepalive): what a peer source compares its wishes with.
    pub(super) fn specs(&self) -> Vec<crate::config::PeerSpec> {
        self.peers.values().map(|p| p.spec.clone()).collect()
    }

    /// What `appliance=1` answers (see [`crate::uapi::Request::Appliance`]).
    pub(super) fn appliance_info(&self) -> Vec<(&'static str, String)> {
        let mut items = vec![
            ("pins", self.pins.describe()),
            ("hitless_restart", u8::from(self.pins.hitless()).to_string()),
            ("data_path", self.data_path_description()),
            ("tunnel_xdp", self.tunnel_mode.to_string()),
        ];
        for (dev, mode) in &self.wan {
            items.push(("wan_xdp", format!("{dev} {mode}")));
        }
        items.push(("version", crate::build_info::long_version().to_owned()));
        // For `doctor` and `top`: the tunnel's MTU and MSS clamp, and the
        // counters /metrics shows, so a console needs nothing but this socket.
        items.push(("mtu", self.link.mtu.to_string()));
        let mss_v4 = self.opts.mss.unwrap_or(self.link.mtu.saturating_sub(40));
        items.push((
            "mss",
            if mss_v4 == u16::MAX {
                "off".to_owned()
            } else {
                format!("{mss_v4} {}", mss_v4.saturating_sub(20))
            },
        ));
        items.push(("sessions", self.by_index.len().to_string()));
        let cpus = self
            .opts
            .cpus
            .clone()
            .unwrap_or_else(crate::datapath::online_cpus);
        items.push((
            "cpus",
            cpus.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ));
        let h = &self.hs_stats;
        for (outcome, v) in [
            ("completed_initiator", h.completed_initiator),
            ("completed_responder", h.completed_responder),
            ("initiation_sent", h.initiations_sent),
            ("rejected", h.rejected),
            ("cookie_reply_sent", h.cookie_replies_sent),
        ] {
            items.push(("handshakes", format!("{outcome} {v}")));
        }
        if let Ok(counters) = self.dp.counters() {
            for (c, v) in &counters.0 {
                items.push(("counter", format!("{} {v}", c.name())));
            }
        }
        if let Ok(per_cpu) = self.dp.counters_per_cpu() {
            let rx = per_cpu.get(&wg_ebpf_common::Counter::RxDelivered);
            let tx = per_cpu.get(&wg_ebpf_common::Counter::TxSent);
            let n = rx.map_or(0, Vec::len).max(tx.map_or(0, Vec::len));
            for cpu in 0..n {
                let at = |v: Option<&Vec<u64>>| v.and_then(|v| v.get(cpu)).copied().unwrap_or(0);
                items.push(("cpu", format!("{cpu} {} {}", at(rx), at(tx))));
            }
        }
        let now = SystemTime::now();
        if let Some(t) = self.private_key_set_at {
            let age = now.duration_since(t).map_or(0, |d| d.as_secs());
            items.push(("private_key_age", age.to_string()));
        }
        if let Some(src) = self.peer_source_status() {
            items.push(("peer_source", src.url.clone()));
            let since = src
                .since
                .and_then(|t| now.duration_since(t).ok())
                .map_or(0, |d| d.as_secs());
            let state = if src.connected {
                // A refusal by the daemon while connected is the last error.
                let refused = src
                    .last_error
                    .as_deref()
                    .map(|e| format!(" error {e}"))
                    .unwrap_or_default();
                format!(
                    "connected {since} revision {} peers {} invalid {}{refused}",
                    src.revision, src.peers, src.invalid
                )
            } else {
                format!(
                    "unreachable {since} peers {} error {}",
                    src.peers,
                    src.last_error.as_deref().unwrap_or("not connected yet")
                )
            };
            items.push(("peer_source_state", state));
        }
        for p in self.peers.values() {
            if let Some(t) = p.psk_set_at {
                let age = now.duration_since(t).map_or(0, |d| d.as_secs());
                items.push((
                    "psk_age",
                    format!("{} {age}", p.spec.public_key.to_base64()),
                ));
            }
        }
        items
    }
}
