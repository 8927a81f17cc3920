//! The kernels of `kernels/`, built into the binary: which file defines which function,
//! and their compilation for sm_90 with NVRTC, cached on disk.

use crate::RuntimeError;
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

/// The kernel sources, built into the binary; `common.cuh` (what the f32 and bf16 kernels
/// share) goes in front of the files that use it, as NVRTC compiles one source at a time.
pub const KERNEL_SOURCES: &[(&str, &str)] = &[
    (
        "elementwise.cu",
        concat!(include_str!("../../../kernels/common.cuh"), include_str!("../../../kernels/elementwise.cu")),
    ),
    ("progress.cu", include_str!("../../../kernels/progress.cu")),
    ("fill.cu", concat!(include_str!("../../../kernels/common.cuh"), include_str!("../../../kernels/fill.cu"))),
    ("bf16.cu", concat!(include_str!("../../../kernels/common.cuh"), include_str!("../../../kernels/bf16.cu"))),
];

/// The watchdog's progress kernel (`kernels/progress.cu`), beside the plan's kernels.
pub(super) const MARK_KERNEL: &str = "mark_progress";

/// A memset as a kernel (`kernels/fill.cu`, [`crate::graph`]).
pub const FILL_KERNEL: &str = "fill_memset";

/// The functions the runtime loads from each kernel file.
pub fn functions_of(file: &str) -> Vec<&'static str> {
    match file {
        "progress.cu" => vec![MARK_KERNEL],
        "fill.cu" => vec![FILL_KERNEL],
        "bf16.cu" => pipewright_plan::node::KERNELS.iter().map(|(n, _)| *n).filter(|n| n.ends_with("_bf16")).collect(),
        _ => pipewright_plan::node::KERNELS.iter().map(|(n, _)| *n).filter(|n| !n.ends_with("_bf16")).collect(),
    }
}

/// Compiles a kernel file for sm_90, reusing a cached PTX keyed by the source's hash.
pub(super) fn compile_cached(file: &str, source: &str, cache: &std::path::Path) -> Result<Ptx, RuntimeError> {
    let hash = crate::sha256_hex(source.as_bytes());
    let path = cache.join(format!("{}-{}.ptx", file.trim_end_matches(".cu"), &hash[..16]));
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(Ptx::from_src(text));
    }
    let opts = CompileOptions { arch: Some("sm_90"), ..Default::default() };
    let ptx = compile_ptx_with_opts(source, opts)
        .map_err(|e| RuntimeError::Nvrtc { file: file.into(), log: format!("{e:?}") })?;
    // The cache is an optimisation: failing to write it is not an error.
    if std::fs::create_dir_all(cache).is_ok() {
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, ptx.to_src()).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(ptx)
}
