//! `top [<ifname>]`: a live console view, redrawn every second as iftop or
//! bmon do: per-peer rates, totals and latest handshake; drops by reason;
//! packets per CPU; the data path and XDP modes; handshakes by outcome.
//!
//! It reads what /metrics shows, from the daemon's UAPI socket (`get` and
//! `appliance=1`), so it needs nothing but this binary and works over ssh.
//! Plain ANSI escapes, no curses: the screen is cleared and redrawn, the
//! cursor hidden, the terminal put in non-canonical mode for the `q` key
//! and restored on every way out (q, Ctrl-C, SIGTERM, an error). Without a
//! terminal (a pipe), frames follow one another without escapes.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{IsTerminal as _, Read as _, Write as _},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _};
use wg_appliance::{
    config,
    keys::PublicKey,
    uapi_client::{ApplianceInfo, Client, DeviceInfo},
};

/// `# friendly_name`s by public key.
pub type Names = BTreeMap<PublicKey, String>;

/// The friendly names of /etc/wireguard/<ifname>.conf, when it is there.
fn names_of(ifname: &str) -> Names {
    config::load(std::path::Path::new(&format!(
        "/etc/wireguard/{ifname}.conf"
    )))
    .map(|c| {
        c.peers
            .into_iter()
            .filter_map(|p| Some((p.public_key, p.friendly_name?)))
            .collect()
    })
    .unwrap_or_default()
}

/// One look at one interface.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub dev: DeviceInfo,
    pub app: ApplianceInfo,
}

/// Runs until `q`, Ctrl-C, or `count` frames.
pub fn top(ifname: Option<&str>, interval: f64, count: Option<u64>) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("top needs root (the UAPI socket is root's). Fix: run it with sudo");
    }
    if !(0.1..=3600.0).contains(&interval) {
        bail!("--interval {interval}: expected 0.1 to 3600 seconds. Fix: e.g. --interval 1");
    }
    let names = match ifname {
        Some(i) => vec![i.to_owned()],
        None => Client::interfaces(),
    };
    if names.is_empty() {
        bail!("no interface run by wg-appliance here (no socket in /var/run/wireguard). Fix: name one (`wg-appliance top wg0`), or start it first");
    }
    let clients: Vec<Client> = names
        .iter()
        .map(|n| Client::new(n))
        .collect::<Result<_, _>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing the signal handler")?;
    }
    let tty = std::io::stdout().is_terminal();
    let _term = if tty { Terminal::enter() } else { None };
    let names: Vec<Names> = names.iter().map(|n| names_of(n)).collect();
    let mut prev: Vec<Option<(Instant, Sample)>> = vec![None; clients.len()];
    let mut frames = 0u64;
    loop {
        let mut screen = String::new();
        for (i, c) in clients.iter().enumerate() {
            let now = Instant::now();
            let sample = c
                .get()
                .and_then(|dev| {
                    Ok(Sample {
                        dev,
                        app: c.appliance()?,
                    })
                })
                .with_context(|| format!("reading {}", c.ifname()))?;
            let dt = prev[i]
                .as_ref()
                .map(|(t, _)| now.duration_since(*t).as_secs_f64());
            let width = if tty { terminal_width() } else { 200 };
            screen.push_str(&render(
                c.ifname(),
                &names[i],
                &sample,
                prev[i].as_ref().map(|(_, s)| s),
                dt,
                SystemTime::now(),
                width,
            ));
            prev[i] = Some((now, sample));
        }
        let mut out = std::io::stdout().lock();
        if tty {
            // Home, clear, frame.
            let _ = write!(out, "\x1b[H\x1b[2J{}", screen.replace('\n', "\r\n"));
            let _ = write!(out, "\r\n q: quit");
        } else {
            let _ = writeln!(out, "{screen}");
        }
        let _ = out.flush();
        drop(out);
        frames += 1;
        if count.is_some_and(|n| frames >= n) {
            return Ok(());
        }
        // Wait for the next frame, a key or a signal.
        let deadline = Instant::now() + Duration::from_secs_f64(interval);
        while Instant::now() < deadline {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if tty && key_pressed(Duration::from_millis(100)) == Some(b'q') {
                return Ok(());
            }
            if !tty {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// One interface's frame. `prev` and `dt` (seconds since it) give rates.
pub fn render(
    ifname: &str,
    names: &Names,
    s: &Sample,
    prev: Option<&Sample>,
    dt: Option<f64>,
    now: SystemTime,
    width: usize,
) -> String {
    let mut out = String::new();
    let rate = |now: u64, before: Option<u64>| -> Option<f64> {
        let dt = dt.filter(|d| *d > 0.0)?;
        Some(now.saturating_sub(before?) as f64 / dt)
    };
    let wan: Vec<String> = s.app.all("wan_xdp").map(str::to_owned).collect();
    let _ = writeln!(
        out,
        "wg-appliance top: {ifname}   port {}   sessions {}   data path: {}",
        s.dev.listen_port,
        s.app.get("sessions").unwrap_or("?"),
        s.app.get("data_path").unwrap_or("?"),
    );
    let _ = writeln!(
        out,
        "XDP: tunnel {}, WAN {}   MTU {}   MSS {}",
        s.app.get("tunnel_xdp").unwrap_or("?"),
        if wan.is_empty() {
            "none".to_owned()
        } else {
            wan.join(", ")
        },
        s.app.get("mtu").unwrap_or("?"),
        s.app.get("mss").unwrap_or("?"),
    );
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<22} {:<24} {:>12} {:>12} {:>10} {:>10}  HANDSHAKE",
        "PEER", "ENDPOINT", "RX RATE", "TX RATE", "RX TOTAL", "TX TOTAL"
    );
    for p in &s.dev.peers {
        let before = prev.and_then(|pr| pr.dev.peers.iter().find(|q| q.public_key == p.public_key));
        let rx = rate(p.rx_bytes, before.map(|b| b.rx_bytes));
        let tx = rate(p.tx_bytes, before.map(|b| b.tx_bytes));
        let hs = match p.last_handshake {
            None => "never".to_owned(),
            Some(t) => format!("{} ago", ago(now.duration_since(t).unwrap_or_default())),
        };
        let _ = writeln!(
            out,
            "{:<22} {:<24} {:>12} {:>12} {:>10} {:>10}  {hs}",
            match names.get(&p.public_key) {
                Some(n) => format!("{n} ({})", p.public_key.short()),
                None => p.public_key.short() + "…",
            },
            p.endpoint.map_or("(none)".to_owned(), |e| e.to_string()),
            rx.map_or("-".to_owned(), |r| bits(r * 8.0)),
            tx.map_or("-".to_owned(), |r| bits(r * 8.0)),
            bytes(p.rx_bytes),
            bytes(p.tx_bytes),
        );
    }
    if s.dev.peers.is_empty() {
        out.push_str("(no peers)\n");
    }
    // Drops by reason: every reason seen, with its rate.
    let counters = s.app.numbers("counter");
    let before = prev.map(|p| p.app.numbers("counter")).unwrap_or_default();
    out.push_str("\nDROPS (per second, total)\n");
    let mut any = false;
    let mut line = String::new();
    for (name, total) in counters
        .iter()
        .filter(|(n, v)| n.starts_with("drop_") && **v > 0)
    {
        any = true;
        let r = rate(*total, before.get(name).copied());
        let item = format!(
            "  {}: {}/s ({total})",
            name.trim_start_matches("drop_"),
            r.map_or("-".to_owned(), |r| format!("{r:.0}"))
        );
        if line.len() + item.len() > width.max(40) {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        line.push_str(&item);
    }
    if any {
        out.push_str(&line);
        out.push('\n');
    } else {
        out.push_str("  none\n");
    }
    // Packets per CPU.
    out.push_str("\nPACKETS PER CPU (decrypted rx / encrypted tx, per second)\n");
    let cpus = per_cpu(&s.app);
    let cpus_before = prev.map(|p| per_cpu(&p.app)).unwrap_or_default();
    let mut line = String::new();
    for (cpu, (rx, tx)) in &cpus {
        let b = cpus_before.get(cpu);
        let item = format!(
            "  cpu{cpu}: {} / {}",
            rate(*rx, b.map(|b| b.0)).map_or("-".to_owned(), packets),
            rate(*tx, b.map(|b| b.1)).map_or("-".to_owned(), packets),
        );
        if line.len() + item.len() > width.max(40) {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        line.push_str(&item);
    }
    out.push_str(if cpus.is_empty() {
        "  (no data)"
    } else {
        &line
    });
    out.push('\n');
    // Handshakes by outcome.
    let hs = s.app.numbers("handshakes");
    let hs_before = prev
        .map(|p| p.app.numbers("handshakes"))
        .unwrap_or_default();
    out.push_str("\nHANDSHAKES (total, +since last frame)\n ");
    for (outcome, total) in &hs {
        let d = hs_before.get(outcome).map(|b| total.saturating_sub(*b));
        let _ = write!(
            out,
            " {outcome} {total}{}",
            d.filter(|d| *d > 0)
                .map(|d| format!(" (+{d})"))
                .unwrap_or_default()
        );
    }
    out.push('\n');
    // Never wider than the terminal.
    out.lines()
        .map(|l| {
            let cut: String = l.chars().take(width.max(20)).collect();
            cut + "\n"
        })
        .collect()
}

/// `cpu=<n> <rx> <tx>` lines as cpu → (rx, tx).
fn per_cpu(app: &ApplianceInfo) -> BTreeMap<u32, (u64, u64)> {
    app.all("cpu")
        .filter_map(|v| {
            let mut it = v.split_whitespace().map(str::parse::<u64>);
            let (cpu, rx, tx) = (it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?);
            Some((u32::try_from(cpu).ok()?, (rx, tx)))
        })
        .collect()
}

fn bits(bps: f64) -> String {
    scaled(bps, "bit/s")
}

fn packets(pps: f64) -> String {
    scaled(pps, "p/s")
}

fn scaled(v: f64, unit: &str) -> String {
    for (div, prefix) in [(1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if v >= div {
            return format!("{:.1} {prefix}{unit}", v / div);
        }
    }
    format!("{v:.0} {unit}")
}

fn bytes(b: u64) -> String {
    let b = b as f64;
    for (div, unit) in [
        (1u64 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ] {
        if b >= div as f64 {
            return format!("{:.1} {unit}", b / div as f64);
        }
    }
    format!("{b:.0} B")
}

fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    if r == 0 && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

/// A key from stdin within `wait`, if one came.
fn key_pressed(wait: Duration) -> Option<u8> {
    let mut pfd = libc::pollfd {
        fd: std::io::stdin().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as libc::c_int) };
    if n <= 0 {
        return None;
    }
    let mut b = [0u8; 1];
    match std::io::stdin().read(&mut b) {
        Ok(1) => Some(b[0]),
        _ => None,
    }
}

/// The terminal in non-canonical, no-echo mode with the cursor hidden;
/// restored on drop (which also runs when an error returns early).
struct Terminal {
    saved: Option<libc::termios>,
}

impl Terminal {
    fn enter() -> Option<Self> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: tcgetattr fills a termios.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        let saved = if unsafe { libc::tcgetattr(fd, &mut t) } == 0 {
            let orig = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO);
            t.c_cc[libc::VMIN] = 0;
            t.c_cc[libc::VTIME] = 0;
            // SAFETY: a termios from tcgetattr, modified.
            unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
            Some(orig)
        } else {
            None
        };
        print!("\x1b[?25l");
        let _ = std::io::stdout().flush();
        Some(Terminal { saved })
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            // SAFETY: restoring what tcgetattr gave.
            unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, t) };
        }
        print!("\x1b[?25h\r\n");
        let _ = std::io::stdout().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wg_appliance::{keys::PrivateKey, uapi_client::PeerInfo};

    fn sample(rx: u64, drops: u64, cpu_rx: u64) -> Sample {
        Sample {
            dev: DeviceInfo {
                public_key: None,
                listen_port: 51820,
                fwmark: 0,
                peers: vec![PeerInfo {
                    public_key: PrivateKey::from_bytes([7; 32]).public_key(),
                    has_psk: false,
                    endpoint: Some("10.0.0.2:51821".parse().unwrap()),
                    allowed_ips: vec![],
                    last_handshake: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1000)),
                    rx_bytes: rx,
                    tx_bytes: 0,
                    persistent_keepalive: 0,
                }],
            },
            app: ApplianceInfo(vec![
                ("data_path".into(), "bpf".into()),
                ("counter".into(), format!("drop_replay {drops}")),
                ("counter".into(), "rx_packets 5".into()),
                ("cpu".into(), format!("0 {cpu_rx} 0")),
                ("handshakes".into(), "completed_initiator 3".into()),
            ]),
        }
    }

    #[test]
    fn rates_come_from_two_frames() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1010);
        let first = render(
            "wg0",
            &Names::new(),
            &sample(1000, 1, 10),
            None,
            None,
            now,
            200,
        );
        assert!(
            first.contains("10 s ago") && first.contains(" - "),
            "{first}"
        );
        let a = sample(1000, 1, 10);
        let b = sample(1000 + 125_000, 11, 2010);
        let f = render("wg0", &Names::new(), &b, Some(&a), Some(1.0), now, 200);
        assert!(f.contains("1.0 Mbit/s"), "{f}");
        assert!(f.contains("replay: 10/s (11)"), "{f}");
        assert!(f.contains("cpu0: 2.0 kp/s / 0 p/s"), "{f}");
        assert!(f.contains("completed_initiator 3"), "{f}");
        assert!(!f.contains("rx_packets"), "only drops under DROPS: {f}");
        for l in render("wg0", &Names::new(), &b, Some(&a), Some(1.0), now, 30).lines() {
            assert!(l.chars().count() <= 30, "{l}");
        }
    }
}
