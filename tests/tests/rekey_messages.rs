//! REKEY_AFTER_MESSAGES: the data path owns the send counter, so it tells
//! the control plane (EVENT_REKEY_WANTED) when a session's counter reaches
//! the limit, and the daemon rekeys. 2^60 packets cannot be sent in a test:
//! the test moves the counter of the live session close to the limit
//! through the pinned SESSION_STATE map (the session's slot), then sends a
//! few packets.

use std::{os::unix::fs::MetadataExt as _, time::Duration};

use aya::maps::{Array, HashMap, Map, MapData};
use wg_appliance_tests::{
    netns_unavailable, skip,
    topo::{ping_all, PeerKind, Tunnel, GW_IN4},
};
use wg_ebpf_common::{
    maps::{Session, SessionState},
    REKEY_AFTER_MESSAGES,
};

#[test]
fn reaching_rekey_after_messages_rekeys() {
    if let Some(why) = netns_unavailable() {
        skip("reaching_rekey_after_messages_rekeys", &why);
        return;
    }
    let mut t = Tunnel::new(PeerKind::WireguardGo, false, |_| {}, |_| {}).expect("topology");
    t.warm_up().expect("handshake");
    let ino = std::fs::metadata(format!("/var/run/netns/{}", t.gw.name()))
        .expect("netns")
        .ino();
    let pin = format!("/run/wg-appliance/bpf/{ino}/{}/map_SESSIONS", t.gw_if());
    let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{pin}: {e}"));
    let sessions: HashMap<_, u32, Session> =
        HashMap::try_from(Map::from_map_data(data).expect("map")).expect("hash map");
    let entries: Vec<(u32, Session)> = sessions.iter().map(|r| r.expect("entry")).collect();
    assert_eq!(entries.len(), 1, "one session after the first handshake");
    let (index, s) = entries[0];
    let pin = format!(
        "/run/wg-appliance/bpf/{ino}/{}/map_SESSION_STATE",
        t.gw_if()
    );
    let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{pin}: {e}"));
    let mut state: Array<_, SessionState> =
        Array::try_from(Map::from_map_data(data).expect("map")).expect("array");
    let mut st = state.get(&s.slot, 0).expect("the session's state");
    assert_eq!(st.owner_index, index, "the slot belongs to the session");
    st.send_counter = REKEY_AFTER_MESSAGES - 3;
    state.set(s.slot, st, 0).expect("move the counter");

    // Replies from our side use the session: the third of them crosses.
    assert!(
        ping_all(&t.peer_ns, None, GW_IN4, 5, "0.2"),
        "traffic before the rekey"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now: Vec<u32> = sessions.keys().map(|k| k.expect("key")).collect();
        if now.iter().any(|k| *k != index) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new session after REKEY_AFTER_MESSAGES"
        );
        let _ = ping_all(&t.peer_ns, None, GW_IN4, 1, "0.2");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        ping_all(&t.peer_ns, None, GW_IN4, 5, "0.2"),
        "traffic after the rekey"
    );
    let report = t.stop_gw().expect("stop");
    assert!(
        report.peers[0].handshakes >= 2,
        "handshakes: {}",
        report.peers[0].handshakes
    );
}
