//! What this binary is: its version, the commit it was built from, and a
//! hash of the BPF object it embeds, for `--version`, the build-info metric
//! and bench reports (which name binaries by version, never by path).

use std::sync::OnceLock;

use blake2::{Blake2s256, Digest as _};

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the build script saw ("unknown" outside a checkout).
pub const GIT_COMMIT: &str = env!("WG_APPLIANCE_GIT_COMMIT");

/// BLAKE2s-256 of the embedded BPF object, first 16 hex digits ("none" in a
/// build without BPF programs).
pub fn bpf_object_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let obj = crate::datapath::ebpf_object();
        if obj.is_empty() {
            return "none".into();
        }
        Blake2s256::digest(obj)
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

/// One line: `0.1.0 (commit 0123456789ab, BPF object 0123456789abcdef)`.
pub fn long_version() -> &'static str {
    static LINE: OnceLock<String> = OnceLock::new();
    LINE.get_or_init(|| {
        format!(
            "{VERSION} (commit {GIT_COMMIT}, BPF object {})",
            bpf_object_hash()
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn hash_is_of_the_embedded_object() {
        use blake2::{Blake2s256, Digest as _};
        let obj = crate::datapath::ebpf_object();
        let h = super::bpf_object_hash();
        if obj.is_empty() {
            assert_eq!(h, "none");
        } else {
            let full: String = Blake2s256::digest(obj)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(h.len(), 16);
            assert!(full.starts_with(h));
        }
        assert!(super::long_version().starts_with(super::VERSION));
        assert!(super::long_version().contains(super::GIT_COMMIT));
    }
}
