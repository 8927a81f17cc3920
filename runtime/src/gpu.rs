//! The one module that touches CUDA (through cudarc): library checks, the device, its
//! streams and events, the arena, cuBLAS, the kernels of `kernels/` and NCCL.

use crate::RuntimeError;
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nccl::{Comm, Id};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};
use std::collections::HashMap;
use std::sync::Arc;

/// The kernel sources, built into the binary.
pub const KERNEL_SOURCES: &[(&str, &str)] = &[("elementwise.cu", include_str!("../../kernels/elementwise.cu"))];

/// Checks that a CUDA library can be loaded, without letting cudarc panic when it cannot.
pub fn require_library(name: &str) -> Result<(), RuntimeError> {
    let candidates = cudarc::get_lib_name_candidates(name);
    for c in &candidates {
        // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's CUDA
        // libraries, loaded exactly as cudarc itself would load them next.
        if unsafe { libloading::Library::new(c) }.is_ok() {
            return Ok(());
        }
    }
    Err(RuntimeError::MissingLibrary { library: name.into(), tried: candidates.join(", ") })
}

/// Every library the runtime needs.
pub fn require_all() -> Result<(), RuntimeError> {
    for lib in ["cuda", "nvrtc", "cublas", "nccl"] {
        require_library(lib)?;
    }
    Ok(())
}

fn driver(e: impl std::fmt::Debug) -> RuntimeError {
    RuntimeError::Driver(format!("{e:?}"))
}

/// One GPU with what a rank's plan needs on it.
#[derive(Debug)]
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    /// 0: compute, 1: overlapped forwards, 2: communication.
    pub streams: Vec<Arc<CudaStream>>,
    pub events: Vec<Option<CudaEvent>>,
    blas: Vec<CudaBlas>,
    kernels: HashMap<String, CudaFunction>,
    pub arena: CudaSlice<f32>,
}

impl Gpu {
    /// Opens GPU `ordinal`, creates `streams` streams, `events` event slots and an arena of
    /// `arena_bytes`, and loads the kernels (compiled for sm_90, cached under `cache`).
    pub fn open(
        ordinal: usize,
        streams: u32,
        events: u32,
        arena_bytes: u64,
        cache: &std::path::Path,
    ) -> Result<Gpu, RuntimeError> {
        require_all()?;
        let count = CudaContext::device_count().map_err(driver)?;
        if count <= ordinal as i32 {
            return Err(RuntimeError::NoGpu(count));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver)?;
        // SAFETY: the plan orders every access across streams with its own events; cudarc's
        // per-slice tracking would only add synchronisation the plan already has.
        unsafe { ctx.disable_event_tracking() };
        let streams: Vec<Arc<CudaStream>> =
            (0..streams.max(1)).map(|_| ctx.new_stream()).collect::<Result<_, _>>().map_err(driver)?;
        let blas = streams
            .iter()
            .take(2)
            .map(|s| CudaBlas::new(s.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RuntimeError::Blas(format!("{e:?}")))?;
        let arena = streams[0].alloc_zeros::<f32>((arena_bytes / 4) as usize).map_err(driver)?;
        let mut kernels = HashMap::new();
        for (file, source) in KERNEL_SOURCES {
            let ptx = compile_cached(file, source, cache)?;
            let module = ctx.load_module(ptx).map_err(driver)?;
            for (name, _) in pipewright_plan::node::KERNELS {
                let f = module.load_function(name).map_err(driver)?;
                kernels.insert((*name).to_owned(), f);
            }
        }
        Ok(Gpu { ctx, streams, events: (0..events).map(|_| None).collect(), blas, kernels, arena })
    }

    /// Device address of byte `offset` of the arena.
    fn addr(&self, offset: u64) -> u64 {
        let (base, _sync) = cudarc::driver::DevicePtr::device_ptr(&self.arena, &self.streams[0]);
        base + offset
    }

    /// Copies `data` to the arena at byte `offset`.
    pub fn upload(&mut self, offset: u64, data: &[f32]) -> Result<(), RuntimeError> {
        let start = (offset / 4) as usize;
        let mut view = self.arena.slice_mut(start..start + data.len());
        self.streams[0].memcpy_htod(data, &mut view).map_err(driver)
    }

    /// Reads `len` f32 from the arena at byte `offset`.
    pub fn download(&self, offset: u64, len: usize) -> Result<Vec<f32>, RuntimeError> {
        for s in &self.streams {
            s.synchronize().map_err(driver)?;
        }
        let start = (offset / 4) as usize;
        let view = self.arena.slice(start..start + len);
        let mut out = vec![0.0f32; len];
        self.streams[0].memcpy_dtoh(&view, &mut out).map_err(driver)?;
        Ok(out)
    }

    /// Row-major `C = alpha·op(A)·op(B) + beta·C` (f32) on `stream`; offsets in bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        stream: usize,
        (a, b, c): (u64, u64, u64),
        (m, n, k): (u64, u64, u64),
        (trans_a, trans_b): (bool, bool),
        alpha: f32,
        beta: f32,
    ) -> Result<(), RuntimeError> {
        let blas_handle = *self
            .blas
            .get(stream)
            .ok_or_else(|| RuntimeError::Blas(format!("no cuBLAS handle on stream {stream}")))?
            .handle();
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        // Row-major C (m×n) is column-major Cᵀ (n×m) = op(B)ᵀ·op(A)ᵀ: swap the operands.
        let ldb = if trans_b { k } else { n };
        let lda = if trans_a { m } else { k };
        // SAFETY: the three operands lie inside the arena (the plan was validated: each
        // holds at least its rows × columns), and the handle is bound to `stream`.
        unsafe {
            blas::sgemm(
                blas_handle,
                op(trans_b),
                op(trans_a),
                n as i32,
                m as i32,
                k as i32,
                &alpha,
                self.addr(b) as *const f32,
                ldb as i32,
                self.addr(a) as *const f32,
                lda as i32,
                &beta,
                self.addr(c) as *mut f32,
                n as i32,
            )
        }
        .map_err(|e| RuntimeError::Blas(format!("{e:?}")))
    }

    /// Launches kernel `name` over `elements` with buffer offsets `buffers` and `scalars`.
    pub fn kernel(
        &self,
        stream: usize,
        name: &str,
        buffers: &[u64],
        elements: u64,
        scalars: &[f32],
    ) -> Result<(), RuntimeError> {
        let f = self.kernels.get(name).ok_or_else(|| RuntimeError::Driver(format!("kernel {name} not loaded")))?;
        let ptrs: Vec<u64> = buffers.iter().map(|&o| self.addr(o)).collect();
        let n = elements as i64;
        let threads = 256u32;
        // The loss reduction has a fixed grid (its partials buffer holds one value per block).
        let blocks = if name == "mse_loss" {
            pipewright_plan::node::MSE_BLOCKS as u32
        } else {
            (elements.div_ceil(threads as u64)).clamp(1, 4096) as u32
        };
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let stream = &self.streams[stream];
        let mut launch = stream.launch_builder(f);
        for p in &ptrs {
            launch.arg(p);
        }
        let index: i32;
        match name {
            "tick" => {}
            "mse_loss" => {
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
        // SAFETY: the argument list matches the kernel's signature in kernels/elementwise.cu
        // (buffers, then the element count, then the scalars), and every buffer holds the
        // elements the validated plan says it does.
        unsafe { launch.launch(cfg) }.map(|_| ()).map_err(driver)
    }

    /// Records event `event` on `stream`.
    pub fn record(&mut self, stream: usize, event: usize) -> Result<(), RuntimeError> {
        self.events[event] = Some(self.streams[stream].record_event(None).map_err(driver)?);
        Ok(())
    }

    /// Makes `stream` wait for the last record of `event` (none yet: nothing to wait for).
    pub fn wait(&self, stream: usize, event: usize) -> Result<(), RuntimeError> {
        match &self.events[event] {
            Some(e) => self.streams[stream].wait(e).map_err(driver),
            None => Ok(()),
        }
    }

    /// The NCCL communicator of this rank, on the communication stream.
    pub fn communicator(&self, rank: u32, world: u32, id: [u8; 128]) -> Result<Comm, RuntimeError> {
        let id = Id::uninit(id.map(|b| b as std::ffi::c_char));
        Comm::from_rank(self.streams[2].clone(), rank as usize, world as usize, id)
            .map_err(|e| RuntimeError::Nccl { rank, what: format!("{e:?}") })
    }

    /// One NCCL group of p2p ops: (send?, peer, byte offset, f32 elements).
    pub fn group(&mut self, comm: &Comm, rank: u32, ops: &[(bool, u32, u64, usize)]) -> Result<(), RuntimeError> {
        let nccl = |e: cudarc::nccl::result::NcclError| RuntimeError::Nccl { rank, what: format!("{e:?}") };
        cudarc::nccl::result::group_start().map_err(nccl)?;
        for &(send, peer, offset, len) in ops {
            let start = (offset / 4) as usize;
            if send {
                comm.send(&self.arena.slice(start..start + len), peer as i32).map_err(nccl)?;
            } else {
                comm.recv(&mut self.arena.slice_mut(start..start + len), peer as i32).map_err(nccl)?;
            }
        }
        cudarc::nccl::result::group_end().map_err(nccl)?;
        Ok(())
    }
}

/// Compiles a kernel file for sm_90, reusing a cached PTX keyed by the source's hash.
fn compile_cached(file: &str, source: &str, cache: &std::path::Path) -> Result<Ptx, RuntimeError> {
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
