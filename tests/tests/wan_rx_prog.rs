//! `wan_rx` as a program: crafted frames through BPF_PROG_TEST_RUN, one per
//! header shape and per drop reason, asserting the verdict, the bytes that
//! leave, and that exactly the expected counter moved.

use wg_appliance::datapath::{test_run::run_xdp, Counters, Datapath};
use wg_appliance_tests::{
    netns_unavailable,
    packet::{wg_message, Frame, Ip},
    skip,
};
use wg_ebpf_common::Counter::{self, *};

const PORT: u16 = 51820;
const PASS: u32 = 2;
const DROP: u32 = 1;

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    counter: Counter,
}

fn case(name: &'static str, frame: Frame, counter: Counter) -> Case {
    let verdict = if counter.is_drop() { DROP } else { PASS };
    Case {
        name,
        frame: frame.build(),
        verdict,
        counter,
    }
}

fn v4(payload: Vec<u8>) -> Frame {
    Frame::udp(Ip::v4(), PORT, payload)
}

fn v6(payload: Vec<u8>) -> Frame {
    Frame::udp(Ip::v6(), PORT, payload)
}

fn cases() -> Vec<Case> {
    let init = || wg_message(1, [0; 3], 148);
    let data = |len| wg_message(4, [0; 3], len);
    let mut c = vec![
        case("v4 initiation", v4(init()), PassHandshakeInitiation),
        case(
            "v4 response",
            v4(wg_message(2, [0; 3], 92)),
            PassHandshakeResponse,
        ),
        case(
            "v4 cookie reply",
            v4(wg_message(3, [0; 3], 64)),
            PassCookieReply,
        ),
        case(
            "v4 keepalive (data, 32 bytes)",
            v4(data(32)),
            PassTransportData,
        ),
        case("v4 data 1440", v4(data(1440)), PassTransportData),
        case("v6 initiation", v6(init()), PassHandshakeInitiation),
        case("v6 data 1440", v6(data(1440)), PassTransportData),
        case(
            "v4 other port",
            Frame::udp(Ip::v4(), 53, init()),
            PassNotWireguard,
        ),
        case(
            "v6 other port",
            Frame::udp(Ip::v6(), 53, init()),
            PassNotWireguard,
        ),
        case(
            "v4 tcp to port",
            Frame {
                proto: 6,
                ..v4(init())
            },
            PassNotWireguard,
        ),
        case(
            "v6 tcp to port",
            Frame {
                proto: 6,
                ..v6(init())
            },
            PassNotWireguard,
        ),
        case("bad type 0", v4(wg_message(0, [0; 3], 148)), DropBadType),
        case("bad type 5", v4(wg_message(5, [0; 3], 32)), DropBadType),
        case(
            "bad type 255 on v6",
            v6(wg_message(255, [0; 3], 64)),
            DropBadType,
        ),
        case(
            "reserved byte 1",
            v4(wg_message(1, [1, 0, 0], 148)),
            DropBadReserved,
        ),
        case(
            "reserved byte 3",
            v6(wg_message(4, [0, 0, 0x80], 32)),
            DropBadReserved,
        ),
        case(
            "initiation 147",
            v4(wg_message(1, [0; 3], 147)),
            DropBadHandshakeLength,
        ),
        case(
            "initiation 149",
            v4(wg_message(1, [0; 3], 149)),
            DropBadHandshakeLength,
        ),
        case(
            "response 91",
            v4(wg_message(2, [0; 3], 91)),
            DropBadHandshakeLength,
        ),
        case(
            "cookie 80",
            v6(wg_message(3, [0; 3], 80)),
            DropBadHandshakeLength,
        ),
        case("data 16", v4(data(16)), DropBadDataLength),
        case("data 31", v4(data(31)), DropBadDataLength),
        case(
            "data 1452, unpadded full-MTU packet",
            v4(data(1452)),
            PassTransportData,
        ),
        case("data 33", v6(data(33)), PassTransportData),
        case("payload 3 bytes", v4(vec![1, 0, 0]), DropTooShort),
        case("empty payload", v6(vec![]), DropTooShort),
        case(
            "udp length beyond packet",
            Frame {
                udp_len: Some(8 + 200),
                ..v4(init())
            },
            DropBadHeader,
        ),
        case(
            "udp length below header",
            Frame {
                udp_len: Some(4),
                ..v4(init())
            },
            DropBadHeader,
        ),
    ];
    // VLAN, IPv4 options, IPv6 extension headers.
    c.push(case(
        "802.1Q v4 initiation",
        Frame {
            vlan: Some(42),
            ..v4(init())
        },
        PassHandshakeInitiation,
    ));
    c.push(case(
        "802.1Q v6 data",
        Frame {
            vlan: Some(7),
            ..v6(data(64))
        },
        PassTransportData,
    ));
    c.push(case(
        "802.1Q bad type",
        Frame {
            vlan: Some(7),
            ..v4(wg_message(9, [0; 3], 32))
        },
        DropBadType,
    ));
    for opt_len in [4usize, 12, 40] {
        let ip = Ip::V4 {
            options: vec![1; opt_len],
            frag: 0,
        };
        c.push(case(
            "v4 with options, data",
            Frame::udp(ip.clone(), PORT, data(48)),
            PassTransportData,
        ));
        c.push(case(
            "v4 with options, bad reserved",
            Frame::udp(ip, PORT, wg_message(2, [0, 1, 0], 92)),
            DropBadReserved,
        ));
    }
    let ext6 = Ip::V6 {
        ext: vec![(0, 8), (60, 24)],
        frag: None,
    };
    c.push(case(
        "v6 hop-by-hop + dst options, response",
        Frame::udp(ext6.clone(), PORT, wg_message(2, [0; 3], 92)),
        PassHandshakeResponse,
    ));
    c.push(case(
        "v6 ext headers, short data",
        Frame::udp(ext6, PORT, data(16)),
        DropBadDataLength,
    ));
    // Fragments: handled deliberately, never parsed as if whole.
    let mf = Ip::V4 {
        options: vec![],
        frag: 0x2000,
    };
    c.push(case(
        "v4 first fragment to port",
        Frame::udp(mf.clone(), PORT, data(1000)),
        PassFragmentFirst,
    ));
    c.push(case(
        "v4 first fragment, bad framing, not judged",
        Frame::udp(mf.clone(), PORT, wg_message(9, [1; 3], 10)),
        PassFragmentFirst,
    ));
    c.push(case(
        "v4 first fragment to other port",
        Frame::udp(mf, 53, data(1000)),
        PassNotWireguard,
    ));
    let later = Ip::V4 {
        options: vec![],
        frag: 185,
    };
    c.push(case(
        "v4 later fragment",
        Frame::udp(later, PORT, data(64)),
        PassFragmentOther,
    ));
    let f6_first = Ip::V6 {
        ext: vec![],
        frag: Some(0x0001),
    };
    c.push(case(
        "v6 first fragment to port",
        Frame::udp(f6_first, PORT, data(64)),
        PassFragmentFirst,
    ));
    let f6_later = Ip::V6 {
        ext: vec![(0, 8)],
        frag: Some(1480 | 1),
    };
    c.push(case(
        "v6 later fragment after hop-by-hop",
        Frame::udp(f6_later, PORT, data(64)),
        PassFragmentOther,
    ));
    // Broken headers.
    let mut bad_ihl = v4(init()).build();
    bad_ihl[14] = 0x44; // IHL 4: below the 20-byte minimum
    c.push(Case {
        name: "v4 ihl 4",
        frame: bad_ihl,
        verdict: DROP,
        counter: DropBadHeader,
    });
    let mut cut = v4(init()).build();
    cut.truncate(14 + 20 + 4); // ends right after the destination port
    c.push(Case {
        name: "cut after udp port",
        frame: cut,
        verdict: DROP,
        counter: DropTruncated,
    });
    let mut cut_ip = v4(init()).build();
    cut_ip.truncate(14 + 10); // inside the IPv4 header: not known to be ours
    c.push(Case {
        name: "cut inside ipv4 header",
        frame: cut_ip,
        verdict: PASS,
        counter: PassNotWireguard,
    });
    let mut arp = v4(init()).build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    c.push(Case {
        name: "arp",
        frame: arp,
        verdict: PASS,
        counter: PassNotWireguard,
    });
    c
}

#[test]
fn wan_rx_verdicts_and_counters() {
    if let Some(why) = netns_unavailable() {
        skip("wan_rx_verdicts_and_counters", &why);
        return;
    }
    let mut dp = Datapath::load(PORT).expect("load the BPF programs");
    let fd = dp.wan_rx_fd().expect("program fd");
    let mut failures = Vec::new();
    for case in cases() {
        let before = dp.counters().expect("read counters");
        let out = run_xdp(fd, &case.frame, 1).expect("BPF_PROG_TEST_RUN");
        let moved = dp.counters().expect("read counters").since(&before);
        let mut expected = Counters::default();
        expected.0.insert(RxPackets, 1);
        expected.0.insert(case.counter, 1);
        let moved_nonzero: Vec<_> = moved.0.iter().filter(|(_, v)| **v != 0).collect();
        let expected_nonzero: Vec<_> = expected.0.iter().collect();
        if out.verdict != case.verdict || moved_nonzero != expected_nonzero {
            failures.push(format!(
                "{}: verdict {} (want {}), counters moved {:?} (want {:?})",
                case.name, out.verdict, case.verdict, moved_nonzero, expected_nonzero
            ));
        }
        if out.verdict == PASS && out.data != case.frame {
            failures.push(format!("{}: passed frame was modified", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "wan_rx mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn unconfigured_port_passes_everything() {
    if let Some(why) = netns_unavailable() {
        skip("unconfigured_port_passes_everything", &why);
        return;
    }
    let mut dp = Datapath::load(0).expect("load");
    let fd = dp.wan_rx_fd().expect("fd");
    for case in cases() {
        let out = run_xdp(fd, &case.frame, 1).expect("test run");
        assert_eq!(
            out.verdict, PASS,
            "{} dropped with no port configured",
            case.name
        );
    }
    let c = dp.counters().expect("counters");
    assert_eq!(c.get(PassNotWireguard), c.get(RxPackets));
}

#[test]
fn handshakes_are_rate_limited_per_source() {
    if let Some(why) = netns_unavailable() {
        skip("handshakes_are_rate_limited_per_source", &why);
        return;
    }
    let mut dp = Datapath::load(PORT).expect("load");
    dp.set_handshake_rate(5).expect("rate");
    let fd = dp.wan_rx_fd().expect("fd");
    let init = v4(wg_message(1, [0; 3], 148)).build();
    let verdicts: Vec<u32> = (0..8)
        .map(|_| run_xdp(fd, &init, 1).expect("run").verdict)
        .collect();
    assert_eq!(
        verdicts,
        [PASS, PASS, PASS, PASS, PASS, DROP, DROP, DROP],
        "5 per second from one source"
    );
    let c = dp.counters().expect("counters");
    assert_eq!(c.get(DropHandshakeRateLimited), 3);
    assert_eq!(c.get(PassHandshakeInitiation), 5);
    // Another source is not affected; transport data is not limited.
    let mut other = init.clone();
    other[14 + 12] = 10;
    other[14 + 15] = 77;
    assert_eq!(run_xdp(fd, &other, 1).expect("run").verdict, PASS);
    let data = v4(wg_message(4, [0; 3], 64)).build();
    for _ in 0..10 {
        assert_eq!(run_xdp(fd, &data, 1).expect("run").verdict, PASS);
    }
}
