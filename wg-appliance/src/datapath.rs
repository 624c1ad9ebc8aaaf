//! Loading, attaching and reading the BPF data path.
//!
//! This module owns the BPF object embedded at build time (see `build.rs`),
//! attaches programs to interfaces (native XDP first, generic only when the
//! driver refuses native), and reads the counters back. It holds no protocol
//! logic. Programs attached through bpf_link detach when the [`Datapath`] is
//! dropped, so a failed start leaves nothing half-attached.

use std::{
    collections::BTreeMap,
    fmt,
    os::fd::{AsFd, AsRawFd, RawFd},
};

use aya::{
    maps::{Array, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf,
};
use wg_ebpf_common::{Counter, DatapathConfig, CONFIG_KEY};

/// The BPF object built from `wg-ebpf` by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("WG_EBPF_OBJ"));

/// Name of the WAN classifier program in the object.
pub const WAN_RX: &str = "wan_rx";

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "this binary was built without BPF programs (WG_APPLIANCE_SKIP_EBPF=1); rebuild without it"
    )]
    NoObject,
    #[error("loading the BPF programs failed: {0}. Fix: run as root (or with CAP_BPF and CAP_NET_ADMIN) on a kernel with BTF (/sys/kernel/btf/vmlinux)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the BPF object has no {0}; the build is inconsistent, rebuild wg-appliance")]
    Missing(&'static str),
    #[error("BPF program {prog}: {source}")]
    Program {
        prog: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("BPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("attaching XDP to {ifname} failed in native mode ({native}) and in generic mode ({generic}). Fix: check that the interface exists in this network namespace (`ip link show {ifname}`) and that no other XDP program holds it (`ip link set dev {ifname} xdp off`)")]
    Attach {
        ifname: String,
        native: Box<aya::programs::ProgramError>,
        generic: Box<aya::programs::ProgramError>,
    },
}

/// The XDP mode an attachment ended up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Run by the driver (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// Run by the kernel's generic path (`XDP_FLAGS_SKB_MODE`), slower.
    Generic,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

/// Which modes an attach may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModePolicy {
    /// Native, falling back to generic when the driver refuses native.
    #[default]
    Auto,
    Native,
    Generic,
}

/// The loaded data path.
pub struct Datapath {
    ebpf: Ebpf,
    attached: Vec<(String, AttachMode)>,
}

impl Datapath {
    /// Loads the programs and maps into the kernel and writes the
    /// configuration. Nothing is attached yet.
    pub fn load(listen_port: u16) -> Result<Self, DatapathError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(|e| DatapathError::Load(e.into()))?;
        {
            let map = ebpf
                .map_mut("CONFIG")
                .ok_or(DatapathError::Missing("CONFIG map"))?;
            let mut config: Array<_, DatapathConfig> =
                Array::try_from(map).map_err(|source| DatapathError::Map {
                    map: "CONFIG",
                    source: source.into(),
                })?;
            let value = DatapathConfig {
                listen_port,
                ..Default::default()
            };
            config
                .set(CONFIG_KEY, value, 0)
                .map_err(|source| DatapathError::Map {
                    map: "CONFIG",
                    source: source.into(),
                })?;
        }
        let prog = wan_rx(&mut ebpf)?;
        prog.load().map_err(|source| DatapathError::Program {
            prog: WAN_RX,
            source: source.into(),
        })?;
        Ok(Self {
            ebpf,
            attached: Vec::new(),
        })
    }

    /// Attaches `wan_rx` to `ifname` in the calling thread's network
    /// namespace. Returns the mode used.
    pub fn attach_wan(
        &mut self,
        ifname: &str,
        policy: ModePolicy,
    ) -> Result<AttachMode, DatapathError> {
        let prog = wan_rx(&mut self.ebpf)?;
        let mode = match policy {
            ModePolicy::Native => prog
                .attach(ifname, XdpMode::Driver)
                .map(|_| AttachMode::Native)
                .map_err(|source| DatapathError::Program {
                    prog: WAN_RX,
                    source: source.into(),
                })?,
            ModePolicy::Generic => prog
                .attach(ifname, XdpMode::Skb)
                .map(|_| AttachMode::Generic)
                .map_err(|source| DatapathError::Program {
                    prog: WAN_RX,
                    source: source.into(),
                })?,
            ModePolicy::Auto => match prog.attach(ifname, XdpMode::Driver) {
                Ok(_) => AttachMode::Native,
                Err(native) => match prog.attach(ifname, XdpMode::Skb) {
                    Ok(_) => {
                        tracing::warn!(interface = ifname, error = %native, "native XDP refused; using generic XDP (slower)");
                        AttachMode::Generic
                    }
                    Err(generic) => {
                        return Err(DatapathError::Attach {
                            ifname: ifname.to_owned(),
                            native: native.into(),
                            generic: generic.into(),
                        })
                    }
                },
            },
        };
        tracing::info!(interface = ifname, mode = %mode, "wan_rx attached");
        self.attached.push((ifname.to_owned(), mode));
        Ok(mode)
    }

    /// Interfaces attached so far and their modes.
    pub fn attached(&self) -> &[(String, AttachMode)] {
        &self.attached
    }

    /// The `wan_rx` counters, summed over all CPUs.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let map = self
            .ebpf
            .map("STATS")
            .ok_or(DatapathError::Missing("STATS map"))?;
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| DatapathError::Map {
                map: "STATS",
                source: source.into(),
            })?;
        let mut out = BTreeMap::new();
        for c in Counter::ALL {
            let per_cpu = stats
                .get(&(c as u32), 0)
                .map_err(|source| DatapathError::Map {
                    map: "STATS",
                    source: source.into(),
                })?;
            out.insert(c, per_cpu.iter().sum());
        }
        Ok(Counters(out))
    }

    /// The raw fd of the `wan_rx` program, for BPF_PROG_TEST_RUN.
    pub fn wan_rx_fd(&mut self) -> Result<RawFd, DatapathError> {
        let prog = wan_rx(&mut self.ebpf)?;
        let fd = prog.fd().map_err(|source| DatapathError::Program {
            prog: WAN_RX,
            source: source.into(),
        })?;
        Ok(fd.as_fd().as_raw_fd())
    }
}

fn wan_rx(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    let prog = ebpf
        .program_mut(WAN_RX)
        .ok_or(DatapathError::Missing("wan_rx program"))?;
    prog.try_into().map_err(
        |source: aya::programs::ProgramError| DatapathError::Program {
            prog: WAN_RX,
            source: source.into(),
        },
    )
}

/// A snapshot of the classifier's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<Counter, u64>);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0.get(&c).copied().unwrap_or(0)
    }

    /// Counter-wise difference `self - earlier` (saturating).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .map(|(c, v)| (*c, v.saturating_sub(earlier.get(*c))))
                .collect(),
        )
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (c, v) in &self.0 {
            writeln!(f, "{:<28} {v}", c.name())?;
        }
        Ok(())
    }
}

pub mod aead_probe;
pub mod test_run;
