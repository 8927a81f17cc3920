//! pipewright's runtime: replays a compiled plan (`plan.json`) on one GPU per process, with
//! cuBLASLt GEMMs (GELU fused into their epilogues), the element-wise kernels of `kernels/` (NVRTC, sm_90) and NCCL p2p.
//!
//! Built without CUDA: every CUDA library (driver, NVRTC, cuBLASLt, NCCL) is loaded at run
//! time, and a missing one is a clear error ([`RuntimeError::MissingLibrary`]), never a
//! panic. The runtime depends on the plan format only — not on the compiler, Z3 or egg.

pub mod bench;
pub mod blas;
pub mod checkpoint;
pub mod copy_protocol;
pub mod error;
pub mod exec;
pub mod gpu;
pub mod graph;
pub mod launch;
pub mod profile;
pub mod timing;
pub mod tuning;
pub mod watchdog;

pub use error::RuntimeError;

/// Where compiled kernels and chosen GEMM algorithms are kept: `$PIPEWRIGHT_CACHE_DIR`, else
/// `pipewright-kernels` in the temporary directory. On a cluster, a directory every node
/// sees gives every node the same algorithms ([`tuning`]), so that runs there compute the
/// same bits too.
pub fn cache_dir() -> std::path::PathBuf {
    match std::env::var_os("PIPEWRIGHT_CACHE_DIR") {
        Some(dir) if !dir.is_empty() => dir.into(),
        _ => std::env::temp_dir().join("pipewright-kernels"),
    }
}

/// Lower-case hex sha256 of `bytes` (plan hashes, the kernel cache key).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
