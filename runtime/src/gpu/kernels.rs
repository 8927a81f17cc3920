//! The kernels of `kernels/`, built into the binary: which file defines which function,
//! their compilation for sm_90 with NVRTC, cached on disk, and their launch.

use crate::blas::{Fused, Shape};
use crate::error::driver;
use crate::RuntimeError;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};
use std::collections::HashMap;
use std::sync::Arc;

/// The kernel sources, built into the binary; `common.cuh` (what the f32 and bf16 kernels
/// share) goes in front of the files that use it, as NVRTC compiles one source at a time.
pub const KERNEL_SOURCES: &[(&str, &str)] = &[
    (
        "elementwise.cu",
        concat!(include_str!("../../../kernels/common.cuh"), include_str!("../../../kernels/elementwise.cu")),
    ),
    ("progress.cu", include_str!("../../../kernels/progress.cu")),
    ("peer.cu", include_str!("../../../kernels/peer.cu")),
    ("fill.cu", concat!(include_str!("../../../kernels/common.cuh"), include_str!("../../../kernels/fill.cu"))),
    ("bf16.cu", concat!(include_str!("../../../kernels/common.cuh"), include_str!("../../../kernels/bf16.cu"))),
];

/// The watchdog's progress kernel (`kernels/progress.cu`), beside the plan's kernels.
pub(super) const MARK_KERNEL: &str = "mark_progress";

/// The copy-engine transport's flags (`kernels/peer.cu`, [`super::peer`]).
pub(super) const PEER_FLAG_SET: &str = "peer_flag_set";
pub(super) const PEER_FLAG_WAIT: &str = "peer_flag_wait";

/// A memset as a kernel (`kernels/fill.cu`, [`crate::graph`]).
pub const FILL_KERNEL: &str = "fill_memset";

/// The functions the runtime loads from each kernel file.
pub fn functions_of(file: &str) -> Vec<&'static str> {
    match file {
        "progress.cu" => vec![MARK_KERNEL],
        "peer.cu" => vec![PEER_FLAG_SET, PEER_FLAG_WAIT],
        "fill.cu" => vec![FILL_KERNEL],
        "bf16.cu" => pipewright_plan::node::KERNELS.iter().map(|k| k.name).filter(|n| n.ends_with("_bf16")).collect(),
        _ => pipewright_plan::node::KERNELS.iter().map(|k| k.name).filter(|n| !n.ends_with("_bf16")).collect(),
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

/// Launches `f` (kernel `name`) on `stream` over `elements`, with the device pointers
/// `ptrs` and `scalars` as its arguments.
pub(super) fn launch(
    stream: &Arc<CudaStream>,
    f: &CudaFunction,
    name: &str,
    ptrs: &[u64],
    elements: u64,
    scalars: &[f32],
) -> Result<(), RuntimeError> {
    if let Some(sig) = pipewright_plan::node::kernel_sig(name) {
        if (sig.per_element.len(), sig.scalars) != (ptrs.len(), scalars.len()) {
            return Err(RuntimeError::Driver(format!(
                "kernel {name} takes {} buffers and {} scalars, given {} and {}",
                sig.per_element.len(),
                sig.scalars,
                ptrs.len(),
                scalars.len()
            )));
        }
    }
    let n = elements as i64;
    let threads = 256u32;
    // The loss reduction has a fixed grid (its partials buffer holds one value per block).
    let blocks = if name.starts_with("mse_loss") {
        pipewright_plan::node::MSE_BLOCKS as u32
    } else {
        (elements.div_ceil(threads as u64)).clamp(1, 4096) as u32
    };
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    let mut launch = stream.launch_builder(f);
    for p in ptrs {
        launch.arg(p);
    }
    let index: i32;
    match name {
        "tick" => {}
        "mse_loss" | "mse_loss_bf16" => {
            index = scalars.get(1).copied().unwrap_or(0.0) as i32;
            launch.arg(&n);
            launch.arg(&scalars[0]);
            launch.arg(&index);
        }
        _ => {
            launch.arg(&n);
            for s in scalars {
                launch.arg(s);
            }
        }
    }
    // SAFETY: the argument list matches the kernel's signature in kernels/*.cu (buffers,
    // then the element count, then the scalars: counted above against the plan format's
    // signature, which runtime/tests/kernel_sources.rs checks against the source), and
    // every buffer holds the elements its caller says (a validated plan's buffers, or
    // scratch of that size).
    unsafe { launch.launch(cfg) }.map(|_| ()).map_err(driver)
}

/// The time (ms) of one run of the kernel that computes product `s`'s epilogue when it is
/// not fused (`gelu_forward` or `gelu_backward`, of C's dtype, over C's m × n elements), on
/// scratch operands kept in `scratch` between calls of the same shape.
pub(super) fn epilogue_kernel_ms(
    stream: &Arc<CudaStream>,
    kernels: &HashMap<String, CudaFunction>,
    s: Shape,
    scratch: &mut Option<(Shape, CudaSlice<u8>, CudaSlice<u8>)>,
) -> Result<f64, RuntimeError> {
    let base = match s.epilogue {
        Fused::Gelu => "gelu_forward",
        Fused::GeluGrad => "gelu_backward",
        Fused::Nothing => return Ok(0.0),
    };
    let name = pipewright_plan::node::kernel_name(base, s.dtypes.2);
    let f = kernels.get(&name).ok_or_else(|| RuntimeError::Driver(format!("kernel {name} not loaded")))?;
    let elements = s.m * s.n;
    if scratch.as_ref().is_none_or(|(shape, _, _)| *shape != s) {
        // Any values: the kernel does not branch on them.
        let zeros = || stream.alloc_zeros::<u8>(((elements * s.dtypes.2.size()) as usize).max(1)).map_err(driver);
        *scratch = Some((s, zeros()?, zeros()?));
    }
    let Some((_, pre, c)) = scratch.as_ref() else {
        return Err(RuntimeError::Driver("no scratch for the epilogue kernel".into()));
    };
    let (pre, c) = (pre.device_ptr(stream).0, c.device_ptr(stream).0);
    // gelu_forward(pre, c); gelu_backward(pre, c, c): the gradient in place, as run.
    let ptrs: Vec<u64> = if s.epilogue == Fused::Gelu { vec![pre, c] } else { vec![pre, c, c] };
    let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let a = stream.record_event(timed).map_err(driver)?;
    launch(stream, f, &name, &ptrs, elements, &[])?;
    let b = stream.record_event(timed).map_err(driver)?;
    Ok(a.elapsed_ms(&b).map_err(driver)? as f64)
}
