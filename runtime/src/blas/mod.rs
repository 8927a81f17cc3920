//! Matrix products through cuBLASLt: one handle, a workspace per compute stream (given
//! explicitly, so that a captured graph holds no allocation of cuBLAS's own), and per
//! distinct product — shape, transposes, dtypes, epilogue — its descriptors and its
//! algorithm, prepared on first use (the eager first step) and reused by every later call
//! and by the graph capture.
//!
//! The algorithm is tuned, not guessed (`choose.rs`): the heuristic's best [`CANDIDATES`]
//! (and its best with no workspace, and with no split-K reduction) are timed on random
//! scratch operands of the product's shape, on a GPU warmed up first, and each is captured
//! once to count the graph nodes it adds. Split-K and stream-K algorithms clear their workspace with a memset before each
//! product, and a replayed graph pays host time for every memset node (measured: 3 µs to
//! launch a 470-node graph of kernels, 220–270 µs with 128–176 memsets among 400), so the
//! fastest algorithm that adds only its kernel wins unless another is more than
//! [`MEMSET_TOLERANCE`] faster (at the bf16 shapes every candidate adds one; the graph's
//! memset nodes are rewritten as kernel nodes since, [`crate::graph`]). A product with a
//! GELU epilogue is then raced against the plain product and the GELU kernel, and runs the
//! faster way (`fusion.rs`). A choice, once made, is kept ([`crate::tuning`]): a product
//! whose choice a checkpoint or this machine's cache records uses it, untimed, so that runs
//! of a plan, and a resumed run, compute the same bits.
//!
//! Plans are row-major, cuBLASLt column-major: row-major `C = op(A)·op(B)` (m × n) is
//! column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`, so B's memory is cuBLASLt's first operand and A's the
//! second, and C's (n × m, leading dimension n) is also the layout of an epilogue's
//! pre-activation.

mod choose;
mod fusion;

pub use choose::{CANDIDATES, MEMSET_TOLERANCE};
pub use fusion::{fusion_pays, FUSION_MARGIN};

use crate::tuning::{Cache, Choice, Record, Tuned};
use crate::RuntimeError;
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use pipewright_plan::{Dtype, Epilogue, Gemm};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// cuBLAS's recommended workspace on Hopper (32 MiB), per stream.
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// What a product fuses after its sum (a plan's [`Epilogue`] without its buffer).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Fused {
    Nothing,
    /// GELU, keeping the pre-activation (cuBLASLt's `GELU_AUX`).
    Gelu,
    /// The GELU gradient at a kept pre-activation (`DGELU`).
    GeluGrad,
}

/// What distinguishes one prepared product from another.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Shape {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub trans_a: bool,
    pub trans_b: bool,
    /// A, B and C.
    pub dtypes: (Dtype, Dtype, Dtype),
    pub epilogue: Fused,
    pub accumulate: bool,
}

impl Shape {
    /// The shape of the plan's product `g`, whose operands have `dtypes` (A, B, C).
    pub fn of(g: &Gemm, dtypes: (Dtype, Dtype, Dtype)) -> Shape {
        Shape {
            m: g.m,
            n: g.n,
            k: g.k,
            trans_a: g.trans_a,
            trans_b: g.trans_b,
            dtypes,
            epilogue: match g.epilogue {
                Epilogue::None => Fused::Nothing,
                Epilogue::Gelu { .. } => Fused::Gelu,
                Epilogue::GeluGrad { .. } => Fused::GeluGrad,
            },
            accumulate: g.beta != 0.0,
        }
    }
}

/// The descriptors of one product, and its algorithm.
struct Prepared {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
    /// How the algorithm was chosen (for `gemm-rate`).
    choice: String,
}

/// How a product runs, once prepared.
enum Ready {
    /// One cuBLASLt call (its epilogue, if any, fused).
    Run(Prepared),
    /// The plain product (prepared under its own shape), then the epilogue's kernel; why.
    Unfused(String),
}

/// The cuBLASLt handle of one GPU.
pub struct Lt {
    handle: sys::cublasLtHandle_t,
    streams: Vec<Arc<CudaStream>>,
    workspaces: Vec<CudaSlice<u8>>,
    prepared: HashMap<Shape, Ready>,
    /// The cuBLASLt version and GPU model the algorithms are valid for (and the SM count
    /// target, when there is one: an algorithm is tuned for the SMs it gets).
    library: String,
    /// cuBLASLt's SM count target for every product (`None`: every SM).
    sm_target: Option<u32>,
    /// Fuse every epilogue cuBLASLt can, unraced (`fusion.rs`).
    always_fuse: bool,
    /// Choices to use without tuning (a checkpoint's, [`Lt::adopt`]).
    known: HashMap<Shape, Choice>,
    /// This machine's choices (none: tune every product, keep nothing).
    cache: Option<Cache>,
    /// The scratch operands of the shape last prepared ([`Lt::scratch`]).
    scratch: std::cell::RefCell<Option<(Shape, choose::ScratchBuffers)>>,
}

impl std::fmt::Debug for Lt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lt({} prepared products)", self.prepared.len())
    }
}

fn blas(e: lt::CublasError) -> RuntimeError {
    RuntimeError::Blas(format!("{e:?}"))
}

fn ty(d: Dtype) -> sys::cudaDataType {
    match d {
        Dtype::F32 => sys::cudaDataType::CUDA_R_32F,
        Dtype::Bf16 => sys::cudaDataType::CUDA_R_16BF,
    }
}

/// cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 (a 32-bit enum).
fn op(t: bool) -> i32 {
    t as i32
}

/// Sets one attribute of a matmul descriptor.
///
/// # Safety
/// `desc` is live, and `T` is the attribute's type.
unsafe fn set<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<(), RuntimeError> {
    // SAFETY: per the caller; cuBLASLt copies the value.
    unsafe { lt::set_matmul_desc_attribute(desc, attr, value as *const T as *const _, std::mem::size_of::<T>()) }
        .map_err(|e| RuntimeError::Blas(format!("setting {attr:?}: {e:?}")))
}

impl Lt {
    /// A handle on the GPU of `streams` (named `gpu`) and one workspace for each of
    /// `streams` (those that run products), whose products run on `sm_target` SMs (`None`:
    /// all), with every fusable epilogue fused when `always_fuse` (else where it pays),
    /// keeping its choices in the cache directory `cache` when given ([`crate::tuning`]).
    pub fn new(
        streams: &[Arc<CudaStream>],
        gpu: &str,
        sm_target: Option<u32>,
        always_fuse: bool,
        cache: Option<&std::path::Path>,
    ) -> Result<Lt, RuntimeError> {
        let handle = lt::create_handle().map_err(blas)?;
        // SAFETY: a plain query of the loaded library's version.
        let mut library = crate::tuning::library(unsafe { sys::cublasLtGetVersion() }, gpu);
        if let Some(sms) = sm_target {
            library.push_str(&format!(", products on {sms} SMs"));
        }
        // Kept apart: a product recorded unfused runs fused under `always_fuse`.
        if always_fuse {
            library.push_str(", epilogues always fused");
        }
        let workspaces = streams
            .iter()
            // SAFETY: the workspace is scratch for cuBLASLt; nothing reads it uninitialised.
            .map(|s| unsafe { s.alloc::<u8>(WORKSPACE_BYTES) })
            .collect::<Result<Vec<_>, _>>()
            .map_err(crate::error::driver)?;
        let cache = cache.map(|dir| Cache::new(dir, &library));
        Ok(Lt {
            handle,
            streams: streams.to_vec(),
            workspaces,
            prepared: HashMap::new(),
            library,
            sm_target,
            always_fuse,
            scratch: Default::default(),
            known: HashMap::new(),
            cache,
        })
    }

    /// Uses `record`'s algorithms for the products not prepared yet (each still checked by
    /// cuBLASLt before use); refused, with the reason, when it was made with another
    /// cuBLASLt or on another GPU model.
    pub fn adopt(&mut self, record: Record) -> Result<(), String> {
        if record.library != self.library {
            return Err(format!("recorded for {}, this is {}", record.library, self.library));
        }
        self.known.extend(record.products.into_iter().map(|t| (t.shape, t.choice())));
        Ok(())
    }

    /// The choice of every product prepared so far.
    pub fn record(&self) -> Record {
        let mut products: Vec<Tuned> = self
            .prepared
            .iter()
            .map(|(shape, ready)| match ready {
                Ready::Run(p) => Tuned::new(*shape, Choice::Algo(p.algo.data)),
                Ready::Unfused(_) => Tuned::new(*shape, Choice::Unfused),
            })
            .collect();
        products.sort_by_key(|t| format!("{:?}", t.shape));
        Record { library: self.library.clone(), products }
    }

    /// Describes `s` and picks how it runs ([`Lt::choose`]; `true`: as recorded).
    fn prepare(&self, s: Shape) -> Result<(Ready, bool), RuntimeError> {
        let desc = lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType::CUDA_R_32F)
            .map_err(blas)?;
        let mut layouts = [std::ptr::null_mut(); 3];
        match Self::describe(desc, &mut layouts, s, self.sm_target) {
            Ok(()) => self.choose(desc, layouts, s),
            Err(e) => {
                destroy(desc, &layouts);
                Err(e)
            }
        }
    }

    /// Sets `desc`'s attributes (the SM count target when given) and creates the three
    /// layouts of `s` (on error, those created so far stay in `layouts` for the caller to
    /// destroy).
    fn describe(
        desc: sys::cublasLtMatmulDesc_t,
        layouts: &mut [sys::cublasLtMatrixLayout_t; 3],
        s: Shape,
        sm_target: Option<u32>,
    ) -> Result<(), RuntimeError> {
        use sys::cublasLtMatmulDescAttributes_t as attr;
        // SAFETY: `desc` is live; each value has its attribute's type (the operations are
        // cublasOperation_t, the epilogue cublasLtEpilogue_t, both 32-bit enums, the
        // leading dimension int64 and the SM count target int32).
        unsafe {
            if let Some(sms) = sm_target {
                set(desc, attr::CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &(sms as i32))?;
            }
            set(desc, attr::CUBLASLT_MATMUL_DESC_TRANSA, &op(s.trans_b))?;
            set(desc, attr::CUBLASLT_MATMUL_DESC_TRANSB, &op(s.trans_a))?;
            if s.epilogue != Fused::Nothing {
                let e = if s.epilogue == Fused::Gelu {
                    sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_AUX
                } else {
                    sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DGELU
                };
                set(desc, attr::CUBLASLT_MATMUL_DESC_EPILOGUE, &e)?;
                set(desc, attr::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &(s.n as i64))?;
            }
        }
        // Column-major: cuBLASLt's A is the plan's B (n × k after op), its B the plan's A.
        let (rows_b, cols_b, ld_b) = if s.trans_b { (s.k, s.n, s.k) } else { (s.n, s.k, s.n) };
        let (rows_a, cols_a, ld_a) = if s.trans_a { (s.m, s.k, s.m) } else { (s.k, s.m, s.k) };
        let shapes =
            [(s.dtypes.1, rows_b, cols_b, ld_b), (s.dtypes.0, rows_a, cols_a, ld_a), (s.dtypes.2, s.n, s.m, s.n)];
        for (slot, (dtype, rows, cols, ld)) in layouts.iter_mut().zip(shapes) {
            *slot = lt::create_matrix_layout(ty(dtype), rows, cols, ld as i64).map_err(blas)?;
        }
        Ok(())
    }

    /// How `shape`'s algorithm was chosen, or why its epilogue runs unfused, once prepared.
    pub fn choice(&self, shape: &Shape) -> Option<String> {
        self.prepared.get(shape).map(|ready| match ready {
            Ready::Run(p) => p.choice.clone(),
            Ready::Unfused(why) => format!("not fused: the product, then the epilogue's kernel ({why})"),
        })
    }

    /// `C = alpha·op(A)·op(B) + beta·C` with `shape`'s epilogue (its pre-activation at
    /// `pre`), on `stream`; addresses are device pointers. `shape` must be supported
    /// ([`Lt::supports`]).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        stream: usize,
        shape: Shape,
        operands: (u64, u64, u64),
        pre: Option<u64>,
        alpha: f32,
        beta: f32,
    ) -> Result<(), RuntimeError> {
        let p = self
            .prepared
            .get(&shape)
            .and_then(|ready| match ready {
                Ready::Run(p) => Some(p),
                Ready::Unfused(_) => None,
            })
            .ok_or_else(|| RuntimeError::Blas(format!("{shape:?} was not prepared to run as one product")))?;
        self.matmul_with(p, stream, operands, pre, alpha, beta)
    }

    fn matmul_with(
        &self,
        p: &Prepared,
        stream: usize,
        (a, b, c): (u64, u64, u64),
        pre: Option<u64>,
        alpha: f32,
        beta: f32,
    ) -> Result<(), RuntimeError> {
        let ws = &self.workspaces[stream];
        let s = &self.streams[stream];
        let (ws_ptr, _sync) = ws.device_ptr(s);
        if let Some(pre) = pre {
            // SAFETY: `desc` is live; the attribute is a device pointer. The descriptor is
            // only used by this thread, and cuBLASLt reads it during this call (a graph
            // capture records the value).
            unsafe {
                set(p.desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &pre)?
            };
        }
        // SAFETY: the operands hold the shapes the layouts describe (plan buffers of a
        // validated plan, or the tuning's scratch), alpha and beta are f32 as the f32 scale
        // type requires, the workspace belongs to this stream (no two streams share one),
        // and the algorithm was returned by the heuristic for exactly these descriptors
        // with at most this workspace.
        unsafe {
            lt::matmul(
                self.handle,
                p.desc,
                &alpha as *const f32 as *const _,
                &beta as *const f32 as *const _,
                b as *const _,
                p.layouts[0],
                a as *const _,
                p.layouts[1],
                c as *const _,
                p.layouts[2],
                c as *mut _,
                p.layouts[2],
                &p.algo,
                ws_ptr as *mut _,
                WORKSPACE_BYTES,
                s.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(blas)
    }
}

fn destroy(desc: sys::cublasLtMatmulDesc_t, layouts: &[sys::cublasLtMatrixLayout_t; 3]) {
    // SAFETY: each was created by cuBLASLt (null: never created) and is destroyed once, here.
    unsafe {
        let _ = lt::destroy_matmul_desc(desc);
        for l in layouts.iter().filter(|l| !l.is_null()) {
            let _ = lt::destroy_matrix_layout(*l);
        }
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        for (_, ready) in self.prepared.drain() {
            if let Ready::Run(p) = ready {
                destroy(p.desc, &p.layouts);
            }
        }
        // SAFETY: created in `new`, destroyed once; no product is in flight on a dropped
        // runtime (the streams are synchronised before the GPU is dropped).
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}
