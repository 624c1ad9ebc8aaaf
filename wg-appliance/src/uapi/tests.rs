//! Tests for `uapi`: parsing, formatting, framing, and interop with the
//! real `wg(8)` talking to a fake device socket.

use super::*;

const PUB_HEX: &str = "ca52d89cc93e230a0500824095b8dd4e4dc2377b425b9bbcf3cfb7b104d6afc3";
const PSK_HEX: &str = "82b5036142c1eaab2fbe8a506f56b4483309789e8d8ed8bc4a94fbe53ae9abc3";

fn hex32(s: &str) -> [u8; 32] {
    parse_hex_key(0, HexKeyField::PublicKey, s).unwrap()
}

fn set(text: &str) -> Vec<SetOp> {
    match parse_request(text) {
        Ok(Request::Set(ops)) => ops,
        other => panic!("expected a set, got {other:?}"),
    }
}

fn fail(text: &str) -> UapiError {
    parse_request(text).unwrap_err()
}

#[test]
fn parses_and_answers_appliance() {
    assert_eq!(parse_request("appliance=1\n\n"), Ok(Request::Appliance));
    assert_eq!(
        fail("appliance=1\nx\n\n"),
        UapiError::TrailingData { line: 2 }
    );
    assert_eq!(
        format_appliance(&[("pins", "a\nb".to_owned()), ("data_path", "bpf".to_owned())]),
        "pins=a b\ndata_path=bpf\nerrno=0\n\n"
    );
}

#[test]
fn parses_get() {
    assert_eq!(parse_request("get=1\n\n"), Ok(Request::Get));
    assert_eq!(parse_request("get=1\n"), Ok(Request::Get));
    let e = fail("get=1\nx\n\n");
    assert_eq!(e, UapiError::TrailingData { line: 2 });
    assert_eq!(e.errno(), -libc::EINVAL);
}

#[test]
fn parses_every_set_key() {
    let priv_hex = "a8".repeat(32);
    let text = format!(
        "set=1\nprivate_key={priv_hex}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n\
         public_key={PUB_HEX}\nupdate_only=true\npreshared_key={}\nendpoint=[fd00::1]:51820\n\
         persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.0.0.7/24\n\
         allowed_ip=fd00::1/64\nprotocol_version=1\n\
         public_key={}\nremove=true\nendpoint=192.0.2.1:1\nendpoint=[fe80::1%3]:2\n\n",
        PSK_HEX,
        PUB_HEX.to_uppercase(),
    );
    let ops = set(&text);
    assert_eq!(
        ops,
        vec![
            SetOp::PrivateKey(Some(PrivateKey::from_bytes([0xa8; 32]))),
            SetOp::ListenPort(51820),
            SetOp::FwMark(0),
            SetOp::ReplacePeers,
            SetOp::PublicKey(PublicKey::from_bytes(hex32(PUB_HEX))),
            SetOp::UpdateOnly,
            SetOp::PresharedKey(PresharedKey::from_bytes(hex32(PSK_HEX))),
            SetOp::Endpoint("[fd00::1]:51820".parse().unwrap()),
            SetOp::PersistentKeepaliveInterval(25),
            SetOp::ReplaceAllowedIps,
            SetOp::AllowedIp("10.0.0.0/24".parse().unwrap()),
            SetOp::AllowedIp("fd00::/64".parse().unwrap()),
            SetOp::PublicKey(PublicKey::from_bytes(hex32(PUB_HEX))),
            SetOp::Remove,
            SetOp::Endpoint("192.0.2.1:1".parse().unwrap()),
            SetOp::Endpoint(SocketAddr::V6(SocketAddrV6::new(
                "fe80::1".parse().unwrap(),
                2,
                0,
                3
            ))),
        ]
    );
    // The zero private key removes it; end of text ends a request.
    let zero = "0".repeat(64);
    assert_eq!(
        set(&format!("set=1\nprivate_key={zero}")),
        vec![SetOp::PrivateKey(None)]
    );
    assert_eq!(set("set=1\n\n"), vec![]);
}

#[test]
fn errors_are_typed_with_wireguard_go_errnos() {
    let cases: Vec<(String, UapiError, i32)> = vec![
        ("".into(), UapiError::UnknownOperation, -libc::EINVAL),
        (
            "list=1\n\n".into(),
            UapiError::UnknownOperation,
            -libc::EINVAL,
        ),
        (
            "set=1\nlisten_port\n\n".into(),
            UapiError::Malformed {
                line: 2,
                detail: "line has no `=`",
            },
            -libc::EPROTO,
        ),
        (
            "set=1\nendpoint=1.2.3.4:5\n\n".into(),
            UapiError::UnknownKey {
                line: 2,
                scope: "device",
                key: "endpoint".into(),
                expected: "private_key, listen_port, fwmark, replace_peers or public_key",
            },
            -libc::EINVAL,
        ),
        (
            "set=1\nlisten_port=65536\n\n".into(),
            UapiError::InvalidValue {
                line: 2,
                key: "listen_port",
                value: "65536".into(),
                problem: "not a number in range",
                expected: "a port 0-65535",
            },
            -libc::EINVAL,
        ),
        (
            format!("set=1\npublic_key={PUB_HEX}\nprotocol_version=2\n\n"),
            UapiError::ProtocolVersion {
                line: 3,
                value: "2".into(),
            },
            -libc::EINVAL,
        ),
        (
            "set=1\n\nset=1\n\n".into(),
            UapiError::TrailingData { line: 3 },
            -libc::EINVAL,
        ),
    ];
    for (text, want, errno) in cases {
        let got = fail(&text);
        assert_eq!(got, want, "{text:?}");
        assert_eq!(got.errno(), errno, "{text:?}");
        assert!(got.to_string().contains("expected") || got.to_string().contains("Fix"));
    }
    let bad_values = [
        "set=1\nfwmark=0x10\n",
        "set=1\nfwmark=-1\n",
        "set=1\nlisten_port=+1\n",
        "set=1\nlisten_port= 1\n",
        "set=1\nreplace_peers=1\n",
        "set=1\nreplace_peers=True\n",
    ];
    for t in bad_values {
        assert!(matches!(fail(t), UapiError::InvalidValue { .. }), "{t:?}");
    }
    let p = format!("set=1\npublic_key={PUB_HEX}\n");
    for line in [
        "remove=false",
        "update_only=yes",
        "endpoint=fd00::1:51820",
        "endpoint=[fd00::1]",
        "endpoint=[fe80::1%eth0]:1",
        "endpoint=example.com:51820",
        "persistent_keepalive_interval=65536",
        "allowed_ip=10.0.0.1",
        "allowed_ip=10.0.0.0/33",
        "replace_allowed_ips=false",
    ] {
        let e = fail(&format!("{p}{line}\n\n"));
        assert!(
            matches!(e, UapiError::InvalidValue { line: 3, .. }),
            "{line}: {e:?}"
        );
        assert_eq!(e.errno(), IPC_ERROR_INVALID);
    }
    // Device keys after a peer started are peer keys, and unknown.
    assert!(matches!(
        fail(&format!("{p}listen_port=1\n\n")),
        UapiError::UnknownKey { scope: "peer", .. }
    ));
}

#[test]
fn hex_keys_are_exact_and_never_echoed() {
    let secret = "ab".repeat(31) + "zz";
    let e = fail(&format!("set=1\nprivate_key={secret}\n\n"));
    assert_eq!(
        e,
        UapiError::BadHexKey {
            line: 2,
            field: HexKeyField::PrivateKey,
            problem: HexProblem::NotHex { position: 62 }
        }
    );
    let msg = e.to_string();
    assert_eq!(
        msg,
        "line 2: private_key has a non-hex character at position 62 (expected exactly 64 hex \
         digits). Fix: encode the 32-byte key in hex, as `wg` does"
    );
    assert!(!msg.contains("abab"));
    for (v, problem) in [
        ("ab".repeat(31), HexProblem::WrongLength(62)),
        ("ab".repeat(33), HexProblem::WrongLength(66)),
        (String::new(), HexProblem::WrongLength(0)),
        (
            format!(" {}", &PUB_HEX[1..]),
            HexProblem::NotHex { position: 0 },
        ),
    ] {
        let e = fail(&format!("set=1\npublic_key={v}\n\n"));
        assert_eq!(
            e,
            UapiError::BadHexKey {
                line: 2,
                field: HexKeyField::PublicKey,
                problem
            }
        );
    }
    // Multi-byte characters: counted as characters, never sliced mid-char.
    let e = fail(&format!("set=1\npublic_key={}\n\n", "é".repeat(32)));
    assert!(matches!(e, UapiError::BadHexKey { .. }));
    assert!(matches!(
        fail(&format!(
            "set=1\npublic_key={PUB_HEX}\npreshared_key=00\n\n"
        )),
        UapiError::BadHexKey {
            field: HexKeyField::PresharedKey,
            ..
        }
    ));
}

fn sample_snapshot() -> DeviceSnapshot {
    DeviceSnapshot {
        private_key: Some(PrivateKey::from_bytes([0x11; 32])),
        listen_port: 51820,
        fwmark: 0x1234,
        peers: vec![
            PeerSnapshot {
                public_key: PublicKey::from_bytes([0x22; 32]),
                preshared_key: Some(PresharedKey::from_bytes([0x33; 32])),
                endpoint: Some("192.0.2.7:51821".parse().unwrap()),
                allowed_ips: vec!["10.0.0.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()],
                persistent_keepalive: 25,
                last_handshake: Some(HandshakeTime {
                    sec: 1_700_000_000,
                    nsec: 5,
                }),
                rx_bytes: 100,
                tx_bytes: 200,
            },
            PeerSnapshot {
                public_key: PublicKey::from_bytes([0x44; 32]),
                preshared_key: None,
                endpoint: Some("[fd00::9]:7".parse().unwrap()),
                allowed_ips: vec![],
                persistent_keepalive: 0,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
            },
        ],
    }
}

#[test]
fn format_get_is_exact() {
    let want = format!(
        "private_key={}\nlisten_port=51820\nfwmark=4660\n\
         public_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=192.0.2.7:51821\n\
         last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\ntx_bytes=200\n\
         rx_bytes=100\npersistent_keepalive_interval=25\nallowed_ip=10.0.0.0/24\n\
         allowed_ip=fd00::/64\n\
         public_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=[fd00::9]:7\n\
         last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n\
         persistent_keepalive_interval=0\nerrno=0\n\n",
        "11".repeat(32),
        "22".repeat(32),
        "33".repeat(32),
        "44".repeat(32),
        "00".repeat(32),
    );
    assert_eq!(format_get(&sample_snapshot()), want);
    assert_eq!(format_get(&DeviceSnapshot::default()), "errno=0\n\n");
    assert_eq!(format_errno(0), "errno=0\n\n");
    assert_eq!(format_errno(IPC_ERROR_PORT_IN_USE), "errno=-98\n\n");
    let mapped: SocketAddr = "[::ffff:192.0.2.1]:5".parse().unwrap();
    assert_eq!(format_endpoint(mapped), "192.0.2.1:5");
    let t = UNIX_EPOCH + Duration::new(12, 34);
    assert_eq!(HandshakeTime::from(t), HandshakeTime { sec: 12, nsec: 34 });
}

#[test]
fn debug_of_snapshot_hides_secrets() {
    let d = format!("{:?}", sample_snapshot());
    assert!(
        !d.contains("17, 17") && d.contains("PrivateKey(hidden)"),
        "{d}"
    );
}

#[test]
fn reader_frames_byte_by_byte_and_keeps_the_rest() {
    let stream = format!("get=1\n\nset=1\npublic_key={PUB_HEX}\nallowed_ip=10.0.0.0/8\n\nget=1\n");
    let mut r = RequestReader::new();
    let mut got = Vec::new();
    for b in stream.as_bytes() {
        r.push(std::slice::from_ref(b)).unwrap();
        while let Some(req) = r.next_request().unwrap() {
            got.push(req);
        }
    }
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], Request::Get);
    assert!(matches!(&got[1], Request::Set(ops) if ops.len() == 2));
    assert_eq!(r.pending(), "get=1\n".len());
    r.push(b"\n").unwrap();
    assert_eq!(r.next_request(), Ok(Some(Request::Get)));
    assert_eq!(r.next_request(), Ok(None));
    assert_eq!(r.pending(), 0);
    // Two requests in one chunk.
    r.push(b"get=1\n\nget=1\n\n").unwrap();
    assert_eq!(r.next_raw(), Ok(Some("get=1\n\n".to_string())));
    assert_eq!(r.next_raw(), Ok(Some("get=1\n\n".to_string())));
    // A lone empty line is an (invalid) empty request.
    r.push(b"\n").unwrap();
    assert_eq!(r.next_request(), Err(UapiError::UnknownOperation));
}

#[test]
fn reader_caps_size_and_rejects_non_utf8() {
    let mut r = RequestReader::with_limit(64);
    r.push(b"set=1\n").unwrap();
    let e = r.push(&[b'a'; 100]).unwrap_err();
    assert_eq!(e, UapiError::TooLarge { limit: 64 });
    assert!(e.closes_connection());
    assert_eq!(e.errno(), IPC_ERROR_IO);
    assert_eq!(r.pending(), 0);
    // The default limit is MAX_REQUEST_LEN.
    let mut r = RequestReader::new();
    let chunk = vec![b'x'; 64 * 1024];
    let mut failed = false;
    for _ in 0..=(MAX_REQUEST_LEN / chunk.len()) {
        if r.push(&chunk).is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed);
    let mut r = RequestReader::new();
    r.push(b"set=1\n\xff\n\n").unwrap();
    assert_eq!(r.next_raw(), Err(UapiError::NotUtf8));
}

#[test]
fn random_input_never_panics() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::default();
    let line = prop_oneof![
        Just("set=1".to_string()),
        Just("get=1".to_string()),
        Just(String::new()),
        Just(format!("public_key={PUB_HEX}")),
        "(private_key|listen_port|fwmark|replace_peers|public_key|remove|update_only|\
         preshared_key|endpoint|persistent_keepalive_interval|replace_allowed_ips|allowed_ip|\
         protocol_version)=[ -~]{0,70}",
        "[ -~]{0,40}",
        "\\PC{0,20}",
    ];
    let strat = (proptest::collection::vec(line, 0..10), 1usize..9);
    runner
        .run(&strat, |(lines, chunk)| {
            let text = lines.join("\n");
            let _ = parse_request(&text);
            let mut r = RequestReader::with_limit(256);
            for c in text.as_bytes().chunks(chunk) {
                if r.push(c).is_err() {
                    break;
                }
                while let Ok(Some(_)) = r.next_request() {}
            }
            Ok(())
        })
        .unwrap();
    let bytes = proptest::collection::vec(any::<u8>(), 0..300);
    runner
        .run(&bytes, |b| {
            let mut r = RequestReader::with_limit(128);
            let _ = r.push(&b);
            let _ = r.next_request();
            Ok(())
        })
        .unwrap();
}

/// `wg(8)` against a fake device: a UNIX socket server in a thread that
/// frames with `RequestReader`, records what `wg` sent, and answers.
#[cfg(target_os = "linux")]
mod interop {
    use super::*;
    use crate::config;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::Instant;

    const SOCK_DIR: &str = "/var/run/wireguard";
    static NEXT: AtomicUsize = AtomicUsize::new(0);

    type Answer = Box<dyn Fn(&Result<Request, UapiError>) -> String + Send>;

    /// The fake device. Dropping it stops the thread and removes the
    /// socket, also when the test failed.
    struct FakeDevice {
        name: String,
        path: PathBuf,
        stop: Arc<AtomicBool>,
        seen: Arc<Mutex<Vec<String>>>,
        thread: Option<JoinHandle<()>>,
    }

    impl FakeDevice {
        /// `None` (the test is skipped, loudly and counted as such) only
        /// when not root: the socket directory is root's. Anything else
        /// that stops the fake device fails the test.
        fn start(test: &str, answer: Answer) -> Option<Self> {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                skip(
                    test,
                    "needs root (the UAPI socket directory /var/run/wireguard)",
                );
                return None;
            }
            assert!(
                Command::new("wg").arg("--version").output().is_ok(),
                "wg(8) is not installed. Fix: cargo xtask setup (installs wireguard-tools)"
            );
            // On a fresh boot nothing has created the directory yet.
            std::fs::create_dir_all(SOCK_DIR)
                .unwrap_or_else(|e| panic!("creating {SOCK_DIR}: {e}"));
            // Names must fit IFNAMSIZ (15 characters).
            let name = format!(
                "wgtu{}{}",
                std::process::id() % 10_000_000,
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = Path::new(SOCK_DIR).join(format!("{name}.sock"));
            let listener = UnixListener::bind(&path)
                .unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
            let stop = Arc::new(AtomicBool::new(false));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let (stop2, seen2) = (stop.clone(), seen.clone());
            let thread = std::thread::spawn(move || serve(listener, &stop2, &seen2, answer));
            Some(FakeDevice {
                name,
                path,
                stop,
                seen,
                thread: Some(thread),
            })
        }

        fn requests(&self) -> Vec<String> {
            self.seen.lock().map(|s| s.clone()).unwrap_or_default()
        }

        fn wg(&self, args: &[&str]) -> Output {
            let args: Vec<&str> = args
                .iter()
                .map(|a| if *a == "IFACE" { self.name.as_str() } else { a })
                .collect();
            run_wg(&args)
        }
    }

    impl Drop for FakeDevice {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            // Wake the accept loop so it sees the flag.
            let _ = UnixStream::connect(&self.path);
            let _ = std::fs::remove_file(&self.path);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn serve(listener: UnixListener, stop: &AtomicBool, seen: &Mutex<Vec<String>>, answer: Answer) {
        for conn in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok(mut s) = conn else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = RequestReader::new();
            let mut buf = [0u8; 4096];
            // `wg` first probes with a connection that sends nothing.
            'conn: loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if reader.push(&buf[..n]).is_err() {
                    break;
                }
                loop {
                    match reader.next_raw() {
                        Ok(Some(raw)) => {
                            let reply = answer(&parse_request(&raw));
                            if let Ok(mut v) = seen.lock() {
                                v.push(raw);
                            }
                            if s.write_all(reply.as_bytes()).is_err() {
                                break 'conn;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => break 'conn,
                    }
                }
            }
        }
    }

    /// A loud skip, counted by `cargo xtask test` through
    /// `WG_TEST_SKIP_LOG` (the same file the namespace tests write); a skip
    /// that cannot be recorded fails.
    fn skip(test: &str, why: &str) {
        eprintln!("\n!!!! SKIPPED {test}: {why} !!!!\n");
        if let Some(path) = std::env::var_os("WG_TEST_SKIP_LOG") {
            use std::io::Write as _;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| writeln!(f, "{test}\t{why}"))
                .unwrap_or_else(|e| panic!("cannot record the skip of {test}: {e}"));
        }
    }

    /// Run `wg` with a deadline so a protocol bug fails the test instead
    /// of hanging it.
    fn run_wg(args: &[&str]) -> Output {
        let mut child = Command::new("wg")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wg");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("wait wg").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("wg {args:?} timed out");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait_with_output().expect("wg output")
    }

    /// A temporary file removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(tag: &str, text: &str) -> Self {
            use std::os::unix::fs::OpenOptionsExt;
            let path = std::env::temp_dir().join(format!(
                "wg-appliance-uapi-{}-{}-{tag}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .expect("create temp file");
            f.write_all(text.as_bytes()).expect("write temp file");
            TempFile(path)
        }
        fn path(&self) -> &str {
            self.0.to_str().expect("utf-8 temp path")
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn ok_answer() -> Answer {
        Box::new(|req| match req {
            Ok(Request::Get) => format_get(&DeviceSnapshot::default()),
            Ok(Request::Set(_)) => format_errno(0),
            // wg(8) never asks this.
            Ok(Request::Appliance) => format_errno(IPC_ERROR_INVALID),
            Err(e) => format_errno(e.errno()),
        })
    }

    fn stdout(o: &Output) -> String {
        assert!(
            o.status.success(),
            "wg failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    #[test]
    fn wg_show_dump_prints_our_get() {
        let snap = sample_snapshot();
        let answer = snap.clone();
        let Some(dev) = FakeDevice::start(
            "wg_show_dump_prints_our_get",
            Box::new(move |req| match req {
                Ok(Request::Get) => format_get(&answer),
                _ => format_errno(IPC_ERROR_INVALID),
            }),
        ) else {
            return;
        };
        let out = stdout(&dev.wg(&["show", "IFACE", "dump"]));
        let k = |b: [u8; 32]| PrivateKey::from_bytes(b).to_base64().to_string();
        let p = |b: [u8; 32]| PublicKey::from_bytes(b).to_base64();
        let priv_key = PrivateKey::from_bytes([0x11; 32]);
        let want = format!(
            "{}\t{}\t51820\t0x1234\n\
             {}\t{}\t192.0.2.7:51821\t10.0.0.0/24,fd00::/64\t1700000000\t100\t200\t25\n\
             {}\t(none)\t[fd00::9]:7\t(none)\t0\t0\t0\toff\n",
            k([0x11; 32]),
            priv_key.public_key().to_base64(),
            p([0x22; 32]),
            k([0x33; 32]),
            p([0x44; 32]),
        );
        assert_eq!(out, want);
        assert_eq!(dev.requests(), vec!["get=1\n\n".to_string()]);

        // And the human form shows the same facts.
        let out = stdout(&dev.wg(&["show", "IFACE", "listen-port"]));
        assert_eq!(out, "51820\n");
    }

    #[test]
    fn wg_set_sends_what_we_parse() {
        let Some(dev) = FakeDevice::start("wg_set_sends_what_we_parse", ok_answer()) else {
            return;
        };
        let key = PrivateKey::from_bytes([0x55; 32]);
        let key_file = TempFile::new("key", &key.to_base64());
        let psk_file = TempFile::new("psk", &PresharedKey::from_bytes([0x66; 32]).to_base64());
        let peer = PublicKey::from_bytes([0x77; 32]).to_base64();
        let o = dev.wg(&[
            "set",
            "IFACE",
            "listen-port",
            "1234",
            "fwmark",
            "0x10",
            "private-key",
            key_file.path(),
            "peer",
            &peer,
            "preshared-key",
            psk_file.path(),
            "endpoint",
            "[fd00::1]:51820",
            "persistent-keepalive",
            "25",
            "allowed-ips",
            "10.0.0.0/24,fd00::/64",
        ]);
        stdout(&o);
        let o = dev.wg(&["set", "IFACE", "peer", &peer, "remove"]);
        stdout(&o);
        let reqs = dev.requests();
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        assert_eq!(
            set(&reqs[0]),
            vec![
                SetOp::PrivateKey(Some(key.clone())),
                SetOp::ListenPort(1234),
                SetOp::FwMark(0x10),
                SetOp::PublicKey(PublicKey::from_bytes([0x77; 32])),
                SetOp::PresharedKey(PresharedKey::from_bytes([0x66; 32])),
                SetOp::Endpoint("[fd00::1]:51820".parse().unwrap()),
                SetOp::PersistentKeepaliveInterval(25),
                SetOp::ReplaceAllowedIps,
                SetOp::AllowedIp("10.0.0.0/24".parse().unwrap()),
                SetOp::AllowedIp("fd00::/64".parse().unwrap()),
            ]
        );
        assert_eq!(
            set(&reqs[1]),
            vec![
                SetOp::PublicKey(PublicKey::from_bytes([0x77; 32])),
                SetOp::Remove
            ]
        );
    }

    #[test]
    fn wg_reports_our_errno() {
        let Some(dev) = FakeDevice::start(
            "wg_reports_our_errno",
            Box::new(|req| match req {
                Ok(Request::Set(_)) => format_errno(IPC_ERROR_PORT_IN_USE),
                _ => format_errno(IPC_ERROR_INVALID),
            }),
        ) else {
            return;
        };
        let o = dev.wg(&["set", "IFACE", "listen-port", "1"]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("Address already in use"), "{err}");
    }

    #[test]
    fn wg_setconf_of_our_saved_config() {
        let Some(dev) = FakeDevice::start("wg_setconf_of_our_saved_config", ok_answer()) else {
            return;
        };
        // A config written by `to_wg_quick` (wg keys only, so that plain
        // `wg setconf` accepts it) must reach us as the same settings.
        let mut cfg = config::Config::default();
        cfg.interface.private_key = Some(PrivateKey::from_bytes([0x12; 32]));
        cfg.interface.listen_port = Some(51820);
        cfg.interface.fwmark = Some(0xca6c);
        let mut p1 = config::PeerConfig::new(PublicKey::from_bytes([0x34; 32]));
        p1.preshared_key = Some(PresharedKey::from_bytes([0x56; 32]));
        p1.allowed_ips = vec!["10.1.0.0/16".parse().unwrap(), "fd01::/48".parse().unwrap()];
        p1.endpoint = Some("192.0.2.9:51820".parse().unwrap());
        p1.persistent_keepalive = Some(15);
        p1.friendly_name = Some("branch office".into());
        let p2 = config::PeerConfig::new(PublicKey::from_bytes([0x78; 32]));
        cfg.peers = vec![p1, p2];
        let file = TempFile::new("conf", &cfg.to_wg_quick());
        stdout(&dev.wg(&["setconf", "IFACE", file.path()]));
        let reqs = dev.requests();
        assert_eq!(reqs.len(), 1, "{reqs:?}");
        assert_eq!(
            set(&reqs[0]),
            vec![
                SetOp::PrivateKey(Some(PrivateKey::from_bytes([0x12; 32]))),
                SetOp::ListenPort(51820),
                SetOp::FwMark(0xca6c),
                SetOp::ReplacePeers,
                SetOp::PublicKey(PublicKey::from_bytes([0x34; 32])),
                SetOp::PresharedKey(PresharedKey::from_bytes([0x56; 32])),
                SetOp::Endpoint("192.0.2.9:51820".parse().unwrap()),
                SetOp::PersistentKeepaliveInterval(15),
                SetOp::ReplaceAllowedIps,
                SetOp::AllowedIp("10.1.0.0/16".parse().unwrap()),
                SetOp::AllowedIp("fd01::/48".parse().unwrap()),
                SetOp::PublicKey(PublicKey::from_bytes([0x78; 32])),
                SetOp::ReplaceAllowedIps,
            ]
        );
    }
}
