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

// The optimizer's and the gradient sum's passes move 16 bytes per load and store where every
// pointer is 16-byte aligned (every buffer of a plan's arena is), then the tail one element
// at a time; per element the same arithmetic either way.
extern "C" __global__ void accumulate(const float* g, float* acc, long long n) {
    const long long vectors = aligned16(g, acc, acc) ? n / 4 : 0;
    GRID_STRIDE(q, vectors) {
        const floats4 a = ((const floats4*)g)[q];
        floats4 b = ((floats4*)acc)[q];
#pragma unroll
        for (int j = 0; j < 4; ++j) b.v[j] += a.v[j];
        ((floats4*)acc)[q] = b;
    }
    const long long done = vectors * 4;
    GRID_STRIDE(i, n - done) { acc[done + i] += g[done + i]; }
}

extern "C" __global__ void copy(const float* x, float* y, long long n) { copy_bytes(x, y, n * 4); }

extern "C" __global__ void sgd_update(float* w, const float* g, long long n, float lr) {
    const long long vectors = aligned16(w, g, g) ? n / 4 : 0;
    GRID_STRIDE(q, vectors) {
        floats4 a = ((floats4*)w)[q];
        const floats4 b = ((const floats4*)g)[q];
#pragma unroll
        for (int j = 0; j < 4; ++j) a.v[j] -= lr * b.v[j];
        ((floats4*)w)[q] = a;
    }
    const long long done = vectors * 4;
    GRID_STRIDE(i, n - done) { w[done + i] -= lr * g[done + i]; }
}

// The mirrored gradient's sum and SGD in one pass (DualPipe's epilogue): g += r, then
// w −= lr · g — the arithmetic of `accumulate` then `sgd_update`, with one read of g and
// one write of it fewer (20 bytes an element instead of 24; the pass runs beside the
// next gradient's copy into this GPU, which it slows less).
extern "C" __global__ void sgd_update_sum(float* w, float* g, const float* r, long long n, float lr) {
    const long long vectors = aligned16(w, g, r) ? n / 4 : 0;
    GRID_STRIDE(q, vectors) {
        floats4 a = ((floats4*)w)[q], b = ((floats4*)g)[q];
        const floats4 c = ((const floats4*)r)[q];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            b.v[j] += c.v[j];
            a.v[j] -= lr * b.v[j];
        }
        ((floats4*)g)[q] = b;
        ((floats4*)w)[q] = a;
    }
    const long long done = vectors * 4;
    GRID_STRIDE(i, n - done) {
        const float sum = g[done + i] + r[done + i];
        g[done + i] = sum;
        w[done + i] -= lr * sum;
    }
}

extern "C" __global__ void tick(float* step) {
    if (blockIdx.x == 0 && threadIdx.x == 0) step[0] += 1.0f;
}

extern "C" __global__ void adamw_update(float* w, const float* g, float* m, float* v, const float* step, long long n,
                                        float lr, float b1, float b2, float eps, float wd) {
    float t = fmaxf(step[0], 1.0f);
    float c1 = 1.0f - powf(b1, t), c2 = 1.0f - powf(b2, t);
    const long long vectors = aligned16(w, g, m) && aligned16(v, v, v) ? n / 4 : 0;
    GRID_STRIDE(q, vectors) {
        floats4 w4 = ((floats4*)w)[q], m4 = ((floats4*)m)[q], v4 = ((floats4*)v)[q];
        const floats4 g4 = ((const floats4*)g)[q];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            m4.v[j] = b1 * m4.v[j] + (1.0f - b1) * g4.v[j];
            v4.v[j] = b2 * v4.v[j] + (1.0f - b2) * g4.v[j] * g4.v[j];
            w4.v[j] -= lr * (wd * w4.v[j] + (m4.v[j] / c1) / (sqrtf(v4.v[j] / c2) + eps));
        }
        ((floats4*)w)[q] = w4;
        ((floats4*)m)[q] = m4;
        ((floats4*)v)[q] = v4;
    }
    const long long done = vectors * 4;
    GRID_STRIDE(k, n - done) {
        const long long i = done + k;
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        w[i] -= lr * (wd * w[i] + (m[i] / c1) / (sqrtf(v[i] / c2) + eps));
    }
}

extern "C" __global__ void zero(float* x, long long n) {
    const long long vectors = aligned16(x, x, x) ? n / 4 : 0;
    const floats4 zeros = {{0.0f, 0.0f, 0.0f, 0.0f}};
    GRID_STRIDE(q, vectors) { ((floats4*)x)[q] = zeros; }
    const long long done = vectors * 4;
    GRID_STRIDE(i, n - done) { x[done + i] = 0.0f; }
}

extern "C" __global__ void synth_data(float* x, const float* step, long long n, float tag, float index, float s0,
                                        float s1, float s2, float s3) {
    synth_data_body(x, step, n, tag, index, s0, s1, s2, s3);
}
