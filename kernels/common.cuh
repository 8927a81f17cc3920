// What elementwise.cu (f32) and bf16.cu (bf16 activations) share: loads and stores of either
// element type (f32 arithmetic; bf16 as raw 16-bit words rounded to nearest even, so no
// CUDA header is needed under NVRTC), GELU, the deterministic loss reduction, the
// synthetic dataset's generator and a vectorised copy. The runtime prepends this file to
// each of them before NVRTC compiles it (runtime/src/gpu/kernels.rs, KERNEL_SOURCES).

typedef unsigned short bf16;

#define GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

__device__ __forceinline__ float ld(float x) { return x; }
__device__ __forceinline__ float ld(bf16 h) { return __uint_as_float(((unsigned int)h) << 16); }

__device__ __forceinline__ bf16 to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7f800000u) == 0x7f800000u) return (bf16)((u >> 16) | ((u & 0xffffu) ? 0x40u : 0u));  // inf/NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

__device__ __forceinline__ void st(float* p, float f) { *p = f; }
__device__ __forceinline__ void st(bf16* p, float f) { *p = to_bf16(f); }

// tanh for elements of type T. f32: tanhf. bf16: 1 - 2/(e^2u + 1) with the hardware
// exponential and reciprocal (an absolute error near 1e-7, far below bf16's rounding of
// 2^-9 relative), because tanhf is a software routine of some twenty instructions that made
// the bf16 GELU passes compute-bound (hidden 4096 on an H200: 2.4-3.1 TB/s of the memory's
// 4.8). e^2u overflowing to infinity gives 1, underflowing to 0 gives -1.
template <typename T>
__device__ __forceinline__ float tanh_of(float u) {
    return tanhf(u);
}
template <>
__device__ __forceinline__ float tanh_of<bf16>(float u) {
    return 1.0f - __fdividef(2.0f, __expf(2.0f * u) + 1.0f);
}

// GELU, tanh approximation (plan/src/math.rs), and its derivative.
template <typename T>
__device__ __forceinline__ float gelu_f(float x) {
    const float c = 0.7978845608f;  // sqrt(2/pi)
    return 0.5f * x * (1.0f + tanh_of<T>(c * (x + 0.044715f * x * x * x)));
}

template <typename T>
__device__ __forceinline__ float gelu_grad_f(float x) {
    const float c = 0.7978845608f;
    float t = tanh_of<T>(c * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * c * (1.0f + 3.0f * 0.044715f * x * x);
}

struct alignas(16) words16 {
    unsigned int w[4];
};

// Four f32 (16 bytes) and four bf16 (8 bytes), for the vectorised passes below.
struct alignas(16) floats4 {
    float v[4];
};
struct alignas(8) bf16x4 {
    bf16 v[4];
};

__device__ __forceinline__ bool aligned16(const void* a, const void* b, const void* c) {
    return ((((unsigned long long)a) | ((unsigned long long)b) | ((unsigned long long)c)) & 15ull) == 0;
}

// GELU and its gradient are memory-bound passes over a whole activation (64 Mi elements at
// hidden 4096), run in place of a fused epilogue where the runtime measured that to pay:
// 16-byte loads and stores where every pointer is 16-byte aligned (every buffer of a plan's
// arena is), then the tail one element at a time. Per element the same arithmetic either
// way, so the result does not depend on the path.
template <typename T>
__device__ void gelu_forward_body(const T* x, T* y, long long n) {
    const int per = 16 / sizeof(T);
    const long long vectors = aligned16(x, y, y) ? n / per : 0;
    GRID_STRIDE(v, vectors) {
        const words16 in = ((const words16*)x)[v];
        words16 out;
        const T* xs = (const T*)&in;
        T* ys = (T*)&out;
#pragma unroll
        for (int j = 0; j < per; ++j) st(&ys[j], gelu_f<T>(ld(xs[j])));
        ((words16*)y)[v] = out;
    }
    const long long done = vectors * per;
    GRID_STRIDE(i, n - done) { st(&y[done + i], gelu_f<T>(ld(x[done + i]))); }
}

// dx = dy * gelu'(x); dx may be dy (in place: each element is read before it is written,
// by the same thread).
template <typename T>
__device__ void gelu_backward_body(const T* x, const T* dy, T* dx, long long n) {
    const int per = 16 / sizeof(T);
    const long long vectors = aligned16(x, dy, dx) ? n / per : 0;
    GRID_STRIDE(v, vectors) {
        const words16 in = ((const words16*)x)[v];
        const words16 grad = ((const words16*)dy)[v];
        words16 out;
        const T* xs = (const T*)&in;
        const T* gs = (const T*)&grad;
        T* os = (T*)&out;
#pragma unroll
        for (int j = 0; j < per; ++j) st(&os[j], ld(gs[j]) * gelu_grad_f<T>(ld(xs[j])));
        ((words16*)dx)[v] = out;
    }
    const long long done = vectors * per;
    GRID_STRIDE(i, n - done) { st(&dx[done + i], ld(dy[done + i]) * gelu_grad_f<T>(ld(x[done + i]))); }
}

// The sum of every thread's `v` over the block, in a fixed order (a tree over `partial`,
// one float per thread); every thread of the block must call it.
__device__ __forceinline__ float block_sum(float* partial, float v) {
    partial[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    return partial[0];
}

// loss[index] += scale * sum((y - t)^2); dy = 2 * scale * (y - t).
// Deterministic: each block writes its partial sum, and the last block to finish adds the
// partials in a fixed order (a strided sum per thread, then a tree) (so losses are bitwise reproducible run to run). `partials` holds
// one float per block (MSE_BLOCKS in plan/src/node.rs), `counter` one unsigned int, zero
// between launches (the last block resets it). Blocks of 256 threads.
template <typename T>
__device__ void mse_loss_body(const T* y, const T* t, T* dy, float* loss, float* partials, unsigned int* counter,
                              long long n, float scale, int index) {
    __shared__ float partial[256];
    __shared__ bool last;
    float acc = 0.0f;
    GRID_STRIDE(i, n) {
        float d = ld(y[i]) - ld(t[i]);
        st(&dy[i], 2.0f * scale * d);
        acc += d * d;
    }
    const float block = block_sum(partial, acc);
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = block;
        __threadfence();
        last = atomicInc(counter, gridDim.x) == gridDim.x - 1;
    }
    __syncthreads();
    if (last) {  // the whole last block (`last` is shared): the same tree over the partials
        __threadfence();
        float v = 0.0f;
        for (unsigned int b = threadIdx.x; b < gridDim.x; b += blockDim.x) v += ((volatile float*)partials)[b];
        const float total = block_sum(partial, v);
        if (threadIdx.x == 0) {
            loss[index] += scale * total;
            *counter = 0;
        }
    }
}

// The synthetic dataset (plan/src/data.rs, synth_value): element e of the array (tag,
// index) of step `step[0]` is uniform on (-sqrt 3, sqrt 3) from a counter-based splitmix64
// hash, in f64 exactly as on the CPU (so the values are equal bit for bit). The seed
// arrives as four exact 16-bit pieces.
__device__ __forceinline__ unsigned long long mix64(unsigned long long x) {
    unsigned long long z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

template <typename T>
__device__ void synth_data_body(T* x, const float* step, long long n, float tag, float index, float s0, float s1,
                                float s2, float s3) {
    unsigned long long seed = (unsigned long long)s0 | ((unsigned long long)s1 << 16) |
                              ((unsigned long long)s2 << 32) | ((unsigned long long)s3 << 48);
    unsigned long long at = (unsigned long long)step[0];
    unsigned long long base =
        mix64(mix64(mix64(seed) ^ (unsigned long long)tag) ^ ((at << 32) | (unsigned long long)index));
    GRID_STRIDE(i, n) {
        unsigned long long h = mix64(base ^ ((unsigned long long)i * 0xD1B54A32D192ED03ull));
        double u = ((double)(h >> 40) + 0.5) / 16777216.0;
        // Two roundings, as on the CPU: no fused multiply-add.
        double centred = __dsub_rn(__dmul_rn(2.0, u), 1.0);
        st(&x[i], (float)__dmul_rn(centred, 1.7320508075688772));
    }
}

// Copies `bytes` bytes: 16 at a time where both pointers are 16-byte aligned (every
// buffer of a plan's arena is), then the tail.
__device__ void copy_bytes(const void* x, void* y, long long bytes) {
    const bool aligned = ((((unsigned long long)x) | ((unsigned long long)y)) & 15ull) == 0;
    long long vectors = aligned ? bytes / 16 : 0;
    GRID_STRIDE(i, vectors) { ((words16*)y)[i] = ((const words16*)x)[i]; }
    GRID_STRIDE(i, bytes - vectors * 16) { ((char*)y)[vectors * 16 + i] = ((const char*)x)[vectors * 16 + i]; }
}
