// Element-wise kernels of pipewright's plans, f32. Their meaning is defined by
// plan/src/cpu.rs (the CPU executor); the names and buffer orders by plan/src/node.rs.
// Compiled for sm_90 with NVRTC by the runtime at start-up, cached on disk.

extern "C" __device__ float gelu_f(float x) {
    const float c = 0.7978845608f;  // sqrt(2/pi)
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

extern "C" __device__ float gelu_grad_f(float x) {
    const float c = 0.7978845608f;
    float t = tanhf(c * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * c * (1.0f + 3.0f * 0.044715f * x * x);
}

#define GRID_STRIDE(i, n) for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

extern "C" __global__ void gelu_forward(const float* x, float* y, long long n) {
    GRID_STRIDE(i, n) { y[i] = gelu_f(x[i]); }
}

extern "C" __global__ void gelu_backward(const float* x, const float* dy, float* dx, long long n) {
    GRID_STRIDE(i, n) { dx[i] = dy[i] * gelu_grad_f(x[i]); }
}

// loss[index] += scale * sum((y - t)^2); dy = 2 * scale * (y - t).
// Deterministic: each block writes its partial sum, and the last block to finish adds the
// partials in block order (so losses are bitwise reproducible run to run). `partials` holds
// one float per block, `counter` one unsigned int, zero between launches (the last block
// resets it).
extern "C" __global__ void mse_loss(const float* y, const float* t, float* dy, float* loss, float* partials,
                                    unsigned int* counter, long long n, float scale, int index) {
    __shared__ float partial[256];
    __shared__ bool last;
    float acc = 0.0f;
    GRID_STRIDE(i, n) {
        float d = y[i] - t[i];
        dy[i] = 2.0f * scale * d;
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

extern "C" __global__ void accumulate(const float* g, float* acc, long long n) {
    GRID_STRIDE(i, n) { acc[i] += g[i]; }
}

extern "C" __global__ void copy(const float* x, float* y, long long n) {
    GRID_STRIDE(i, n) { y[i] = x[i]; }
}

extern "C" __global__ void sgd_update(float* w, const float* g, long long n, float lr) {
    GRID_STRIDE(i, n) { w[i] -= lr * g[i]; }
}

extern "C" __global__ void tick(float* step) {
    if (blockIdx.x == 0 && threadIdx.x == 0) step[0] += 1.0f;
}

extern "C" __global__ void adamw_update(float* w, const float* g, float* m, float* v, const float* step, long long n,
                                        float lr, float b1, float b2, float eps, float wd) {
    float t = fmaxf(step[0], 1.0f);
    float c1 = 1.0f - powf(b1, t), c2 = 1.0f - powf(b2, t);
    GRID_STRIDE(i, n) {
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        w[i] -= lr * (wd * w[i] + (m[i] / c1) / (sqrtf(v[i] / c2) + eps));
    }
}

extern "C" __global__ void zero(float* x, long long n) {
    GRID_STRIDE(i, n) { x[i] = 0.0f; }
}

// The synthetic dataset (plan/src/data.rs, synth_value): element e of the array (tag,
// index) of step `step[0]` is a standard normal from a counter-based splitmix64 hash, in
// f64 like the CPU. The seed arrives as four exact 16-bit pieces.
__device__ unsigned long long mix64(unsigned long long x) {
    unsigned long long z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

extern "C" __global__ void synth_normal(float* x, const float* step, long long n, float tag, float index, float s0,
                                        float s1, float s2, float s3) {
    unsigned long long seed = (unsigned long long)s0 | ((unsigned long long)s1 << 16) |
                              ((unsigned long long)s2 << 32) | ((unsigned long long)s3 << 48);
    unsigned long long st = (unsigned long long)step[0];
    unsigned long long base = mix64(mix64(mix64(seed) ^ (unsigned long long)tag) ^ ((st << 32) | (unsigned long long)index));
    GRID_STRIDE(i, n) {
        unsigned long long h = mix64(base ^ ((unsigned long long)i * 0xD1B54A32D192ED03ull));
        double u1 = ((double)(h >> 40) + 0.5) / 16777216.0;
        double u2 = (double)(h & 0xFFFFFFull) / 16777216.0;
        x[i] = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
}
