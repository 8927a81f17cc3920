// Element-wise kernels of pipewright's plans, f32 (kernels/common.cuh is prepended by the
// runtime). Their meaning is defined by plan/src/cpu.rs (the CPU executor); the names and
// buffer orders by plan/src/node.rs. Compiled for sm_90 with NVRTC at start-up, cached on disk.

extern "C" __global__ void gelu_forward(const float* x, float* y, long long n) { gelu_forward_body(x, y, n); }

extern "C" __global__ void gelu_backward(const float* x, const float* dy, float* dx, long long n) {
    gelu_backward_body(x, dy, dx, n);
}

extern "C" __global__ void mse_loss(const float* y, const float* t, float* dy, float* loss, float* partials,
                                    unsigned int* counter, long long n, float scale, int index) {
    mse_loss_body(y, t, dy, loss, partials, counter, n, scale, index);
}

extern "C" __global__ void accumulate(const float* g, float* acc, long long n) {
    GRID_STRIDE(i, n) { acc[i] += g[i]; }
}

extern "C" __global__ void copy(const float* x, float* y, long long n) { copy_bytes(x, y, n * 4); }

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

extern "C" __global__ void synth_data(float* x, const float* step, long long n, float tag, float index, float s0,
                                        float s1, float s2, float s3) {
    synth_data_body(x, step, n, tag, index, s0, s1, s2, s3);
}
