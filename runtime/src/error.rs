//! The runtime's errors: each says what is wrong and how to fix it.

use pipewright_plan::PlanRefusal;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("the CUDA library \"{library}\" cannot be loaded (tried {tried}); install the NVIDIA driver / CUDA toolkit / NCCL, or add its directory to LD_LIBRARY_PATH")]
    MissingLibrary { library: String, tried: String },
    #[error("no CUDA GPU is visible (device count {0}); run on a GPU node, or check CUDA_VISIBLE_DEVICES")]
    NoGpu(i32),
    #[error("the plan is refused: {0}")]
    Plan(#[from] PlanRefusal),
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a plan: {message}")]
    NotAPlan { path: String, message: String },
    #[error("bad launch environment: {0}")]
    Environment(String),
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("NVRTC could not compile kernels/{file}: {log}")]
    Nvrtc { file: String, log: String },
    #[error("cuBLAS: {0}")]
    Blas(String),
    #[error("NCCL on rank {rank}: {what}")]
    Nccl { rank: u32, what: String },
    #[error("rank {rank}, node {node}: {what}")]
    Node { rank: u32, node: usize, what: String },
}

/// A CUDA driver error (or any the driver API wraps) as [`RuntimeError::Driver`]: the one
/// conversion every module uses.
pub(crate) fn driver(e: impl std::fmt::Debug) -> RuntimeError {
    RuntimeError::Driver(format!("{e:?}"))
}

impl RuntimeError {
    /// The process exit code: 2 for bad input or a missing GPU/library, 1 for failures
    /// while running.
    pub fn exit_code(&self) -> u8 {
        match self {
            RuntimeError::MissingLibrary { .. }
            | RuntimeError::NoGpu(_)
            | RuntimeError::Plan(_)
            | RuntimeError::Read { .. }
            | RuntimeError::NotAPlan { .. }
            | RuntimeError::Environment(_) => 2,
            _ => 1,
        }
    }
}
