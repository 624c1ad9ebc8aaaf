//! The running daemon: its runtime, the UAPI socket and metrics endpoint,
//! and what stops it (a signal, the socket or the interface removed).

use std::{
    io::Write as _,
    net::SocketAddr,
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};
use tokio::{
    net::{TcpListener, UnixListener},
    sync::Notify,
};
use wg_appliance::{
    config::{self, Config},
    daemon::{self, Daemon},
    gateway, link, metrics,
};

use super::{
    plan::Plan,
    up::{add_routes, hooks},
    UAPI_DIR,
};

/// Runs the daemon of `plan` until it stops. `ready`, the pipe of a
/// parent waiting for us to detach, hears "ok" once the interface and
/// UAPI socket are up, or the error that stopped us.
pub fn run_daemon(plan: Plan, ready: Option<std::fs::File>) -> anyhow::Result<()> {
    // Still single-threaded: pins must live in the host's mount namespace to
    // outlive this process (see wg_appliance::persist).
    if wg_appliance::persist::enter_host_mount_ns() {
        tracing::debug!("moved to PID 1's mount namespace so the BPF pins outlive the daemon");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut ready = ready;
    let r = rt.block_on(serve(plan, &mut ready));
    if let (Err(e), Some(mut f)) = (&r, ready.take()) {
        let _ = write!(f, "{e:#}");
    }
    r
}

/// Brings the daemon up (with the hooks, routes and sockets around it),
/// runs it until told to stop, and takes it down again.
async fn serve(plan: Plan, ready: &mut Option<std::fs::File>) -> anyhow::Result<()> {
    let ifname = plan.ifname.clone();
    if let Some(why) = &plan.mtu_note {
        tracing::info!(mtu = plan.opts.mtu, reason = %why, "tunnel MTU derived (set MTU in [Interface] or --mtu to choose it)");
    }
    // Held until this function returns, after the daemon is down.
    let (sock_path, _lock) = claim_uapi_socket(&ifname)?;
    if let Some(c) = &plan.config {
        hooks(&ifname, &c.interface.pre_up, "PreUp")?;
    }
    let daemon = match plan.spec {
        Some(spec) => Daemon::start(spec).await?,
        None => Daemon::start_empty(plan.opts.clone(), 0, &[]).await?,
    };
    let mut daemon = daemon;
    if let Some(rate) = plan.opts.handshake_rate {
        // Daemon::start takes the file's [Interface] and [Peer] parts;
        // this one comes from [Appliance] (or the flag).
        if let Err(e) = daemon.set_handshake_rate(rate) {
            daemon.shutdown().await;
            return Err(e.into());
        }
    }
    // Return routing, masquerade, forwarding: all or nothing, before the
    // socket that tells the world we are up.
    let gw = match apply_gateway(&daemon, &ifname, plan.config.as_ref()).await {
        Ok(g) => g,
        Err(e) => {
            daemon.shutdown().await;
            return Err(e);
        }
    };
    let setup = finish_bring_up(
        &daemon,
        &ifname,
        plan.config.as_ref(),
        plan.metrics,
        &sock_path,
    )
    .await;
    let (listener, metrics_listener) = match setup {
        Ok(v) => v,
        Err(e) => {
            if let Some((h, a)) = gw {
                gateway::remove(&h, a).await;
            }
            daemon.shutdown().await;
            return Err(e);
        }
    };
    tokio::spawn(daemon::serve_uapi(listener, daemon.commands()));
    if let Some((source, local)) = plan.peer_source {
        let status = daemon::SharedSourceStatus::default();
        daemon.attach_peer_source(status.clone());
        let table = plan
            .config
            .as_ref()
            .and_then(|c| c.interface.table.clone())
            .unwrap_or_else(|| "auto".into());
        tokio::spawn(wg_appliance::peer_source::run(
            source,
            ifname.clone(),
            local,
            wg_appliance::peer_source::Routes::new(&ifname, Some(&table)),
            daemon.commands(),
            status,
        ));
    }
    if let Some(l) = metrics_listener {
        tracing::info!(address = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics at /metrics");
        tokio::spawn(metrics::serve(l, daemon.commands(), plan.names.clone()));
    }
    if let Some(mut f) = ready.take() {
        let _ = f.write_all(b"ok");
    }

    let stop = stop_when_told(sock_path.clone(), ifname.clone());
    let r = daemon.run(stop).await;
    if let Some(c) = &plan.config {
        let _ = hooks(&ifname, &c.interface.pre_down, "PreDown");
    }
    if let Some((h, a)) = gw {
        gateway::remove(&h, a).await;
    }
    daemon.shutdown().await;
    let _ = std::fs::remove_file(&sock_path);
    if let Some(c) = &plan.config {
        let _ = hooks(&ifname, &c.interface.post_down, "PostDown");
    }
    r?;
    Ok(())
}

/// `ForwardIP`, `ReturnRouting` and `Masquerade` of the configuration,
/// applied around the interface (None when it asks for none of them).
async fn apply_gateway(
    daemon: &Daemon,
    ifname: &str,
    config: Option<&Config>,
) -> anyhow::Result<Option<(rtnetlink::Handle, gateway::Applied)>> {
    let Some(c) = config else {
        return Ok(None);
    };
    let settings = gateway::Settings {
        forward_ip: c.appliance.forward_ip,
        return_routing: c.appliance.return_routing,
        masquerade: c.appliance.masquerade.clone(),
    };
    if settings.is_empty() {
        // A table a killed daemon left under an older configuration.
        gateway::remove_table(ifname);
        return Ok(None);
    }
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(conn);
    let applied = gateway::apply(&handle, ifname, daemon.link().index, &settings).await?;
    if settings.forward_ip {
        tracing::info!("IP forwarding on (ForwardIP); it stays on when the interface goes down");
    }
    if let Some(t) = gateway::table_of(ifname, settings.return_routing) {
        tracing::info!(table = t, fwmark = %format!("{t:#x}"), nft_table = %gateway::table_name(ifname), "return routing: replies leave through the tunnel their connection came in on");
    }
    if settings.masquerade != config::Masquerade::Off {
        tracing::info!(nft_table = %gateway::table_name(ifname), "masquerade of what leaves through the tunnel");
    }
    Ok(Some((handle, applied)))
}

/// The UAPI socket's path for `ifname`, its directory made, and the
/// interface's lock: refused if another daemon holds the lock or answers on
/// the socket, a stale socket removed. The lock (`flock` on
/// /run/wg-appliance/<ifname>.lock, released by the kernel however the
/// holder ends, kill -9 included) closes the window between a starting
/// daemon's adoption of an interface and its UAPI socket: a second `up` in
/// that window once took the running interface for one left behind and
/// removed it.
fn claim_uapi_socket(ifname: &str) -> anyhow::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let run_dir = wg_appliance::persist::RUN_DIR;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {run_dir}"))?;
    let lock_path = PathBuf::from(format!("{run_dir}/{ifname}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("opening the interface lock {}", lock_path.display()))?;
    let sock_path = PathBuf::from(format!("{UAPI_DIR}/{ifname}.sock"));
    let answers = || sock_path.exists() && UnixStream::connect(&sock_path).is_ok();
    // A holder without an answering socket is a daemon starting (it will
    // answer soon: refuse then) or one finishing its `down` (it will let go:
    // go on then). 15 s bounds both.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
        // SAFETY: a valid open descriptor.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e).with_context(|| format!("locking {}", lock_path.display()));
        }
        if answers() {
            bail!("{ifname} is already running (its UAPI socket {} answers). Fix: `wg-appliance down {ifname}` first", sock_path.display());
        }
        if std::time::Instant::now() > deadline {
            bail!("{ifname} is held by another wg-appliance (it holds {} and has not answered on {} for 15 s). Fix: `wg-appliance down {ifname}`, or end that process", lock_path.display(), sock_path.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::create_dir_all(UAPI_DIR).with_context(|| format!("creating {UAPI_DIR}"))?;
    let _ = std::fs::set_permissions(UAPI_DIR, std::fs::Permissions::from_mode(0o755));
    if sock_path.exists() {
        if UnixStream::connect(&sock_path).is_ok() {
            bail!("{ifname} is already running (its UAPI socket {} answers). Fix: `wg-appliance down {ifname}` first", sock_path.display());
        }
        std::fs::remove_file(&sock_path).ok();
    }
    Ok((sock_path, lock))
}

/// Bring-up once the daemon runs: routes and PostUp hooks (from a file),
/// then the UAPI socket and the metrics endpoint (a warning, not an error,
/// if its address is taken).
async fn finish_bring_up(
    daemon: &Daemon,
    ifname: &str,
    config: Option<&Config>,
    metrics: Option<SocketAddr>,
    sock_path: &Path,
) -> anyhow::Result<(UnixListener, Option<TcpListener>)> {
    if let Some(c) = config {
        add_routes(daemon, c).await?;
        hooks(ifname, &c.interface.post_up, "PostUp")?;
    }
    // Root only: the socket hands out the private key.
    let old = unsafe { libc::umask(0o077) };
    let listener = UnixListener::bind(sock_path);
    // SAFETY: restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener =
        listener.with_context(|| format!("creating the UAPI socket {}", sock_path.display()))?;
    let metrics_listener = match metrics {
        Some(addr) => match metrics::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(address = %addr, error = %e, "metrics endpoint not started; choose another address with --metrics or Metrics = in [Appliance]");
                None
            }
        },
        None => None,
    };
    Ok((listener, metrics_listener))
}

/// Notified on SIGTERM/SIGINT, or when the UAPI socket disappears (which
/// is how `wg-quick down` and `wg-appliance down` stop a userspace daemon)
/// or the interface does.
fn stop_when_told(path: PathBuf, ifname: String) -> Arc<Notify> {
    let stop = Arc::new(Notify::new());
    let notify = Arc::clone(&stop);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut int =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => break,
                _ = async { match int.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => break,
                _ = tick.tick() => {
                    if !path.exists() {
                        tracing::info!("UAPI socket removed; going down");
                        break;
                    }
                    // `wg-quick down` deletes the link itself.
                    if link::ifindex(&ifname).is_none() {
                        tracing::info!("interface deleted; going down");
                        break;
                    }
                }
            }
        }
        notify.notify_one();
    });
    stop
}
