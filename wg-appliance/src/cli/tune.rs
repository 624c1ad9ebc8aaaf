//! `tune [<ifname>] [--apply | --revert]`: the host settings around the
//! data path, shown, applied and restored:
//!
//! - UDP socket buffer ceilings (`net.core.rmem_max`, `wmem_max`);
//! - on each WAN NIC: the queue counts (ethtool channels) aligned with the
//!   steering CPU set, RPS masks when the NIC has fewer receive queues than
//!   steering CPUs, XPS masks mapping the steering CPUs onto the transmit
//!   queues, and the queues' IRQ affinity on the same CPUs;
//! - the XDP mode of each WAN (shown: only the daemon re-attaches programs).
//!
//! `--apply` first saves every value it will change in a state file (0600,
//! in a 0700 directory under /run/wg-appliance/tune/, one per network
//! namespace), then changes them one by one, printing before → after; if
//! one fails, those already changed are put back and the file removed, so
//! nothing stays half applied. `--revert` puts every saved value back and
//! removes the file. A second `--apply` before a `--revert` is refused: the
//! saved values must stay the original ones.

use std::{
    collections::BTreeSet,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use wg_appliance::{datapath, persist, uapi_client::Client};

/// What a knob is and how it is read and written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Knob {
    /// `/proc/sys/<dotted name>`.
    Sysctl { name: String },
    /// A sysfs or procfs file: RPS/XPS masks, IRQ affinity lists.
    File { path: String },
    /// `ethtool -L <dev> <which> <n>`; `which` is rx, tx or combined.
    Channels { dev: String, which: String },
}

/// One line of the plan.
#[derive(Clone, Debug)]
pub struct Item {
    pub knob: Knob,
    pub label: String,
    /// None: does not exist now (a queue that the new queue count adds).
    pub current: Option<String>,
    /// None: shown only, nothing to set.
    pub want: Option<String>,
    /// Why it is shown only, or what the value means.
    pub note: Option<String>,
}

impl Item {
    fn changes(&self) -> bool {
        match (&self.current, &self.want) {
            (_, None) => false,
            // A queue the new count adds starts with no CPUs anyway.
            (None, Some(w)) => parse_mask(w).is_none_or(|m| !m.is_empty()),
            (Some(c), Some(w)) => !same(&self.knob, c, w),
        }
    }
}

/// A saved value.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Saved {
    knob: Knob,
    label: String,
    /// None: it did not exist before (it goes with the queue count).
    before: Option<String>,
    after: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    /// Seconds since the epoch.
    saved_at: u64,
    items: Vec<Saved>,
}

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Show,
    Apply,
    Revert,
}

/// Where the saved values of this network namespace live.
fn state_path() -> PathBuf {
    let ns = persist::netns_id().map_or_else(|| "netns".to_owned(), |i| i.to_string());
    persist::run_dir().join("tune").join(format!("{ns}.json"))
}

pub fn tune(
    ifname: Option<&str>,
    wan: &[String],
    cpus: Option<&str>,
    keep_queues: bool,
    mode: Mode,
) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("tune needs root (sysctls, sysfs, ethtool). Fix: run it with sudo");
    }
    let path = state_path();
    if mode == Mode::Revert {
        return revert(&path);
    }
    let (wan, steering) = targets(ifname, wan, cpus)?;
    let plan = plan(&wan, &steering, keep_queues)?;
    match mode {
        Mode::Show => {
            println!(
                "tune: WAN {}, steering CPUs {}",
                wan.join(", "),
                list(&steering)
            );
            for it in &plan {
                let now = it.current.as_deref().unwrap_or("(absent)");
                let line = match (&it.want, it.changes()) {
                    (None, _) => format!("  {}: {now}", it.label),
                    (Some(_), false) => format!("  {}: {now} (ok)", it.label),
                    (Some(w), true) => format!("  {}: {now} → {w} (with --apply)", it.label),
                };
                match &it.note {
                    Some(n) => println!("{line}   [{n}]"),
                    None => println!("{line}"),
                }
            }
            if path.exists() {
                println!(
                    "saved values from an earlier --apply are in {}: `wg-appliance tune --revert` restores them",
                    path.display()
                );
            }
            Ok(())
        }
        Mode::Apply => apply(&path, &plan),
        Mode::Revert => unreachable!("handled above"),
    }
}

/// The WAN interfaces and steering CPUs: from the flags, else from the
/// daemon of `ifname` (or of every interface wg-appliance runs here).
fn targets(
    ifname: Option<&str>,
    wan_flag: &[String],
    cpus_flag: Option<&str>,
) -> anyhow::Result<(Vec<String>, Vec<u32>)> {
    let mut wan: Vec<String> = wan_flag.to_vec();
    let mut cpus: Option<Vec<u32>> = match cpus_flag {
        Some(s) => Some(datapath::parse_cpu_list(s).filter(|c| !c.is_empty()).with_context(
            || format!("--cpus {s}: expected a CPU list such as 0-3,6. Fix: choose CPUs from /sys/devices/system/cpu/online"),
        )?),
        None => None,
    };
    if wan.is_empty() || cpus.is_none() {
        let names = match ifname {
            Some(i) => vec![i.to_owned()],
            None => Client::interfaces(),
        };
        for n in names {
            let app = Client::new(&n)?.appliance()?;
            if wan_flag.is_empty() {
                for w in app
                    .all("wan_xdp")
                    .filter_map(|v| v.split_whitespace().next())
                {
                    if !wan.iter().any(|x| x == w) {
                        wan.push(w.to_owned());
                    }
                }
            }
            if cpus_flag.is_none() {
                if let Some(c) = app.get("cpus").and_then(datapath::parse_cpu_list) {
                    let mut set: BTreeSet<u32> =
                        cpus.take().unwrap_or_default().into_iter().collect();
                    set.extend(c);
                    cpus = Some(set.into_iter().collect());
                }
            }
        }
    }
    if wan.is_empty() {
        bail!("no WAN interface to tune. Fix: name one with --wan <dev>, or name a running interface (`wg-appliance tune wg0`)");
    }
    for w in &wan {
        if !Path::new(&format!("/sys/class/net/{w}")).exists() {
            bail!("WAN interface {w} does not exist here. Fix: check the name with `ip link`, and run tune in the interface's network namespace");
        }
    }
    let cpus = cpus
        .filter(|c| !c.is_empty())
        .unwrap_or_else(datapath::online_cpus);
    Ok((wan, cpus))
}

/// Every knob with its current and wanted value.
pub fn plan(wan: &[String], cpus: &[u32], keep_queues: bool) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    // UDP socket buffer ceilings: the daemon's socket only carries
    // handshakes, but a flood of them (before XDP's limiter answers with
    // cookies) must not overflow it, and other userspace tunnels share
    // the ceiling.
    for name in ["net.core.rmem_max", "net.core.wmem_max"] {
        let knob = Knob::Sysctl {
            name: name.to_owned(),
        };
        let current = read(&knob);
        let cur_n = current.as_deref().and_then(|c| c.parse::<u64>().ok());
        let want = cur_n.map(|c| c.max(UDP_BUF).to_string());
        let (want, note) = if writable(&knob) {
            (want, None)
        } else {
            (
                None,
                Some(
                    "global: read-only in this network namespace; run tune in the initial one"
                        .to_owned(),
                ),
            )
        };
        items.push(Item {
            label: format!("sysctl {name}"),
            knob,
            current,
            want,
            note,
        });
    }
    for dev in wan {
        let ch = channels(dev);
        let n = cpus.len() as u32;
        let mut nrx = count_queues(dev, "rx");
        let mut ntx = count_queues(dev, "tx");
        // Queue counts.
        match &ch {
            Some(c) if !keep_queues => {
                let kinds: Vec<(&str, u32, u32)> = if c.max_combined > 0 {
                    vec![("combined", c.max_combined, c.combined)]
                } else {
                    [("rx", c.max_rx, c.rx), ("tx", c.max_tx, c.tx)]
                        .into_iter()
                        .filter(|(_, max, _)| *max > 0)
                        .collect()
                };
                for (which, max, cur) in kinds {
                    let want = max.min(n).max(1);
                    match which {
                        "combined" => {
                            nrx = want;
                            ntx = want;
                        }
                        "rx" => nrx = want,
                        _ => ntx = want,
                    }
                    items.push(Item {
                        knob: Knob::Channels {
                            dev: dev.clone(),
                            which: which.to_owned(),
                        },
                        label: format!("{dev} {which} queues"),
                        current: Some(cur.to_string()),
                        want: Some(want.to_string()),
                        note: Some(format!("at most {max}; one per steering CPU")),
                    });
                }
            }
            Some(_) => {}
            None => items.push(Item {
                knob: Knob::Channels {
                    dev: dev.clone(),
                    which: "combined".into(),
                },
                label: format!("{dev} queues"),
                current: Some(format!("{nrx} rx, {ntx} tx")),
                want: None,
                note: Some("the driver does not report channels (ethtool -l)".into()),
            }),
        }
        // RPS: only when receive queues are fewer than steering CPUs (RSS
        // spreads otherwise); it moves the stack's share (handshakes,
        // traffic XDP passes) onto the steering CPUs.
        let rps_mask = if nrx < n { mask(cpus) } else { "0".to_owned() };
        for q in 0..nrx {
            let knob = Knob::File {
                path: format!("/sys/class/net/{dev}/queues/rx-{q}/rps_cpus"),
            };
            items.push(Item {
                label: format!("{dev} rx-{q} RPS CPUs"),
                current: read(&knob),
                knob,
                want: Some(rps_mask.clone()),
                note: None,
            });
        }
        // XPS: steering CPU i sends on queue i mod ntx.
        for q in 0..ntx {
            let on: Vec<u32> = cpus
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u32 % ntx == q)
                .map(|(_, c)| *c)
                .collect();
            let knob = Knob::File {
                path: format!("/sys/class/net/{dev}/queues/tx-{q}/xps_cpus"),
            };
            items.push(Item {
                label: format!("{dev} tx-{q} XPS CPUs"),
                current: read(&knob),
                knob,
                want: Some(mask(&on)),
                note: None,
            });
        }
        // IRQ affinity: queue i's interrupts on steering CPU i mod n.
        let irqs = queue_irqs(dev);
        if irqs.is_empty() {
            items.push(Item {
                knob: Knob::File {
                    path: String::new(),
                },
                label: format!("{dev} IRQ affinity"),
                current: Some("no queue interrupts".into()),
                want: None,
                note: Some("a virtual device, or IRQ names this tool does not know".into()),
            });
        }
        for (irq, name, q) in irqs {
            let knob = Knob::File {
                path: format!("/proc/irq/{irq}/smp_affinity_list"),
            };
            let cpu = cpus[q as usize % cpus.len()];
            let writable = writable(&knob);
            items.push(Item {
                label: format!("{dev} IRQ {irq} ({name}) CPUs"),
                current: read(&knob),
                knob,
                want: writable.then(|| cpu.to_string()),
                note: (!writable)
                    .then(|| "not writable here (managed IRQ, or no permission)".into()),
            });
        }
        // XDP mode: shown only.
        items.push(Item {
            knob: Knob::File { path: String::new() },
            label: format!("{dev} XDP mode"),
            current: Some(xdp_mode(dev)),
            want: None,
            note: Some("the daemon attaches it: XdpMode in [Appliance] (native where the driver supports it)".into()),
        });
    }
    Ok(items)
}

/// The ceiling set for UDP socket buffers (8 MiB, what wireguard-go asks for
/// its sockets too).
const UDP_BUF: u64 = 8 << 20;

fn apply(path: &Path, plan: &[Item]) -> anyhow::Result<()> {
    if path.exists() {
        let when = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<State>(&t).ok())
            .map(|s| format!(" (saved at unix time {})", s.saved_at))
            .unwrap_or_default();
        bail!("tune was applied already: the original values are saved in {}{when}. Fix: `wg-appliance tune --revert` first (or delete that file if those values no longer matter)", path.display());
    }
    let changes: Vec<&Item> = plan.iter().filter(|i| i.changes()).collect();
    if changes.is_empty() {
        println!("tune: nothing to change");
        return Ok(());
    }
    let state = State {
        saved_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        items: changes
            .iter()
            .map(|i| Saved {
                knob: i.knob.clone(),
                label: i.label.clone(),
                before: i.current.clone(),
                after: i.want.clone().unwrap_or_default(),
            })
            .collect(),
    };
    save(path, &state)?;
    let mut done: Vec<&Saved> = Vec::new();
    for s in &state.items {
        if let Err(e) = write(&s.knob, &s.after) {
            // Put back what was changed, newest first.
            for d in done.iter().rev() {
                if let Some(b) = &d.before {
                    let _ = write(&d.knob, b);
                }
            }
            let _ = std::fs::remove_file(path);
            bail!("{}: setting {} failed: {e:#}; everything changed before it was put back. Fix: run `wg-appliance tune` to see the plan, and set that value by hand or leave it", s.label, s.after);
        }
        println!(
            "  {}: {} → {}",
            s.label,
            s.before.as_deref().unwrap_or("(absent)"),
            s.after
        );
        done.push(s);
    }
    println!(
        "tune: {} value(s) changed; the originals are saved in {} (`wg-appliance tune --revert` restores them)",
        done.len(),
        path.display()
    );
    Ok(())
}

fn revert(path: &Path) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "tune: nothing to revert (no saved values in {})",
                path.display()
            );
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let state: State = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} does not parse. Fix: restore the values by hand, then delete it",
            path.display()
        )
    })?;
    let mut failed = Vec::new();
    // Newest first: masks of queues before the queue counts they belong to.
    for s in state.items.iter().rev() {
        let Some(before) = &s.before else {
            continue; // it goes away with the queue count
        };
        let now = read(&s.knob);
        match write(&s.knob, before) {
            Ok(()) => println!(
                "  {}: {} → {before}",
                s.label,
                now.as_deref().unwrap_or("(absent)")
            ),
            Err(e) => {
                eprintln!("  {}: restoring {before} failed: {e:#}", s.label);
                failed.push(s.clone());
            }
        }
    }
    if failed.is_empty() {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        println!("tune: every saved value restored");
        Ok(())
    } else {
        save(
            path,
            &State {
                saved_at: state.saved_at,
                items: failed.clone(),
            },
        )?;
        bail!("{} value(s) could not be restored; they stay saved in {}. Fix: see the errors above, then run `wg-appliance tune --revert` again", failed.len(), path.display())
    }
}

fn save(path: &Path, state: &State) -> anyhow::Result<()> {
    let dir = path.parent().context("state path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(state)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn read(k: &Knob) -> Option<String> {
    match k {
        Knob::Sysctl { name } => std::fs::read_to_string(sysctl_path(name))
            .ok()
            .map(|s| s.trim().to_owned()),
        Knob::File { path } if path.is_empty() => None,
        Knob::File { path } => std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_owned()),
        Knob::Channels { dev, which } => channels(dev).map(|c| {
            match which.as_str() {
                "rx" => c.rx,
                "tx" => c.tx,
                _ => c.combined,
            }
            .to_string()
        }),
    }
}

fn write(k: &Knob, value: &str) -> anyhow::Result<()> {
    match k {
        Knob::Sysctl { name } => std::fs::write(sysctl_path(name), value)
            .with_context(|| format!("writing {}", sysctl_path(name).display())),
        Knob::File { path } => {
            std::fs::write(path, value).with_context(|| format!("writing {path}"))
        }
        Knob::Channels { dev, which } => {
            let out = Command::new("ethtool")
                .args(["-L", dev, which, value])
                .output()
                .context("running ethtool (install the ethtool package)")?;
            // ethtool exits 80 when the value is already set.
            if !out.status.success() && out.status.code() != Some(80) {
                bail!(
                    "ethtool -L {dev} {which} {value}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        }
    }
}

fn writable(k: &Knob) -> bool {
    let path = match k {
        Knob::Sysctl { name } => sysctl_path(name),
        Knob::File { path } => PathBuf::from(path),
        Knob::Channels { .. } => return true,
    };
    // Opening for writing writes nothing, and fails where writing would.
    std::fs::OpenOptions::new().write(true).open(path).is_ok()
}

fn sysctl_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/{}", name.replace('.', "/")))
}

/// Whether two values of a knob mean the same.
fn same(k: &Knob, a: &str, b: &str) -> bool {
    match k {
        Knob::File { path } if path.ends_with("_cpus") => parse_mask(a) == parse_mask(b),
        Knob::File { path } if path.ends_with("smp_affinity_list") => {
            datapath::parse_cpu_list(a) == datapath::parse_cpu_list(b)
        }
        _ => a.trim() == b.trim(),
    }
}

/// A sysfs CPU mask (`00000000,00000003`) as a set of CPUs.
pub fn parse_mask(s: &str) -> Option<BTreeSet<u32>> {
    let mut set = BTreeSet::new();
    let groups: Vec<&str> = s.trim().split(',').collect();
    for (gi, g) in groups.iter().rev().enumerate() {
        let v = u32::from_str_radix(g, 16).ok()?;
        for bit in 0..32 {
            if v & (1 << bit) != 0 {
                set.insert(gi as u32 * 32 + bit);
            }
        }
    }
    Some(set)
}

/// CPUs as a sysfs mask: hex, comma-separated groups of 32 bits.
pub fn mask(cpus: &[u32]) -> String {
    let Some(max) = cpus.iter().max() else {
        return "0".into();
    };
    let mut groups = vec![0u32; *max as usize / 32 + 1];
    for c in cpus {
        groups[*c as usize / 32] |= 1 << (c % 32);
    }
    let mut out = format!("{:x}", groups[groups.len() - 1]);
    for g in groups.iter().rev().skip(1) {
        out.push_str(&format!(",{g:08x}"));
    }
    out
}

fn list(cpus: &[u32]) -> String {
    cpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `ethtool -l` figures.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Channels {
    pub max_rx: u32,
    pub max_tx: u32,
    pub max_combined: u32,
    pub rx: u32,
    pub tx: u32,
    pub combined: u32,
}

fn channels(dev: &str) -> Option<Channels> {
    let out = Command::new("ethtool").args(["-l", dev]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_channels(&String::from_utf8_lossy(&out.stdout))
}

/// Parses `ethtool -l` output (n/a counts as 0).
pub fn parse_channels(text: &str) -> Option<Channels> {
    let mut c = Channels::default();
    let mut section = 0;
    let mut seen = false;
    for line in text.lines() {
        if line.starts_with("Pre-set maximums") {
            section = 1;
            continue;
        }
        if line.starts_with("Current hardware settings") {
            section = 2;
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v: u32 = v.trim().parse().unwrap_or(0);
        let slot = match (section, k.trim()) {
            (1, "RX") => &mut c.max_rx,
            (1, "TX") => &mut c.max_tx,
            (1, "Combined") => &mut c.max_combined,
            (2, "RX") => &mut c.rx,
            (2, "TX") => &mut c.tx,
            (2, "Combined") => &mut c.combined,
            _ => continue,
        };
        *slot = v;
        seen = true;
    }
    seen.then_some(c)
}

fn count_queues(dev: &str, kind: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{dev}/queues"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{kind}-"))
                })
                .count() as u32
        })
        .unwrap_or(0)
}

/// The queue interrupts of `dev`: (IRQ, name, queue index), from
/// /proc/interrupts: names like `eth0-TxRx-3`, `eth0-rx-3`, or virtio's
/// `virtio2-input.3` / `virtio2-output.3` for the device behind `dev`.
fn queue_irqs(dev: &str) -> Vec<(u32, String, u32)> {
    let backing = std::fs::read_link(format!("/sys/class/net/{dev}/device"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    parse_irqs(&text, dev, backing.as_deref())
}

pub fn parse_irqs(text: &str, dev: &str, backing: Option<&str>) -> Vec<(u32, String, u32)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((irq, rest)) = line.trim_start().split_once(':') else {
            continue;
        };
        let Ok(irq) = irq.parse::<u32>() else {
            continue;
        };
        let Some(name) = rest.split_whitespace().last() else {
            continue;
        };
        let ours = name.starts_with(&format!("{dev}-"))
            || backing.is_some_and(|b| {
                name.starts_with(&format!("{b}-input")) || name.starts_with(&format!("{b}-output"))
            });
        if !ours {
            continue;
        }
        let q = name
            .rsplit(['-', '.'])
            .next()
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(q) = q {
            out.push((irq, name.to_owned(), q));
        }
    }
    out
}

fn xdp_mode(dev: &str) -> String {
    let out = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", dev])
        .output();
    let v: serde_json::Value = out
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default();
    match v[0]["xdp"]["mode"].as_u64() {
        Some(1) => "native".into(),
        Some(2) => "generic (slower: see XdpMode)".into(),
        Some(3) => "offload".into(),
        Some(_) => "several programs".into(),
        None => "none attached".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_round_trip() {
        assert_eq!(mask(&[0, 1]), "3");
        assert_eq!(mask(&[]), "0");
        assert_eq!(mask(&[33]), "2,00000000");
        assert_eq!(parse_mask("00000000,00000003"), Some([0, 1].into()));
        assert_eq!(parse_mask(&mask(&[1, 40, 70])), Some([1, 40, 70].into()));
        assert_eq!(parse_mask("zz"), None);
        let k = Knob::File {
            path: "/sys/class/net/x/queues/rx-0/rps_cpus".into(),
        };
        assert!(same(&k, "00000003", "3"));
        assert!(!same(&k, "1", "3"));
    }

    fn file_item(path: &Path, current: &str, want: &str) -> Item {
        Item {
            knob: Knob::File {
                path: path.display().to_string(),
            },
            label: path.display().to_string(),
            current: Some(current.into()),
            want: Some(want.into()),
            note: None,
        }
    }

    #[test]
    fn a_failed_apply_puts_back_what_it_changed_and_revert_restores_the_rest() {
        let dir = std::env::temp_dir().join(format!("wga-tune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("not-a-file")).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "5").unwrap();
        let state = dir.join("tune").join("ns.json");
        // The second write fails (a directory): the first is put back.
        let plan = vec![
            file_item(&a, "1", "2"),
            file_item(&dir.join("not-a-file"), "x", "y"),
        ];
        let e = apply(&state, &plan).unwrap_err().to_string();
        assert!(e.contains("put back") && e.contains("Fix:"), "{e}");
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "1");
        assert!(!state.exists());
        // A good one: saved 0600, applied, refused twice, reverted.
        let plan = vec![file_item(&a, "1", "2"), file_item(&b, "5", "6")];
        apply(&state, &plan).unwrap();
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "6");
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(apply(&state, &plan)
            .unwrap_err()
            .to_string()
            .contains("--revert"));
        revert(&state).unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "5");
        assert!(!state.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ethtool_and_interrupts_are_read() {
        let veth = "Channel parameters for va:\nPre-set maximums:\nRX:\t\t2\nTX:\t\t2\nOther:\t\tn/a\nCombined:\tn/a\nCurrent hardware settings:\nRX:\t\t1\nTX:\t\t1\nOther:\t\tn/a\nCombined:\tn/a\n";
        let c = parse_channels(veth).unwrap();
        assert_eq!(
            (c.max_rx, c.max_tx, c.max_combined, c.rx, c.tx),
            (2, 2, 0, 1, 1)
        );
        assert_eq!(parse_channels("garbage"), None);
        let irqs = " 37:   0   0 PCI-MSIX-0000:00:03.0   0-edge      virtio2-config\n 38:   0   8044 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0\n 39:   6284   0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0\n 50: 1 2 IR-PCI-MSI 1-edge eth1-TxRx-1\nNMI: 0 0 Non-maskable interrupts\n";
        assert_eq!(
            parse_irqs(irqs, "eth0", Some("virtio2")),
            vec![
                (38, "virtio2-input.0".into(), 0),
                (39, "virtio2-output.0".into(), 0)
            ]
        );
        assert_eq!(
            parse_irqs(irqs, "eth1", None),
            vec![(50, "eth1-TxRx-1".into(), 1)]
        );
    }
}
