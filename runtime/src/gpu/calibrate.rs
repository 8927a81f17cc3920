//! What a p2p batch costs when nothing waits: batches of 1, 2, … transfers exchanged by
//! pairs of ranks that post them at the same moment (`profile`'s calibration, see
//! [`crate::profile`]). A batch timed inside a step also holds the wait for its peer to
//! post the other side; in a tight program (the optimiser's) every batch of a size may
//! wait, and a line fitted through them charged DualPipe at 2048 0.37 ms a transfer where
//! the transfer takes 0.085.
//!
//! The ranks are lined up on the GPU, not the host: each batch follows an all-reduce of
//! one word on the same stream, which ends on every rank within microseconds of the
//! others, and the batch is timed from an event recorded right after it. With NCCL a batch
//! is a group of sends and receives between scratch buffers; with the copy engines
//! (`peer.rs`) each rank's sends are copies into the peer's receive buffers that the plan
//! pairs with them, the peer's copies into this rank's running at the same time, as in a
//! step (without the flags around them, a few microseconds).

use super::{nccl, Communicator, Gpu, COMM_STREAM};
use crate::error::driver;
use crate::timing::TIMED;
use crate::RuntimeError;
use cudarc::driver::DevicePtr;
use cudarc::nccl::{result as nccl_result, sys as nccl_sys};

/// Untimed batches of each size before the timed ones (NCCL connects its p2p channels for
/// a peer on the first).
const WARM_UP: u32 = 2;

impl Gpu {
    /// Times batches of `k` sends to and `k` receives from `peer`, `bytes` each, for `k` in
    /// `1..=max_transfers`, `reps` times each after `WARM_UP`, every batch posted right
    /// after an all-reduce over the communicator, by this rank's transport: `(k, ms)` per
    /// timed batch (none of a size the copy engines have no transfer of `plan` for). Every
    /// rank of the communicator must call it with the same `max_transfers` and `reps` (the
    /// all-reduces are collective); a rank without a partner (`peer` none) only joins them.
    /// Between steps only: with the copy engines the peer's receive buffers are
    /// overwritten.
    #[allow(clippy::too_many_arguments)]
    pub fn time_exchanges(
        &self,
        comm: &Communicator,
        plan: &pipewright_plan::Plan,
        rank: u32,
        peer: Option<u32>,
        bytes: usize,
        max_transfers: u32,
        reps: u32,
    ) -> Result<Vec<(u32, f64)>, RuntimeError> {
        let failed = |e: nccl_result::NcclError| RuntimeError::Nccl { rank, what: format!("p2p calibration: {e:?}") };
        let stream = &self.streams[COMM_STREAM as usize];
        let raw_stream = stream.cu_stream() as nccl_sys::cudaStream_t;
        let word = stream.alloc_zeros::<f32>(1).map_err(driver)?;
        let copies = self.peers.is_some();
        // NCCL's sends from the first half, receives into the second: 2 · max_transfers
        // buffers.
        let room = if peer.is_some() && !copies { 2 * bytes * max_transfers as usize } else { 1 };
        let scratch = stream.alloc_zeros::<u8>(room).map_err(driver)?;
        let (word_ptr, _word_sync) = word.device_ptr(stream);
        let (base, _scratch_sync) = scratch.device_ptr(stream);
        let mut timed = Vec::new();
        for k in 1..=max_transfers {
            let copy_list = match peer {
                Some(peer) if copies => self.calibration_copies(plan, rank, peer, bytes as u64, k as usize)?,
                _ => Vec::new(),
            };
            for rep in 0..WARM_UP + reps {
                // SAFETY: `word` is one f32, alive until the stream is synchronised below.
                unsafe { nccl::all_reduce_word(comm, word_ptr, raw_stream) }.map_err(failed)?;
                let Some(peer) = peer else { continue };
                if copies && copy_list.is_empty() {
                    continue;
                }
                let start = stream.record_event(Some(TIMED)).map_err(driver)?;
                if copies {
                    for &(src, dst) in &copy_list {
                        // SAFETY: `src` is this rank's send buffer and `dst` the peer's
                        // receive buffer the plan pairs with it (`bytes` each, as mapped by
                        // IPC); no step is in flight on either rank, and the final
                        // all-reduce below keeps the peer from its next step until the
                        // copies are done.
                        unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, stream.cu_stream()) }
                            .map_err(driver)?;
                    }
                } else {
                    // Sends from the scratch's first half, receives into its second.
                    let ops: Vec<(bool, u32, u64, usize)> = (0..k as usize)
                        .flat_map(|i| {
                            let recv = base + ((max_transfers as usize + i) * bytes) as u64;
                            [(true, peer, base + (i * bytes) as u64, bytes), (false, peer, recv, bytes)]
                        })
                        .collect();
                    // SAFETY: every op lies in `scratch` (2 · max_transfers buffers of
                    // `bytes`), alive until the stream is synchronised below.
                    unsafe { nccl::p2p_group(comm, raw_stream, &ops) }.map_err(failed)?;
                }
                let end = stream.record_event(Some(TIMED)).map_err(driver)?;
                end.synchronize().map_err(driver)?;
                if rep >= WARM_UP {
                    timed.push((k, start.elapsed_ms(&end).map_err(driver)? as f64));
                }
            }
        }
        // Every rank's batches done before any goes on (a copy into a peer's buffer ends
        // before that rank's all-reduce, which is after it on its stream).
        // SAFETY: as above.
        unsafe { nccl::all_reduce_word(comm, word_ptr, raw_stream) }.map_err(failed)?;
        stream.synchronize().map_err(driver)?;
        Ok(timed)
    }
}
