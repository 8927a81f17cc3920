//! How a product's algorithm is chosen (see [`super`]'s doc): a recorded one that cuBLASLt
//! accepts, else the heuristic's candidates timed on scratch operands and captured once to
//! count the graph nodes each adds, the fastest that adds no memset winning within
//! [`MEMSET_TOLERANCE`]. (Whether a fused epilogue pays, and publishing the choice to this
//! machine's cache, is `fusion.rs`'s.)

use super::{destroy, Fused, Lt, Prepared, Ready, Shape, WORKSPACE_BYTES};
use crate::error::driver;
use crate::tuning::{Algo, Choice};
use crate::RuntimeError;
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use pipewright_plan::Dtype;
use std::rc::Rc;
use std::sync::Arc;

/// cublasLtReductionScheme_t's mask of none: the sum over k is never split.
const REDUCTION_NONE: u32 = 0;

/// How many of the heuristic's algorithms are timed per product (per kind of query).
pub const CANDIDATES: usize = 8;

/// How much slower (fraction) a kernel-only algorithm may be and still be preferred over
/// one that adds memset nodes.
pub const MEMSET_TOLERANCE: f64 = 0.05;

/// How long (ms) products run before any is timed ([`Lt::warm_up`]).
const WARM_UP_MS: f64 = 30.0;

/// One timed candidate: its algorithm, median ms, and the graph nodes it adds besides
/// kernels (memsets).
struct Tried {
    algo: sys::cublasLtMatmulAlgo_t,
    ms: f64,
    extra_nodes: usize,
}

impl Lt {
    /// Picks how `s` (described by `desc` and `layouts`, which it then owns) runs: as a
    /// recorded choice that cuBLASLt accepts (`true`: recorded), else with the tuned
    /// algorithm; a product with an epilogue cuBLASLt cannot fuse at this shape runs
    /// unfused. Deciding whether fusing pays, and publishing, is [`Lt::supports`]'s.
    pub(super) fn choose(
        &self,
        desc: sys::cublasLtMatmulDesc_t,
        layouts: [sys::cublasLtMatrixLayout_t; 3],
        s: Shape,
    ) -> Result<(Ready, bool), RuntimeError> {
        let recorded = [
            (self.known.get(&s).copied(), "the checkpoint's"),
            (self.cache.as_ref().and_then(|c| c.get(&s)), "this machine's earlier choice"),
        ];
        for (choice, whence) in recorded {
            match choice {
                Some(Choice::Unfused) if s.epilogue != Fused::Nothing => {
                    destroy(desc, &layouts);
                    return Ok((Ready::Unfused(format!("as recorded: {whence}")), true));
                }
                Some(Choice::Algo(algo)) if self.accepts(desc, &layouts, &algo) => {
                    let algo = sys::cublasLtMatmulAlgo_t { data: algo };
                    let choice = format!("as recorded: {whence}");
                    return Ok((Ready::Run(Prepared { desc, layouts, algo, choice }), true));
                }
                _ => {}
            }
        }
        // Candidates that may use the workspace and any split-K reduction; those that use
        // no workspace (none to clear); and those that split no sum at all (an in-place
        // split-K reduction accumulates into C, which must be cleared first).
        let mut results = self.heuristic(desc, &layouts, WORKSPACE_BYTES as u64, None);
        for r in self.heuristic(desc, &layouts, 0, None).into_iter().chain(self.heuristic(
            desc,
            &layouts,
            WORKSPACE_BYTES as u64,
            Some(REDUCTION_NONE),
        )) {
            if !results.iter().any(|q| q.algo.data == r.algo.data) {
                results.push(r);
            }
        }
        if results.is_empty() {
            destroy(desc, &layouts);
            return if s.epilogue != Fused::Nothing {
                Ok((Ready::Unfused("cuBLASLt cannot fuse it at this shape".into()), false))
            } else {
                Err(RuntimeError::Blas(format!("cuBLASLt has no algorithm for {s:?}")))
            };
        }
        let mut prepared = Prepared { desc, layouts, algo: results[0].algo, choice: "the heuristic's first".into() };
        if results.len() > 1 {
            if let Err(e) = self.tune(&mut prepared, s, &results) {
                destroy(desc, &layouts);
                return Err(e);
            }
        }
        Ok((Ready::Run(prepared), false))
    }

    /// Whether cuBLASLt runs `algo` for the product of `desc` and `layouts` within the
    /// workspace.
    pub(super) fn accepts(
        &self,
        desc: sys::cublasLtMatmulDesc_t,
        layouts: &[sys::cublasLtMatrixLayout_t; 3],
        algo: &Algo,
    ) -> bool {
        let algo = sys::cublasLtMatmulAlgo_t { data: *algo };
        // SAFETY: plain data, written by the check.
        let mut result: sys::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
        // SAFETY: the handle and descriptors are live and describe this product; `algo`
        // and `result` are valid for the call.
        let status = unsafe {
            sys::cublasLtMatmulAlgoCheck(
                self.handle,
                desc,
                layouts[0],
                layouts[1],
                layouts[2],
                layouts[2],
                &algo,
                &mut result,
            )
        };
        status == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && result.workspaceSize <= WORKSPACE_BYTES
    }

    /// The heuristic's best [`CANDIDATES`] algorithms for `desc` with at most `workspace`
    /// bytes of workspace and, when given, only the split-K reduction schemes in
    /// `reductions` (a cublasLtReductionScheme_t mask); none when it has none.
    fn heuristic(
        &self,
        desc: sys::cublasLtMatmulDesc_t,
        layouts: &[sys::cublasLtMatrixLayout_t; 3],
        workspace: u64,
        reductions: Option<u32>,
    ) -> Vec<sys::cublasLtMatmulHeuristicResult_t> {
        let Ok(pref) = lt::create_matmul_pref() else { return Vec::new() };
        let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> = Vec::with_capacity(CANDIDATES);
        let mut count = 0i32;
        // SAFETY: `pref` is live and the attribute is a uint64 byte count; every descriptor
        // is live and describes the operands of this product; `results` has room for
        // CANDIDATES entries, and `count` says how many were written.
        let status = unsafe {
            let mut set = lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &workspace as *const u64 as *const _,
                std::mem::size_of::<u64>(),
            );
            if let (Ok(()), Some(mask)) = (set, reductions) {
                // The attribute is a uint32 mask of cublasLtReductionScheme_t.
                set = lt::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                    &mask as *const u32 as *const _,
                    std::mem::size_of::<u32>(),
                );
            }
            let status = sys::cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                desc,
                layouts[0],
                layouts[1],
                layouts[2],
                layouts[2],
                pref,
                CANDIDATES as i32,
                results.as_mut_ptr(),
                &mut count,
            );
            let _ = lt::destroy_matmul_pref(pref);
            if set.is_err() {
                return Vec::new();
            }
            status
        };
        if status == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            // SAFETY: cuBLASLt wrote `count` (≤ CANDIDATES) results.
            unsafe { results.set_len(count.clamp(0, CANDIDATES as i32) as usize) };
        }
        results
            .retain(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && r.workspaceSize as u64 <= workspace);
        results
    }

    /// Times every candidate on scratch operands of `s`'s shape (a warm-up, then the median
    /// of 3) and counts the nodes each adds to a captured graph; picks per the module doc.
    fn tune(
        &self,
        p: &mut Prepared,
        s: Shape,
        candidates: &[sys::cublasLtMatmulHeuristicResult_t],
    ) -> Result<(), RuntimeError> {
        let stream = &self.streams[0];
        let scratch = self.scratch(s)?;
        p.algo = candidates[0].algo;
        self.warm_up(p, &scratch)?;
        let mut tried = Vec::new();
        for c in candidates {
            p.algo = c.algo;
            // Candidates that fail at run time (they may, for odd shapes) are skipped.
            if self.run_on(p, &scratch).is_err() {
                continue;
            }
            let mut times = Vec::new();
            for _ in 0..3 {
                times.push(self.time_once(p, &scratch)?);
            }
            times.sort_by(|a, b| a.total_cmp(b));
            let mode = cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
            stream.begin_capture(mode).map_err(driver)?;
            let issued = self.run_on(p, &scratch);
            // Counted, never instantiated.
            let graph = crate::graph::end_capture(stream)?;
            issued?;
            let census = match &graph {
                Some(g) => crate::graph::graph_census(g)?,
                None => Default::default(),
            };
            let extra_nodes = census.iter().filter(|(k, _)| k.as_str() != "kernel").map(|(_, n)| n).sum();
            tried.push(Tried { algo: c.algo, ms: times[1], extra_nodes });
        }
        stream.synchronize().map_err(driver)?;
        let best = tried.iter().map(|t| t.ms).fold(f64::INFINITY, f64::min);
        let lean = tried
            .iter()
            .filter(|t| t.extra_nodes == 0 && t.ms <= best * (1.0 + MEMSET_TOLERANCE))
            .min_by(|a, b| a.ms.total_cmp(&b.ms));
        let pick = lean.or_else(|| tried.iter().min_by(|a, b| a.ms.total_cmp(&b.ms)));
        match pick {
            Some(t) => {
                p.algo = t.algo;
                p.choice = format!(
                    "tuned: {:.4} ms, {} extra graph nodes (fastest of {} candidates: {best:.4} ms; {} without memsets)",
                    t.ms,
                    t.extra_nodes,
                    tried.len(),
                    tried.iter().filter(|t| t.extra_nodes == 0).count()
                );
            }
            None => p.algo = candidates[0].algo,
        }
        Ok(())
    }
}

/// Operands of one product's shape on the GPU, to time it on.
pub(super) struct Scratch {
    /// A, B, C and the pre-activation (kept alive while in use).
    _buffers: ScratchBuffers,
    operands: (u64, u64, u64),
    pre: Option<u64>,
    beta: f32,
}

/// The scratch buffers of one product's shape, whatever its epilogue: a fused product,
/// its plain twin and their race use the same ([`Lt::scratch`]).
pub(super) type ScratchBuffers = Rc<Vec<CudaSlice<u8>>>;

impl Scratch {
    /// A, B, C and a pre-activation for `s` on `stream`, filled.
    fn buffers(stream: &Arc<CudaStream>, s: Shape) -> Result<ScratchBuffers, RuntimeError> {
        let size = |rows: u64, cols: u64, d: Dtype| (rows * cols * d.size()) as usize;
        let c_dtype = s.dtypes.2;
        let bytes =
            [size(s.m, s.k, s.dtypes.0), size(s.k, s.n, s.dtypes.1), size(s.m, s.n, c_dtype), size(s.m, s.n, c_dtype)];
        let buffers = bytes
            .iter()
            .map(|&b| stream.alloc_zeros::<u8>(b.max(1)))
            .collect::<Result<Vec<CudaSlice<u8>>, _>>()
            .map_err(driver)?;
        let ptr = |i: usize| buffers[i].device_ptr(stream).0;
        // Random operands and pre-activation, as real data: a product of zeros or of one
        // repeated value runs faster (it draws less power, so the clocks stay higher), and
        // not by the same factor for every algorithm and epilogue (on an H200 at hidden
        // 4096, on bytes 0x3c the GELU-gradient product raced faster unfused, on random
        // data it ran 2.7% slower that way).
        for (i, dtype) in [(0, s.dtypes.0), (1, s.dtypes.1), (3, c_dtype)] {
            let b = bytes[i];
            let words = random_operand(b, dtype, i as u64);
            // SAFETY: the scratch buffer holds `b` bytes, `words` as many; synchronous.
            unsafe { cudarc::driver::result::memcpy_htod_sync(ptr(i), &words) }.map_err(driver)?;
        }
        Ok(Rc::new(buffers))
    }
}

impl Lt {
    /// Operands for `s` on stream 0: the buffers of the last shape asked for when they are
    /// `s`'s (a product with an epilogue and its plain twin share them, so that preparing
    /// and racing the two fills them once), else new ones, kept for the next ask until
    /// [`Lt::release_scratch`].
    pub(super) fn scratch(&self, s: Shape) -> Result<Scratch, RuntimeError> {
        let stream = &self.streams[0];
        let key = Shape { epilogue: Fused::Nothing, ..s };
        let kept = self.scratch.borrow().as_ref().filter(|(k, _)| *k == key).map(|(_, b)| b.clone());
        let buffers = match kept {
            Some(b) => b,
            None => {
                // The previous shape's go first: two products' operands need not fit at once.
                *self.scratch.borrow_mut() = None;
                let b = Scratch::buffers(stream, s)?;
                *self.scratch.borrow_mut() = Some((key, b.clone()));
                b
            }
        };
        let ptr = |i: usize| buffers[i].device_ptr(stream).0;
        let operands = (ptr(0), ptr(1), ptr(2));
        let pre = (s.epilogue != Fused::Nothing).then(|| ptr(3));
        Ok(Scratch { operands, pre, beta: if s.accumulate { 1.0 } else { 0.0 }, _buffers: buffers })
    }

    /// Frees the scratch buffers kept by `Lt::scratch` (once products are prepared).
    pub fn release_scratch(&self) {
        *self.scratch.borrow_mut() = None;
    }

    /// Issues `p`'s product on `scratch` (stream 0).
    fn run_on(&self, p: &Prepared, scratch: &Scratch) -> Result<(), RuntimeError> {
        self.matmul_with(p, 0, scratch.operands, scratch.pre, 1.0, scratch.beta)
    }

    /// Runs `p` on `scratch` for about [`WARM_UP_MS`], so that what is timed next runs at
    /// the clocks of a busy GPU: an idle one waits at its lowest clocks (an H200 at 345 MHz)
    /// and takes a while to raise them, and the candidates timed first would seem slower.
    /// Failures are left to the timing that follows.
    pub(super) fn warm_up(&self, p: &Prepared, scratch: &Scratch) -> Result<(), RuntimeError> {
        let Ok(once) = self.time_once(p, scratch) else { return Ok(()) };
        let runs = (WARM_UP_MS / once.max(1e-3)).ceil().min(10_000.0) as usize;
        for _ in 0..runs {
            self.run_on(p, scratch)?;
        }
        self.streams[0].synchronize().map_err(driver)
    }

    /// The time of one product of `p` on `scratch` (stream 0), in ms.
    pub(super) fn time_once(&self, p: &Prepared, scratch: &Scratch) -> Result<f64, RuntimeError> {
        let stream = &self.streams[0];
        let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let a = stream.record_event(timed).map_err(driver)?;
        self.run_on(p, scratch)?;
        let b = stream.record_event(timed).map_err(driver)?;
        Ok(a.elapsed_ms(&b).map_err(driver)? as f64)
    }
}

/// `bytes` bytes of uniform values on (-√3, √3) (unit variance, as the plans' data) of
/// `dtype`, as 16-bit words, from a splitmix64 stream seeded by `stream`.
fn random_operand(bytes: usize, dtype: Dtype, stream: u64) -> Vec<u16> {
    let mut state = stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let uniform = |bits: u64| ((bits as f32 + 0.5) / 65536.0 * 2.0 - 1.0) * 1.732_050_8;
    let mut words = Vec::with_capacity(bytes / 2);
    while words.len() < bytes / 2 {
        let h = next();
        let lanes = [h & 0xffff, (h >> 16) & 0xffff, (h >> 32) & 0xffff, h >> 48];
        match dtype {
            Dtype::Bf16 => words.extend(lanes.map(|l| crate::gpu::bf16_bits(uniform(l)))),
            Dtype::F32 => {
                for pair in lanes.chunks(2) {
                    let bits = uniform(pair[0]).to_bits();
                    words.extend([bits as u16, (bits >> 16) as u16]);
                }
            }
        }
    }
    words.truncate(bytes / 2);
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_operands_have_unit_variance_and_fill_exactly() {
        for dtype in [Dtype::Bf16, Dtype::F32] {
            let words = random_operand(1 << 16, dtype, 1);
            assert_eq!(words.len(), 1 << 15);
            let values: Vec<f32> = match dtype {
                Dtype::Bf16 => words.iter().map(|&w| f32::from_bits((w as u32) << 16)).collect(),
                Dtype::F32 => words.chunks(2).map(|p| f32::from_bits(p[0] as u32 | (p[1] as u32) << 16)).collect(),
            };
            let mean = values.iter().sum::<f32>() / values.len() as f32;
            let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / values.len() as f32;
            assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "{dtype:?}: mean {mean}, variance {var}");
            assert!(values.iter().all(|v| v.abs() <= 1.735), "{dtype:?}"); // √3, and bf16 rounds it up
        }
        // Another stream, other values.
        assert_ne!(random_operand(64, Dtype::Bf16, 1), random_operand(64, Dtype::Bf16, 2));
    }
}
