//! The captured step as a replayable CUDA graph, the census of its nodes, and the rewrite
//! done before instantiating it: the graph's memset nodes become kernel nodes (unless
//! `run --keep-memsets`).
//!
//! Why: cuBLASLt's split-K and stream-K products capture a memset before each product, and
//! a replay's host time grows with them. Measured on H200s (session of 2026-11-30): one
//! rank's graph of 270 kernels and 176 memsets launches in 364 µs as captured, in 17 µs
//! with the memsets as kernels (`kernels/fill.cu`); two ranks' graphs of 153 kernels and
//! 64–88 memsets in 124–260 µs, rewritten in 43–108 µs; the replayed steps' losses are
//! bitwise the captured graph's. The rewrite keeps every dependency (the new node depends
//! on what the memset depended on, and everything that depended on the memset depends on
//! it), so the graph computes the same.
//!
//! The rewritten graph is instantiated for device launch (`DEVICE_LAUNCH`), and still
//! launched from the host: that way a replay's host time stops growing with the graph.
//! Measured on H200s (session 8): plain, a launch took 80–126 µs for one rank's graph of
//! 13834–16410 kernel nodes (DualPipeV, 512 microbatches of a small model), 60–119 µs for
//! two ranks' of 13845–14355; instantiated for device launch 15–23 µs and 21–41 µs, the
//! steps as fast and their losses bitwise the same. A graph the driver will not instantiate
//! that way (device graphs hold kernel, memset and memcpy nodes only) is instantiated
//! plainly, and the run's graph line says which.
//!
//! A capture is ended here ([`end_capture`]), not by cudarc's `end_capture`, which
//! instantiates the graph as captured: the step's graph is instantiated once, after the
//! rewrite, and a GEMM algorithm candidate's capture (only counted, `blas::choose`) never.
//!
//! With a high-priority communication stream (`run --comm-high-priority`) graphs are
//! instantiated with per-node priorities (`USE_NODE_PRIORITY`): a kernel captured from
//! that stream keeps its priority in the graph (counted apart in the census), instead of
//! all running at the priority of the stream the graph is launched into. Otherwise every
//! stream has the default priority and the flag is left out.

use crate::RuntimeError;
use cudarc::driver::{sys, CudaStream};

/// How a step's graph is instantiated: each kernel node at its own priority when
/// `node_priorities` (a high-priority communication stream), else plainly.
pub fn instantiate_flags(node_priorities: bool) -> sys::CUgraphInstantiate_flags {
    if node_priorities {
        sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY
    } else {
        sys::CUgraphInstantiate_flags(0)
    }
}

fn driver(what: &str, r: sys::CUresult) -> Result<(), RuntimeError> {
    r.result().map_err(|e| RuntimeError::Driver(format!("{what}: {e:?}")))
}

/// A captured graph, not instantiated: owned, destroyed on drop.
#[derive(Debug)]
pub struct Captured(sys::CUgraph);

impl Captured {
    /// The raw graph, live while `self` is.
    pub fn cu_graph(&self) -> sys::CUgraph {
        self.0
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        // SAFETY: created by cuStreamEndCapture in `end_capture`, destroyed once, after any
        // executable graph instantiated from it (Replay drops its exec first).
        let _ = unsafe { sys::cuGraphDestroy(self.0) };
    }
}

/// Ends the capture on `stream` (begun with `begin_capture`), without instantiating what
/// it captured; `None` when nothing was.
pub fn end_capture(stream: &CudaStream) -> Result<Option<Captured>, RuntimeError> {
    stream.context().bind_to_thread().map_err(crate::error::driver)?;
    // SAFETY: a live stream of the bound context, capturing (the caller began it); the
    // graph it returns is owned by the `Captured` from here on.
    let graph = unsafe { cudarc::driver::result::stream::end_capture(stream.cu_stream()) }
        .map_err(|e| RuntimeError::Driver(format!("ending the capture: {e:?}")))?;
    Ok((!graph.is_null()).then_some(Captured(graph)))
}

/// A graph ready to replay on the stream it was captured on: the captured graph (rewritten
/// or not) and its one executable instance.
pub struct Replay {
    graph: Captured,
    exec: sys::CUgraphExec,
    stream: sys::CUstream,
    device_launch: bool,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay").field("device_launch", &self.device_launch).finish()
    }
}

impl Replay {
    /// `graph` as captured, instantiated with `flags` for `stream` (no device launch: a
    /// graph with memset nodes as captured is for comparison, `run --keep-memsets`).
    pub fn captured(
        graph: Captured,
        stream: sys::CUstream,
        flags: sys::CUgraphInstantiate_flags,
    ) -> Result<Replay, RuntimeError> {
        let mut exec = std::ptr::null_mut();
        // SAFETY: the graph is live (owned by `graph`); `exec` receives the executable graph.
        driver("instantiating the captured graph", unsafe {
            sys::cuGraphInstantiateWithFlags(&mut exec, graph.cu_graph(), flags.0 as u64)
        })?;
        Ok(Replay { graph, exec, stream, device_launch: false })
    }

    /// `graph` with every memset node replaced by a launch of `fill` (the `fill_memset`
    /// kernel), instantiated with `flags` for `stream`; also the number of memsets replaced.
    pub fn without_memsets(
        graph: Captured,
        fill: sys::CUfunction,
        stream: sys::CUstream,
        flags: sys::CUgraphInstantiate_flags,
    ) -> Result<(Replay, usize), RuntimeError> {
        let replaced = memsets_to_kernels(graph.cu_graph(), fill)?;
        let mut exec = std::ptr::null_mut();
        let device = sys::CUgraphInstantiate_flags(
            flags.0 | sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH.0,
        );
        // SAFETY: the graph is live (owned by `graph`) and was just rewritten; `exec`
        // receives the new executable graph.
        let device_launch = driver("instantiating the rewritten graph for device launch", unsafe {
            sys::cuGraphInstantiateWithFlags(&mut exec, graph.cu_graph(), device.0 as u64)
        })
        .is_ok();
        if !device_launch {
            exec = std::ptr::null_mut();
            // SAFETY: as above.
            driver("instantiating the rewritten graph", unsafe {
                sys::cuGraphInstantiateWithFlags(&mut exec, graph.cu_graph(), flags.0 as u64)
            })?;
        }
        Ok((Replay { graph, exec, stream, device_launch }, replaced))
    }

    /// Whether it was instantiated for device launch.
    pub fn device_launch(&self) -> bool {
        self.device_launch
    }

    /// The graph (for its census).
    pub fn graph(&self) -> &Captured {
        &self.graph
    }

    /// Uploads it, so that replays only launch.
    pub fn upload(&self) -> Result<(), RuntimeError> {
        // SAFETY: a live executable graph and the stream it runs on.
        driver("cuGraphUpload", unsafe { sys::cuGraphUpload(self.exec, self.stream) })
    }

    /// Launches one replay.
    pub fn launch(&self) -> Result<(), RuntimeError> {
        // SAFETY: as in `upload`.
        driver("cuGraphLaunch", unsafe { sys::cuGraphLaunch(self.exec, self.stream) })
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        // SAFETY: instantiated in `captured` or `without_memsets`, destroyed once, before
        // the graph it came from (the `graph` field drops after this).
        let _ = unsafe { sys::cuGraphExecDestroy(self.exec) };
    }
}

/// The nodes linked to `node`: its dependencies (`upstream`) or its dependents.
fn neighbours(node: sys::CUgraphNode, upstream: bool) -> Result<Vec<sys::CUgraphNode>, RuntimeError> {
    let query = |nodes: *mut sys::CUgraphNode, edges: *mut sys::CUgraphEdgeData, count: &mut usize| {
        // SAFETY: a live node; with null arrays only the count is written, otherwise the
        // arrays hold `count` entries.
        unsafe {
            if upstream {
                sys::cuGraphNodeGetDependencies_v2(node, nodes, edges, count)
            } else {
                sys::cuGraphNodeGetDependentNodes_v2(node, nodes, edges, count)
            }
        }
    };
    let mut count = 0usize;
    driver("counting a node's edges", query(std::ptr::null_mut(), std::ptr::null_mut(), &mut count))?;
    let mut nodes = vec![std::ptr::null_mut(); count];
    // Edge data asked for too: without it, the query fails on a non-default edge.
    // SAFETY: CUgraphEdgeData is plain bytes; zero is the default edge.
    let mut edges: Vec<sys::CUgraphEdgeData> = vec![unsafe { std::mem::zeroed() }; count];
    driver("reading a node's edges", query(nodes.as_mut_ptr(), edges.as_mut_ptr(), &mut count))?;
    nodes.truncate(count);
    Ok(nodes)
}

/// Replaces every memset node of `graph` by a kernel node of `fill` with the same effect
/// and the same edges (default ones); returns how many. (Through [`Replay::without_memsets`],
/// which holds the graph and the function live.)
fn memsets_to_kernels(graph: sys::CUgraph, fill: sys::CUfunction) -> Result<usize, RuntimeError> {
    let memset = sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEMSET as u32;
    let mut replaced = 0;
    for (node, _) in typed_nodes(graph)?.into_iter().filter(|&(_, kind)| kind == memset) {
        // SAFETY: a memset node; the parameters are plain data it writes.
        let mut p: sys::CUDA_MEMSET_NODE_PARAMS = unsafe { std::mem::zeroed() };
        driver("reading a memset", unsafe { sys::cuGraphMemsetNodeGetParams(node, &mut p) })?;
        let (before, after) = (neighbours(node, true)?, neighbours(node, false)?);
        let (dst, pitch, value, size, width, height) =
            (p.dst, p.pitch as u64, p.value, p.elementSize, p.width as u64, p.height.max(1) as u64);
        let mut args: [*mut std::ffi::c_void; 6] = [
            &dst as *const u64 as *mut _,
            &pitch as *const u64 as *mut _,
            &value as *const u32 as *mut _,
            &size as *const u32 as *mut _,
            &width as *const u64 as *mut _,
            &height as *const u64 as *mut _,
        ];
        let blocks = (width * height).div_ceil(256).clamp(1, 1024) as u32;
        // SAFETY: plain data; every field the launch reads is set below, the rest zero.
        let mut params: sys::CUDA_KERNEL_NODE_PARAMS = unsafe { std::mem::zeroed() };
        params.func = fill;
        (params.gridDimX, params.gridDimY, params.gridDimZ) = (blocks, 1, 1);
        (params.blockDimX, params.blockDimY, params.blockDimZ) = (256, 1, 1);
        params.kernelParams = args.as_mut_ptr();
        let mut kernel = std::ptr::null_mut();
        // SAFETY: `args` points at the six arguments of `fill_memset` in order, alive for
        // this call (the graph copies them); `before` are nodes of this graph.
        driver("adding a fill kernel", unsafe {
            sys::cuGraphAddKernelNode_v2(&mut kernel, graph, before.as_ptr(), before.len(), &params)
        })?;
        for next in after {
            // SAFETY: both nodes belong to the graph; a default edge (no edge data).
            driver("linking a fill kernel", unsafe {
                sys::cuGraphAddDependencies_v2(graph, &kernel, &next, std::ptr::null(), 1)
            })?;
        }
        // SAFETY: the memset's work is now the kernel's, with the same edges.
        driver("removing a memset", unsafe { sys::cuGraphDestroyNode(node) })?;
        replaced += 1;
    }
    Ok(replaced)
}

/// The nodes of a captured graph, counted by type (kernel, event record, memset, …): what a
/// replay launches. Kernels at a priority other than the default are counted apart
/// ("kernel, priority P").
pub fn graph_census(graph: &Captured) -> Result<std::collections::BTreeMap<String, usize>, RuntimeError> {
    let mut census = std::collections::BTreeMap::new();
    for (node, kind) in typed_nodes(graph.cu_graph())? {
        if kind == 0 {
            let priority = kernel_priority(node)?;
            if priority != 0 {
                *census.entry(format!("kernel, priority {priority}")).or_insert(0) += 1;
                continue;
            }
        }
        let name = match kind {
            0 => "kernel",
            1 => "memcpy",
            2 => "memset",
            3 => "host",
            4 => "child graph",
            5 => "empty",
            6 => "event wait",
            7 => "event record",
            10 => "memory allocation",
            11 => "memory free",
            12 => "batched memory op",
            13 => "conditional",
            _ => "other",
        };
        *census.entry(name.to_owned()).or_insert(0) += 1;
    }
    Ok(census)
}

/// The scheduling priority of kernel node `node` (lower is more urgent; 0 the default).
fn kernel_priority(node: sys::CUgraphNode) -> Result<i32, RuntimeError> {
    // SAFETY: plain data, written by the query below.
    let mut value: sys::CUkernelNodeAttrValue = unsafe { std::mem::zeroed() };
    // SAFETY: a kernel node of a live graph; `value` receives the attribute.
    driver("reading a kernel node's priority", unsafe {
        sys::cuGraphKernelNodeGetAttribute(node, sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PRIORITY, &mut value)
    })?;
    // SAFETY: the priority query fills the union's `priority` field.
    Ok(unsafe { value.priority })
}

/// Every node of `graph` with its type (CUgraphNodeType as its integer, so that a type
/// newer than these bindings still reads).
fn typed_nodes(graph: sys::CUgraph) -> Result<Vec<(sys::CUgraphNode, u32)>, RuntimeError> {
    let mut count = 0usize;
    // SAFETY: `graph` is live (its owner holds it for the call); with a null array only
    // the count is written.
    driver("counting graph nodes", unsafe { sys::cuGraphGetNodes(graph, std::ptr::null_mut(), &mut count) })?;
    let mut nodes = vec![std::ptr::null_mut(); count];
    // SAFETY: `nodes` holds `count` entries.
    driver("listing graph nodes", unsafe { sys::cuGraphGetNodes(graph, nodes.as_mut_ptr(), &mut count) })?;
    nodes.truncate(count);
    nodes
        .into_iter()
        .map(|node| {
            let mut kind = 0u32;
            // SAFETY: a node of the live graph; the type is a 32-bit enum.
            driver("reading a node's type", unsafe {
                sys::cuGraphNodeGetType(node, &mut kind as *mut u32 as *mut sys::CUgraphNodeType)
            })?;
            Ok((node, kind))
        })
        .collect()
}
