//! `wg-appliance top` on a real terminal: tmux gives it a pseudo-terminal
//! in the lab's gateway namespace, the test reads the screen with
//! `capture-pane` while a TCP stream starts and stops through the tunnel,
//! and sees the peer's rate move up and come back down; the other panels
//! are there; `q` quits it.

mod ops_lab;

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use ops_lab::{Lab, LabOpts, Stream, SITE};
use wg_appliance_tests::{netns_unavailable, skip, unique_name};

/// A tmux server of our own (`-L`), killed on drop.
struct Tmux {
    sock: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.sock)
            .args(args)
            .output()
            .expect("tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The peer's tx rate on the screen, in bit/s (None before the first rate).
fn tx_rate(screen: &str, short: &str) -> Option<f64> {
    let line = screen.lines().find(|l| l.starts_with(short))?;
    let t: Vec<&str> = line.split_whitespace().collect();
    // key, endpoint, rx value, rx unit, tx value, tx unit, ...
    let (v, unit) = (t.get(4)?, t.get(5)?);
    let v: f64 = v.parse().ok()?;
    let scale = match *unit {
        "Gbit/s" => 1e9,
        "Mbit/s" => 1e6,
        "kbit/s" => 1e3,
        "bit/s" => 1.0,
        _ => return None,
    };
    Some(v * scale)
}

/// Waits (at most `within`) for a screen whose tx rate satisfies `ok`.
fn wait_rate(
    tmux: &Tmux,
    short: &str,
    within: Duration,
    ok: impl Fn(f64) -> bool,
) -> (f64, String) {
    let deadline = Instant::now() + within;
    loop {
        let s = tmux.screen();
        if let Some(r) = tx_rate(&s, short) {
            if ok(r) {
                return (r, s);
            }
        }
        if Instant::now() > deadline {
            panic!("the rate never got there within {within:?}; screen:\n{s}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn top_in_a_terminal_shows_the_rates_moving() {
    if let Some(why) = netns_unavailable() {
        skip("top_in_a_terminal_shows_the_rates_moving", &why);
        return;
    }
    assert!(
        Command::new("tmux").arg("-V").output().is_ok(),
        "tmux is missing. Fix: apt-get install tmux (cargo xtask setup installs it)"
    );
    let lab = Lab::new(LabOpts {
        forwarding: true,
        ..LabOpts::default()
    })
    .expect("lab");
    lab.warm_up(Duration::from_secs(20)).expect("tunnel up");
    let tmux = Tmux {
        sock: unique_name("t"),
    };
    let cmd = format!(
        "ip netns exec {} {} top {}",
        lab.gw.name(),
        lab.bin.display(),
        lab.ifname
    );
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "45",
        &cmd,
    ]);
    assert!(
        out.status.success(),
        "tmux: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let short = lab.peer_key.public_key().short();

    // Idle: keepalives only.
    let (idle, screen) = wait_rate(&tmux, &short, Duration::from_secs(10), |r| r < 1e6);
    for panel in [
        "DROPS",
        "PACKETS PER CPU",
        "HANDSHAKES",
        "data path: bpf",
        "XDP: tunnel native",
    ] {
        assert!(
            screen.contains(panel),
            "no {panel:?} on the screen:\n{screen}"
        );
    }
    assert!(
        screen.contains("completed_"),
        "handshakes by outcome:\n{screen}"
    );

    // A stream from the LAN to the far site: the gateway sends to the peer.
    let dst: SocketAddr = format!("{SITE}:5402").parse().expect("addr");
    let stream = Stream::start(&lab.lan, &lab.peer, dst).expect("stream");
    let (busy, screen) = wait_rate(&tmux, &short, Duration::from_secs(10), |r| r > 10e6);
    eprintln!("top, busy:\n{screen}");
    let cpu_line = screen
        .lines()
        .skip_while(|l| !l.starts_with("PACKETS PER CPU"))
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(
        cpu_line.contains("p/s"),
        "packets per CPU while busy: {cpu_line}\n{screen}"
    );
    // Frame after frame, it keeps moving (a second reading, a second later).
    std::thread::sleep(Duration::from_millis(1200));
    let again = tx_rate(&tmux.screen(), &short).expect("rate");
    assert!(
        again > 10e6 && again != busy,
        "the rate is redrawn: {busy} then {again}"
    );
    let (sent, got) = stream.finish().expect("stream");
    assert_eq!(sent, got);
    // And back down.
    let (after, _) = wait_rate(&tmux, &short, Duration::from_secs(10), |r| r < 1e6);
    eprintln!(
        "top's tx rate for the peer: idle {idle:.0} bit/s, busy {busy:.0} then {again:.0} bit/s, after {after:.0} bit/s"
    );

    // q quits, and the session (which lives as long as top) ends.
    tmux.cmd(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tmux.cmd(&["has-session", "-t", "top"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "top did not quit on q:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn top_without_a_terminal_prints_frames_and_stops_after_n() {
    if let Some(why) = netns_unavailable() {
        skip(
            "top_without_a_terminal_prints_frames_and_stops_after_n",
            &why,
        );
        return;
    }
    let lab = Lab::new(LabOpts {
        forwarding: true,
        ..LabOpts::default()
    })
    .expect("lab");
    lab.warm_up(Duration::from_secs(20)).expect("tunnel up");
    let f = lab
        .run(&["top", &lab.ifname, "-n", "2", "--interval", "0.5"])
        .expect("top -n 2");
    assert!(f.status.success(), "{}", f.stderr);
    assert_eq!(
        f.stdout.matches("wg-appliance top:").count(),
        2,
        "{}",
        f.stdout
    );
    assert!(!f.stdout.contains('\x1b'), "no escapes into a pipe");
    let bad = lab.run(&["top", "nosuchif"]).expect("top");
    assert!(
        !bad.status.success() && bad.stderr.contains("Fix:"),
        "{}",
        bad.stderr
    );
}
