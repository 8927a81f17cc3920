//! The watchdog: a thread per rank that ends the process — with a message naming the rank,
//! the step and the p2p group it is stuck in — when NCCL reports an asynchronous error or
//! when a blocking phase (communicator creation, a step) makes no progress for `timeout`.
//! It aborts the communicator first (`ncclCommAbort`), so that no NCCL kernel is left
//! spinning on the GPU. A dead peer is seen either way: as an NCCL error where the
//! transport notices (sockets, InfiniBand), as a stuck step where it cannot (NVLink
//! spin-waits); every rank then ends within `timeout` of its last progress.
//!
//! How far the GPU got is read from progress marks: the communication stream writes, after
//! each p2p group, the index of the group's node + 1 into page-locked host memory (see
//! `kernels/progress.cu`), and 0 when a step starts. Marks are kernels, so they are part
//! of the captured CUDA graph and work in replays too.

use crate::gpu::{Communicator, HostMark};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Exit code of a rank the watchdog ended.
pub const EXIT_CODE: i32 = 3;

/// How long the watchdog waits for `ncclCommAbort` before exiting anyway.
const ABORT_GRACE: Duration = Duration::from_secs(10);

/// The progress mark and the description of each p2p group node (by node index).
type Progress = (Arc<HostMark>, Vec<Option<String>>);

struct Shared {
    rank: u32,
    timeout: Duration,
    /// What the rank is blocked in, and since when (`None`: not blocked).
    phase: Mutex<Option<(String, Instant)>>,
    /// The raw `ncclComm_t` (0: none yet, or aborted).
    comm: AtomicUsize,
    /// Keeps the communicator alive while this thread may still use `comm`.
    owner: Mutex<Option<Arc<Communicator>>>,
    /// Progress mark and the description of each p2p group node (by node index).
    mark: Mutex<Option<Progress>>,
    stop: AtomicBool,
}

/// A running watchdog; dropping it stops the thread.
#[allow(missing_debug_implementations)]
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts watching rank `rank`; `timeout` zero disables the stuck check (NCCL errors
    /// are still caught).
    pub fn start(rank: u32, timeout: Duration) -> Watchdog {
        let shared = Arc::new(Shared {
            rank,
            timeout,
            phase: Mutex::new(None),
            comm: AtomicUsize::new(0),
            owner: Mutex::new(None),
            mark: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new().name(format!("watchdog-{rank}")).spawn(move || watch(&s)).ok();
        Watchdog { shared, thread }
    }

    /// The rank is now blocked in `what` (until [`Watchdog::done`]).
    pub fn phase(&self, what: impl Into<String>) {
        if let Ok(mut p) = self.shared.phase.lock() {
            *p = Some((what.into(), Instant::now()));
        }
    }

    /// The rank is no longer blocked.
    pub fn done(&self) {
        if let Ok(mut p) = self.shared.phase.lock() {
            *p = None;
        }
    }

    /// Watch this communicator for asynchronous errors, and abort it on failure. The
    /// watchdog holds it until it stops, so it is never polled after being freed.
    pub fn watch_comm(&self, comm: Arc<Communicator>) {
        self.shared.comm.store(comm.raw(), Ordering::SeqCst);
        if let Ok(mut o) = self.shared.owner.lock() {
            *o = Some(comm);
        }
    }

    /// Read progress from `mark`; `groups[i]` describes node i when it is a p2p group.
    pub fn watch_progress(&self, mark: Arc<HostMark>, groups: Vec<Option<String>>) {
        if let Ok(mut m) = self.shared.mark.lock() {
            *m = Some((mark, groups));
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Only now may the communicator go (when its other owner has let it go too).
        self.shared.comm.store(0, Ordering::SeqCst);
        if let Ok(mut o) = self.shared.owner.lock() {
            o.take();
        }
    }
}

fn watch(s: &Shared) {
    while !s.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        let comm = s.comm.load(Ordering::SeqCst);
        if comm != 0 {
            if let Some(err) = crate::gpu::nccl_async_error(comm) {
                fail(s, &format!("NCCL reported an asynchronous error ({err})"));
            }
        }
        let stuck = s.phase.lock().ok().and_then(|p| {
            p.as_ref().filter(|(_, since)| !s.timeout.is_zero() && since.elapsed() > s.timeout).map(|(w, _)| w.clone())
        });
        if let Some(what) = stuck {
            fail(s, &format!("{what} made no progress for {:.0} s", s.timeout.as_secs_f64()));
        }
    }
}

/// Where the communication stream is, from the progress mark.
fn position(s: &Shared) -> String {
    let Ok(m) = s.mark.lock() else { return String::new() };
    let Some((mark, groups)) = m.as_ref() else { return String::new() };
    let done = mark.read() as usize;
    match groups.iter().enumerate().skip(done).find_map(|(i, g)| g.as_ref().map(|g| (i, g))) {
        Some((i, g)) => format!("; the p2p stream is waiting in node {i}: {g}"),
        None => "; every p2p group of the step has completed (stuck in compute)".into(),
    }
}

fn fail(s: &Shared, why: &str) -> ! {
    let comm = s.comm.swap(0, Ordering::SeqCst);
    eprintln!(
        "error: rank {}: {why}{}; {}exiting. A peer rank has probably died or hangs: see its log (every rank's \
         watchdog ends it the same way)",
        s.rank,
        position(s),
        if comm != 0 { "aborting the NCCL communicator and " } else { "" }
    );
    if comm != 0 {
        // Abort on another thread, and exit regardless after a while: an abort that itself
        // hangs (a wedged driver) must not keep the rank alive.
        let (done, aborted) = std::sync::mpsc::channel();
        let _ = std::thread::Builder::new().name("nccl-abort".into()).spawn(move || {
            crate::gpu::nccl_abort(comm);
            let _ = done.send(());
        });
        if aborted.recv_timeout(ABORT_GRACE).is_err() {
            eprintln!(
                "error: rank {}: ncclCommAbort did not return within {} s; exiting anyway",
                s.rank,
                ABORT_GRACE.as_secs()
            );
        }
    }
    // Leave without running exit handlers: CUDA's and NCCL's would tear down state that
    // the blocked main thread is still inside, and crash instead of exiting cleanly.
    // SAFETY: _exit ends the process at once; nothing of this process runs after it.
    unsafe { libc::_exit(EXIT_CODE) }
}
