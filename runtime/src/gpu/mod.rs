//! The one module that touches CUDA (through cudarc): library checks, the device, its
//! streams and events, the arena, the matrix products (through [`crate::blas`]), the kernels
//! of `kernels/`, NCCL and the copy-engine p2p transport (`peer`), and the timing of p2p
//! batches with nothing to wait for (`calibrate`).

mod calibrate;
mod kernels;
mod nccl;
mod peer;

pub use kernels::{functions_of, FILL_KERNEL, KERNEL_SOURCES};
pub use nccl::{nccl_abort, nccl_async_error, Communicator, HostMark};
pub use peer::{default_comm_sms, Transport};

use crate::blas::{Fused, Lt, Shape};
use crate::error::driver;
use crate::RuntimeError;
use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nccl::{result as nccl_result, sys as nccl_sys};
use kernels::{compile_cached, MARK_KERNEL};
use pipewright_plan::{Buffer, Dtype, Epilogue, Gemm, COMM_STREAM};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

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
    for lib in ["cuda", "nvrtc", "cublasLt", "nccl"] {
        require_library(lib)?;
    }
    Ok(())
}

/// How the products use the GPU's SMs, and share them with the communication (see
/// [`Gpu::open`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sharing {
    /// The communication stream (2) gets the device's greatest priority, so that its NCCL
    /// kernels take SMs ahead of the products' blocks as they free up (a captured kernel
    /// keeps its stream's priority; see [`crate::graph`]).
    pub comm_first: bool,
    /// SMs the matrix products leave free for the communication's kernels (NCCL's, or the
    /// copy engines' flags): cuBLASLt's SM count target is the GPU's SMs less these (0:
    /// every SM). A product already holding every SM keeps a kernel launched beside it
    /// waiting for SMs until its blocks retire.
    pub comm_sms: u32,
    /// Fuse every GELU epilogue cuBLASLt can fuse, unraced ([`crate::blas`]'s fusion: by
    /// default a fused product runs unfused where that measured faster).
    pub always_fuse: bool,
}

/// One GPU with what a rank's plan needs on it.
#[derive(Debug)]
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    /// 0: compute, 1: overlapped forwards, 2: communication.
    pub streams: Vec<Arc<CudaStream>>,
    pub events: Vec<Option<CudaEvent>>,
    lt: Lt,
    /// Products whose epilogue runs unfused (said once each).
    unfused: HashSet<Shape>,
    kernels: HashMap<String, CudaFunction>,
    /// Every buffer of the rank's plan, at its offset (exportable: the copy-engine
    /// transport's peers write into it).
    arena: peer::Exportable,
    /// As opened.
    pub sharing: Sharing,
    /// The copy-engine transport, once connected ([`Gpu::connect_peers`]); p2p groups go
    /// through NCCL without it.
    peers: Option<peer::Peers>,
}

impl Gpu {
    /// Opens GPU `ordinal`, creates `streams` streams, `events` event slots and an arena of
    /// `arena_bytes`, and loads the kernels (compiled for sm_90, cached under `cache`,
    /// where the products' algorithms are kept too: `cache/tuning`, see [`crate::tuning`]).
    /// `sharing` says how the products leave SMs to the communication.
    pub fn open(
        ordinal: usize,
        streams: u32,
        events: u32,
        arena_bytes: u64,
        cache: &std::path::Path,
        sharing: Sharing,
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
        ctx.bind_to_thread().map_err(driver)?;
        let (_least, greatest) = cudarc::driver::result::stream::get_priority_range().map_err(driver)?;
        let streams: Vec<Arc<CudaStream>> = (0..streams.max(1))
            .map(|s| match s {
                COMM_STREAM if sharing.comm_first => ctx.new_stream_with_priority(greatest),
                _ => ctx.new_stream(),
            })
            .collect::<Result<_, _>>()
            .map_err(driver)?;
        // Products run on the compute streams: 0, and 1 (the overlapped forwards).
        let name = ctx.name().map_err(driver)?;
        let sms = ctx.attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_err(driver)?.max(0) as u32;
        let product_sms = match sharing.comm_sms {
            0 => None,
            n if n < sms => Some(sms - n),
            n => {
                return Err(RuntimeError::Environment(format!(
                    "--comm-sms {n} leaves no SM for the matrix products: {name} has {sms}; give fewer"
                )))
            }
        };
        let lt = Lt::new(
            &streams[..streams.len().min(2)],
            &name,
            product_sms,
            sharing.always_fuse,
            Some(&cache.join("tuning")),
        )?;
        let arena = peer::Exportable::zeroed(&ctx, arena_bytes as usize)?;
        let mut kernels = HashMap::new();
        for (file, source) in KERNEL_SOURCES {
            let ptx = compile_cached(file, source, cache)?;
            let module = ctx.load_module(ptx).map_err(driver)?;
            for name in functions_of(file) {
                let f = module.load_function(name).map_err(driver)?;
                kernels.insert(name.to_owned(), f);
            }
        }
        Ok(Gpu {
            ctx,
            streams,
            events: (0..events).map(|_| None).collect(),
            lt,
            unfused: HashSet::new(),
            kernels,
            arena,
            sharing,
            peers: None,
        })
    }

    /// Device address of byte `offset` of the arena.
    fn addr(&self, offset: u64) -> u64 {
        self.arena.addr() + offset
    }

    /// Copies `data` into `buffer` (at most its elements), converted to its dtype.
    pub fn upload(&mut self, buffer: &Buffer, data: &[f32]) -> Result<(), RuntimeError> {
        let n = data.len().min((buffer.bytes / buffer.dtype.size()) as usize);
        self.synchronize()?;
        let dst = self.addr(buffer.offset);
        // SAFETY: the buffer lies inside the arena (validated plan) and holds n elements of
        // its dtype; the copy is synchronous and every stream is idle.
        match buffer.dtype {
            Dtype::F32 => unsafe { cudarc::driver::result::memcpy_htod_sync(dst, &data[..n]) },
            Dtype::Bf16 => {
                let words: Vec<u16> = data[..n].iter().map(|&x| bf16_bits(x)).collect();
                // SAFETY: as above.
                unsafe { cudarc::driver::result::memcpy_htod_sync(dst, &words) }
            }
        }
        .map_err(driver)
    }

    /// Reads the first `len` elements of `buffer` (at most all), as f32.
    pub fn download(&self, buffer: &Buffer, len: usize) -> Result<Vec<f32>, RuntimeError> {
        self.synchronize()?;
        let len = len.min((buffer.bytes / buffer.dtype.size()) as usize);
        let src = self.addr(buffer.offset);
        match buffer.dtype {
            Dtype::F32 => {
                let mut out = vec![0.0f32; len];
                // SAFETY: as in `upload`; the destination holds exactly the bytes copied.
                unsafe { cudarc::driver::result::memcpy_dtoh_sync(&mut out, src) }.map_err(driver)?;
                Ok(out)
            }
            Dtype::Bf16 => {
                let mut words = vec![0u16; len];
                // SAFETY: as in `upload`; the destination holds exactly the bytes copied.
                unsafe { cudarc::driver::result::memcpy_dtoh_sync(&mut words, src) }.map_err(driver)?;
                Ok(words.into_iter().map(|w| f32::from_bits((w as u32) << 16)).collect())
            }
        }
    }

    /// Waits for every stream.
    pub fn synchronize(&self) -> Result<(), RuntimeError> {
        for s in &self.streams {
            s.synchronize().map_err(driver)?;
        }
        Ok(())
    }

    /// The plan's matrix product `g` (row-major `C = alpha·op(A)·op(B) + beta·C`, then its
    /// epilogue) on its stream, through cuBLASLt with f32 accumulation; `buffers` is the
    /// rank's buffer table. An epilogue runs as the plain product followed by the GELU
    /// kernel where cuBLASLt cannot fuse it, or that measured faster (`crate::blas`;
    /// said once per shape).
    pub fn gemm(&mut self, g: &Gemm, buffers: &[Buffer]) -> Result<(), RuntimeError> {
        let buf = |b: u32| {
            buffers.get(b as usize).ok_or_else(|| RuntimeError::Blas(format!("GEMM operand {b} is not a buffer")))
        };
        let (a, b, c) = (buf(g.a)?, buf(g.b)?, buf(g.c)?);
        let stream = g.stream as usize;
        let mut shape = Shape::of(g, (a.dtype, b.dtype, c.dtype));
        let (pa, pb, pc) = (self.addr(a.offset), self.addr(b.offset), self.addr(c.offset));
        let pre = match g.epilogue.pre() {
            Some(p) => Some(self.addr(buf(p)?.offset)),
            None => None,
        };
        if self.ready(shape)? {
            return self.lt.matmul(stream, shape, (pa, pb, pc), pre, g.alpha, g.beta);
        }
        if self.unfused.insert(shape) {
            let why = self.lt.choice(&shape).unwrap_or_default();
            eprintln!("note: {:?} of the {}x{}x{} product: {why}", shape.epilogue, g.m, g.n, g.k);
        }
        shape.epilogue = Fused::Nothing;
        let kernel = |base: &str| pipewright_plan::node::kernel_name(base, c.dtype);
        let elements = g.m * g.n;
        match g.epilogue {
            Epilogue::None => self.lt.matmul(stream, shape, (pa, pb, pc), None, g.alpha, g.beta),
            Epilogue::Gelu { pre } => {
                let pre = buf(pre)?.offset;
                self.lt.matmul(stream, shape, (pa, pb, self.addr(pre)), None, g.alpha, g.beta)?;
                self.kernel(stream, &kernel("gelu_forward"), &[pre, c.offset], elements, &[])
            }
            Epilogue::GeluGrad { pre } => {
                let pre = buf(pre)?.offset;
                self.lt.matmul(stream, shape, (pa, pb, pc), None, g.alpha, g.beta)?;
                self.kernel(stream, &kernel("gelu_backward"), &[pre, c.offset, c.offset], elements, &[])
            }
        }
    }

    /// Prepares product `shape` (once, [`Lt::supports`]), racing a fused epilogue against
    /// the plain product and the epilogue's kernel: whether it runs as one product.
    fn ready(&mut self, shape: Shape) -> Result<bool, RuntimeError> {
        let (stream, kernels) = (&self.streams[0], &self.kernels);
        let mut scratch = None;
        let ready = self.lt.supports(shape, &mut |s| kernels::epilogue_kernel_ms(stream, kernels, s, &mut scratch));
        self.lt.release_scratch();
        ready
    }

    /// The loaded kernel `name` (the plan's, or the runtime's own).
    pub fn function(&self, name: &str) -> Result<&CudaFunction, RuntimeError> {
        self.kernels.get(name).ok_or_else(|| RuntimeError::Driver(format!("kernel {name} not loaded")))
    }

    /// Prepares (and tunes, see [`crate::blas`]) the algorithm of every distinct product
    /// among `nodes`, before any of them runs: tuning times candidates on an idle GPU.
    pub fn prepare_gemms(&mut self, nodes: &[pipewright_plan::Node], buffers: &[Buffer]) -> Result<(), RuntimeError> {
        for node in nodes {
            if let pipewright_plan::Node::Gemm(g) = node {
                self.ready(shape_in(g, buffers))?;
            }
        }
        Ok(())
    }

    /// Uses `record`'s algorithms (a checkpoint's) for the products prepared from now on;
    /// refused, with the reason, when made with another cuBLASLt or GPU model.
    pub fn adopt_tuning(&mut self, record: crate::tuning::Record) -> Result<(), String> {
        self.lt.adopt(record)
    }

    /// The algorithm of every product prepared so far (what a checkpoint keeps).
    pub fn tuning(&self) -> crate::tuning::Record {
        self.lt.record()
    }

    /// How the algorithm of product `g` was chosen (after [`Gpu::prepare_gemms`]).
    pub fn gemm_choice(&self, g: &Gemm, buffers: &[Buffer]) -> Option<String> {
        self.lt.choice(&shape_in(g, buffers))
    }

    /// Launches kernel `name` over `elements` with buffer offsets `buffers` and `scalars`
    /// (`kernels::launch`).
    pub fn kernel(
        &self,
        stream: usize,
        name: &str,
        buffers: &[u64],
        elements: u64,
        scalars: &[f32],
    ) -> Result<(), RuntimeError> {
        let f = self.function(name)?;
        let ptrs: Vec<u64> = buffers.iter().map(|&o| self.addr(o)).collect();
        kernels::launch(&self.streams[stream], f, name, &ptrs, elements, scalars)
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

    /// The NCCL communicator of this rank (blocks until every rank has joined).
    pub fn communicator(&self, rank: u32, world: u32, id: [u8; 128]) -> Result<Communicator, RuntimeError> {
        let id = nccl_sys::ncclUniqueId { internal: id.map(|b| b as std::ffi::c_char) };
        let mut raw = std::mem::MaybeUninit::uninit();
        // SAFETY: `raw` is written by ncclCommInitRank before it is read; on error it is
        // never read.
        unsafe { nccl_result::comm_init_rank(raw.as_mut_ptr(), world as i32, id, rank as i32) }
            .map_err(|e| RuntimeError::Nccl { rank, what: format!("creating the communicator: {e:?}") })?;
        // SAFETY: initialised by the successful call above.
        Ok(Communicator { raw: unsafe { raw.assume_init() } })
    }

    /// One group of p2p ops (node `node` of the rank's program) on the communication
    /// stream: (send?, peer, byte offset, bytes). Buffers move as bytes, whatever their
    /// dtype; through NCCL, or the copy engines once [`Gpu::connect_peers`] has run.
    pub fn group(
        &mut self,
        comm: Option<&Communicator>,
        rank: u32,
        node: usize,
        ops: &[(bool, u32, u64, usize)],
    ) -> Result<(), RuntimeError> {
        if let Some(peers) = &self.peers {
            return self.copy_group(peers, rank, node);
        }
        let comm = comm.ok_or_else(|| RuntimeError::Node {
            rank,
            node,
            what: "a p2p group with neither an NCCL communicator nor the copy-engine transport".into(),
        })?;
        let stream = self.streams[COMM_STREAM as usize].cu_stream() as nccl_sys::cudaStream_t;
        let ops: Vec<(bool, u32, u64, usize)> =
            ops.iter().map(|&(send, peer, offset, len)| (send, peer, self.addr(offset), len)).collect();
        // SAFETY: each [offset, offset + len) lies in the arena (the validated plan sizes
        // every buffer), which outlives every step, and the stream belongs to this context.
        unsafe { nccl::p2p_group(comm, stream, &ops) }.map_err(|e| RuntimeError::Nccl { rank, what: format!("{e:?}") })
    }

    /// Returns once every rank of `comm` has called it (an all-reduce of one word on the
    /// communication stream, waited for): what lines the ranks up before a timed step.
    pub fn barrier(&self, comm: &Communicator, rank: u32) -> Result<(), RuntimeError> {
        let failed = |e: nccl_result::NcclError| RuntimeError::Nccl { rank, what: format!("barrier: {e:?}") };
        let stream = &self.streams[COMM_STREAM as usize];
        let word = stream.alloc_zeros::<f32>(1).map_err(driver)?;
        let (ptr, _sync) = cudarc::driver::DevicePtr::device_ptr(&word, stream);
        // SAFETY: one f32 of device memory, alive until the stream is synchronised below.
        unsafe { nccl::all_reduce_word(comm, ptr, stream.cu_stream() as nccl_sys::cudaStream_t) }.map_err(failed)?;
        stream.synchronize().map_err(driver)
    }

    /// Writes `value` into `mark` once `stream` gets here.
    pub fn mark(&self, stream: usize, mark: &HostMark, value: u32) -> Result<(), RuntimeError> {
        // SAFETY: `mark.device` is the device address of live page-locked host memory
        // holding one u32.
        unsafe { self.launch_word(&self.streams[stream], MARK_KERNEL, mark.device, value) }
    }

    /// Launches the one-thread kernel `name(unsigned int* word, unsigned int value)` on
    /// `stream`: the watchdog's progress mark and the copy-engine transport's flags.
    ///
    /// # Safety
    /// `word` must be the device address of a u32 that stays valid until the kernel has run.
    unsafe fn launch_word(
        &self,
        stream: &Arc<CudaStream>,
        name: &str,
        word: u64,
        value: u32,
    ) -> Result<(), RuntimeError> {
        let f = self.function(name)?;
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
        let mut launch = stream.launch_builder(f);
        launch.arg(&word);
        launch.arg(&value);
        // SAFETY: the kernel's signature is (unsigned int*, unsigned int); the caller
        // vouches for `word`.
        unsafe { launch.launch(cfg) }.map(|_| ()).map_err(driver)
    }
}

/// The shape of product `g`, whose operands are in `buffers` (a validated plan's).
fn shape_in(g: &Gemm, buffers: &[Buffer]) -> Shape {
    let dtype = |b: u32| buffers.get(b as usize).map_or(Dtype::F32, |b| b.dtype);
    Shape::of(g, (dtype(g.a), dtype(g.b), dtype(g.c)))
}

/// f32 → bf16, rounding to nearest even (as `kernels/bf16.cu` does).
pub fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7f80_0000 == 0x7f80_0000 {
        return ((u >> 16) | if u & 0xffff != 0 { 0x40 } else { 0 }) as u16;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::bf16_bits;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even word.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(-2.0), 0xc000);
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
        assert!(bf16_bits(f32::NAN) & 0x7f != 0 || bf16_bits(f32::NAN) == 0x7fc0);
        // Round trip of a representable value is exact.
        let x = f32::from_bits(0x4049_0000);
        assert_eq!(f32::from_bits((bf16_bits(x) as u32) << 16), x);
    }
}
