//! What a p2p batch costs when nothing waits: NCCL batches of 1, 2, … transfers exchanged
//! by pairs of ranks that post them at the same moment (`profile`'s calibration, see
//! [`crate::profile`]). A batch timed inside a step also holds the wait for its peer to
//! post the other side; in a tight program (the optimiser's) every batch of a size may
//! wait, and a line fitted through them charged DualPipe at 2048 0.37 ms a transfer where
//! the transfer takes 0.09.
//!
//! The ranks are lined up on the GPU, not the host: each batch follows an all-reduce of
//! one word on the same stream, which ends on every rank within microseconds of the
//! others, and the batch is timed from an event recorded right after it.

use super::{Communicator, Gpu, COMM_STREAM};
use crate::error::driver;
use crate::RuntimeError;
use cudarc::driver::DevicePtr;
use cudarc::nccl::{result as nccl_result, sys as nccl_sys};

/// Events for timing (the default flags: with timing).
const TIMED: cudarc::driver::sys::CUevent_flags = cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;

/// Untimed batches of each size before the timed ones (NCCL connects its p2p channels for
/// a peer on the first).
const WARM_UP: u32 = 2;

impl Gpu {
    /// Times batches of `k` sends to and `k` receives from `peer`, `bytes` each, for `k` in
    /// `1..=max_transfers`, `reps` times each after [`WARM_UP`], every batch posted right
    /// after an all-reduce over the communicator: `(k, ms)` per timed batch. Every rank of
    /// the communicator must call it with the same `max_transfers` and `reps` (the
    /// all-reduces are collective); a rank without a partner (`peer` none) only joins them.
    pub fn time_exchanges(
        &self,
        comm: &Communicator,
        rank: u32,
        peer: Option<u32>,
        bytes: usize,
        max_transfers: u32,
        reps: u32,
    ) -> Result<Vec<(u32, f64)>, RuntimeError> {
        let nccl = |e: nccl_result::NcclError| RuntimeError::Nccl { rank, what: format!("p2p calibration: {e:?}") };
        let stream = &self.streams[COMM_STREAM as usize];
        let raw_stream = stream.cu_stream() as nccl_sys::cudaStream_t;
        let word = stream.alloc_zeros::<f32>(1).map_err(driver)?;
        // Sends from the first half, receives into the second: 2 · max_transfers buffers.
        let room = if peer.is_some() { 2 * bytes * max_transfers as usize } else { 1 };
        let scratch = stream.alloc_zeros::<u8>(room).map_err(driver)?;
        let (word_ptr, _word_sync) = word.device_ptr(stream);
        let (base, _scratch_sync) = scratch.device_ptr(stream);
        let mut timed = Vec::new();
        for k in 1..=max_transfers {
            for rep in 0..WARM_UP + reps {
                // SAFETY: one f32 of live device memory, reduced in place (NCCL allows it)
                // on this context's stream; the communicator is live.
                unsafe {
                    nccl_result::all_reduce(
                        word_ptr as *const std::ffi::c_void,
                        word_ptr as *mut std::ffi::c_void,
                        1,
                        nccl_sys::ncclDataType_t::ncclFloat32,
                        nccl_sys::ncclRedOp_t::ncclSum,
                        comm.raw,
                        raw_stream,
                    )
                }
                .map_err(nccl)?;
                let Some(peer) = peer else { continue };
                let start = stream.record_event(Some(TIMED)).map_err(driver)?;
                nccl_result::group_start().map_err(nccl)?;
                for i in 0..k as usize {
                    let send = base + (i * bytes) as u64;
                    let recv = base + ((max_transfers as usize + i) * bytes) as u64;
                    // SAFETY: [send, send + bytes) and [recv, recv + bytes) lie in `scratch`
                    // (2 · max_transfers buffers of `bytes`), alive until the stream is
                    // synchronised below; the communicator is live.
                    unsafe {
                        nccl_result::send(
                            send as *const std::ffi::c_void,
                            bytes,
                            nccl_sys::ncclDataType_t::ncclUint8,
                            peer as i32,
                            comm.raw,
                            raw_stream,
                        )
                        .map_err(nccl)?;
                        nccl_result::recv(
                            recv as *mut std::ffi::c_void,
                            bytes,
                            nccl_sys::ncclDataType_t::ncclUint8,
                            peer as i32,
                            comm.raw,
                            raw_stream,
                        )
                        .map_err(nccl)?;
                    }
                }
                nccl_result::group_end().map_err(nccl)?;
                let end = stream.record_event(Some(TIMED)).map_err(driver)?;
                end.synchronize().map_err(driver)?;
                if rep >= WARM_UP {
                    timed.push((k, start.elapsed_ms(&end).map_err(driver)? as f64));
                }
            }
        }
        stream.synchronize().map_err(driver)?;
        Ok(timed)
    }
}
