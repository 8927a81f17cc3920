// The flags of the copy-engine p2p transport (runtime/src/gpu/peer.rs), one thread each.
// A flag is a u32 in the flag table of the rank that waits on it; the other rank writes
// it through its CUDA IPC mapping. Kernels rather than stream memory operations: a
// graph's memory-operation nodes cost microseconds each to launch and keep it from being
// instantiated for device launch, and one thread waiting (asleep between reads) takes
// next to nothing from the products beside it.

// Writes `value` into `flag`, after everything this stream did before (a copy engine's
// transfer included: it completed before this kernel started) is visible system-wide.
extern "C" __global__ void peer_flag_set(volatile unsigned int* flag, unsigned int value) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        __threadfence_system();
        *flag = value;
        __threadfence_system();
    }
}

// Waits until `flag` holds `value`, then sets it back to 0 (for the next step).
extern "C" __global__ void peer_flag_wait(volatile unsigned int* flag, unsigned int value) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        while (*flag != value) {
            __nanosleep(200);
        }
        *flag = 0;
        __threadfence_system();
    }
}
