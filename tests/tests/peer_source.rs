//! Peers from etcd (`PeerSource`), against Debian's etcd-server started in
//! the gateway's namespace and the ops lab's wireguard-go far site:
//!
//! - a peer written with etcdctl appears in `wg show` within a second and
//!   carries traffic; a changed AllowedIPs applies in place (the peer's
//!   counters and handshake stay: no new session); an invalid value is
//!   refused, named in the log and counted, and the peer stays;
//! - etcd killed: the tunnel forwards on, metrics, `show` and `doctor` say
//!   etcd is unreachable; etcd back: the watch resumes (a resync) and a new
//!   key applies; a deleted key removes the peer from `wg show` and from
//!   the BPF maps;
//! - a partition (packets dropped both ways, no reset) is noticed by
//!   HTTP/2 keepalive within 15 s, forwarding goes on, and what changed in
//!   etcd meanwhile (a key deleted, one added) is applied once it heals;
//! - TLS with client certificates and user/password auth;
//! - 10,000 peers loaded from etcd, the time printed (the figure in
//!   docs/scale.md comes from the release build).

mod ops_lab;

use std::time::{Duration, Instant};

use ops_lab::{Lab, LabOpts, SITE};
use wg_appliance::keys::PrivateKey;
use wg_appliance_tests::{
    etcd::{etcd_unavailable, Etcd, Tls},
    netns_unavailable, skip,
    topo::ping_all,
    wait_until,
};

const PORT: u16 = 2379;

fn unavailable() -> Option<String> {
    netns_unavailable().or_else(etcd_unavailable)
}

fn wg(lab: &Lab, what: &str) -> String {
    lab.gw
        .exec("wg", &["show", &lab.ifname, what])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn show(lab: &Lab) -> String {
    lab.run(&["show", &lab.ifname])
        .map(|f| f.stdout)
        .unwrap_or_default()
}

fn metric(lab: &Lab, name: &str) -> Option<f64> {
    wg_appliance_tests::metric_in(&lab.gw, name)
}

/// Applies nftables commands in `ns` (`nft -f`).
fn nft(ns: &wg_appliance_tests::Netns, ruleset: &str) {
    let f = std::env::temp_dir().join(format!("wgt-nft-{}-{}", std::process::id(), ns.name()));
    std::fs::write(&f, ruleset).expect("ruleset file");
    let r = ns.exec("nft", &["-f", &f.display().to_string()]);
    let _ = std::fs::remove_file(&f);
    r.expect("nft -f");
}

/// Entries of the gateway's pinned IPv4 AllowedIPs trie.
fn allowed_v4_entries(lab: &Lab) -> usize {
    let pattern = format!("/run/wg-appliance/bpf/*/{}/map_ALLOWED_V4", lab.ifname);
    let out = lab
        .gw
        .exec(
            "sh",
            &["-c", &format!("bpftool -j map dump pinned {pattern}")],
        )
        .expect("bpftool map dump");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array().expect("an array of entries").len()
}

/// Time until `cond` holds, polled every 20 ms, at most `limit`.
fn time_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    wait_until(limit, what, &mut cond).unwrap_or_else(|e| panic!("{e}"));
    t0.elapsed()
}

#[test]
fn etcd_peers_apply_in_place_and_survive_etcd_going_away() {
    let test = "etcd_peers_apply_in_place_and_survive_etcd_going_away";
    if let Some(why) = unavailable() {
        skip(test, &why);
        return;
    }
    let lab = Lab::new(LabOpts {
        forwarding: true,
        no_file_peer: true,
        metrics: Some("127.0.0.1:9586".into()),
        appliance_extra: format!("PeerSource = etcd://127.0.0.1:{PORT}/fleet\n"),
        ..LabOpts::default()
    })
    .expect("lab");
    let mut etcd = Etcd::start(&lab.gw, "127.0.0.1", PORT, None).expect("etcd");
    let ifname = lab.ifname.clone();
    let key = format!("/fleet/{ifname}/peers/far-site");
    let far = lab.peer_key.public_key().to_base64();
    wait_until(Duration::from_secs(20), "the daemon to watch etcd", || {
        show(&lab).contains("peer source state: connected")
    })
    .expect("connected");
    assert!(
        wg(&lab, "peers").trim().is_empty(),
        "no peer before etcd has one"
    );

    // A new peer: in `wg show` within a second, then traffic.
    etcd.put(&key, &lab.far_peer_section("")).expect("put");
    let took = time_until(Duration::from_secs(1), "the peer in wg show", || {
        wg(&lab, "peers").contains(&far)
    });
    eprintln!("peer from etcd in wg show after {took:?}");
    lab.warm_up(Duration::from_secs(20))
        .expect("traffic through the etcd peer");

    // AllowedIPs changed: applied in place, the session goes on.
    let hs_before = wg(&lab, "latest-handshakes");
    let rx_before = transfer_rx(&wg(&lab, "transfer"));
    etcd.put(&key, &lab.far_peer_section("AllowedIPs = 10.99.0.0/24"))
        .expect("put");
    time_until(Duration::from_secs(1), "the new AllowedIPs", || {
        wg(&lab, "allowed-ips").contains("10.99.0.0/24")
    });
    assert!(
        ping_all(&lab.lan, None, SITE, 5, "0.2"),
        "traffic right after the change"
    );
    assert_eq!(
        wg(&lab, "latest-handshakes"),
        hs_before,
        "no new handshake: the session went on"
    );
    assert!(
        transfer_rx(&wg(&lab, "transfer")) > rx_before,
        "the peer's counters kept counting (it was not re-created)"
    );
    let entries = allowed_v4_entries(&lab);
    assert_eq!(
        entries,
        3,
        "{PEER_TUN}/32, 10.97.0.0/24, 10.99.0.0/24",
        PEER_TUN = ops_lab::PEER_TUN
    );

    // An invalid value: refused with its key named, counted; the peer stays.
    let bad = format!("/fleet/{ifname}/peers/broken");
    etcd.put(&bad, "[Peer]\nPublicKey = not-a-key\n")
        .expect("put");
    wait_until(Duration::from_secs(2), "the invalid value counted", || {
        metric(&lab, "wg_appliance_peer_source_invalid_values{") == Some(1.0)
    })
    .expect("invalid counted");
    let log =
        std::fs::read_to_string(format!("/var/log/wg-appliance/{ifname}.log")).unwrap_or_default();
    assert!(
        log.contains(&bad) && log.contains("etcd value ignored"),
        "the log names the key:\n{log}"
    );
    assert!(wg(&lab, "peers").contains(&far));
    etcd.del(&bad).expect("del");

    // etcd gone: forwarding goes on; metrics, show and doctor say so.
    etcd.kill();
    wait_until(Duration::from_secs(10), "the source to notice", || {
        metric(&lab, "wg_appliance_peer_source_connected{") == Some(0.0)
    })
    .expect("disconnected in metrics");
    assert!(
        ping_all(&lab.lan, None, SITE, 20, "0.1"),
        "forwarding while etcd is down"
    );
    assert!(
        show(&lab).contains("peer source state: unreachable"),
        "{}",
        show(&lab)
    );
    let (_, doctor) = lab.doctor(&[]).expect("doctor");
    assert!(
        doctor.contains("etcd unreachable for")
            && doctor.contains("the tunnels go on with the last known peers"),
        "{doctor}"
    );

    // etcd back: the watch resumes from a fresh snapshot.
    etcd.resume(&lab.gw).expect("etcd again");
    let second = PrivateKey::generate().public_key().to_base64();
    etcd.put(
        &format!("/fleet/{ifname}/peers/second"),
        &format!("[Peer]\nPublicKey = {second}\nAllowedIPs = 10.99.1.0/24\n"),
    )
    .expect("put");
    wait_until(
        Duration::from_secs(15),
        "the second peer after etcd returned",
        || wg(&lab, "peers").contains(&second),
    )
    .expect("watch resumed");
    assert_eq!(
        metric(&lab, "wg_appliance_peer_source_connected{"),
        Some(1.0)
    );
    assert!(metric(&lab, "wg_appliance_peer_source_resyncs_total{").unwrap_or(0.0) >= 1.0);
    assert!(
        wg(&lab, "peers").contains(&far),
        "the far site kept through it all"
    );

    // A deleted key: the peer leaves wg show and the BPF maps.
    etcd.del(&key).expect("del");
    time_until(Duration::from_secs(1), "the peer gone", || {
        !wg(&lab, "peers").contains(&far)
    });
    assert_eq!(
        allowed_v4_entries(&lab),
        1,
        "only the second peer's prefix is left"
    );
    assert!(
        !ping_all(&lab.lan, None, SITE, 1, "0.2"),
        "no route to the far site without its peer"
    );
}

/// The received bytes of the only peer in `wg show <if> transfer`.
fn transfer_rx(text: &str) -> u64 {
    text.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A network partition (no reset: packets dropped), not a dead member:
/// HTTP/2 keepalive notices, and what changed in etcd meanwhile (a key
/// deleted, one added) is applied from a fresh snapshot once it heals.
#[test]
fn a_partition_is_noticed_and_what_changed_meanwhile_is_resynced() {
    let test = "a_partition_is_noticed_and_what_changed_meanwhile_is_resynced";
    if let Some(why) = unavailable() {
        skip(test, &why);
        return;
    }
    // etcd on the router, so the gateway can be cut off from it alone.
    let router_ip = "10.96.0.254";
    let lab = Lab::new(LabOpts {
        forwarding: true,
        no_file_peer: true,
        metrics: Some("127.0.0.1:9586".into()),
        appliance_extra: format!("PeerSource = etcd://{router_ip}:{PORT}/fleet\n"),
        ..LabOpts::default()
    })
    .expect("lab");
    let etcd = Etcd::start(&lab.router, router_ip, PORT, None).expect("etcd");
    let ifname = lab.ifname.clone();
    let far = lab.peer_key.public_key().to_base64();
    let gone = PrivateKey::generate().public_key().to_base64();
    let later = PrivateKey::generate().public_key().to_base64();
    etcd.put(
        &format!("/fleet/{ifname}/peers/far"),
        &lab.far_peer_section(""),
    )
    .expect("put");
    etcd.put(
        &format!("/fleet/{ifname}/peers/gone"),
        &format!("[Peer]\nPublicKey = {gone}\nAllowedIPs = 10.99.2.0/24\n"),
    )
    .expect("put");
    wait_until(Duration::from_secs(20), "both peers", || {
        let p = wg(&lab, "peers");
        p.contains(&far) && p.contains(&gone)
    })
    .expect("peers");
    lab.warm_up(Duration::from_secs(20)).expect("traffic");

    // Cut the gateway off from etcd: packets both ways dropped, no reset.
    nft(
        &lab.gw,
        &format!(
            "table inet cut {{\n  chain out {{ type filter hook output priority 0; ip daddr {router_ip} tcp dport {PORT} drop; }}\n  chain in {{ type filter hook input priority 0; ip saddr {router_ip} tcp sport {PORT} drop; }}\n}}\n"
        ),
    );
    etcd.del(&format!("/fleet/{ifname}/peers/gone"))
        .expect("del");
    etcd.put(
        &format!("/fleet/{ifname}/peers/later"),
        &format!("[Peer]\nPublicKey = {later}\nAllowedIPs = 10.99.3.0/24\n"),
    )
    .expect("put");
    let cut = Instant::now();
    wait_until(Duration::from_secs(30), "the partition noticed", || {
        metric(&lab, "wg_appliance_peer_source_connected{") == Some(0.0)
    })
    .expect("noticed");
    eprintln!("partition noticed after {:?}", cut.elapsed());
    assert!(
        ping_all(&lab.lan, None, SITE, 10, "0.1"),
        "forwarding while cut off"
    );
    let p = wg(&lab, "peers");
    assert!(
        p.contains(&gone) && !p.contains(&later),
        "nothing applied while cut off: {p}"
    );

    nft(&lab.gw, "delete table inet cut\n");
    wait_until(Duration::from_secs(20), "the resync", || {
        let p = wg(&lab, "peers");
        !p.contains(&gone) && p.contains(&later) && p.contains(&far)
    })
    .expect("resynced");
    assert!(metric(&lab, "wg_appliance_peer_source_resyncs_total{").unwrap_or(0.0) >= 1.0);
    assert!(
        ping_all(&lab.lan, None, SITE, 5, "0.2"),
        "the far site throughout"
    );
}

#[test]
fn etcd_with_tls_client_certificates_and_a_password() {
    let test = "etcd_with_tls_client_certificates_and_a_password";
    if let Some(why) = unavailable() {
        skip(test, &why);
        return;
    }
    let dir = std::env::temp_dir().join(format!("wgt-etcd-tls-{}", std::process::id()));
    let tls = Tls::generate(&dir, "127.0.0.1", "root").expect("certificates");
    let pass = dir.join("etcd.pass");
    std::fs::write(&pass, "s3cret-pass\n").expect("password file");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let extra = format!(
        "PeerSource = etcd://127.0.0.1:{PORT}/secure\nPeerSourceCa = {}\nPeerSourceCert = {}\nPeerSourceKey = {}\nPeerSourceUser = root\nPeerSourcePasswordFile = {}\n",
        tls.ca.display(),
        tls.client_cert.display(),
        tls.client_key.display(),
        pass.display()
    );
    let lab = Lab::new(LabOpts {
        forwarding: true,
        no_file_peer: true,
        appliance_extra: extra,
        ..LabOpts::default()
    })
    .expect("lab");
    let mut etcd = Etcd::start(&lab.gw, "127.0.0.1", PORT, Some(&tls)).expect("etcd");
    etcd.enable_auth("s3cret-pass").expect("auth on");
    let far = lab.peer_key.public_key().to_base64();
    etcd.put(
        &format!("/secure/{}/peers/far", lab.ifname),
        &lab.far_peer_section(""),
    )
    .expect("put");
    wait_until(
        Duration::from_secs(20),
        "the peer over TLS with auth",
        || wg(&lab, "peers").contains(&far),
    )
    .expect("peer applied");
    lab.warm_up(Duration::from_secs(20)).expect("traffic");
    let s = show(&lab);
    assert!(s.contains("peer source state: connected"), "{s}");
    let log = std::fs::read_to_string(format!("/var/log/wg-appliance/{}.log", lab.ifname))
        .unwrap_or_default();
    assert!(!log.contains("s3cret-pass"), "the password is never logged");
    drop(lab);

    // A world-readable password file is refused at `up`, naming the fix.
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let bad = Lab::new(LabOpts {
        no_file_peer: true,
        appliance_extra: format!(
            "PeerSource = etcd://127.0.0.1:{PORT}/secure\nPeerSourceCa = {}\nPeerSourceUser = root\nPeerSourcePasswordFile = {}\n",
            tls.ca.display(),
            pass.display()
        ),
        ..LabOpts::default()
    });
    let err = format!("{:#}", bad.err().expect("refused"));
    assert!(err.contains("chmod 600"), "{err}");
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ten_thousand_peers_load_from_etcd() {
    let test = "ten_thousand_peers_load_from_etcd";
    if let Some(why) = unavailable() {
        skip(test, &why);
        return;
    }
    const N: usize = 10_000;
    let o = LabOpts {
        no_file_peer: true,
        appliance_extra: format!("PeerSource = etcd://127.0.0.1:{PORT}/big\n"),
        ..LabOpts::default()
    };
    let mut lab = Lab::new(o.clone()).expect("lab");
    let etcd = Etcd::start(&lab.gw, "127.0.0.1", PORT, None).expect("etcd");
    let kvs: Vec<(String, String)> = (0..N)
        .map(|i| {
            let pk = PrivateKey::generate().public_key().to_base64();
            (
                format!("/big/{}/peers/p{i:05}", lab.ifname),
                format!(
                    "[Peer]\nPublicKey = {pk}\nAllowedIPs = 10.{}.{}.{}/32\n",
                    100 + i / 65536,
                    (i / 256) % 256,
                    i % 256
                ),
            )
        })
        .collect();
    let t0 = Instant::now();
    etcd.put_many(&kvs).expect("10,000 keys");
    eprintln!("wrote {N} keys in {:?}", t0.elapsed());
    // A fresh daemon loads them all from one snapshot.
    lab.restart(&o).expect("restart");
    let t0 = Instant::now();
    let count = || wg(&lab, "peers").lines().count();
    // The bound is 25 times the debug build's 1.2 s here, for a loaded CI
    // machine; the figure itself is printed and goes in docs/scale.md.
    wait_until(Duration::from_secs(30), "10,000 peers from etcd", || {
        count() == N
    })
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(format!("/var/log/wg-appliance/{}.log", lab.ifname));
        panic!(
            "{e}; {} peers; the daemon's log:\n{}",
            count(),
            log.unwrap_or_default()
        )
    });
    let took = t0.elapsed();
    let build = wg_appliance_tests::appliance_bin().expect("binary");
    eprintln!(
        "{N} peers from etcd in wg show {took:?} after `up` returned ({})",
        build.display()
    );
    assert_eq!(allowed_v4_entries(&lab), N, "every prefix in the data path");

    // One more change with 10,000 peers in place: etcdctl returning to
    // `wg show` showing it (the figure of docs/scale.md).
    let one = PrivateKey::generate().public_key().to_base64();
    let t0 = Instant::now();
    etcd.put(
        &format!("/big/{}/peers/one-more", lab.ifname),
        &format!("[Peer]\nPublicKey = {one}\nAllowedIPs = 10.120.0.1/32\n"),
    )
    .expect("put");
    let put = t0.elapsed();
    wait_until(Duration::from_secs(10), "one more peer", || {
        wg(&lab, "peers").contains(&one)
    })
    .expect("applied");
    eprintln!(
        "one peer added at {N} peers: etcdctl put {put:?}, in wg show {:?} after the put began ({}; includes polling `wg show` of {N} peers)",
        t0.elapsed(),
        build.display()
    );
}
