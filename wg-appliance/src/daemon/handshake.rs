//! Handshake messages off the UDP socket: admission (mac1, cookies under
//! load), initiations, responses, cookie replies, and roaming by handshake.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use rand_core::{OsRng, RngCore};
use wg_ebpf_common::maps::{
    SESSION_CAN_RECV, SESSION_CAN_SEND, SESSION_CONFIRM_ON_RX, SESSION_INITIATOR,
};

use super::hs_pool::{Done, Job, UNDER_LOAD_QUEUED};
use super::udp;

/// Logs a completed handshake: at info the first time for a peer, at debug
/// for the rekeys after it (every two minutes per peer, thousands a second
/// under a flood: not the operator's business at info).
fn log_completed(handshakes: u64, peer: &str, src: SocketAddr, role: &'static str) {
    if handshakes <= 1 {
        tracing::info!(peer, endpoint = %src, "handshake completed ({role})");
    } else {
        tracing::debug!(peer, endpoint = %src, "handshake completed ({role})");
    }
}

/// How often admission looks at the XDP handshake limiter's drop count.
const LIMITER_LOOK: Duration = Duration::from_millis(10);
use super::peers::BpfKeypair;
use super::Daemon;
use crate::{
    cookie::{Admission, LoadSignal},
    noise::{self, Message},
    timers::Event,
};

impl Daemon {
    /// A datagram off the handshake socket; `local` is our address it was
    /// sent to, which answers leave from (see `udp`).
    pub(super) async fn on_datagram(&mut self, msg: &[u8], src: SocketAddr, local: Option<IpAddr>) {
        let now = self.now();
        if self.identity.is_none() {
            return;
        }
        let parsed = match Message::parse(msg) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%src, error = %e, "ignored datagram");
                return;
            }
        };
        match parsed {
            Message::Initiation(m) => self.on_initiation(m, src, local, now).await,
            Message::Response(m) => self.on_response(m, src, local, now).await,
            Message::CookieReply(m) => {
                let Some(receiver) = noise::receiver_index(m) else {
                    return;
                };
                let Some(&id) = self.by_index.get(&receiver) else {
                    return;
                };
                if let Some(p) = self.peers.get_mut(&id) {
                    if let Err(e) = p.hs.cookie.consume_reply(m, now) {
                        tracing::debug!(%src, error = %e, "cookie reply refused");
                    }
                }
            }
            // Transport data reaches the socket only when the classifier
            // passed it (no tunnel yet): nothing to do with it here.
            Message::Transport(_) => {}
        }
    }

    /// An initiation: admitted here (mac1, cookies under load), opened on a
    /// worker (one DH), see [`Daemon::on_handshake_done`].
    async fn on_initiation(
        &mut self,
        m: &[u8],
        src: SocketAddr,
        local: Option<IpAddr>,
        now: Duration,
    ) {
        if !self.admit(m, src, local, now).await {
            return;
        }
        let Some(identity) = &self.identity else {
            return;
        };
        let job = Job::Open {
            msg: m.to_vec(),
            src,
            local,
            identity: Arc::clone(identity),
        };
        if !self.hs_pool.submit(job) {
            self.hs_stats.reject("queue_full");
            tracing::debug!(%src, "handshake queue full: initiation dropped");
        }
    }

    /// A worker finished: an opened initiation goes on to its peer (the
    /// timestamp and flood checks, an index) and back to a worker for the
    /// response; a built response is sent.
    pub(super) async fn on_handshake_done(&mut self, done: Done) {
        match done {
            Done::Opened {
                msg_len,
                src,
                local,
                result,
            } => self.on_opened(msg_len, src, local, result),
            Done::Responded {
                id,
                generation,
                src,
                local,
                local_index,
                msg_len,
                result,
            } => {
                self.on_responded(id, generation, (src, local), local_index, msg_len, result)
                    .await;
            }
        }
    }

    fn on_opened(
        &mut self,
        msg_len: usize,
        src: SocketAddr,
        local: Option<IpAddr>,
        result: Result<noise::InitiationOpened, noise::NoiseError>,
    ) {
        let now = self.now();
        let opened = match result {
            Ok(o) => o,
            Err(e) => {
                self.hs_stats.reject(rejection_reason(&e));
                tracing::debug!(%src, error = %e, "handshake initiation refused");
                return;
            }
        };
        let Some(id) = self.peer_id(opened.peer_public()) else {
            self.hs_stats.reject("unknown_peer");
            tracing::debug!(%src, "initiation from an unknown public key");
            return;
        };
        let local_index = self.new_index(id);
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let peer_short = p.spec.public_key.short();
        let responder = match p
            .hs
            .consume_initiation(opened, now)
            .and_then(|()| p.hs.take_responder())
        {
            Ok(r) => r,
            Err(e) => {
                self.hs_stats.reject(rejection_reason(&e));
                self.by_index.remove(&local_index);
                tracing::debug!(peer = %peer_short, %src, error = %e, "initiation refused");
                return;
            }
        };
        p.responder_generation += 1;
        let job = Job::Respond {
            id,
            generation: p.responder_generation,
            src,
            local,
            local_index,
            msg_len,
            responder,
        };
        if !self.hs_pool.submit(job) {
            self.hs_stats.reject("queue_full");
            self.by_index.remove(&local_index);
            tracing::debug!(peer = %peer_short, %src, "handshake queue full: response dropped");
        }
    }

    async fn on_responded(
        &mut self,
        id: u32,
        generation: u64,
        (src, local): (SocketAddr, Option<IpAddr>),
        local_index: u32,
        msg_len: usize,
        result: Result<([u8; noise::HANDSHAKE_RESPONSE_LEN], noise::Keypair), noise::NoiseError>,
    ) {
        let now = self.now();
        let current = self
            .peers
            .get(&id)
            .is_some_and(|p| p.responder_generation == generation);
        let (mut resp, keypair) = match result {
            Ok(r) if current => r,
            Ok(_) => {
                // A newer initiation of this peer was consumed meanwhile:
                // its response wins; this one never leaves.
                self.by_index.remove(&local_index);
                return;
            }
            Err(e) => {
                self.by_index.remove(&local_index);
                tracing::warn!(error = %e, "could not build a handshake response");
                return;
            }
        };
        let Some(p) = self.peers.get_mut(&id) else {
            self.by_index.remove(&local_index);
            return;
        };
        p.hs.cookie.add_macs(&mut resp, now);
        let peer_short = p.spec.public_key.short();
        self.set_endpoint_seen(id, src, local);
        // The session must be in the data path before the response leaves:
        // the initiator answers it with data at once.
        self.install(id, &keypair, SESSION_CAN_RECV | SESSION_CONFIRM_ON_RX);
        if let Err(e) = udp::send(&self.sock, &resp, src, local).await {
            tracing::warn!(peer = %peer_short, %src, error = %e, "sending handshake response failed");
            return;
        }
        self.hs_stats.completed_responder += 1;
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.last_handshake = Some(SystemTime::now());
        p.handshakes += 1;
        p.hs_rx_bytes += msg_len as u64;
        p.hs_tx_bytes += resp.len() as u64;
        log_completed(p.handshakes, &peer_short, src, "responder");
        let mut acts = p.timers.handle(now, Event::HandshakeInitiationReceived);
        acts.extend(p.timers.handle(
            now,
            Event::HandshakeResponseSent {
                keypair: BpfKeypair::default(),
                local_index,
            },
        ));
        self.act(id, acts).await;
    }

    async fn on_response(
        &mut self,
        m: &[u8],
        src: SocketAddr,
        local: Option<IpAddr>,
        now: Duration,
    ) {
        if !self.admit(m, src, local, now).await {
            return;
        }
        let Some(receiver) = noise::receiver_index(m) else {
            return;
        };
        let Some(&id) = self.by_index.get(&receiver) else {
            return;
        };
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let peer_short = p.spec.public_key.short();
        let keypair = match p.hs.consume_response(m) {
            Ok(k) => k,
            Err(e) => {
                self.hs_stats.reject(rejection_reason(&e));
                tracing::debug!(peer = %peer_short, %src, error = %e, "handshake response refused");
                return;
            }
        };
        self.set_endpoint_seen(id, src, local);
        self.install(
            id,
            &keypair,
            SESSION_CAN_SEND | SESSION_CAN_RECV | SESSION_INITIATOR,
        );
        self.hs_stats.completed_initiator += 1;
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.last_handshake = Some(SystemTime::now());
        p.handshakes += 1;
        p.hs_rx_bytes += m.len() as u64;
        log_completed(p.handshakes, &peer_short, src, "initiator");
        let local_index = keypair.local_index();
        let acts = p.timers.handle(
            now,
            Event::HandshakeResponseReceived {
                keypair: BpfKeypair::default(),
                local_index,
            },
        );
        self.act(id, acts).await;
    }

    /// mac1/mac2 and the cookie decision. Replies with a cookie when under
    /// load.
    async fn admit(
        &mut self,
        msg: &[u8],
        src: SocketAddr,
        local: Option<IpAddr>,
        now: Duration,
    ) -> bool {
        let signal = LoadSignal {
            queued_handshakes: self.hs_pool.queued(),
            threshold: UNDER_LOAD_QUEUED,
            rate_limited: self.xdp_rate_limited(now),
        };
        let under_load = self.load.under_load(signal, now);
        let Some(checker) = self.checker.as_mut() else {
            return false;
        };
        match checker.admit(msg, src, under_load, now, &mut OsRng) {
            Admission::Process => true,
            Admission::Drop => {
                self.hs_stats.reject("bad_mac");
                false
            }
            Admission::SendCookieReply => {
                if let Ok(reply) = checker.create_reply(msg, src, now, &mut OsRng) {
                    if udp::send(&self.sock, &reply, src, local).await.is_ok() {
                        self.hs_stats.cookie_replies_sent += 1;
                    }
                }
                false
            }
        }
    }

    /// Whether the XDP limiter dropped handshakes lately: someone floods
    /// us, so answer with cookies (mac2) until it stops, as the protocol
    /// prescribes. The counter is one syscall to read; reading it for every
    /// handshake message cost the responder ~5% of its rate, so it is read
    /// at most once per [`LIMITER_LOOK`] and the answer kept meanwhile.
    fn xdp_rate_limited(&mut self, now: Duration) -> bool {
        if self
            .hs_limited_at
            .is_some_and(|at| now.saturating_sub(at) < LIMITER_LOOK)
        {
            return self.hs_rate_limited;
        }
        let limited = self
            .dp
            .counter(wg_ebpf_common::Counter::DropHandshakeRateLimited)
            .unwrap_or(0);
        self.hs_rate_limited = limited > self.hs_limited_seen;
        self.hs_limited_seen = limited;
        self.hs_limited_at = Some(now);
        self.hs_rate_limited
    }

    /// A fresh local index for peer `id`, unique among live ones, never 0.
    pub(super) fn new_index(&mut self, id: u32) -> u32 {
        loop {
            let i = OsRng.next_u32();
            if i != 0 && !self.by_index.contains_key(&i) {
                self.by_index.insert(i, id);
                return i;
            }
        }
    }

    /// The address an authenticated handshake came from becomes the
    /// endpoint (WireGuard's roaming, for handshakes).
    /// The peer was heard from `src`, at our address `local`: both are
    /// where and from where its traffic goes now.
    fn set_endpoint_seen(&mut self, id: u32, src: SocketAddr, local: Option<IpAddr>) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let local = local.or(p.local_addr);
        if p.endpoint != Some(src) || p.local_addr != local {
            p.endpoint = Some(src);
            p.local_addr = local;
            if let Err(e) = self.write_peer(id) {
                tracing::warn!(error = %e, "updating the peer's endpoint in the data path failed");
            }
        }
    }
}

/// The reason label of a refused handshake message.
fn rejection_reason(e: &noise::NoiseError) -> &'static str {
    use noise::NoiseError as E;
    match e {
        E::ReplayedTimestamp => "replayed_timestamp",
        E::InitiationTooSoon => "initiation_too_soon",
        E::DecryptFailed => "decrypt_failed",
        E::WeakPublicKey => "weak_key",
        E::WrongPeer { .. } | E::NoStaticSharedSecret => "unknown_peer",
        E::UnexpectedResponse | E::WrongReceiverIndex { .. } | E::NothingToRespond => "unexpected",
        _ => "malformed",
    }
}
