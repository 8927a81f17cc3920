//! How a product's algorithm is chosen (see [`super`]'s doc): a recorded one that cuBLASLt
//! accepts, else the heuristic's candidates timed on scratch operands and captured once to
//! count the graph nodes each adds, the fastest that adds no memset winning within
//! [`MEMSET_TOLERANCE`]; the choice then published to this machine's cache.

use super::{destroy, Fused, Lt, Prepared, Shape, WORKSPACE_BYTES};
use crate::error::driver;
use crate::tuning::Algo;
use crate::RuntimeError;
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, DevicePtr};
use pipewright_plan::Dtype;

/// cublasLtReductionScheme_t's mask of none: the sum over k is never split.
const REDUCTION_NONE: u32 = 0;

/// How many of the heuristic's algorithms are timed per product (per kind of query).
pub const CANDIDATES: usize = 8;

/// How much slower (fraction) a kernel-only algorithm may be and still be preferred over
/// one that adds memset nodes.
pub const MEMSET_TOLERANCE: f64 = 0.05;

/// One timed candidate: its algorithm, median ms, and the graph nodes it adds besides
/// kernels (memsets).
struct Tried {
    algo: sys::cublasLtMatmulAlgo_t,
    ms: f64,
    extra_nodes: usize,
}

impl Lt {
    /// Picks the algorithm of `s` (described by `desc` and `layouts`, which it then owns):
    /// a recorded one that cuBLASLt accepts, else the tuned one (then published to the
    /// cache, whose first published choice wins).
    pub(super) fn choose(
        &self,
        desc: sys::cublasLtMatmulDesc_t,
        layouts: [sys::cublasLtMatrixLayout_t; 3],
        s: Shape,
    ) -> Result<Option<Prepared>, RuntimeError> {
        let recorded = [
            (self.known.get(&s).copied(), "the checkpoint's"),
            (self.cache.as_ref().and_then(|c| c.get(&s)), "this machine's earlier choice"),
        ];
        for (algo, whence) in recorded {
            if let Some(algo) = algo.filter(|a| self.accepts(desc, &layouts, a)) {
                let algo = sys::cublasLtMatmulAlgo_t { data: algo };
                return Ok(Some(Prepared { desc, layouts, algo, choice: format!("as recorded: {whence}") }));
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
                Ok(None)
            } else {
                Err(RuntimeError::Blas(format!("cuBLASLt has no algorithm for {s:?}")))
            };
        }
        let mut prepared = Prepared { desc, layouts, algo: results[0].algo, choice: "the heuristic's first".into() };
        if results.len() > 1 {
            match self.tune(&mut prepared, s, &results) {
                Ok(()) => {}
                Err(e) => {
                    destroy(desc, &layouts);
                    return Err(e);
                }
            }
        }
        if let Some(cache) = &self.cache {
            let first = cache.publish(&s, prepared.algo.data);
            if first != prepared.algo.data && self.accepts(desc, &layouts, &first) {
                prepared.algo = sys::cublasLtMatmulAlgo_t { data: first };
                prepared.choice = "as recorded: another rank's choice, published first".into();
            }
        }
        Ok(Some(prepared))
    }

    /// Whether cuBLASLt runs `algo` for the product of `desc` and `layouts` within the
    /// workspace.
    fn accepts(
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
        let size = |rows: u64, cols: u64, d: Dtype| (rows * cols * d.size()) as usize;
        let c_dtype = s.dtypes.2;
        let bytes =
            [size(s.m, s.k, s.dtypes.0), size(s.k, s.n, s.dtypes.1), size(s.m, s.n, c_dtype), size(s.m, s.n, c_dtype)];
        let scratch = bytes
            .iter()
            .map(|&b| stream.alloc_zeros::<u8>(b.max(1)))
            .collect::<Result<Vec<CudaSlice<u8>>, _>>()
            .map_err(driver)?;
        let ptr = |i: usize| scratch[i].device_ptr(stream).0;
        // Operands of small magnitude, not zeros (a product of zeros runs faster than real
        // data): bytes 0x3c make 0.0115 as a bf16 and as an f32.
        for (i, &b) in bytes.iter().enumerate().take(2) {
            // SAFETY: the scratch buffer holds `b` bytes.
            unsafe { cudarc::driver::result::memset_d8_async(ptr(i), 0x3c, b, stream.cu_stream()) }.map_err(driver)?;
        }
        let operands = (ptr(0), ptr(1), ptr(2));
        let pre = (s.epilogue != Fused::Nothing).then(|| ptr(3));
        let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let beta = if s.accumulate { 1.0 } else { 0.0 };
        let mut tried = Vec::new();
        for c in candidates {
            p.algo = c.algo;
            // Candidates that fail at run time (they may, for odd shapes) are skipped.
            if self.matmul_with(p, 0, operands, pre, 1.0, beta).is_err() {
                continue;
            }
            let mut times = Vec::new();
            for _ in 0..3 {
                let a = stream.record_event(timed).map_err(driver)?;
                self.matmul_with(p, 0, operands, pre, 1.0, beta)?;
                let b = stream.record_event(timed).map_err(driver)?;
                times.push(a.elapsed_ms(&b).map_err(driver)? as f64);
            }
            times.sort_by(|a, b| a.total_cmp(b));
            let mode = cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
            stream.begin_capture(mode).map_err(driver)?;
            let issued = self.matmul_with(p, 0, operands, pre, 1.0, beta);
            let graph = stream.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0)).map_err(driver)?;
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
