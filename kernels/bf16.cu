// bf16 variants of the element-wise kernels (plan/src/node.rs names them `<kernel>_bf16`):
// activations are stored as bf16, arithmetic is f32, results are rounded to nearest even.
// bf16 is handled as raw 16-bit words, so no CUDA header is needed under NVRTC.
// Compiled for sm_90 with NVRTC by the runtime at start-up, cached on disk.

typedef unsigned short bf16;

__device__ __forceinline__ float ld(bf16 h) { return __uint_as_float(((unsigned int)h) << 16); }

__device__ __forceinline__ bf16 st(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7f800000u) == 0x7f800000u) return (bf16)((u >> 16) | ((u & 0xffffu) ? 0x40u : 0u));  // inf/NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

__device__ float gelu_bf(float x) {
    const float c = 0.7978845608f;
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

__device__ float gelu_grad_bf(float x) {
    const float c = 0.7978845608f;
    float t = tanhf(c * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * c * (1.0f + 3.0f * 0.044715f * x * x);
}

#define GRID_STRIDE(i, n) for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

extern "C" __global__ void gelu_forward_bf16(const bf16* x, bf16* y, long long n) {
    GRID_STRIDE(i, n) { y[i] = st(gelu_bf(ld(x[i]))); }
}

extern "C" __global__ void gelu_backward_bf16(const bf16* x, const bf16* dy, bf16* dx, long long n) {
    GRID_STRIDE(i, n) { dx[i] = st(ld(dy[i]) * gelu_grad_bf(ld(x[i]))); }
}

extern "C" __global__ void copy_bf16(const bf16* x, bf16* y, long long n) {
    GRID_STRIDE(i, n) { y[i] = x[i]; }
}

// w (bf16) = master (f32), after each optimizer step.
extern "C" __global__ void cast_bf16(const float* master, bf16* w, long long n) {
    GRID_STRIDE(i, n) { w[i] = st(master[i]); }
}

// As mse_loss in elementwise.cu (same deterministic reduction); y, t, dy in bf16.
extern "C" __global__ void mse_loss_bf16(const bf16* y, const bf16* t, bf16* dy, float* loss, float* partials,
                                         unsigned int* counter, long long n, float scale, int index) {
    __shared__ float partial[256];
    __shared__ bool last;
    float acc = 0.0f;
    GRID_STRIDE(i, n) {
        float d = ld(y[i]) - ld(t[i]);
        dy[i] = st(2.0f * scale * d);
        acc += d * d;
    }
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = partial[0];
        __threadfence();
        last = atomicInc(counter, gridDim.x) == gridDim.x - 1;
    }
    __syncthreads();
    if (last && threadIdx.x == 0) {
        __threadfence();
        float total = 0.0f;
        for (unsigned int b = 0; b < gridDim.x; ++b) total += ((volatile float*)partials)[b];
        loss[index] += scale * total;
        *counter = 0;
    }
}

// As synth_normal in elementwise.cu, stored as bf16.
__device__ unsigned long long mix64_bf(unsigned long long x) {
    unsigned long long z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

extern "C" __global__ void synth_normal_bf16(bf16* x, const float* step, long long n, float tag, float index, float s0,
                                             float s1, float s2, float s3) {
    unsigned long long seed = (unsigned long long)s0 | ((unsigned long long)s1 << 16) |
                              ((unsigned long long)s2 << 32) | ((unsigned long long)s3 << 48);
    unsigned long long st_ = (unsigned long long)step[0];
    unsigned long long base =
        mix64_bf(mix64_bf(mix64_bf(seed) ^ (unsigned long long)tag) ^ ((st_ << 32) | (unsigned long long)index));
    GRID_STRIDE(i, n) {
        unsigned long long h = mix64_bf(base ^ ((unsigned long long)i * 0xD1B54A32D192ED03ull));
        double u1 = ((double)(h >> 40) + 0.5) / 16777216.0;
        double u2 = (double)(h & 0xFFFFFFull) / 16777216.0;
        x[i] = st((float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2)));
    }
}
