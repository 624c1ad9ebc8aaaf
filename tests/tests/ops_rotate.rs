//! Key rotation without a gap, in the site-to-site lab (wg-appliance from a
//! wg-quick file, wireguard-go on the far side), each under a TCP stream
//! whose every byte is checked on arrival and an iperf3 run beside it:
//!
//! - `rotate-psk` twice (ours first, then the far side's first), with a
//!   REKEY_AFTER_TIME of 5 s so new handshakes, under the new keys, happen
//!   while the stream runs; the key-age metric restarts;
//! - the interface's private key, by the procedure of docs/operations.md:
//!   the far side lists our new public key as a second ("overlapping")
//!   peer, we switch keys over UAPI, the far side moves the AllowedIPs to
//!   the new peer and drops the old one. No restart, no byte lost.

mod ops_lab;

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, SystemTime},
};

use ops_lab::{write_secret, Lab, LabOpts, Stream, GW_WAN, LAN_HOST, PEER_TUN, SITE};
use wg_appliance::{
    keys::{PresharedKey, PrivateKey},
    uapi_client::Client,
};
use wg_appliance_tests::{
    netns_unavailable,
    proc::{iperf3, Proto},
    skip, wait_until,
};

fn counter(ifname: &str, name: &str) -> u64 {
    Client::new(ifname)
        .and_then(|c| c.appliance())
        .map(|a| a.numbers("counter").get(name).copied().unwrap_or(0))
        .unwrap_or(0)
}

/// Waits until the gateway's (only) peer has a handshake newer than `t`.
fn handshake_after(ifname: &str, t: SystemTime, what: &str) {
    wait_until(Duration::from_secs(20), what, || {
        Client::new(ifname).and_then(|c| c.get()).is_ok_and(|d| {
            d.peers
                .iter()
                .any(|p| p.last_handshake.is_some_and(|h| h > t))
        })
    })
    .expect("a handshake with the new key");
}

fn metric(lab: &Lab, name: &str) -> Option<f64> {
    wg_appliance_tests::metric_in(&lab.gw, name)
}

#[test]
fn rotate_psk_under_traffic_loses_no_tcp_byte() {
    if let Some(why) = netns_unavailable() {
        skip("rotate_psk_under_traffic_loses_no_tcp_byte", &why);
        return;
    }
    let lab = Lab::new(LabOpts {
        forwarding: true,
        far_passive: true,
        psk: Some(PresharedKey::generate()),
        metrics: Some("127.0.0.1:9586".into()),
        env: vec![("WG_APPLIANCE_TEST_REKEY_AFTER_SECS".into(), "5".into())],
        ..LabOpts::default()
    })
    .expect("lab");
    lab.warm_up(Duration::from_secs(20)).expect("tunnel up");
    let ifname = lab.ifname.clone();
    let tp_if = lab.tp.ifname.clone();
    let gw_pub = lab.gw_key.public_key().to_base64();
    let peer_pub = lab.peer_key.public_key().to_base64();
    let age_metric = "wg_appliance_peer_preshared_key_age_seconds{";
    assert!(
        metric(&lab, age_metric).is_some(),
        "no key-age metric for a peer with a PSK"
    );

    let before_auth = counter(&ifname, "drop_auth_failed");
    let before_expired = counter(&ifname, "drop_session_expired");
    let dst: SocketAddr = format!("{SITE}:5400").parse().expect("addr");
    let stream = Stream::start(&lab.lan, &lab.peer, dst).expect("stream");
    let mut psks = Vec::new();
    let iperf = thread::scope(|s| {
        let load = s.spawn(|| {
            iperf3(
                &lab.lan,
                &lab.peer,
                LAN_HOST,
                Proto::Tcp,
                &["-t", "16"],
                Duration::from_secs(40),
            )
        });
        thread::sleep(Duration::from_secs(3));

        // 1. Ours first: rotate-psk prints the new key once; the far side
        // gets it with `wg set`.
        let t1 = SystemTime::now();
        let f = lab
            .run(&["rotate-psk", &ifname, &peer_pub[..10]])
            .expect("rotate-psk");
        assert!(f.status.success(), "rotate-psk: {}", f.stderr);
        let printed: Vec<&str> = f.stdout.lines().collect();
        assert_eq!(
            printed.len(),
            1,
            "stdout holds the key alone: {:?}",
            f.stdout
        );
        let psk: PresharedKey = printed[0].parse().expect("a preshared key on stdout");
        psks.push(psk.clone());
        assert!(f.stderr.contains("SECRET"), "{}", f.stderr);
        assert!(
            !f.stderr.contains(printed[0]),
            "the key is printed once, on stdout"
        );
        let file = write_secret("psk1", &psk.to_base64()).expect("psk file");
        lab.peer
            .exec(
                "wg",
                &[
                    "set",
                    &tp_if,
                    "peer",
                    &gw_pub,
                    "preshared-key",
                    &file.display().to_string(),
                ],
            )
            .expect("wg set on the far side");
        let _ = std::fs::remove_file(&file);
        handshake_after(
            &ifname,
            t1 + Duration::from_secs(1),
            "a handshake under the first new PSK",
        );
        let age = metric(&lab, age_metric).expect("key age");
        assert!(age < 20.0, "the key age restarted with the rotation: {age}");

        // 2. Theirs first: a key made on the far side, given to us with
        // --psk-file.
        let psk2 = PresharedKey::generate();
        psks.push(psk2.clone());
        let file = write_secret("psk2", &psk2.to_base64()).expect("psk file");
        let t2 = SystemTime::now();
        lab.peer
            .exec(
                "wg",
                &[
                    "set",
                    &tp_if,
                    "peer",
                    &gw_pub,
                    "preshared-key",
                    &file.display().to_string(),
                ],
            )
            .expect("wg set on the far side");
        let f = lab
            .run(&[
                "rotate-psk",
                &ifname,
                &peer_pub,
                "--psk-file",
                &file.display().to_string(),
            ])
            .expect("rotate-psk --psk-file");
        let _ = std::fs::remove_file(&file);
        assert!(f.status.success(), "rotate-psk --psk-file: {}", f.stderr);
        assert!(f.stdout.trim().is_empty(), "a given key is not printed");
        handshake_after(
            &ifname,
            t2 + Duration::from_secs(1),
            "a handshake under the second new PSK",
        );
        let shown = lab
            .peer
            .exec("wg", &["show", &tp_if, "preshared-keys"])
            .expect("wg show");
        assert!(String::from_utf8_lossy(&shown.stdout).contains(psk2.to_base64().as_str()));
        load.join().expect("iperf3 thread")
    });
    let iperf = iperf.expect("iperf3 beside the rotations");
    assert!(iperf.received > 0, "iperf3 moved nothing");
    let (sent, got) = stream.finish().expect("the stream");
    assert!(sent > 1 << 20, "the stream hardly ran: {sent} bytes");
    assert_eq!(got, sent, "bytes lost across the rotations");
    assert_eq!(
        counter(&ifname, "drop_auth_failed"),
        before_auth,
        "packets failed authentication"
    );
    assert_eq!(
        counter(&ifname, "drop_session_expired"),
        before_expired,
        "a session expired"
    );
    eprintln!(
        "rotate-psk twice under load: {sent} bytes, all delivered; iperf3 beside it {:.0} Mbit/s",
        iperf.mbit_s
    );

    // Neither key in the daemon's log.
    let log =
        std::fs::read_to_string(format!("/var/log/wg-appliance/{ifname}.log")).unwrap_or_default();
    assert!(log.contains("handshake completed"), "no daemon log?\n{log}");
    for k in &psks {
        assert!(
            !log.contains(k.to_base64().as_str()),
            "a preshared key in the daemon's log"
        );
    }
}

/// The procedure of docs/operations.md, steps 1-4: a new key for the
/// gateway, listed by the far side as a second peer, switched to over UAPI,
/// then the far side moves the AllowedIPs to it and drops the old peer in
/// one request. Returns the new public key once a handshake under it is
/// done, and when the switch (step 3) was made.
fn rotate_interface_key(lab: &Lab, old_pub: &str) -> (String, SystemTime) {
    let ifname = &lab.ifname;
    let tp_if = &lab.tp.ifname;
    // 1. A new key for the gateway.
    let new_key = PrivateKey::generate();
    let new_pub = new_key.public_key().to_base64();
    let key_file = write_secret("newkey", &new_key.to_base64()).expect("key file");
    // 2. The far side lists it as a second peer: our endpoint, no
    // AllowedIPs and no keepalive yet (a keepalive would start a handshake
    // we cannot answer before step 3, and wireguard-go then waits 5 s,
    // REKEY_TIMEOUT, before it tries again).
    lab.peer
        .exec(
            "wg",
            &[
                "set",
                tp_if,
                "peer",
                &new_pub,
                "endpoint",
                &format!("{GW_WAN}:51820"),
            ],
        )
        .expect("overlapping peer");
    // 3. We switch keys over UAPI: the running session stays up.
    let switched = SystemTime::now();
    lab.gw
        .exec(
            "wg",
            &[
                "set",
                ifname,
                "private-key",
                &key_file.display().to_string(),
            ],
        )
        .expect("wg set private-key");
    let _ = std::fs::remove_file(&key_file);
    // 4. At once, the far side moves the AllowedIPs (and the keepalive) to
    // the new peer and drops the old one, in one request; its traffic
    // starts the handshake with our new key right away.
    let t = SystemTime::now();
    lab.peer
        .exec(
            "wg",
            &[
                "set",
                tp_if,
                "peer",
                &new_pub,
                "allowed-ips",
                &format!("{}/32,10.90.0.0/24", ops_lab::GW_TUN),
                "persistent-keepalive",
                "5",
                "peer",
                old_pub,
                "remove",
            ],
        )
        .expect("move AllowedIPs");
    handshake_after(ifname, t, "a handshake under the new interface key");
    let shown = lab
        .gw
        .exec("wg", &["show", ifname, "public-key"])
        .expect("wg show");
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), new_pub);
    let peers = lab
        .peer
        .exec("wg", &["show", tp_if, "peers"])
        .expect("wg show");
    assert_eq!(
        String::from_utf8_lossy(&peers.stdout).trim(),
        new_pub,
        "the old key is gone on the far side"
    );
    (new_pub, switched)
}

/// Rotates the interface key twice: under a TCP stream whose every byte is
/// checked, then under pings every 10 ms with nothing else on the link,
/// where at most the one reply in flight at the far side's switch may go
/// (under the saturating stream the lab drops ~0.5% of pings to queueing
/// whatever the keys do, so they are counted apart from it). The interface
/// key's age metric restarts at each rotation.
#[test]
fn interface_key_rotation_with_overlapping_peers_keeps_the_stream() {
    if let Some(why) = netns_unavailable() {
        skip(
            "interface_key_rotation_with_overlapping_peers_keeps_the_stream",
            &why,
        );
        return;
    }
    let started = SystemTime::now();
    let lab = Lab::new(LabOpts {
        forwarding: true,
        metrics: Some("127.0.0.1:9586".into()),
        ..LabOpts::default()
    })
    .expect("lab");
    lab.warm_up(Duration::from_secs(20)).expect("tunnel up");
    let old_pub = lab.gw_key.public_key().to_base64();
    let age_metric = "wg_appliance_interface_private_key_age_seconds{";
    let dst: SocketAddr = format!("{SITE}:5401").parse().expect("addr");

    // 1. Under a stream.
    let stream = Stream::start(&lab.lan, &lab.peer, dst).expect("stream");
    thread::sleep(Duration::from_secs(2));
    let age_before = metric(&lab, age_metric).expect("the key age metric");
    assert!(
        age_before >= 2.0 && age_before <= started.elapsed().expect("clock").as_secs_f64(),
        "the key was set when the lab started, {age_before} s ago"
    );
    let (mid_pub, switched) = rotate_interface_key(&lab, &old_pub);
    thread::sleep(Duration::from_secs(2));
    let (sent, got) = stream.finish().expect("the stream");
    assert!(sent > 1 << 20, "the stream hardly ran: {sent} bytes");
    assert_eq!(got, sent, "bytes lost across the key rotation");
    let age_after = metric(&lab, age_metric).expect("the key age metric");
    assert!(
        age_after <= switched.elapsed().expect("clock").as_secs_f64(),
        "the key age restarts at the switch: {age_after} s"
    );

    // 2. Under pings alone.
    let pings = wg_appliance_tests::proc::Bg::spawn(
        &lab.peer,
        "ping",
        &[
            "-c", "600", "-i", "0.01", "-W", "1", "-I", PEER_TUN, LAN_HOST,
        ],
    )
    .expect("ping");
    thread::sleep(Duration::from_secs(2));
    let (new_pub, _) = rotate_interface_key(&lab, &mid_pub);
    let pinged = pings.finish(Duration::from_secs(30)).expect("ping");
    let summary = pinged
        .stdout
        .lines()
        .find(|l| l.contains("packet loss"))
        .unwrap_or_default()
        .to_owned();
    let received: u32 = summary
        .split(", ")
        .find_map(|f| f.strip_suffix(" received"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    eprintln!(
        "interface key rotated twice: under a stream of {sent} bytes, all delivered; under pings every 10 ms: {summary}"
    );
    // The one packet that can go: a reply we sent on the old session in
    // the instant before the far side dropped the old peer (its AllowedIPs
    // then belong to the new one, which has no such session). That is one
    // round trip of our traffic at the switch, inherent to WireGuard's
    // exclusive AllowedIPs; with a ping every 10 ms, at most one.
    assert!(
        received >= 599,
        "{} pings lost across the rotation, more than the one in flight at the switch: {summary}",
        600 - received
    );
    // Traffic both ways under the newest key.
    assert!(
        lab.peer
            .exec(
                "ping",
                &["-c", "3", "-i", "0.2", "-W", "2", "-I", PEER_TUN, LAN_HOST]
            )
            .is_ok(),
        "far side → LAN after the rotations"
    );
    assert_ne!(new_pub, old_pub);
}
