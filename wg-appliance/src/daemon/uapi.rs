//! UAPI on the daemon's side: `get` from a snapshot, `set` applied in wire
//! order, and the socket's connections handing requests to the task.

use std::{net::SocketAddr, time::Duration};

use tokio::sync::{mpsc, oneshot};

use super::device::apply_fwmark;
use super::{Command, Daemon, DaemonError};
use crate::{
    keys::PublicKey,
    timers::Action,
    uapi::{self, DeviceSnapshot, PeerSnapshot, SetOp},
};

/// Where a `set` request stands between two of its operations.
#[derive(Default)]
struct SetCursor {
    /// The peer that peer operations apply to.
    current: Option<u32>,
    /// A peer named with update_only that does not exist: skip its ops.
    skipping: bool,
    /// A public_key not in the table yet: created unless update_only follows.
    pending: Option<PublicKey>,
    /// Endpoints set, where WAN interfaces are looked for afterwards.
    new_endpoints: Vec<SocketAddr>,
    /// Timer actions, carried out once the whole request is applied.
    acts: Vec<(u32, Vec<Action>)>,
}

impl Daemon {
    /// The `get` answer.
    pub fn snapshot(&self) -> DeviceSnapshot {
        DeviceSnapshot {
            private_key: self.private_key.clone(),
            listen_port: self.listen_port,
            fwmark: self.fwmark,
            peers: self
                .peers
                .values()
                .map(|p| PeerSnapshot {
                    public_key: p.spec.public_key,
                    preshared_key: p.spec.preshared_key.clone(),
                    endpoint: p.endpoint,
                    allowed_ips: p.spec.allowed_ips.clone(),
                    persistent_keepalive: p.spec.persistent_keepalive.unwrap_or(0),
                    last_handshake: p.last_handshake.map(Into::into),
                    rx_bytes: p.rx_bytes(),
                    tx_bytes: p.tx_bytes(),
                })
                .collect(),
        }
    }

    /// Carries out a `set` request in order, as the cross-platform UAPI
    /// describes; returns the errno for the reply (0 on success). A failed
    /// operation stops the request there, the ones before it stay applied
    /// (wireguard-go behaves the same).
    pub async fn apply(&mut self, ops: Vec<SetOp>) -> i32 {
        let mut at = SetCursor::default();
        for op in ops {
            // Create the peer named by public_key unless update_only follows.
            if let Some(pk) = at.pending.take() {
                if !matches!(op, SetOp::UpdateOnly) {
                    match self.add_peer(pk) {
                        Ok(id) => at.current = Some(id),
                        Err(e) => return self.fail(e),
                    }
                }
            }
            if let Err(e) = self.apply_op(op, &mut at).await {
                return self.fail(e);
            }
        }
        if let Some(pk) = at.pending.take() {
            if let Err(e) = self.add_peer(pk) {
                return self.fail(e);
            }
        }
        if !at.new_endpoints.is_empty() {
            if let Err(e) = self.attach_wans(&at.new_endpoints).await {
                return self.fail(e);
            }
        }
        for (id, a) in at.acts {
            self.act(id, a).await;
        }
        self.save_state();
        0
    }

    /// One operation of a `set` request, at the point `at` of it.
    async fn apply_op(&mut self, op: SetOp, at: &mut SetCursor) -> Result<(), DaemonError> {
        match op {
            SetOp::PrivateKey(k) => {
                self.set_private_key(k);
                Ok(())
            }
            SetOp::ListenPort(port) => self.set_listen_port(port).await,
            SetOp::FwMark(m) => {
                self.fwmark = m;
                apply_fwmark(&self.sock, m);
                Ok(())
            }
            SetOp::ReplacePeers => {
                let ids: Vec<u32> = self.peers.keys().copied().collect();
                ids.into_iter().try_for_each(|id| self.remove_peer(id))
            }
            SetOp::PublicKey(pk) => {
                at.skipping = false;
                at.current = self.peer_id(&pk);
                if at.current.is_none() {
                    at.pending = Some(pk);
                }
                Ok(())
            }
            SetOp::UpdateOnly => {
                at.skipping = at.current.is_none();
                Ok(())
            }
            _ if at.skipping => Ok(()),
            SetOp::Remove => match at.current.take() {
                Some(id) => {
                    at.skipping = true;
                    self.remove_peer(id)
                }
                None => Ok(()),
            },
            SetOp::PresharedKey(k) => {
                if let Some(id) = at.current {
                    self.set_psk(id, Some(k));
                }
                Ok(())
            }
            SetOp::Endpoint(ep) => match at.current {
                Some(id) => {
                    at.new_endpoints.push(ep);
                    self.set_peer_endpoint(id, ep)
                }
                None => Ok(()),
            },
            SetOp::PersistentKeepaliveInterval(secs) => {
                if let Some(id) = at.current {
                    let a = self.set_keepalive(id, secs);
                    at.acts.push((id, a));
                }
                Ok(())
            }
            SetOp::ReplaceAllowedIps => match at.current {
                Some(id) => self.clear_allowed(id),
                None => Ok(()),
            },
            SetOp::AllowedIp(net) => match at.current {
                Some(id) => self.add_allowed(id, net),
                None => Ok(()),
            },
        }
    }

    fn fail(&self, e: DaemonError) -> i32 {
        tracing::warn!(error = %e, "UAPI set failed");
        match e {
            DaemonError::Bind { error, .. } if error.kind() == std::io::ErrorKind::AddrInUse => {
                uapi::IPC_ERROR_PORT_IN_USE
            }
            DaemonError::TooManyPeers(_) => uapi::IPC_ERROR_INVALID,
            _ => uapi::IPC_ERROR_IO,
        }
    }
}

/// Serves the UAPI socket: each connection sends requests, each answered
/// by the daemon's task through `cmds`.
pub async fn serve_uapi(listener: tokio::net::UnixListener, cmds: mpsc::Sender<Command>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let cmds = cmds.clone();
        tokio::spawn(async move {
            if let Err(e) = uapi_connection(stream, cmds).await {
                tracing::debug!(error = %e, "UAPI connection ended");
            }
        });
    }
}

async fn uapi_connection(
    mut stream: tokio::net::UnixStream,
    cmds: mpsc::Sender<Command>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut reader = uapi::RequestReader::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "idle UAPI connection")
            })??;
        if n == 0 {
            return Ok(());
        }
        if let Err(e) = reader.push(&buf[..n]) {
            stream
                .write_all(uapi::format_errno(e.errno()).as_bytes())
                .await?;
            return Ok(());
        }
        loop {
            match reader.next_request() {
                Ok(Some(req)) => {
                    let (tx, rx) = oneshot::channel();
                    if cmds.send(Command::Uapi(req, tx)).await.is_err() {
                        return Ok(());
                    }
                    let reply = rx
                        .await
                        .unwrap_or_else(|_| uapi::format_errno(uapi::IPC_ERROR_IO));
                    stream.write_all(reply.as_bytes()).await?;
                }
                Ok(None) => break,
                Err(e) => {
                    stream
                        .write_all(uapi::format_errno(e.errno()).as_bytes())
                        .await?;
                    if e.closes_connection() {
                        return Ok(());
                    }
                }
            }
        }
    }
}
