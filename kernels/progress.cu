// Progress marks for the runtime's watchdog (runtime/src/watchdog.rs). `mark` is written
// into page-locked host memory mapped into the device, so the host can read how far the
// communication stream got while that stream is stuck in an NCCL call.

extern "C" __global__ void mark_progress(volatile unsigned int* mark, unsigned int value) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        *mark = value;
        __threadfence_system();
    }
}
