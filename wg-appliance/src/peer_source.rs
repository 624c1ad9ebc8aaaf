//! Peers from etcd (`PeerSource = etcd://host:port/prefix`).
//!
//! Each peer is one key under `<prefix>/<interface>/peers/`, its value a
//! wg-quick `[Peer]` section. The interface's private key stays in the
//! local file and never goes to etcd.
//!
//! The source is declarative: the interface's peers are the configuration
//! file's plus etcd's. The task loads a snapshot (paginated, at one
//! revision), then watches from the next revision; each batch of events
//! recomputes what etcd wants and sends the daemon the difference as UAPI
//! `set` operations, the code path `wg set` takes. An unchanged peer is
//! not touched (its session goes on); a changed AllowedIPs replaces the
//! prefixes in place; a peer no longer wanted is removed. A peer neither
//! in the file nor in etcd (one added with `wg set`) is removed at the next
//! change: etcd is the authority for every peer the file does not name.
//!
//! When etcd cannot be reached the daemon keeps forwarding with the peers
//! it has (and the saved state keeps them across a hitless restart); the
//! task retries with backoff and, once back, resyncs from a fresh snapshot.
//! A compaction that overtakes the watch does the same. What the source
//! sees goes to metrics (`wg_appliance_peer_source_*`), `show` and `doctor`.
//!
//! A value that is not a valid `[Peer]` is logged with its key and the
//! parse error (which never echoes key material) and counted; the peer it
//! defined before, if any, stays as it was.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, WatchOptions,
};
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};

use crate::{
    config::{self, PeerConfig, PeerSourceSetting, PeerSpec},
    daemon::{Command, SharedSourceStatus},
    keys::{PresharedKey, PublicKey},
    uapi::{Request, SetOp},
};

/// Keys read per page of a snapshot: a `[Peer]` is about 200 bytes, but
/// etcd takes values up to 1.5 MiB, so the receive limit is raised to
/// [`MAX_PAGE_BYTES`] and pages are kept short.
const PAGE: i64 = 500;
/// The largest value read as a peer; a larger one is refused unparsed.
const MAX_VALUE: usize = 4096;
/// The gRPC receive limit for snapshot pages (tonic's default is 4 MiB).
const MAX_PAGE_BYTES: usize = 64 << 20;
/// The daemon's peers are compared with etcd's this often even without
/// events (a `wg set` by hand, a change the daemon refused), and sooner
/// after a refusal.
const RECONCILE: Duration = Duration::from_secs(30);
const RETRY_REFUSED: Duration = Duration::from_secs(5);
/// A session that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);
/// Peers per UAPI `set` sent to the daemon, so that 10,000 new peers do not
/// hold its task (and the handshakes it answers) for one long stretch.
const PEERS_PER_SET: usize = 500;
/// Backoff between connection attempts: doubled from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What the daemon needs to connect: the setting with its files read.
#[derive(Clone)]
pub struct EtcdSource {
    setting: PeerSourceSetting,
    tls: Option<TlsOptions>,
    /// (user, password); the password never leaves this struct but to etcd.
    auth: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSource")
            .field("url", &self.setting.url())
            .field("tls", &self.tls.is_some())
            .field("user", &self.auth.as_ref().map(|(u, _)| u))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{what} {}: {source}. Fix: check the path in {key} of [Appliance]", path.display())]
    Read {
        what: &'static str,
        key: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the etcd password file has mode {mode:04o}, so other users can read it (expected 0600). Fix: chmod 600 {}", path.display(), path.display())]
    InsecurePassword { path: std::path::PathBuf, mode: u32 },
    #[error("{}: the etcd password file is empty. Fix: write the password of PeerSourceUser into it", path.display())]
    EmptyPassword { path: std::path::PathBuf },
}

impl EtcdSource {
    /// Reads the TLS and password files of `setting` now, so that a wrong
    /// path stops `up` with its name rather than failing later in a loop.
    pub fn load(setting: &PeerSourceSetting) -> Result<Self, SourceError> {
        let read = |what, key, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| SourceError::Read {
                what,
                key,
                path: path.to_owned(),
                source,
            })
        };
        let tls = match &setting.ca {
            None => None,
            Some(ca) => {
                let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(
                    "CA certificate",
                    "PeerSourceCa",
                    ca,
                )?));
                if let (Some(cert), Some(key)) = (&setting.cert, &setting.key) {
                    t = t.identity(Identity::from_pem(
                        read("client certificate", "PeerSourceCert", cert)?,
                        read("client key", "PeerSourceKey", key)?,
                    ));
                }
                Some(t)
            }
        };
        let auth = match (&setting.user, &setting.password_file) {
            (Some(user), Some(path)) => {
                use std::os::unix::fs::PermissionsExt as _;
                let meta = std::fs::metadata(path).map_err(|source| SourceError::Read {
                    what: "password file",
                    key: "PeerSourcePasswordFile",
                    path: path.clone(),
                    source,
                })?;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(SourceError::InsecurePassword {
                        path: path.clone(),
                        mode,
                    });
                }
                let text = read("password file", "PeerSourcePasswordFile", path)?;
                let password = String::from_utf8_lossy(&text)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                if password.is_empty() {
                    return Err(SourceError::EmptyPassword { path: path.clone() });
                }
                Some((user.clone(), password))
            }
            _ => None,
        };
        Ok(EtcdSource {
            setting: setting.clone(),
            tls,
            auth,
        })
    }

    pub fn url(&self) -> String {
        self.setting.url()
    }

    fn options(&self) -> ConnectOptions {
        // No request timeout: it would end the watch stream. HTTP/2
        // keepalive finds a member that vanished without a reset, within
        // 15 s; etcd answers pings more often than every 5 s
        // (--grpc-keepalive-min-time) with GOAWAY, which cut the watch
        // every 8 s with a 2 s interval.
        let mut o = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some(t) = &self.tls {
            o = o.with_tls(t.clone());
        }
        if let Some((u, p)) = &self.auth {
            o = o.with_user(u.clone(), p.clone());
        }
        o
    }

    fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.setting
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect()
    }
}

/// A peer as etcd wants it, its endpoint resolved.
#[derive(Clone, Debug)]
struct Wanted {
    public_key: PublicKey,
    preshared_key: Option<PresharedKey>,
    endpoint: Option<SocketAddr>,
    allowed_ips: Vec<IpNet>,
    persistent_keepalive: Option<u16>,
}

/// Parses one etcd value: exactly one `[Peer]` and nothing else. The error
/// names the problem and never echoes key material (config's errors don't).
fn parse_value(key: &str, value: &[u8]) -> Result<PeerConfig, String> {
    if value.len() > MAX_VALUE {
        return Err(format!(
            "etcd key {key}: the value has {} bytes (expected one [Peer] section, at most {MAX_VALUE} bytes). Fix: one peer per key",
            value.len()
        ));
    }
    let text = std::str::from_utf8(value).map_err(|_| "the value is not UTF-8".to_owned())?;
    // Only [Peer] sections are parsed at all: the other sections' settings
    // belong to the local file, and some cost memory to parse.
    for line in text.lines() {
        let content = line.split('#').next().unwrap_or("").trim();
        if content.starts_with('[') && !content.eq_ignore_ascii_case("[Peer]") {
            return Err(format!(
                "etcd key {key}: holds a section other than [Peer] (expected one [Peer] and nothing else; the interface's settings stay in its local file). Fix: keep only the [Peer] section in the value"
            ));
        }
    }
    let cfg = config::parse(text, &format!("etcd key {key}")).map_err(|e| e.to_string())?;
    if cfg.interface != config::InterfaceConfig::default()
        || cfg.appliance != config::ApplianceConfig::default()
    {
        return Err(format!(
            "etcd key {key}: holds more than a [Peer] section (expected one [Peer] and nothing else; the interface's settings stay in its local file). Fix: keep only the [Peer] section in the value"
        ));
    }
    match <[PeerConfig; 1]>::try_from(cfg.peers) {
        Ok([peer]) => Ok(peer),
        Err(peers) => Err(format!(
            "etcd key {key}: holds {} [Peer] sections (expected exactly one). Fix: one key per peer",
            peers.len()
        )),
    }
}

/// Resolves a peer's endpoint (DNS names through the async resolver). A
/// name that does not resolve now leaves the endpoint out (the peer keeps
/// the one it has) rather than the peer.
async fn resolve(key: &str, peer: PeerConfig) -> Wanted {
    let endpoint = match &peer.endpoint {
        None => None,
        Some(e) => {
            let host = e.host.trim_start_matches('[').trim_end_matches(']');
            match host.parse::<std::net::IpAddr>() {
                Ok(ip) => Some(SocketAddr::new(ip, e.port)),
                Err(_) => match tokio::net::lookup_host((host, e.port)).await {
                    Ok(mut addrs) => addrs.next(),
                    Err(err) => {
                        tracing::warn!(key, endpoint = %e, error = %err, "endpoint does not resolve now; the peer keeps the endpoint it has");
                        None
                    }
                },
            }
        }
    };
    Wanted {
        public_key: peer.public_key,
        // All zeros is "no preshared key" (wg's convention).
        preshared_key: peer.preshared_key.filter(|k| !k.is_zero()),
        endpoint,
        allowed_ips: peer.allowed_ips,
        persistent_keepalive: peer.persistent_keepalive,
    }
}

/// The peers etcd holds, by key, and what to tell the daemon.
#[derive(Default)]
struct Desired {
    /// The configuration file's peers: never changed or removed by etcd.
    local: HashSet<PublicKey>,
    /// etcd key → its peer (keys with an invalid value keep what they had).
    entries: BTreeMap<String, Wanted>,
    /// etcd keys whose current value is invalid.
    invalid: HashSet<String>,
    /// A snapshot was taken before (the next one is a resync).
    synced: bool,
}

impl Desired {
    async fn put(&mut self, key: &str, value: &[u8]) {
        match parse_value(key, value) {
            Ok(peer) => {
                let w = resolve(key, peer).await;
                if self.local.contains(&w.public_key) {
                    tracing::warn!(key, public_key = %w.public_key, "etcd names a peer the configuration file has; the file's settings win");
                }
                self.invalid.remove(key);
                self.entries.insert(key.to_owned(), w);
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "etcd value ignored; the peer stays as it was");
                self.invalid.insert(key.to_owned());
            }
        }
    }

    /// A fresh snapshot: every key in it put (a key whose value is invalid
    /// keeps the peer it had), every key not in it gone.
    async fn replace_all(&mut self, kvs: &[(Vec<u8>, Vec<u8>)]) {
        let mut seen = HashSet::new();
        for (k, v) in kvs {
            let key = String::from_utf8_lossy(k).into_owned();
            self.put(&key, v).await;
            seen.insert(key);
        }
        self.entries.retain(|k, _| seen.contains(k));
        self.invalid.retain(|k| seen.contains(k));
    }

    fn delete(&mut self, key: &str) {
        self.entries.remove(key);
        self.invalid.remove(key);
    }

    /// Public key → peer: the first etcd key (in key order) wins a key
    /// named twice; file peers are left out.
    fn by_peer(&self) -> HashMap<PublicKey, &Wanted> {
        let mut out: HashMap<PublicKey, &Wanted> = HashMap::new();
        for (key, w) in &self.entries {
            if self.local.contains(&w.public_key) {
                continue;
            }
            if out.contains_key(&w.public_key) {
                tracing::warn!(key, public_key = %w.public_key, "a second etcd key names this peer; the first key (in key order) wins");
                continue;
            }
            out.insert(w.public_key, w);
        }
        out
    }

    /// The `set` operations that make `current` (the daemon's peers) what
    /// etcd and the file want, in batches of [`PEERS_PER_SET`] peers:
    /// removals first (they free prefixes), then new and changed peers.
    /// The prefixes of the file's peers among `current`: they stay theirs.
    fn local_nets(&self, current: &[PeerSpec]) -> HashSet<IpNet> {
        current
            .iter()
            .filter(|s| self.local.contains(&s.public_key))
            .flat_map(|s| s.allowed_ips.iter().copied())
            .collect()
    }

    fn ops(&self, current: &[PeerSpec]) -> Vec<Vec<SetOp>> {
        let wanted = self.by_peer();
        let local_nets = self.local_nets(current);
        let mut per_peer: Vec<Vec<SetOp>> = Vec::new();
        let have: HashMap<PublicKey, &PeerSpec> =
            current.iter().map(|s| (s.public_key, s)).collect();
        for spec in current {
            if !self.local.contains(&spec.public_key) && !wanted.contains_key(&spec.public_key) {
                per_peer.push(vec![SetOp::PublicKey(spec.public_key), SetOp::Remove]);
            }
        }
        let mut keys: Vec<&PublicKey> = wanted.keys().collect();
        keys.sort_by_key(|k| k.as_bytes());
        for pk in keys {
            let mut w = wanted[pk].clone();
            if w.allowed_ips.iter().any(|n| local_nets.contains(n)) {
                tracing::warn!(public_key = %w.public_key, "an etcd peer names AllowedIPs of a peer in the configuration file; those stay the file peer's");
                w.allowed_ips.retain(|n| !local_nets.contains(n));
            }
            let ops = peer_ops(&w, have.get(pk).copied());
            if !ops.is_empty() {
                per_peer.push(ops);
            }
        }
        per_peer.chunks(PEERS_PER_SET).map(|c| c.concat()).collect()
    }
}

/// What changes `have` into `w` (all of `w` for a new peer); empty when
/// they agree. The endpoint is set only when etcd's differs from the one
/// configured (a roamed endpoint is left alone).
fn peer_ops(w: &Wanted, have: Option<&PeerSpec>) -> Vec<SetOp> {
    let mut ops = Vec::new();
    let psk_same = match (
        have.and_then(|h| h.preshared_key.as_ref()),
        &w.preshared_key,
    ) {
        (Some(a), Some(b)) => a.as_bytes() == b.as_bytes(),
        (None, None) => true,
        _ => false,
    };
    if !psk_same {
        ops.push(SetOp::PresharedKey(
            w.preshared_key
                .clone()
                .unwrap_or_else(|| PresharedKey::from_bytes([0; 32])),
        ));
    }
    if let Some(ep) = w.endpoint {
        if have.and_then(|h| h.endpoint) != Some(ep) {
            ops.push(SetOp::Endpoint(ep));
        }
    }
    let keepalive_differs = match have {
        Some(h) => h.persistent_keepalive != w.persistent_keepalive,
        None => w.persistent_keepalive.is_some(),
    };
    if keepalive_differs {
        ops.push(SetOp::PersistentKeepaliveInterval(
            w.persistent_keepalive.unwrap_or(0),
        ));
    }
    let sorted = |v: &[IpNet]| {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    let want = sorted(&w.allowed_ips);
    match have.map(|h| sorted(&h.allowed_ips)) {
        Some(had) if had == want => {}
        // Only additions: added, nothing cleared (a replace would leave the
        // peer's other prefixes unrouted for an instant).
        Some(had) if had.iter().all(|n| want.contains(n)) => {
            ops.extend(
                want.iter()
                    .filter(|n| !had.contains(n))
                    .map(|n| SetOp::AllowedIp(*n)),
            );
        }
        _ => {
            ops.push(SetOp::ReplaceAllowedIps);
            ops.extend(w.allowed_ips.iter().map(|n| SetOp::AllowedIp(*n)));
        }
    }
    if ops.is_empty() && have.is_some() {
        return ops;
    }
    ops.insert(0, SetOp::PublicKey(w.public_key));
    ops
}

/// Routes through the tunnel for the etcd peers' AllowedIPs, as `up` adds
/// them for the file's peers (wg-quick's `Table`): replaced when a prefix
/// appears, deleted when it goes. One `ip -batch` per change, so 10,000
/// prefixes cost one process, not 10,000.
pub struct Routes {
    ifname: String,
    /// `None`: `Table = off`, no routes. `Some("auto")`: the main table.
    table: Option<String>,
    installed: std::collections::BTreeSet<IpNet>,
    /// Default routes not added (warned about once).
    skipped: std::collections::BTreeSet<IpNet>,
}

impl Routes {
    pub fn new(ifname: &str, table: Option<&str>) -> Self {
        Routes {
            ifname: ifname.to_owned(),
            table: table.filter(|t| *t != "off").map(str::to_owned),
            installed: Default::default(),
            skipped: Default::default(),
        }
    }

    async fn sync(&mut self, mut wanted: std::collections::BTreeSet<IpNet>) {
        let Some(table) = self.table.clone() else {
            return;
        };
        let skipped = &mut self.skipped;
        wanted.retain(|net| {
            if net.prefix_len() == 0 && skipped.insert(*net) {
                tracing::warn!(route = %net, "not adding a default route through the tunnel for an etcd peer: that needs policy routing; add it yourself or narrow AllowedIPs");
            }
            net.prefix_len() != 0
        });
        let suffix = if table == "auto" {
            String::new()
        } else {
            format!(" table {table}")
        };
        let dels: String = self
            .installed
            .difference(&wanted)
            .map(|net| format!("route del {net} dev {}{suffix}\n", self.ifname))
            .collect();
        let adds: String = wanted
            .difference(&self.installed)
            .map(|net| format!("route replace {net} dev {}{suffix}\n", self.ifname))
            .collect();
        // A route that would not go is gone for us (usually it was already);
        // one that would not come is tried again at the next sync.
        self.ip_batch(&dels).await;
        if self.ip_batch(&adds).await {
            self.installed = wanted;
        } else {
            self.installed.retain(|n| wanted.contains(n));
        }
    }

    /// Runs `ip -force -batch -` on `batch`; whether every line worked.
    async fn ip_batch(&self, batch: &str) -> bool {
        if batch.is_empty() {
            return true;
        }
        use tokio::io::AsyncWriteExt as _;
        let child = tokio::process::Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let result = async {
            let mut child = child?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(batch.as_bytes()).await?;
            }
            child.wait_with_output().await
        }
        .await;
        match result {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                tracing::warn!(error = %String::from_utf8_lossy(&out.stderr).trim(), "some routes for etcd peers were not changed");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot run `ip` for the etcd peers' routes");
                false
            }
        }
    }
}

/// Runs the source for `ifname` until the daemon's command channel closes.
/// `local` are the configuration file's peers; `routes` follows the etcd
/// peers' AllowedIPs.
pub async fn run(
    source: EtcdSource,
    ifname: String,
    local: HashSet<PublicKey>,
    mut routes: Routes,
    cmds: mpsc::Sender<Command>,
    status: SharedSourceStatus,
) {
    let prefix = source.setting.peers_prefix(&ifname);
    let mut desired = Desired {
        local,
        ..Default::default()
    };
    let routes = &mut routes;
    let mut wait = RETRY_FIRST;
    set(&status, |s| {
        s.url = source.url();
        s.since = Some(SystemTime::now());
    });
    tracing::info!(url = %source.url(), prefix, "peer source: etcd");
    let mut ever_failed = false;
    loop {
        let began = std::time::Instant::now();
        let err = match session(&source, &prefix, &mut desired, routes, &cmds, &status).await {
            Session::DaemonGone => return,
            Session::Failed(e) => e,
        };
        let was = status.lock().map(|s| s.connected).unwrap_or(false);
        let first = !ever_failed;
        ever_failed = true;
        set(&status, |s| {
            if s.connected {
                s.since = Some(SystemTime::now());
            }
            s.connected = false;
            s.last_error = Some(err.clone());
        });
        if was || first {
            tracing::warn!(url = %source.url(), error = %err, "etcd unreachable; forwarding goes on with the last known peers");
        } else {
            tracing::debug!(url = %source.url(), error = %err, "etcd still unreachable");
        }
        // A session that held a while starts the backoff over; one that
        // fails as soon as it connects does not hammer etcd with snapshots.
        if began.elapsed() >= STABLE {
            wait = RETRY_FIRST;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}

enum Session {
    /// The daemon stopped: so does the source.
    DaemonGone,
    /// Connection, snapshot or watch failed: retry with a fresh snapshot.
    Failed(String),
}

fn set(status: &SharedSourceStatus, f: impl FnOnce(&mut crate::daemon::PeerSourceStatus)) {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

/// One connection: snapshot, then watch until something breaks.
async fn session(
    source: &EtcdSource,
    prefix: &str,
    desired: &mut Desired,
    routes: &mut Routes,
    cmds: &mpsc::Sender<Command>,
    status: &SharedSourceStatus,
) -> Session {
    let fail = |what: &str, e: etcd_client::Error| Session::Failed(format!("{what}: {e}"));
    let mut client = match tokio::time::timeout(
        Duration::from_secs(5),
        Client::connect(source.endpoints(), Some(source.options())),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return fail("connecting", e),
        Err(_) => return Session::Failed("connecting: timed out after 5 s".into()),
    };
    // The snapshot, page by page at the first page's revision.
    let mut kv = client.kv_client().max_decoding_message_size(MAX_PAGE_BYTES);
    let started = std::time::Instant::now();
    let mut entries = Vec::new();
    let mut revision = 0;
    let mut from = prefix.as_bytes().to_vec();
    let end = prefix_end(prefix.as_bytes());
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision != 0 {
            opts = opts.with_revision(revision);
        }
        let page =
            match tokio::time::timeout(Duration::from_secs(10), kv.get(from.clone(), Some(opts)))
                .await
            {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return fail("reading the snapshot", e),
                Err(_) => {
                    return Session::Failed("reading the snapshot: timed out after 10 s".into())
                }
            };
        if revision == 0 {
            revision = page.header().map_or(0, |h| h.revision());
        }
        let more = page.more();
        for kv in page.kvs() {
            entries.push((kv.key().to_vec(), kv.value().to_vec()));
        }
        match entries.last() {
            Some((k, _)) if more => {
                from = k.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    let resync = desired.synced;
    desired.synced = true;
    desired.replace_all(&entries).await;
    let mut refused = match apply(desired, routes, cmds, status, revision).await {
        Ok(r) => r,
        Err(gone) => return gone,
    };
    set(status, |s| {
        s.connected = true;
        s.since = Some(SystemTime::now());
        s.last_error = None;
        if resync {
            s.resyncs += 1;
        }
    });
    tracing::info!(
        keys = entries.len(),
        revision,
        ms = started.elapsed().as_millis() as u64,
        "peers loaded from etcd; watching"
    );

    let opts = WatchOptions::new()
        .with_range(end)
        .with_start_revision(revision + 1);
    let mut stream = match client.watch(prefix.as_bytes().to_vec(), Some(opts)).await {
        Ok(s) => s,
        Err(e) => return fail("starting the watch", e),
    };
    let mut rev = revision;
    loop {
        // Events, or the periodic comparison (sooner after a refusal).
        let next = if refused { RETRY_REFUSED } else { RECONCILE };
        let resp = match tokio::time::timeout(next, stream.message()).await {
            Err(_) => {
                refused = match apply(desired, routes, cmds, status, rev).await {
                    Ok(r) => r,
                    Err(gone) => return gone,
                };
                continue;
            }
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return Session::Failed("the watch ended".into()),
            Ok(Err(e)) => return fail("watching", e),
        };
        if resp.compact_revision() > 0 || resp.canceled() {
            tracing::warn!(compact_revision = resp.compact_revision(), reason = resp.cancel_reason(), "etcd cancelled the watch (compaction overtook it); resyncing from a fresh snapshot");
            return Session::Failed(format!(
                "watch cancelled by etcd (compacted at {})",
                resp.compact_revision()
            ));
        }
        if resp.events().is_empty() {
            continue;
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match ev.event_type() {
                EventType::Put => desired.put(&key, kv.value()).await,
                EventType::Delete => desired.delete(&key),
            }
        }
        rev = resp.header().map_or(rev, |h| h.revision());
        refused = match apply(desired, routes, cmds, status, rev).await {
            Ok(r) => r,
            Err(gone) => return gone,
        };
    }
}

/// The first key after every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Brings the daemon's peers to `desired`, recording the outcome; whether
/// the daemon refused some of it (to be tried again).
async fn apply(
    desired: &Desired,
    routes: &mut Routes,
    cmds: &mpsc::Sender<Command>,
    status: &SharedSourceStatus,
    revision: i64,
) -> Result<bool, Session> {
    let (tx, rx) = oneshot::channel();
    if cmds.send(Command::Specs(tx)).await.is_err() {
        return Err(Session::DaemonGone);
    }
    let Ok(current) = rx.await else {
        return Err(Session::DaemonGone);
    };
    let batches = desired.ops(&current);
    let changed = !batches.is_empty();
    let mut failure = None;
    for ops in batches {
        let (tx, rx) = oneshot::channel();
        if cmds
            .send(Command::Uapi(Request::Set(ops), tx))
            .await
            .is_err()
        {
            return Err(Session::DaemonGone);
        }
        let reply = rx.await.unwrap_or_default();
        if !reply.starts_with("errno=0") {
            // The daemon logged why (e.g. too many peers); go on with the
            // other batches and say so.
            failure = Some(format!("the daemon refused a change ({})", reply.trim()));
        }
    }
    let wanted = desired.by_peer();
    let peers = wanted.len();
    let local_nets = desired.local_nets(&current);
    routes
        .sync(
            wanted
                .values()
                .flat_map(|w| w.allowed_ips.iter().copied())
                .filter(|n| !local_nets.contains(n))
                .collect(),
        )
        .await;
    set(status, |s| {
        s.revision = revision;
        s.peers = peers;
        s.invalid = desired.invalid.len();
        if changed {
            s.updates += 1;
            s.last_applied = Some(SystemTime::now());
        }
        if let Some(f) = &failure {
            s.last_error = Some(f.clone());
        }
    });
    let refused = failure.is_some();
    if let Some(f) = failure {
        tracing::warn!(error = %f, "peer source: not every change applied; trying again in 5 s");
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn key(n: u8) -> PublicKey {
        PrivateKey::from_bytes([n; 32]).public_key()
    }

    fn value(pk: &PublicKey, ips: &str) -> String {
        format!("[Peer]\nPublicKey = {pk}\nAllowedIPs = {ips}\n")
    }

    fn spec(pk: PublicKey, ips: &[&str]) -> PeerSpec {
        PeerSpec {
            public_key: pk,
            preshared_key: None,
            endpoint: None,
            allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            persistent_keepalive: None,
        }
    }

    #[tokio::test]
    async fn unchanged_peers_are_not_touched_and_changes_are_minimal() {
        let mut d = Desired::default();
        d.put("/p/wg0/peers/a", value(&key(1), "10.0.0.1/32").as_bytes())
            .await;
        d.put(
            "/p/wg0/peers/b",
            value(&key(2), "10.0.0.2/32, 10.9.0.0/16").as_bytes(),
        )
        .await;
        let current = vec![
            spec(key(1), &["10.0.0.1/32"]),
            spec(key(2), &["10.0.0.2/32"]),
        ];
        let ops = d.ops(&current).concat();
        // Only an addition: added, nothing cleared.
        assert_eq!(
            ops,
            vec![
                SetOp::PublicKey(key(2)),
                SetOp::AllowedIp("10.9.0.0/16".parse().unwrap()),
            ]
        );
        let same = vec![
            spec(key(1), &["10.0.0.1/32"]),
            spec(key(2), &["10.9.0.0/16", "10.0.0.2/32"]),
        ];
        assert!(d.ops(&same).is_empty());
        // A prefix gone: the list is replaced.
        d.put("/p/wg0/peers/b", value(&key(2), "10.9.0.0/16").as_bytes())
            .await;
        assert_eq!(
            d.ops(&current).concat(),
            vec![
                SetOp::PublicKey(key(2)),
                SetOp::ReplaceAllowedIps,
                SetOp::AllowedIp("10.9.0.0/16".parse().unwrap()),
            ]
        );
    }

    #[tokio::test]
    async fn removed_keys_remove_peers_but_never_the_files() {
        let mut d = Desired {
            local: [key(9)].into_iter().collect(),
            ..Default::default()
        };
        d.put("/p/wg0/peers/a", value(&key(1), "10.0.0.1/32").as_bytes())
            .await;
        let current = vec![
            spec(key(1), &["10.0.0.1/32"]),
            spec(key(3), &[]),
            spec(key(9), &[]),
        ];
        assert_eq!(
            d.ops(&current).concat(),
            vec![SetOp::PublicKey(key(3)), SetOp::Remove]
        );
        d.delete("/p/wg0/peers/a");
        assert_eq!(
            d.ops(&current).concat(),
            vec![
                SetOp::PublicKey(key(1)),
                SetOp::Remove,
                SetOp::PublicKey(key(3)),
                SetOp::Remove,
            ]
        );
    }

    #[tokio::test]
    async fn an_invalid_value_keeps_the_peer_it_had_and_is_counted() {
        let mut d = Desired::default();
        d.put("/p/wg0/peers/a", value(&key(1), "10.0.0.1/32").as_bytes())
            .await;
        d.put("/p/wg0/peers/a", b"[Peer]\nPublicKey = nope\n").await;
        assert_eq!(d.invalid.len(), 1);
        assert!(d.ops(&[spec(key(1), &["10.0.0.1/32"])]).is_empty());
        for bad in [
            "[Interface]\nListenPort = 5\n[Peer]\nPublicKey = AAAA\n".to_owned(),
            format!(
                "{}{}",
                value(&key(1), "10.0.0.1/32"),
                value(&key(2), "10.0.0.2/32")
            ),
        ] {
            d.put("/p/wg0/peers/b", bad.as_bytes()).await;
            assert!(d.invalid.contains("/p/wg0/peers/b"), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_new_peer_gets_every_setting_and_a_key_named_twice_counts_once() {
        let mut d = Desired::default();
        let v = format!(
            "[Peer]\nPublicKey = {}\nPresharedKey = {}\nEndpoint = 192.0.2.1:51820\nPersistentKeepalive = 25\nAllowedIPs = 10.0.0.1/32\n",
            key(1),
            PresharedKey::from_bytes([7; 32]).to_base64().as_str()
        );
        d.put("/p/wg0/peers/a", v.as_bytes()).await;
        d.put("/p/wg0/peers/z", value(&key(1), "10.7.0.0/16").as_bytes())
            .await;
        let ops = d.ops(&[]).concat();
        assert_eq!(ops.len(), 6, "{ops:?}");
        assert_eq!(ops[0], SetOp::PublicKey(key(1)));
        assert!(ops.contains(&SetOp::Endpoint("192.0.2.1:51820".parse().unwrap())));
        assert!(ops.contains(&SetOp::PersistentKeepaliveInterval(25)));
        assert!(ops.contains(&SetOp::AllowedIp("10.0.0.1/32".parse().unwrap())));
        assert!(matches!(ops[1], SetOp::PresharedKey(_)));
    }

    #[tokio::test]
    async fn the_files_prefixes_stay_the_files_and_a_resync_keeps_what_an_invalid_key_had() {
        let mut d = Desired {
            local: [key(9)].into_iter().collect(),
            ..Default::default()
        };
        d.put(
            "/p/wg0/peers/a",
            value(&key(1), "10.0.0.1/32, 10.50.0.0/16").as_bytes(),
        )
        .await;
        let current = vec![spec(key(9), &["10.50.0.0/16"])];
        let ops = d.ops(&current).concat();
        assert!(
            !ops.contains(&SetOp::AllowedIp("10.50.0.0/16".parse().unwrap())),
            "{ops:?}"
        );
        // A snapshot where a's value turned invalid and b is new: a keeps
        // its peer, a key not in the snapshot goes.
        d.put("/p/wg0/peers/z", value(&key(3), "10.0.0.3/32").as_bytes())
            .await;
        d.replace_all(&[
            (
                b"/p/wg0/peers/a".to_vec(),
                b"[Peer]\nPublicKey = broken\n".to_vec(),
            ),
            (
                b"/p/wg0/peers/b".to_vec(),
                value(&key(2), "10.0.0.2/32").into_bytes(),
            ),
        ])
        .await;
        let peers = d.by_peer();
        assert!(peers.contains_key(&key(1)) && peers.contains_key(&key(2)));
        assert!(!peers.contains_key(&key(3)));
        assert_eq!(d.invalid.len(), 1);
    }

    #[tokio::test]
    async fn values_other_than_one_small_peer_are_refused_unparsed() {
        let mut d = Desired::default();
        let huge = format!("[Peer]\n# {}\n", "x".repeat(MAX_VALUE));
        let cpus = format!("[Appliance]\nCpus = {}\n", vec!["0-8191"; 100].join(","));
        for (v, why) in [
            (huge.as_str(), "bytes"),
            (cpus.as_str(), "other than [Peer]"),
        ] {
            assert!(parse_value("k", v.as_bytes()).unwrap_err().contains(why));
            d.put("k", v.as_bytes()).await;
        }
        assert_eq!(d.invalid.len(), 1, "one key, counted once");
        // An all-zero preshared key is none: no op on every pass.
        let zero = format!(
            "[Peer]\nPublicKey = {}\nPresharedKey = {}\n",
            key(1),
            PresharedKey::from_bytes([0; 32]).to_base64().as_str()
        );
        d.put("z", zero.as_bytes()).await;
        assert!(d.ops(&[spec(key(1), &[])]).is_empty());
    }

    #[test]
    fn batches_hold_at_most_peers_per_set_peers() {
        let mut d = Desired::default();
        for i in 0..(PEERS_PER_SET as u32 + 3) {
            let pk = PublicKey::from_bytes({
                let mut b = [0u8; 32];
                b[..4].copy_from_slice(&i.to_be_bytes());
                b
            });
            d.entries.insert(
                format!("k{i}"),
                Wanted {
                    public_key: pk,
                    preshared_key: None,
                    endpoint: None,
                    allowed_ips: vec![],
                    persistent_keepalive: None,
                },
            );
        }
        let b = d.ops(&[]);
        assert_eq!(b.len(), 2);
        assert_eq!(
            b[1].iter()
                .filter(|o| matches!(o, SetOp::PublicKey(_)))
                .count(),
            3
        );
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/a/wg0/peers/"), b"/a/wg0/peers0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }
}
