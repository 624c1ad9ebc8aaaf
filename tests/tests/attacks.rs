//! Attacks on the wire against a running gateway, with the tunnel carrying
//! traffic meanwhile: data packets captured from a real peer (wireguard-go)
//! and sent again as they were, with a bad tag, with an unknown receiver
//! index, truncated, oversized, and once their counter has fallen out of the
//! replay window. None is accepted; each is counted under its own reason,
//! exactly; the legitimate inner packet is delivered once.
//!
//! The counts are exact because nothing else on these links produces those
//! reasons: the test compares the gateway's counters before and after each
//! attack through the pinned counter map, which the running daemon keeps
//! (per-CPU sums, read by the test process).

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    os::unix::fs::MetadataExt as _,
    time::Duration,
};

use rand_core_06::OsRng;
use wg_appliance::{
    datapath::Counters,
    keys::PrivateKey,
    noise::{Handshake, Identity, Tai64N},
};
use wg_appliance_tests::{
    proc::Bg,
    require_netns,
    topo::{ping_all, PeerKind, Tunnel, GW_IN4, GW_OUT4, PEER_OUT4},
    wait_until, Netns,
};
use wg_ebpf_common::{maps::REPLAY_WINDOW, Counter};

/// The gateway's counters, read from its pinned per-CPU counter map
/// (`STATS`) and summed over CPUs.
fn counters(t: &Tunnel) -> Counters {
    let ino = std::fs::metadata(format!("/var/run/netns/{}", t.gw.name()))
        .expect("netns")
        .ino();
    let pin = wg_appliance::persist::bpffs_dir()
        .join(ino.to_string())
        .join(t.gw_if())
        .join("map_STATS");
    let data =
        aya::maps::MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    let stats: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(aya::maps::Map::from_map_data(data).expect("map"))
            .expect("per-CPU array");
    Counters(
        Counter::ALL
            .into_iter()
            .map(|c| {
                let v = stats.get(&(c as u32), 0).expect("counter");
                (c, v.iter().sum())
            })
            .collect(),
    )
}

/// Delivered replies: sealed packets that were not keepalives.
fn sent_data(c: &Counters) -> u64 {
    c.get(Counter::TxSent) - c.get(Counter::TxKeepalive)
}

/// UDP payloads of the frames in a pcap file (Ethernet, IPv4, UDP).
fn pcap_udp_payloads(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if bytes.len() < 24 {
        return out;
    }
    let mut off = 24;
    while off + 16 <= bytes.len() {
        let incl = u32::from_le_bytes(bytes[off + 8..off + 12].try_into().expect("4")) as usize;
        let frame = &bytes[off + 16..(off + 16 + incl).min(bytes.len())];
        off += 16 + incl;
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let udp = 14 + ihl;
        if frame.len() < udp + 8 {
            continue;
        }
        out.push(frame[udp + 8..].to_vec());
    }
    out
}

/// Captures the first message of WireGuard type `ty` the peer sends to the
/// gateway while `traffic` runs.
fn capture_type(t: &Tunnel, ty: u8, traffic: impl FnOnce()) -> Vec<u8> {
    capture(t, ty, 1, traffic).remove(0)
}

/// Captures `count` transport data messages the peer sends to the gateway
/// while `traffic` runs.
fn capture_data(t: &Tunnel, count: u32, traffic: impl FnOnce()) -> Vec<Vec<u8>> {
    capture(t, 4, count, traffic)
}

fn capture(t: &Tunnel, ty: u8, count: u32, traffic: impl FnOnce()) -> Vec<Vec<u8>> {
    let file = std::env::temp_dir().join(format!("wgt-attack-{}.pcap", t.gw.name()));
    let f = file.to_str().expect("path");
    let c = count.to_string();
    let bg = Bg::spawn(
        &t.peer_ns,
        "tcpdump",
        &[
            "-i",
            &t.veth.b,
            "-nn",
            "-U",
            "-c",
            &c,
            "-w",
            f,
            &format!("udp and dst port 51820 and udp[8] = {ty}"),
        ],
    )
    .expect("tcpdump");
    bg.wait_stderr("listening on", Duration::from_secs(5))
        .expect("tcpdump ready");
    traffic();
    let fin = bg.finish(Duration::from_secs(10)).expect("capture");
    assert!(fin.status.success(), "tcpdump: {}", fin.stderr);
    let bytes = std::fs::read(&file).expect("pcap");
    let _ = std::fs::remove_file(&file);
    let msgs = pcap_udp_payloads(&bytes);
    assert_eq!(msgs.len(), count as usize, "captured messages of type {ty}");
    msgs
}

/// Sends `msg` to the gateway's listen port from the peer's namespace (from
/// another source port than the peer's own; a message that authenticated
/// would roam the endpoint there, so none may).
fn inject(ns: &Netns, msg: &[u8], fragment: bool) {
    ns.enter(|| {
        let s = UdpSocket::bind((PEER_OUT4, 0)).expect("bind");
        if fragment {
            let v: libc::c_int = libc::IP_PMTUDISC_DONT;
            // SAFETY: setsockopt with a valid fd and an int option.
            let rc = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "IP_MTU_DISCOVER");
        }
        let to: SocketAddr = format!("{GW_OUT4}:51820").parse().expect("addr");
        s.send_to(msg, to).expect("send");
    })
    .expect("enter");
}

fn counter_of(msg: &[u8]) -> u64 {
    u64::from_le_bytes(msg[8..16].try_into().expect("8 bytes"))
}

/// Sends `msg` and waits until `reason` moved by exactly one (and checks
/// that it moved by no more, and that nothing was delivered).
fn attack(t: &Tunnel, what: &str, msg: &[u8], fragment: bool, reason: Counter) {
    let before = counters(t);
    inject(&t.peer_ns, msg, fragment);
    wait_until(Duration::from_secs(3), what, || {
        counters(t).get(reason) > before.get(reason)
    })
    .unwrap_or_else(|e| panic!("{what}: {e:#}; counters now:\n{}", counters(t)));
    // Let anything else it could cause land, then compare exactly.
    std::thread::sleep(Duration::from_millis(200));
    let after = counters(t);
    assert_eq!(
        after.get(reason) - before.get(reason),
        1,
        "{what}: {reason:?} must count it once"
    );
    for other in [
        Counter::DropReplay,
        Counter::DropAuthFailed,
        Counter::DropUnknownIndex,
        Counter::DropBadDataLength,
        Counter::DropSessionExpired,
        Counter::DropAllowedIps,
    ] {
        if other != reason {
            assert_eq!(
                after.get(other),
                before.get(other),
                "{what}: counted under {other:?} too"
            );
        }
    }
}

#[test]
fn data_plane_attacks_are_dropped_and_counted_exactly() {
    wg_appliance_tests::init_logging();
    require_netns!("data_plane_attacks_are_dropped_and_counted_exactly");
    // Reads the BPF path's counters from the pinned STATS map: the
    // attacks go through the BPF path (the fast path counts the same
    // verdicts in its workers; tests/tests/fastpath.rs).
    let mut t = Tunnel::new(
        PeerKind::WireguardGo,
        false,
        |s| s.data_path = wg_appliance::config::DataPathSetting::Bpf,
        |_| {},
    )
    .expect("topology");
    // The peer's handshake initiation, captured as the tunnel comes up.
    let initiation = capture_type(&t, 1, || t.warm_up().expect("handshake"));

    // Three data messages of a ping, captured on the wire.
    let msgs = capture_data(&t, 3, || {
        assert!(ping_all(&t.peer_ns, None, GW_IN4, 3, "0.2"), "ping");
    });
    let first = msgs[0].clone();
    let last = msgs[2].clone();
    let start = counters(&t);

    // 1. The exact packet again: a replay; the echo request inside it is
    //    not delivered a second time (no second reply would be encrypted).
    let tx_before = sent_data(&start);
    attack(&t, "exact duplicate", &last, false, Counter::DropReplay);
    assert_eq!(
        sent_data(&counters(&t)),
        tx_before,
        "a replayed echo request was answered"
    );

    // 2. A bad tag with a counter far ahead: the tag fails, and the replay
    //    window must not move (else every later genuine packet would be
    //    "too old").
    let mut bad = last.clone();
    bad[8..16].copy_from_slice(&(counter_of(&last) + 1_000_000).to_le_bytes());
    let n = bad.len();
    bad[n - 1] ^= 0x55;
    attack(&t, "bad tag", &bad, false, Counter::DropAuthFailed);
    assert!(
        ping_all(&t.peer_ns, None, GW_IN4, 3, "0.2"),
        "the tunnel must carry traffic after a forged packet"
    );

    // 3. An unknown receiver index.
    let mut unknown = last.clone();
    for b in &mut unknown[4..8] {
        *b ^= 0xff;
    }
    attack(
        &t,
        "unknown receiver index",
        &unknown,
        false,
        Counter::DropUnknownIndex,
    );

    // 4. Truncated: a data message of 31 bytes (the minimum is 32).
    attack(
        &t,
        "truncated data message",
        &last[..31],
        false,
        Counter::DropBadDataLength,
    );

    // 5. Oversized: 1,600 bytes on a 1,500-byte link arrive as two IP
    //    fragments, which the classifier passes to the kernel's reassembly
    //    (counted), and the reassembled datagram authenticates nothing.
    let mut big = last.clone();
    big.resize(1600, 0xa5);
    let before = counters(&t);
    inject(&t.peer_ns, &big, true);
    wait_until(Duration::from_secs(3), "oversized: fragments seen", || {
        let c = counters(&t);
        c.get(Counter::PassFragmentFirst) > before.get(Counter::PassFragmentFirst)
            && c.get(Counter::PassFragmentOther) > before.get(Counter::PassFragmentOther)
    })
    .expect("fragments of the oversized message");
    std::thread::sleep(Duration::from_millis(200));
    let after = counters(&t);
    assert_eq!(
        after.get(Counter::PassFragmentFirst) - before.get(Counter::PassFragmentFirst),
        1
    );
    assert_eq!(
        after.get(Counter::PassFragmentOther) - before.get(Counter::PassFragmentOther),
        1
    );
    assert_eq!(
        sent_data(&after),
        sent_data(&before),
        "the oversized message caused a reply"
    );

    // 6. Out of the window: once more than REPLAY_WINDOW genuine packets
    //    have followed it, the first captured packet is too old.
    let flood = (REPLAY_WINDOW + 200).to_string();
    let out = t
        .peer_ns
        .exec(
            "ping",
            &["-f", "-q", "-c", &flood, "-s", "16", "-w", "60", GW_IN4],
        )
        .expect("ping flood through the tunnel");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{flood} packets transmitted")),
        "{text}"
    );
    attack(
        &t,
        "a packet older than the replay window",
        &first,
        false,
        Counter::DropReplay,
    );

    // 7. The peer's initiation sent again (its timestamp is stale now), and
    //    an initiation with a valid mac1 from a key the gateway does not
    //    know: both cost the gateway a DH, and both are refused, each under
    //    its own reason (read when the gateway stops, below).
    inject(&t.peer_ns, &initiation, false);
    let stranger = Identity::new(&PrivateKey::generate());
    let forged = Handshake::new(&stranger, t.gw_public, None)
        .create_initiation(
            &mut OsRng,
            Tai64N::from_system_time(std::time::SystemTime::now()),
            7,
            Duration::ZERO,
        )
        .expect("initiation");
    inject(&t.peer_ns, &forged, false);
    std::thread::sleep(Duration::from_millis(500));

    // The tunnel worked throughout, and no attack was counted as a
    // failure of anything else.
    assert!(ping_all(&t.peer_ns, None, GW_IN4, 3, "0.2"), "final ping");
    let end = counters(&t);
    assert_eq!(
        end.get(Counter::DropReplay) - start.get(Counter::DropReplay),
        2
    );
    assert_eq!(
        end.get(Counter::DropAuthFailed) - start.get(Counter::DropAuthFailed),
        1
    );
    assert_eq!(
        end.get(Counter::DropUnknownIndex) - start.get(Counter::DropUnknownIndex),
        1
    );
    assert_eq!(
        end.get(Counter::DropBadDataLength) - start.get(Counter::DropBadDataLength),
        1
    );
    // 8. Valid-looking data for an expired session: the live sessions'
    //    birth moved back past REJECT_AFTER_TIME through the pinned map
    //    (then put back), and a data message for one of them.
    {
        let ino = std::fs::metadata(format!("/var/run/netns/{}", t.gw.name()))
            .expect("netns")
            .ino();
        let pin = wg_appliance::persist::bpffs_dir()
            .join(ino.to_string())
            .join(t.gw_if())
            .join("map_SESSIONS");
        let data =
            aya::maps::MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
        let mut sessions: aya::maps::HashMap<_, u32, wg_ebpf_common::maps::Session> =
            aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).expect("map"))
                .expect("hash map");
        let live: Vec<(u32, wg_ebpf_common::maps::Session)> =
            sessions.iter().map(|r| r.expect("session")).collect();
        for (k, s) in &live {
            let mut old = *s;
            old.birth_ns = old
                .birth_ns
                .saturating_sub((wg_ebpf_common::REJECT_AFTER_TIME_SECS + 20) * 1_000_000_000);
            sessions.insert(k, old, 0).expect("age the session");
        }
        let mut stale = last.clone();
        stale[8..16].copy_from_slice(&(counter_of(&last) + 2_000_000).to_le_bytes());
        attack(
            &t,
            "data for an expired session",
            &stale,
            false,
            Counter::DropSessionExpired,
        );
        for (k, s) in &live {
            sessions.insert(k, s, 0).expect("restore the session");
        }
    }

    let report = t.stop_gw().expect("stop the gateway");
    let r = &report.handshakes.rejections;
    assert_eq!(
        r.get("replayed_timestamp").copied(),
        Some(1),
        "the replayed initiation: {r:?}"
    );
    assert_eq!(
        r.get("unknown_peer").copied(),
        Some(1),
        "the stranger's initiation: {r:?}"
    );
    assert_eq!(
        report.handshakes.rejected, 2,
        "nothing else was refused: {r:?}"
    );
}
