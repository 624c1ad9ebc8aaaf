//! Bounded helper processes inside test namespaces: background children
//! killed on drop, iperf3 runs parsed from their JSON, tcpdump captures.
//!
//! `ip netns exec` execs the program after entering the namespace, so the
//! child's pid is the program's own and killing it kills the program.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{wait_until, Netns};

/// A process running in a namespace; killed (SIGKILL) on drop.
pub struct Bg {
    what: String,
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    stderr_lines: mpsc::Receiver<String>,
}

/// What a finished [`Bg`] printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Bg {
    pub fn spawn(ns: &Netns, cmd: &str, args: &[&str]) -> Result<Self> {
        let what = format!("{cmd} {}", args.join(" "));
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), cmd])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{what}`"))?;
        let mut out = child.stdout.take().context("stdout")?;
        let err = child.stderr.take().context("stderr")?;
        let stdout = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let (tx, stderr_lines) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut r = BufReader::new(err);
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                all.extend_from_slice(line.as_bytes());
                let _ = tx.send(std::mem::take(&mut line));
            }
            all
        });
        Ok(Self {
            what,
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
            stderr_lines,
        })
    }

    /// Sends `sig` to the process (`ip netns exec` execs it, so this is the
    /// command itself).
    pub fn signal(&self, sig: i32) -> Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid")?;
        // SAFETY: kill has no memory preconditions; the pid is our child's,
        // not yet reaped.
        if unsafe { libc::kill(pid, sig) } != 0 {
            bail!(
                "signal {sig} to `{}`: {}",
                self.what,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Waits until the process prints a stderr line containing `needle`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Ok(()),
                Ok(_) => {}
                Err(_) => bail!(
                    "`{}` did not print {needle:?} within {timeout:?}",
                    self.what
                ),
            }
        }
    }

    /// Waits for the process to exit by itself; kills it after `timeout`
    /// and fails.
    pub fn finish(mut self, timeout: Duration) -> Result<Finished> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let err = self.collect_stderr();
                bail!(
                    "`{}` still running after {timeout:?}; killed. stderr: {err}",
                    self.what
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        Ok(Finished {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: self.collect_stderr(),
        })
    }

    fn collect_stderr(&mut self) -> String {
        let v = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        String::from_utf8_lossy(&v).into_owned()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command in `ns`, killed after `timeout`; fails on a non-zero exit.
pub fn run_bounded(ns: &Netns, cmd: &str, args: &[&str], timeout: Duration) -> Result<Finished> {
    let f = Bg::spawn(ns, cmd, args)?.finish(timeout)?;
    if !f.status.success() {
        bail!(
            "`{cmd} {}` failed ({}): {} {}",
            args.join(" "),
            f.status,
            f.stderr.trim(),
            f.stdout.trim()
        );
    }
    Ok(f)
}

/// Protocol of an iperf3 run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One iperf3 run as the receiving side measured it.
#[derive(Debug, Clone)]
pub struct IperfResult {
    /// Bytes the receiver got.
    pub received: u64,
    /// Bytes the sender sent.
    pub sent: u64,
    /// Receiver bytes per reporting interval.
    pub intervals: Vec<u64>,
    /// Receiver throughput.
    pub mbit_s: f64,
    /// UDP only: datagrams lost as the receiver counted them.
    pub lost_packets: u64,
    /// TCP only: sender retransmissions.
    pub retransmits: u64,
}

/// Traffic from `sender` to `receiver` with iperf3: the server runs on the
/// sending side (`-s -1`), the client on the receiving side with `-R`, so
/// the receiver's counts are the client's own (iperf3 3.12's server stops
/// counting at TEST_END and under-reports `-n` runs). `dst` is the
/// sender's address as the receiver reaches it; `extra` are client options
/// (`-n 2M`, `-t 2 -i 0.5`, `-u -b 50M`...).
pub fn iperf3(
    sender: &Netns,
    receiver: &Netns,
    dst: &str,
    proto: Proto,
    extra: &[&str],
    timeout: Duration,
) -> Result<IperfResult> {
    const PORT: &str = "5201";
    let _server = Bg::spawn(sender, "iperf3", &["-s", "-1", "-p", PORT])?;
    wait_until(
        Duration::from_secs(5),
        "the iperf3 server to listen",
        || {
            sender
                .exec("ss", &["-Hltn", "sport", "=", ":5201"])
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false)
        },
    )?;
    let mut args = vec![
        "-c",
        dst,
        "-p",
        PORT,
        "-R",
        "-J",
        "--connect-timeout",
        "3000",
    ];
    if proto == Proto::Udp {
        args.push("-u");
    }
    args.extend_from_slice(extra);
    let out = Bg::spawn(receiver, "iperf3", &args)?.finish(timeout)?;
    let json: serde_json::Value = serde_json::from_str(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON: {} {}",
            out.stdout.trim(),
            out.stderr.trim()
        )
    })?;
    if let Some(e) = json.get("error") {
        bail!("iperf3 {args:?}: {e}");
    }
    if !out.status.success() {
        bail!("iperf3 {args:?} failed ({}): {}", out.status, out.stderr);
    }
    let end = &json["end"];
    let u = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let intervals: Vec<u64> = json["intervals"]
        .as_array()
        .map(|a| a.iter().map(|i| u(&i["sum"]["bytes"])).collect())
        .unwrap_or_default();
    let (received, lost, bps) = match proto {
        // The client is the receiver (-R): what it counted.
        Proto::Tcp => (
            u(&end["sum_received"]["bytes"]),
            0,
            end["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0),
        ),
        // For UDP the receiver's own total is the sum of its intervals;
        // `sum` carries its loss count.
        Proto::Udp => (
            intervals.iter().sum(),
            u(&end["sum"]["lost_packets"]),
            end["sum"]["bits_per_second"].as_f64().unwrap_or(0.0),
        ),
    };
    Ok(IperfResult {
        received,
        sent: u(&end["sum_sent"]["bytes"]),
        intervals,
        mbit_s: bps / 1e6,
        lost_packets: lost,
        retransmits: u(&end["sum_sent"]["retransmits"]),
    })
}

/// A tcpdump capture on an interface of a namespace, started and ready
/// when `start` returns.
pub struct Capture {
    bg: Bg,
}

impl Capture {
    /// `tcpdump -i <dev> -nn -l -c <count> <args...>` (`args`: more
    /// options, then the filter expression, one word per element).
    pub fn start(ns: &Netns, dev: &str, count: u32, args_filter: &[&str]) -> Result<Self> {
        let c = count.to_string();
        let mut args = vec!["-i", dev, "-nn", "-l", "-c", &c];
        args.extend_from_slice(args_filter);
        let bg = Bg::spawn(ns, "tcpdump", &args)?;
        bg.wait_stderr("listening on", Duration::from_secs(5))?;
        Ok(Self { bg })
    }

    /// The captured lines, once `count` packets were seen (or `timeout`
    /// passed: then whatever was captured, and an error).
    pub fn finish(self, timeout: Duration) -> Result<Vec<String>> {
        let f = self.bg.finish(timeout)?;
        Ok(f.stdout.lines().map(str::to_owned).collect())
    }
}

/// The MSS option value in a tcpdump line (`options [mss 1380,...]`).
pub fn mss_of(line: &str) -> Option<u16> {
    let i = line.find("mss ")?;
    line[i + 4..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Byte `i` of the stream [`tcp_exact`] sends: not periodic in any small
/// power of two, so reordered, duplicated or dropped segments show.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (i as u8)
}

/// Sends `bytes` of a known pattern over one TCP connection from `sender`
/// to `dst` (an address of `receiver`, where a listener is bound), closes,
/// and returns how many bytes arrived before EOF; any byte that differs
/// from the pattern is an error. Every step is bounded by `timeout`.
pub fn tcp_exact(
    sender: &Netns,
    receiver: &Netns,
    dst: std::net::SocketAddr,
    bytes: u64,
    timeout: Duration,
) -> Result<u64> {
    use std::{
        io::Write as _,
        net::{Shutdown, TcpListener, TcpStream},
    };
    let l = receiver.enter(|| TcpListener::bind(dst))??;
    l.set_nonblocking(true)?;
    let rx = std::thread::spawn(move || -> Result<u64> {
        let deadline = Instant::now() + timeout;
        let mut s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        bail!("no connection to {dst} within {timeout:?}");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e.into()),
            }
        };
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(timeout))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf).context("reading the stream")?;
            if n == 0 {
                return Ok(got);
            }
            for (k, b) in buf[..n].iter().enumerate() {
                if *b != pattern(got + k as u64) {
                    bail!("byte {} of the stream is corrupt", got + k as u64);
                }
            }
            got += n as u64;
            if Instant::now() >= deadline {
                bail!("stream to {dst} still open after {timeout:?} ({got} bytes)");
            }
        }
    });
    let mut s = sender.enter(|| TcpStream::connect_timeout(&dst, Duration::from_secs(3)))??;
    s.set_write_timeout(Some(timeout))?;
    let mut sent = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len() as u64) as usize;
        for (k, b) in chunk[..n].iter_mut().enumerate() {
            *b = pattern(sent + k as u64);
        }
        s.write_all(&chunk[..n]).context("writing the stream")?;
        sent += n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let got = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))??;
    Ok(got)
}
