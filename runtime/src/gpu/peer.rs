//! Copy-engine p2p (`run --p2p copy`): ranks on one host move their transfers with the
//! GPUs' copy engines, straight into the receiver's buffer, instead of NCCL's kernels.
//!
//! Why: an NCCL send or receive is a kernel. It takes SMs from the matrix products running
//! beside it, and spins on them while it waits for its peer (on 2 × H200 the products ran
//! 4–10% slower with a batch in flight, README). A copy engine moves the bytes without an
//! SM, and a wait is one thread of one block, asleep between reads of its flag
//! (`kernels/peer.cu`), beside the products' blocks. (Stream memory operations,
//! `cuStreamWaitValue32`, would take no thread at all, but as graph nodes they cost
//! 2–3 µs each to launch — a DualPipe step's 120 put its host launch at 250–350 µs — and
//! keep the graph from being instantiated for device launch.)
//!
//! The protocol — which flags each stream signals and awaits around each copy, and why it
//! cannot deadlock where NCCL groups do not — is [`crate::copy_protocol`]'s, written
//! without CUDA so that the tests run it on threads; this module issues its steps.

use super::kernels::{PEER_FLAG_SET, PEER_FLAG_WAIT};
use super::{driver, Gpu};
use crate::copy_protocol::{calibration_links, group_steps, links, Step};
use crate::launch::HostGroup;
use crate::RuntimeError;
use cudarc::driver::sys::{self, CUdeviceptr};
use cudarc::driver::{CudaContext, CudaStream};
use pipewright_plan::transfers::Transfer;
use pipewright_plan::{Plan, COMM_STREAM};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// How p2p groups move their bytes (the plan format's: a plan says what it was planned
/// for, a run what it uses).
pub use pipewright_plan::Transport;

/// The SMs the matrix products leave free by default with `transport` (`run --comm-sms`).
/// NCCL: none — its kernels want many, and products on fewer SMs lost more than the waits
/// (2 × H200, `docs/runtime-measurements.md`). Copy engines: 2 — the flags around each
/// copy are kernels of one thread (`kernels/peer.cu`), one on the communication stream and
/// one on a send stream at a time, and a product holding every SM kept them waiting for
/// its blocks to retire: with 2 SMs free DualPipe's family at 2048 ran 2.5% faster a step,
/// its optimised program and DualPipeV's family 0.7–0.8%, and at 4096 level to 0.8% faster
/// (session 14).
pub fn default_comm_sms(transport: Transport) -> u32 {
    match transport {
        Transport::Nccl => 0,
        Transport::Copy => 2,
    }
}

/// Device memory from `cuMemAlloc`, zeroed: unlike the stream-ordered pool's allocations,
/// CUDA IPC can export it to the other ranks of the host.
#[derive(Debug)]
pub struct Exportable {
    ctx: Arc<CudaContext>,
    ptr: CUdeviceptr,
}

impl Exportable {
    /// `bytes` (at least 4) in `ctx`, zeroed.
    pub fn zeroed(ctx: &Arc<CudaContext>, bytes: usize) -> Result<Exportable, RuntimeError> {
        ctx.bind_to_thread().map_err(driver)?;
        let bytes = bytes.max(4);
        // SAFETY: a plain allocation in the current context; owned (and freed) by the value.
        let ptr = unsafe { cudarc::driver::result::malloc_sync(bytes) }.map_err(driver)?;
        let out = Exportable { ctx: ctx.clone(), ptr };
        // SAFETY: [ptr, ptr + bytes) is the allocation above; synchronous.
        unsafe { cudarc::driver::result::memset_d8_sync(ptr, 0, bytes) }.map_err(driver)?;
        Ok(out)
    }

    /// Its device address.
    pub fn addr(&self) -> CUdeviceptr {
        self.ptr
    }

    /// Its CUDA IPC handle, for the other processes of the host.
    fn handle(&self) -> Result<[u8; 64], RuntimeError> {
        let mut h = std::mem::MaybeUninit::<sys::CUipcMemHandle>::uninit();
        // SAFETY: `ptr` is the base of a cuMemAlloc allocation of the current context; the
        // call writes the handle.
        unsafe { sys::cuIpcGetMemHandle(h.as_mut_ptr(), self.ptr) }.result().map_err(driver)?;
        // SAFETY: initialised by the successful call above.
        let h = unsafe { h.assume_init() };
        Ok(h.reserved.map(|c| c as u8))
    }
}

impl Drop for Exportable {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by cuMemAlloc in `zeroed`, freed once (cuMemFree waits for the
        // device work using it).
        let _ = unsafe { cudarc::driver::result::free_sync(self.ptr) };
    }
}

/// Another process's [`Exportable`], mapped into this context.
#[derive(Debug)]
struct Imported {
    ptr: CUdeviceptr,
}

impl Imported {
    fn open(handle: &[u8]) -> Result<Imported, RuntimeError> {
        let mut h = sys::CUipcMemHandle { reserved: [0; 64] };
        for (d, s) in h.reserved.iter_mut().zip(handle) {
            *d = *s as std::ffi::c_char;
        }
        let mut ptr = 0;
        let lazy = sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32;
        // SAFETY: `h` came from cuIpcGetMemHandle in another process of this host; the call
        // writes the mapped address.
        unsafe { sys::cuIpcOpenMemHandle_v2(&mut ptr, h, lazy) }.result().map_err(driver)?;
        Ok(Imported { ptr })
    }
}

impl Drop for Imported {
    fn drop(&mut self) {
        // SAFETY: mapped by cuIpcOpenMemHandle in `open`, unmapped once.
        let _ = unsafe { sys::cuIpcCloseMemHandle(self.ptr) };
    }
}

/// A peer's arena and flag table, mapped here.
#[derive(Debug)]
struct Remote {
    arena: Imported,
    flags: Imported,
}

/// What the copy-engine transport of one rank holds.
#[derive(Debug)]
pub struct Peers {
    /// This rank's flag table: one u32 per p2p op of its step (the op's slot).
    flags: Exportable,
    remote: HashMap<u32, Remote>,
    /// Per group node: the steps of its ops (see [`crate::copy_protocol`]).
    steps: HashMap<usize, Vec<Step>>,
    /// Per peer this rank sends to: the stream its sends run on when a group also sends to
    /// another peer.
    forks: HashMap<u32, Arc<CudaStream>>,
}

/// Bytes each rank contributes to the exchange: its arena's and its flag table's IPC
/// handles, and its host's key.
const RECORD: usize = 64 + 64 + 8;

/// This host (its boot and its name), so that ranks can tell whether they share one.
/// (`std`'s hasher with its fixed keys: the same on every rank of a job, which runs one
/// build of the runtime.)
fn host_key() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in ["/proc/sys/kernel/random/boot_id", "/proc/sys/kernel/hostname"] {
        std::fs::read_to_string(f).unwrap_or_default().trim().hash(&mut h);
    }
    h.finish()
}

impl Gpu {
    /// Sets up the copy-engine transport for `plan` on `rank`: a flag table, the arenas and
    /// flag tables of the peers it exchanges with, mapped by CUDA IPC (their handles
    /// gathered through `group`: every rank must call this). Refused, with the reason, when
    /// a peer is on another host.
    pub fn connect_peers(&mut self, group: &HostGroup, plan: &Plan, rank: u32) -> Result<(), RuntimeError> {
        let ops = links(plan, rank)?;
        let mut steps = HashMap::new();
        for (node, n) in plan.ranks[rank as usize].nodes.iter().enumerate() {
            if let pipewright_plan::Node::Group { ops: group, .. } = n {
                let made = group_steps(&ops, rank, node, group.len());
                steps.insert(node, made.map_err(|what| RuntimeError::Node { rank, node, what })?);
            }
        }
        let flags = Exportable::zeroed(&self.ctx, ops.len() * 4)?;
        let ipc = |e: RuntimeError| {
            RuntimeError::Environment(format!(
                "rank {rank} cannot export its memory through CUDA IPC ({e}); use --p2p nccl"
            ))
        };
        let mut record = Vec::with_capacity(RECORD);
        record.extend(self.arena.handle().map_err(ipc)?);
        record.extend(flags.handle().map_err(ipc)?);
        record.extend(host_key().to_le_bytes());
        let all = group.all_gather(&record)?;
        let peer_of = |t: &Transfer| if t.send.rank == rank { t.recv.rank } else { t.send.rank };
        let peers: BTreeSet<u32> = ops.values().map(|l| peer_of(&l.t)).collect();
        let mut remote = HashMap::new();
        let mut forks = HashMap::new();
        for p in peers {
            let theirs = &all[p as usize * RECORD..(p as usize + 1) * RECORD];
            if theirs[128..] != record[128..] {
                return Err(RuntimeError::Environment(format!(
                    "--p2p copy moves transfers within one host, but rank {rank} exchanges with rank {p}, which runs on \
                     another; use --p2p nccl"
                )));
            }
            let opened = Imported::open(&theirs[..64]).and_then(|arena| Ok((arena, Imported::open(&theirs[64..128])?)));
            let (arena, peer_flags) = opened.map_err(|e| {
                RuntimeError::Environment(format!(
                    "rank {rank} cannot map rank {p}'s memory through CUDA IPC ({e}); use --p2p nccl"
                ))
            })?;
            remote.insert(p, Remote { arena, flags: peer_flags });
            if ops.values().any(|l| l.t.send.rank == rank && l.t.recv.rank == p) {
                forks.insert(p, self.ctx.new_stream().map_err(driver)?);
            }
        }
        self.peers = Some(Peers { flags, remote, steps, forks });
        Ok(())
    }

    /// Checks that every rank of the job moves p2p data by the same `transport`, with as
    /// many ranks on each GPU (each calls this once, right after joining): a rank that
    /// posts NCCL sends to a peer waiting on copy-engine flags would hang both until the
    /// watchdog, so a mismatch is refused up front, naming the ranks.
    pub fn agree_on_transport(
        &self,
        group: &HostGroup,
        rank: u32,
        transport: Transport,
        ranks_per_gpu: u32,
    ) -> Result<(), RuntimeError> {
        let code = |t: Transport| match t {
            Transport::Nccl => 0u8,
            Transport::Copy => 1,
        };
        let mut mine = vec![code(transport)];
        mine.extend(ranks_per_gpu.to_le_bytes());
        let all = group.all_gather(&mine)?;
        let name = |c: u8| if c == 0 { "nccl" } else { "copy" };
        match all.chunks(mine.len()).position(|theirs| theirs != mine.as_slice()) {
            None => Ok(()),
            Some(other) => {
                let theirs = &all[other * mine.len()..(other + 1) * mine.len()];
                let per_gpu = |b: &[u8]| u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
                Err(RuntimeError::Environment(format!(
                    "rank {rank} runs --p2p {} --ranks-per-gpu {ranks_per_gpu} but rank {other} runs --p2p {} \
                     --ranks-per-gpu {}: give every rank the same options",
                    name(code(transport)),
                    name(theirs[0]),
                    per_gpu(theirs)
                )))
            }
        }
    }

    /// Issues group `node` of `rank`'s program by the copy-engine protocol (its
    /// [`crate::copy_protocol::group_steps`]) on the communication stream.
    pub(super) fn copy_group(&self, peers: &Peers, rank: u32, node: usize) -> Result<(), RuntimeError> {
        let steps = peers.steps.get(&node).ok_or_else(|| RuntimeError::Node {
            rank,
            node,
            what: "a p2p group the copy-engine transport was not set up for".into(),
        })?;
        self.issue_steps(peers, &self.streams[COMM_STREAM as usize], steps).map_err(|e| RuntimeError::Node {
            rank,
            node,
            what: format!("copy-engine p2p: {e}"),
        })
    }

    fn issue_steps(&self, peers: &Peers, stream: &Arc<CudaStream>, steps: &[Step]) -> Result<(), RuntimeError> {
        let remote = |p: u32| {
            peers.remote.get(&p).ok_or_else(|| RuntimeError::Driver(format!("rank {p}'s memory is not mapped")))
        };
        for step in steps {
            match step {
                Step::Signal { peer, slot } => {
                    self.flag_kernel(stream, PEER_FLAG_SET, remote(*peer)?.flags.ptr + 4 * *slot as u64)?
                }
                Step::Await { slot } => {
                    self.flag_kernel(stream, PEER_FLAG_WAIT, peers.flags.addr() + 4 * *slot as u64)?
                }
                Step::Copy { peer, from, to, bytes } => {
                    let (src, dst) = (self.addr(*from), remote(*peer)?.arena.ptr + to);
                    // SAFETY: the source is this rank's send buffer and the destination the
                    // peer's receive buffer of the same size (`transfers` checked), inside
                    // its arena as mapped; the peer signalled that it is free, and uses it
                    // again only once this stream signals the copy done.
                    unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, *bytes as usize, stream.cu_stream()) }
                        .map_err(driver)?;
                }
                Step::Fork(branches) => {
                    let forked = stream.record_event(None).map_err(driver)?;
                    for (peer, branch) in branches {
                        let s = peers
                            .forks
                            .get(peer)
                            .ok_or_else(|| RuntimeError::Driver(format!("no stream for the sends to rank {peer}")))?;
                        s.wait(&forked).map_err(driver)?;
                        self.issue_steps(peers, s, branch)?;
                        stream.join(s).map_err(driver)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// For `profile`'s calibration (`calibrate.rs`): `count` copies of `bytes` from this
    /// rank's send buffers into `peer`'s receive buffers that the plan pairs with them, as
    /// (source, destination as mapped here), to distinct receive buffers first and then
    /// again from the first; none when the transport is not connected or the plan sends nothing of
    /// that size to `peer`. Between steps only: the peer's receive buffers are overwritten.
    pub(super) fn calibration_copies(
        &self,
        plan: &pipewright_plan::Plan,
        rank: u32,
        peer: u32,
        bytes: u64,
        count: usize,
    ) -> Result<Vec<(CUdeviceptr, CUdeviceptr)>, RuntimeError> {
        let Some(remote) = self.peers.as_ref().and_then(|p| p.remote.get(&peer)) else { return Ok(Vec::new()) };
        let sends = calibration_links(plan, rank, peer, bytes)?;
        let take = if sends.is_empty() { 0 } else { count };
        Ok(sends.iter().cycle().take(take).map(|&(from, to)| (self.addr(from), remote.arena.ptr + to)).collect())
    }

    /// `stream` runs flag kernel `name` ([`PEER_FLAG_SET`]: sets the flag at `addr` after
    /// a system-wide fence; [`PEER_FLAG_WAIT`]: waits until it is set, then resets it).
    fn flag_kernel(&self, stream: &Arc<CudaStream>, name: &str, addr: CUdeviceptr) -> Result<(), RuntimeError> {
        // SAFETY: `addr` is a u32 of a flag table, this rank's or a peer's mapped by IPC,
        // alive while the transport is.
        unsafe { self.launch_word(stream, name, addr, 1) }
    }
}
