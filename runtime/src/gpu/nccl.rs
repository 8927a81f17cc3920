//! NCCL: this rank's communicator, its asynchronous error and abort (for the watchdog),
//! one group of p2p ops and the one-word all-reduce that lines ranks up, and the
//! page-locked progress mark the communication stream writes.

use crate::error::driver;
use crate::RuntimeError;
use cudarc::driver::CudaContext;
use cudarc::nccl::{result as nccl_result, sys as nccl_sys};
use std::sync::Arc;

/// This rank's NCCL communicator. Aborted on drop (never left with pending work).
#[derive(Debug)]
pub struct Communicator {
    pub(super) raw: nccl_sys::ncclComm_t,
}

// SAFETY: NCCL communicators may be used from any thread; the runtime issues work from one
// thread, and the watchdog only calls ncclCommGetAsyncError and ncclCommAbort, which NCCL
// documents as callable from another thread.
unsafe impl Send for Communicator {}
unsafe impl Sync for Communicator {}

impl Communicator {
    /// The raw handle as an integer, for the watchdog.
    pub fn raw(&self) -> usize {
        self.raw as usize
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        nccl_abort(self.raw as usize);
    }
}

/// The asynchronous error of communicator `raw`, if it has one.
pub fn nccl_async_error(raw: usize) -> Option<String> {
    let mut result = nccl_sys::ncclResult_t::ncclSuccess;
    // SAFETY: `raw` is a live communicator (the watchdog clears it before aborting).
    let call = unsafe { nccl_sys::ncclCommGetAsyncError(raw as nccl_sys::ncclComm_t, &mut result) };
    match (call, result) {
        (nccl_sys::ncclResult_t::ncclSuccess, nccl_sys::ncclResult_t::ncclSuccess)
        | (nccl_sys::ncclResult_t::ncclSuccess, nccl_sys::ncclResult_t::ncclInProgress) => None,
        (nccl_sys::ncclResult_t::ncclSuccess, err) => Some(format!("{err:?}")),
        (err, _) => Some(format!("ncclCommGetAsyncError failed: {err:?}")),
    }
}

/// Aborts communicator `raw`: its pending operations end, and it is freed.
pub fn nccl_abort(raw: usize) {
    // SAFETY: `raw` is a live communicator, aborted at most once (the watchdog swaps its
    // copy out, and exits the process before the owner's drop could run).
    let _ = unsafe { nccl_result::comm_abort(raw as nccl_sys::ncclComm_t) };
}

/// One NCCL group of p2p ops on `stream`, each (send?, peer, device address, bytes): the
/// bytes move as bytes, whatever their dtype.
///
/// # Safety
/// Every `[address, address + bytes)` is device memory of the communicator's device that
/// stays alive until `stream` has run the group, and `stream` belongs to its context.
pub(super) unsafe fn p2p_group(
    comm: &Communicator,
    stream: nccl_sys::cudaStream_t,
    ops: &[(bool, u32, u64, usize)],
) -> Result<(), nccl_result::NcclError> {
    nccl_result::group_start()?;
    for &(send, peer, addr, len) in ops {
        let (ptr, bytes) = (addr as *mut std::ffi::c_void, nccl_sys::ncclDataType_t::ncclUint8);
        // SAFETY: the caller's: live device memory of this context; the communicator is live.
        unsafe {
            if send {
                nccl_result::send(ptr, len, bytes, peer as i32, comm.raw, stream)
            } else {
                nccl_result::recv(ptr, len, bytes, peer as i32, comm.raw, stream)
            }
        }?;
    }
    nccl_result::group_end()?;
    Ok(())
}

/// An all-reduce of the one f32 at `word` over `comm` on `stream`, in place: what lines
/// the ranks up (it ends on every rank within microseconds of the others).
///
/// # Safety
/// `word` is one f32 of device memory of the communicator's device, alive until `stream`
/// has run the all-reduce, and `stream` belongs to its context.
pub(super) unsafe fn all_reduce_word(
    comm: &Communicator,
    word: u64,
    stream: nccl_sys::cudaStream_t,
) -> Result<(), nccl_result::NcclError> {
    // SAFETY: the caller's; in place, which NCCL allows; the communicator is live.
    unsafe {
        nccl_result::all_reduce(
            word as *const std::ffi::c_void,
            word as *mut std::ffi::c_void,
            1,
            nccl_sys::ncclDataType_t::ncclFloat32,
            nccl_sys::ncclRedOp_t::ncclSum,
            comm.raw,
            stream,
        )
    }
    .map(|_| ())
}

/// One u32 of page-locked host memory that the device can write (the watchdog's progress
/// mark): `device` is its device address.
#[derive(Debug)]
pub struct HostMark {
    host: *mut u32,
    pub(super) device: u64,
}

// SAFETY: the memory is only read (volatile) by the host and written by the device; the
// pointer stays valid until drop.
unsafe impl Send for HostMark {}
unsafe impl Sync for HostMark {}

impl HostMark {
    /// Allocates the mark in `ctx`, zeroed.
    pub fn new(ctx: &Arc<CudaContext>) -> Result<HostMark, RuntimeError> {
        ctx.bind_to_thread().map_err(driver)?;
        let flags = cudarc::driver::sys::CU_MEMHOSTALLOC_DEVICEMAP | cudarc::driver::sys::CU_MEMHOSTALLOC_PORTABLE;
        // SAFETY: a 4-byte page-locked allocation; written (zeroed) before any read.
        let host = unsafe { cudarc::driver::result::malloc_host(4, flags) }.map_err(driver)? as *mut u32;
        // SAFETY: `host` is a valid, aligned u32 we own.
        unsafe { std::ptr::write_volatile(host, 0) };
        let mut device = 0;
        // SAFETY: `host` was allocated with DEVICEMAP, so it has a device address.
        unsafe { cudarc::driver::sys::cuMemHostGetDevicePointer_v2(&mut device, host as *mut _, 0) }
            .result()
            .map_err(driver)?;
        Ok(HostMark { host, device })
    }

    /// The last value the device wrote.
    pub fn read(&self) -> u32 {
        // SAFETY: valid until drop; volatile, because the device writes it behind our back.
        unsafe { std::ptr::read_volatile(self.host) }
    }
}

impl Drop for HostMark {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemHostAlloc in `new`, freed once.
        let _ = unsafe { cudarc::driver::result::free_host(self.host as *mut _) };
    }
}
