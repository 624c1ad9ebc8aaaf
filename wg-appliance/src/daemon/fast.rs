//! The daemon's side of the AF_XDP fast path (`crate::fastpath`): choosing
//! it, starting its worker, keeping its tables current, taking in what the
//! workers report, and adding their counters to the BPF path's.

use wg_ebpf_common::maps::{EventHeader, PeerStats, EVENT_ENDPOINT_CHANGED, EVENT_REKEY_WANTED};

use super::Daemon;
use crate::{
    config::DataPathSetting as DataPathChoice,
    fastpath::{FastPath, FastPathSetup, Tables, WorkerEvent},
};

/// Environment override of `DataPath =` (operators' and tests' switch).
pub const DATA_PATH_ENV: &str = "WG_APPLIANCE_DATA_PATH";

impl Daemon {
    /// The data path asked for: the environment's override, else the
    /// options' (`DataPath =`).
    fn data_path_choice(&self) -> DataPathChoice {
        std::env::var(DATA_PATH_ENV)
            .ok()
            .and_then(|v| DataPathChoice::parse(&v))
            .unwrap_or(self.opts.data_path)
    }

    /// Starts the fast path when chosen, on the first WAN interface; says
    /// why not when it cannot (`auto`), or fails (`afxdp`).
    pub(super) fn start_fast_path(&mut self) -> Result<(), super::DaemonError> {
        let choice = self.data_path_choice();
        if choice == DataPathChoice::Bpf {
            tracing::info!(data_path = "bpf", "data path: BPF (DataPath = bpf)");
            return Ok(());
        }
        let Some((wan, _)) = self.wan.first().cloned() else {
            tracing::info!(data_path = "bpf", "data path: BPF (no WAN interface yet)");
            return Ok(());
        };
        let Some(wan_index) = crate::datapath::ifindex(&wan) else {
            tracing::info!(data_path = "bpf", %wan, "data path: BPF (WAN interface gone)");
            return Ok(());
        };
        let mss_v4 = self.opts.mss.unwrap_or(self.opts.mtu.saturating_sub(40));
        let tables = Tables {
            allowed: self.allowed.clone(),
            wg_mac: self.link.mac,
            mss_v4,
            mss_v6: mss_v4.saturating_sub(20),
            reject_after_ns: wg_ebpf_common::REJECT_AFTER_TIME_SECS * 1_000_000_000,
            listen_port: self.listen_port,
            mtu: self.opts.mtu,
            ..Default::default()
        };
        let setup = FastPathSetup {
            wan: (wan.clone(), wan_index),
            wgx_ifindex: self.link.peer_index,
            cpu: self
                .opts
                .cpus
                .as_ref()
                .and_then(|c| c.first())
                .map(|&c| c as usize),
            tables,
        };
        match FastPath::start(&mut self.dp, setup) {
            Ok(f) => {
                for m in f.modes() {
                    tracing::info!(
                        data_path = "afxdp",
                        device = %m.ifname,
                        queue = m.queue,
                        mode = m.mode,
                        "data path: AF_XDP fast path on {} queue {} in {} mode (other queues, keepalives and peers not yet heard from on BPF)",
                        m.ifname, m.queue, m.mode
                    );
                }
                self.fast = Some(f);
                Ok(())
            }
            Err(e) if choice == DataPathChoice::Auto => {
                tracing::warn!(data_path = "bpf", error = %e, "data path: BPF (AF_XDP did not start)");
                Ok(())
            }
            Err(e) => Err(super::DaemonError::Io {
                what: "starting the AF_XDP fast path (DataPath = afxdp)",
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Publishes the AllowedIPs and the listen port to the workers and
    /// makes them forget the sessions and next hops they cached (call after
    /// any change of these, of a session or of an endpoint).
    pub(super) fn fast_sync(&self) {
        if let Some(f) = &self.fast {
            let allowed = self.allowed.clone();
            let port = self.listen_port;
            f.update(|t| {
                t.allowed = allowed;
                t.listen_port = port;
            });
        }
    }

    /// What the workers reported since the last tick, handled as the
    /// same events from BPF are.
    pub(super) async fn fast_events(&mut self) {
        let Some(f) = &self.fast else { return };
        for e in f.events() {
            let (kind, peer_id) = match e {
                WorkerEvent::Roamed(id) => (EVENT_ENDPOINT_CHANGED, id),
                WorkerEvent::RekeyWanted(id) => (EVENT_REKEY_WANTED, id),
            };
            let h = EventHeader {
                kind,
                peer_id,
                len: 0,
                _pad: 0,
            };
            // SAFETY: EventHeader is plain data, read as its bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&h as *const EventHeader).cast::<u8>(),
                    std::mem::size_of::<EventHeader>(),
                )
            }
            .to_vec();
            self.on_event(&bytes).await;
        }
    }

    /// A peer's counters: the BPF path's plus the workers'.
    pub(super) fn peer_stats(&self, id: u32) -> Result<PeerStats, crate::datapath::DatapathError> {
        let mut s = self.dp.peer_stats(id)?;
        if let Some(p) = self.fast.as_ref().and_then(|f| f.peer(id)) {
            use std::sync::atomic::Ordering::Relaxed;
            s.rx_packets += p.rx_packets.load(Relaxed);
            s.rx_bytes += p.rx_bytes.load(Relaxed);
            s.last_rx_ns = s.last_rx_ns.max(p.last_rx_ns.load(Relaxed));
            s.last_rx_data_ns = s.last_rx_data_ns.max(p.last_rx_data_ns.load(Relaxed));
            s.tx_packets += p.tx_packets.load(Relaxed);
            s.tx_bytes += p.tx_bytes.load(Relaxed);
            let tx = p.last_tx_ns.load(Relaxed);
            s.last_tx_ns = s.last_tx_ns.max(tx);
            // The workers send data only (keepalives stay on BPF).
            s.last_tx_data_ns = s.last_tx_data_ns.max(tx);
        }
        Ok(s)
    }

    /// The data path's counters: BPF's plus the workers' (the workers count
    /// the verdicts of the packets they take with the same counters as
    /// `crypt_rx`).
    pub fn counters(&self) -> Result<crate::datapath::Counters, crate::datapath::DatapathError> {
        let mut c = self.dp.counters()?;
        if let Some(f) = &self.fast {
            for (k, v) in c.0.iter_mut() {
                *v += f.counter(*k);
            }
        }
        Ok(c)
    }

    /// The data path in use, for `show` (UAPI `appliance=1`).
    pub(super) fn data_path_description(&self) -> String {
        match &self.fast {
            Some(f) => {
                let socks: Vec<String> = f
                    .modes()
                    .iter()
                    .map(|m| format!("{} queue {} {}", m.ifname, m.queue, m.mode))
                    .collect();
                format!(
                    "afxdp (AF_XDP workers, ChaCha20-Poly1305 by ring; {}; BPF for the rest)",
                    socks.join(", ")
                )
            }
            None => "bpf (XDP, ChaCha20-Poly1305 in BPF)".to_owned(),
        }
    }

    /// The fast path, if it runs.
    pub fn fast_path(&self) -> Option<&FastPath> {
        self.fast.as_ref()
    }
}
