//! wg-appliance run in-process inside a test namespace: a thread enters the
//! namespace, runs the daemon on a current-thread runtime (so every socket,
//! link and XDP attach happens in that namespace), and hands back a final
//! report when stopped. Dropping the handle stops it and removes the link.

use std::{collections::BTreeMap, sync::Arc, thread::JoinHandle, time::Duration};

use anyhow::{anyhow, Context as _, Result};
use tokio::sync::Notify;
use wg_appliance::{
    daemon::{Daemon, DeviceSpec, HandshakeStats, PeerStatus},
    datapath::Counters,
};
use wg_ebpf_common::Counter;

use crate::Netns;

/// What the daemon looked like when it was stopped.
pub struct Report {
    pub counters: Counters,
    pub per_cpu: BTreeMap<Counter, Vec<u64>>,
    pub peers: Vec<PeerStatus>,
    pub handshakes: HandshakeStats,
    /// Frames the kernel dropped before a fast-path worker saw them.
    pub fast_socket_drops: wg_appliance::fastpath::SocketDrops,
}

pub struct Appliance {
    pub ifname: String,
    stop: Arc<Notify>,
    thread: Option<JoinHandle<Result<Report>>>,
}

impl Appliance {
    pub fn start(ns: &Netns, spec: DeviceSpec) -> Result<Self> {
        let ifname = spec.ifname.clone();
        let stop = Arc::new(Notify::new());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let ns_file = std::fs::File::open(format!("/var/run/netns/{}", ns.name()))?;
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || -> Result<Report> {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only.
            if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = anyhow!("setns: {}", std::io::Error::last_os_error());
                let _ = ready_tx.send(Err(anyhow!("{e}")));
                return Err(e);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut d = match Daemon::start(spec).await {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("{e}")));
                        return Err(e.into());
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let r = d.run(stop2).await;
                let report = Report {
                    counters: d.counters()?,
                    per_cpu: d.datapath().counters_per_cpu()?,
                    peers: d.status(),
                    handshakes: d.handshake_stats().clone(),
                    fast_socket_drops: d.fast_path().map(|f| f.socket_drops()).unwrap_or_default(),
                };
                d.shutdown().await;
                r?;
                Ok(report)
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .context("wg-appliance did not come up within 60 s")??;
        Ok(Self {
            ifname,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the daemon and returns its final report.
    pub fn stop(mut self) -> Result<Report> {
        self.stop.notify_one();
        let t = self.thread.take().context("already stopped")?;
        t.join().map_err(|_| anyhow!("daemon thread panicked"))?
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.notify_one();
            let _ = t.join();
        }
    }
}
