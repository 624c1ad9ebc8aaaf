//! Prometheus metrics: rendered from a [`Status`] taken at scrape time (the
//! per-CPU maps are read then, never copied on a timer), and a minimal
//! HTTP/1.1 responder for `GET /metrics`.
//!
//! Per-peer series use prometheus_wireguard_exporter's names and labels so
//! existing dashboards work; the appliance's own series are prefixed
//! `wg_appliance_`.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use crate::daemon::{Command, Status};

/// `# friendly_name = ...` per public key (base64), from the config file.
pub type FriendlyNames = HashMap<String, String>;

fn counter_vec(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

/// The `wg_appliance_peer_source_*` series (see crate::peer_source).
fn render_peer_source(
    reg: &Registry,
    ifc: &str,
    src: &crate::daemon::PeerSourceStatus,
    now: std::time::SystemTime,
) -> prometheus::Result<()> {
    let labels = [ifc, src.url.as_str()];
    let g = |name: &str, help: &str, v: i64| -> prometheus::Result<()> {
        gauge_vec(reg, name, help, &["interface", "source"])?
            .with_label_values(&labels)
            .set(v);
        Ok(())
    };
    let c = |name: &str, help: &str, v: u64| -> prometheus::Result<()> {
        counter_vec(reg, name, help, &["interface", "source"])?
            .with_label_values(&labels)
            .inc_by(v);
        Ok(())
    };
    let secs = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| now.duration_since(t).ok())
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    };
    g(
        "wg_appliance_peer_source_connected",
        "1 while the peer source (etcd) is watched; 0 while it is unreachable (forwarding goes on with the last known peers)",
        i64::from(src.connected),
    )?;
    g(
        "wg_appliance_peer_source_state_seconds",
        "Seconds since wg_appliance_peer_source_connected last changed",
        secs(src.since),
    )?;
    g(
        "wg_appliance_peer_source_revision",
        "The etcd revision the interface's peers are in step with",
        src.revision,
    )?;
    g(
        "wg_appliance_peer_source_peers",
        "Peers the source defines for this interface",
        i64::try_from(src.peers).unwrap_or(i64::MAX),
    )?;
    g(
        "wg_appliance_peer_source_invalid_values",
        "Keys whose value is not a valid [Peer] section (their peers are left as they were; the log names each key)",
        i64::try_from(src.invalid).unwrap_or(i64::MAX),
    )?;
    c(
        "wg_appliance_peer_source_updates_total",
        "Changes applied to the interface's peers from the source (a snapshot, a watch batch or the periodic check that found a difference)",
        src.updates,
    )?;
    c(
        "wg_appliance_peer_source_resyncs_total",
        "Fresh snapshots taken after a disconnect or a compaction",
        src.resyncs,
    )
}

/// The Prometheus text for one interface.
pub fn render(s: &Status, names: &FriendlyNames) -> prometheus::Result<String> {
    let reg = Registry::new();
    let ifc = s.interface.as_str();
    let with_name = names.values().next().is_some();
    let peer_labels: &[&str] = if with_name {
        &["interface", "public_key", "allowed_ips", "friendly_name"]
    } else {
        &["interface", "public_key", "allowed_ips"]
    };
    let sent = counter_vec(
        &reg,
        "wireguard_sent_bytes_total",
        "Bytes sent to the peer",
        peer_labels,
    )?;
    let recv = counter_vec(
        &reg,
        "wireguard_received_bytes_total",
        "Bytes received from the peer",
        peer_labels,
    )?;
    let hs = GaugeVec::new(
        Opts::new(
            "wireguard_latest_handshake_seconds",
            "UNIX time of the latest handshake with the peer (0: never)",
        ),
        peer_labels,
    )?;
    reg.register(Box::new(hs.clone()))?;
    let psk_age = gauge_vec(
        &reg,
        "wg_appliance_peer_preshared_key_age_seconds",
        "Seconds since the peer's preshared key was set (by the configuration, `wg set` or `wg-appliance rotate-psk`; kept across a hitless restart); absent for peers without one",
        &["interface", "public_key"],
    )?;
    let now = std::time::SystemTime::now();
    let key_age = gauge_vec(
        &reg,
        "wg_appliance_interface_private_key_age_seconds",
        "Seconds since the interface's private key was set (by the configuration or `wg set private-key`; kept across a hitless restart); absent while it has none",
        &["interface"],
    )?;
    if let Some(t) = s.private_key_set_at {
        let age = now.duration_since(t).map_or(0, |d| d.as_secs());
        key_age
            .with_label_values(&[ifc])
            .set(i64::try_from(age).unwrap_or(i64::MAX));
    }
    for p in &s.peers {
        if let Some(t) = p.psk_set_at {
            let age = now.duration_since(t).map_or(0, |d| d.as_secs());
            psk_age
                .with_label_values(&[ifc, &p.public_key.to_base64()])
                .set(i64::try_from(age).unwrap_or(i64::MAX));
        }
    }
    for p in &s.peers {
        let key = p.public_key.to_base64();
        let allowed = p
            .allowed_ips
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let friendly = names.get(&key).cloned().unwrap_or_default();
        let mut labels = vec![ifc, key.as_str(), allowed.as_str()];
        if with_name {
            labels.push(friendly.as_str());
        }
        sent.with_label_values(&labels).inc_by(p.tx_bytes);
        recv.with_label_values(&labels).inc_by(p.rx_bytes);
        let t = p
            .last_handshake
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        hs.with_label_values(&labels).set(t);
    }

    let drops = counter_vec(
        &reg,
        "wg_appliance_dropped_packets_total",
        "Packets the data path dropped, by reason",
        &["interface", "reason"],
    )?;
    let events = counter_vec(
        &reg,
        "wg_appliance_datapath_packets_total",
        "Packets the data path handled, by outcome",
        &["interface", "outcome"],
    )?;
    for (c, v) in &s.counters.0 {
        let name = c.name();
        if c.is_drop() {
            drops
                .with_label_values(&[ifc, name.trim_start_matches("drop_")])
                .inc_by(*v);
        } else {
            events.with_label_values(&[ifc, name]).inc_by(*v);
        }
    }
    let per_cpu = counter_vec(
        &reg,
        "wg_appliance_cpu_packets_total",
        "Packets decrypted (rx) and encrypted (tx) per steering CPU",
        &["interface", "cpu", "direction"],
    )?;
    for (counter, dir) in [
        (wg_ebpf_common::Counter::RxDelivered, "rx"),
        (wg_ebpf_common::Counter::TxSent, "tx"),
    ] {
        if let Some(values) = s.per_cpu.get(&counter) {
            for (cpu, v) in values.iter().enumerate() {
                if *v > 0 {
                    per_cpu
                        .with_label_values(&[ifc, &cpu.to_string(), dir])
                        .inc_by(*v);
                }
            }
        }
    }
    // Packets by data path: what the BPF programs decrypted and encrypted
    // (crypt_rx / crypt_tx), and what the AF_XDP workers did.
    let by_path = counter_vec(
        &reg,
        "wg_appliance_path_packets_total",
        "Data packets decrypted (rx) and encrypted (tx), by data path (bpf, afxdp)",
        &["interface", "path", "direction"],
    )?;
    let by_path_bytes = counter_vec(
        &reg,
        "wg_appliance_path_bytes_total",
        "WireGuard message bytes received (rx) and sent (tx) by the AF_XDP workers",
        &["interface", "path", "direction"],
    )?;
    let (mut fast_rx, mut fast_tx) = (0u64, 0u64);
    if let Some(f) = &s.fast {
        let worker = counter_vec(
            &reg,
            "wg_appliance_worker_packets_total",
            "Packets each AF_XDP worker received (rx) and sent (tx)",
            &["interface", "worker", "direction"],
        )?;
        for &(q, rxp, rxb, txp, txb) in &f.workers {
            let q = q.to_string();
            worker.with_label_values(&[ifc, &q, "rx"]).inc_by(rxp);
            worker.with_label_values(&[ifc, &q, "tx"]).inc_by(txp);
            by_path_bytes
                .with_label_values(&[ifc, "afxdp", "rx"])
                .inc_by(rxb);
            by_path_bytes
                .with_label_values(&[ifc, "afxdp", "tx"])
                .inc_by(txb);
            fast_rx += rxp;
            fast_tx += txp;
        }
        let modes = gauge_vec(
            &reg,
            "wg_appliance_afxdp_socket",
            "AF_XDP sockets of the fast path, by device, queue and mode (zerocopy, copy); 1 = bound",
            &["interface", "device", "queue", "mode"],
        )?;
        for (dev, q, m) in &f.modes {
            modes
                .with_label_values(&[ifc, dev, &q.to_string(), m])
                .set(1);
        }
        let sd = counter_vec(
            &reg,
            "wg_appliance_afxdp_socket_drops_total",
            "Frames the kernel dropped before an AF_XDP worker saw them, by reason",
            &["interface", "reason"],
        )?;
        sd.with_label_values(&[ifc, "rx_ring_full"])
            .inc_by(f.socket_drops.rx_ring_full);
        sd.with_label_values(&[ifc, "no_free_frame"])
            .inc_by(f.socket_drops.rx_no_frame);
        sd.with_label_values(&[ifc, "tx_device_full"])
            .inc_by(f.socket_drops.tx_device_full);
    }
    let get = |c: wg_ebpf_common::Counter| s.counters.get(c);
    use wg_ebpf_common::Counter as C;
    // The merged counters hold both paths' deliveries: BPF's are the rest.
    by_path
        .with_label_values(&[ifc, "bpf", "rx"])
        .inc_by((get(C::RxDelivered) + get(C::RxKeepalive)).saturating_sub(fast_rx));
    by_path
        .with_label_values(&[ifc, "bpf", "tx"])
        .inc_by((get(C::TxSent) + get(C::TxKeepalive)).saturating_sub(fast_tx));
    by_path
        .with_label_values(&[ifc, "afxdp", "rx"])
        .inc_by(fast_rx);
    by_path
        .with_label_values(&[ifc, "afxdp", "tx"])
        .inc_by(fast_tx);
    let hsk = counter_vec(
        &reg,
        "wg_appliance_handshakes_total",
        "Handshake messages by outcome",
        &["interface", "outcome"],
    )?;
    let h = &s.handshakes;
    for (outcome, v) in [
        ("completed_initiator", h.completed_initiator),
        ("completed_responder", h.completed_responder),
        ("initiation_sent", h.initiations_sent),
        ("rejected", h.rejected),
    ] {
        hsk.with_label_values(&[ifc, outcome]).inc_by(v);
    }
    let rejections = counter_vec(
        &reg,
        "wg_appliance_handshake_rejections_total",
        "Handshake messages refused, by reason (bad_mac, queue_full, unknown_peer, replayed_timestamp, initiation_too_soon, decrypt_failed, ...)",
        &["interface", "reason"],
    )?;
    for (reason, v) in &h.rejections {
        rejections.with_label_values(&[ifc, reason]).inc_by(*v);
    }
    counter_vec(
        &reg,
        "wg_appliance_cookie_replies_sent_total",
        "Cookie replies sent while under load",
        &["interface"],
    )?
    .with_label_values(&[ifc])
    .inc_by(h.cookie_replies_sent);
    gauge_vec(
        &reg,
        "wg_appliance_sessions",
        "Sessions installed in the data path",
        &["interface"],
    )?
    .with_label_values(&[ifc])
    .set(s.sessions as i64);
    let mode = gauge_vec(
        &reg,
        "wg_appliance_xdp_attached",
        "XDP programs attached, by interface and mode (1 = attached)",
        &["interface", "device", "role", "mode"],
    )?;
    mode.with_label_values(&[ifc, ifc, "tunnel", &s.tunnel_mode.to_string()])
        .set(1);
    for (dev, m) in &s.wan {
        mode.with_label_values(&[ifc, dev, "wan", &m.to_string()])
            .set(1);
    }
    gauge_vec(
        &reg,
        "wg_appliance_hitless_restart_ready",
        "1 when the data path's pins outlive the daemon, so a restart adopts the running tunnel; 0 when a restart would take the tunnel down (see the daemon's log)",
        &["interface"],
    )?
    .with_label_values(&[ifc])
    .set(i64::from(s.pins.hitless()));
    if let Some(src) = &s.peer_source {
        render_peer_source(&reg, ifc, src, now)?;
    }
    gauge_vec(
        &reg,
        "wg_appliance_build_info",
        "Build information: version, git commit and a hash of the embedded BPF object (always 1)",
        &["version", "commit", "bpf_object"],
    )?
    .with_label_values(&[
        crate::build_info::VERSION,
        crate::build_info::GIT_COMMIT,
        crate::build_info::bpf_object_hash(),
    ])
    .set(1);

    let mut out = Vec::new();
    TextEncoder::new().encode(&reg.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Serves `GET /metrics` on `addr` until the daemon goes away. Each scrape
/// asks the daemon's task for a fresh [`Status`].
pub async fn serve(listener: TcpListener, cmds: mpsc::Sender<Command>, names: FriendlyNames) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let cmds = cmds.clone();
        let names = names.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if req.starts_with("GET ")
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                let (tx, rx) = oneshot::channel();
                if cmds.send(Command::Status(tx)).await.is_err() {
                    return;
                }
                match rx.await.ok().and_then(|s| render(&s, &names).ok()) {
                    Some(text) => ("200 OK", text),
                    None => (
                        "500 Internal Server Error",
                        "metrics unavailable\n".to_owned(),
                    ),
                }
            } else {
                ("404 Not Found", "see /metrics\n".to_owned())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
        });
    }
}

/// Binds the metrics listener, saying clearly why not.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wg_ebpf_common::Counter;

    use super::*;
    use crate::{
        daemon::{FastStatus, HandshakeStats},
        datapath::{AttachMode, Counters},
    };

    fn status(fast: Option<FastStatus>, delivered: u64, sent: u64) -> Status {
        let mut c = BTreeMap::new();
        c.insert(Counter::RxDelivered, delivered);
        c.insert(Counter::TxSent, sent);
        Status {
            interface: "wg0".into(),
            listen_port: 51820,
            peers: Vec::new(),
            counters: Counters(c),
            per_cpu: BTreeMap::new(),
            handshakes: HandshakeStats::default(),
            sessions: 0,
            tunnel_mode: AttachMode::Native,
            wan: Vec::new(),
            fast,
            pins: crate::persist::PinLifetime::OutlivesDaemon,
            private_key_set_at: None,
            peer_source: None,
        }
    }

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    }

    /// The interface key's age, in whole seconds since it was set; absent
    /// without a key.
    #[test]
    fn interface_key_age() {
        let mut st = status(None, 0, 0);
        let text = render(&st, &FriendlyNames::new()).expect("render");
        assert!(!text.contains("wg_appliance_interface_private_key_age_seconds{"));
        st.private_key_set_at =
            Some(std::time::SystemTime::now() - std::time::Duration::from_secs(90));
        let text = render(&st, &FriendlyNames::new()).expect("render");
        assert_eq!(
            line(&text, "wg_appliance_interface_private_key_age_seconds{"),
            r#"wg_appliance_interface_private_key_age_seconds{interface="wg0"} 90"#
        );
    }

    /// Packets by path: the workers' share under afxdp, the rest under bpf.
    #[test]
    fn packets_by_path_split_between_bpf_and_the_workers() {
        let fast = FastStatus {
            modes: vec![("eth0".into(), 0, "copy")],
            workers: vec![(0, 70, 7000, 30, 3000)],
            socket_drops: Default::default(),
        };
        let text = render(&status(Some(fast), 100, 40), &FriendlyNames::new()).expect("render");
        let p = r#"wg_appliance_path_packets_total{direction=""#;
        assert!(line(&text, &format!(r#"{p}rx",interface="wg0",path="afxdp"}}"#)).ends_with(" 70"));
        assert!(line(&text, &format!(r#"{p}rx",interface="wg0",path="bpf"}}"#)).ends_with(" 30"));
        assert!(line(&text, &format!(r#"{p}tx",interface="wg0",path="afxdp"}}"#)).ends_with(" 30"));
        assert!(line(&text, &format!(r#"{p}tx",interface="wg0",path="bpf"}}"#)).ends_with(" 10"));
        assert!(text.contains(
            r#"wg_appliance_afxdp_socket{device="eth0",interface="wg0",mode="copy",queue="0"} 1"#
        ));

        let text = render(&status(None, 100, 40), &FriendlyNames::new()).expect("render");
        assert!(line(&text, &format!(r#"{p}rx",interface="wg0",path="afxdp"}}"#)).ends_with(" 0"));
        assert!(line(&text, &format!(r#"{p}rx",interface="wg0",path="bpf"}}"#)).ends_with(" 100"));
        assert!(!text.contains("wg_appliance_worker_packets_total{"));
    }
}
