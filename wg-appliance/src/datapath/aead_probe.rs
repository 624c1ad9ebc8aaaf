//! Loads the AEAD test programs (`aead_seal_test`, `aead_open_test`, see
//! `wg-ebpf/src/aead_test.rs`) from the embedded object, for the BPF AEAD
//! tests and timings. They are test fixtures: loaded, never attached, and
//! driven through [`super::test_run::run_xdp`] on packets that carry their
//! own key, so nothing here touches the data path's maps or interfaces.

use std::{
    os::fd::{AsFd, AsRawFd, RawFd},
    path::Path,
};

use aya::{programs::Xdp, Ebpf};

use super::{DatapathError, EBPF_OBJECT};

/// Seals the payload after a 64-byte header (key, nonce, AAD) in place.
pub const AEAD_SEAL_TEST: &str = "aead_seal_test";
/// Opens the ciphertext and tag after the same header in place.
pub const AEAD_OPEN_TEST: &str = "aead_open_test";

/// The loaded AEAD test programs.
pub struct AeadProbe {
    ebpf: Ebpf,
}

impl AeadProbe {
    /// Loads the object and both test programs into the kernel.
    pub fn load() -> Result<Self, DatapathError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        Self::load_programs(Ebpf::load(EBPF_OBJECT).map_err(|e| DatapathError::Load(e.into()))?)
    }

    /// Loads the test programs from another build of `wg-ebpf` (a file),
    /// to compare code generation choices (e.g. `-C target-cpu`) without
    /// rebuilding the embedded object.
    pub fn load_file(path: &Path) -> Result<Self, DatapathError> {
        Self::load_programs(Ebpf::load_file(path).map_err(|e| DatapathError::Load(e.into()))?)
    }

    fn load_programs(mut ebpf: Ebpf) -> Result<Self, DatapathError> {
        for name in [AEAD_SEAL_TEST, AEAD_OPEN_TEST] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    prog: name,
                    source: source.into(),
                })?;
        }
        Ok(Self { ebpf })
    }

    /// The raw fd of a loaded test program, for BPF_PROG_TEST_RUN.
    pub fn fd(&mut self, name: &'static str) -> Result<RawFd, DatapathError> {
        let prog = program(&mut self.ebpf, name)?;
        let fd = prog.fd().map_err(|source| DatapathError::Program {
            prog: name,
            source: source.into(),
        })?;
        Ok(fd.as_fd().as_raw_fd())
    }

    /// Instructions the verifier processed for `name`, when the kernel says.
    pub fn verified_insns(&mut self, name: &'static str) -> Result<Option<u32>, DatapathError> {
        let prog = program(&mut self.ebpf, name)?;
        let info = prog.info().map_err(|source| DatapathError::Program {
            prog: name,
            source: source.into(),
        })?;
        Ok(info.verified_instruction_count())
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DatapathError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(DatapathError::Missing("AEAD test program"))?;
    prog.try_into().map_err(
        |source: aya::programs::ProgramError| DatapathError::Program {
            prog: name,
            source: source.into(),
        },
    )
}
