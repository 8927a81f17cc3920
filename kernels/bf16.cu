// bf16 variants of the element-wise kernels (plan/src/node.rs names them `<kernel>_bf16`):
// activations are stored as bf16, arithmetic is f32, results are rounded to nearest even
// (kernels/common.cuh, prepended by the runtime, holds the shared bodies).
// Compiled for sm_90 with NVRTC by the runtime at start-up, cached on disk.

extern "C" __global__ void gelu_forward_bf16(const bf16* x, bf16* y, long long n) { gelu_forward_body(x, y, n); }

extern "C" __global__ void gelu_backward_bf16(const bf16* x, const bf16* dy, bf16* dx, long long n) {
    gelu_backward_body(x, dy, dx, n);
}

extern "C" __global__ void copy_bf16(const bf16* x, bf16* y, long long n) { copy_bytes(x, y, n * 2); }

// acc (f32) += g (bf16): a mirrored gradient copy that travelled as bf16.
extern "C" __global__ void accumulate_bf16(const bf16* g, float* acc, long long n) {
    const long long vectors = aligned16(g, acc, acc) ? n / 4 : 0;
    GRID_STRIDE(q, vectors) {
        const bf16x4 a = ((const bf16x4*)g)[q];
        floats4 b = ((floats4*)acc)[q];
#pragma unroll
        for (int j = 0; j < 4; ++j) b.v[j] += ld(a.v[j]);
        ((floats4*)acc)[q] = b;
    }
    const long long done = vectors * 4;
    GRID_STRIDE(i, n - done) { acc[done + i] += ld(g[done + i]); }
}

// w (bf16) = master (f32), after each optimizer step.
extern "C" __global__ void cast_bf16(const float* master, bf16* w, long long n) {
    const long long vectors = aligned16(master, w, w) ? n / 4 : 0;
    GRID_STRIDE(q, vectors) {
        const floats4 a = ((const floats4*)master)[q];
        bf16x4 b;
#pragma unroll
        for (int j = 0; j < 4; ++j) st(&b.v[j], a.v[j]);
        ((bf16x4*)w)[q] = b;
    }
    const long long done = vectors * 4;
    GRID_STRIDE(i, n - done) { st(&w[done + i], master[done + i]); }
}

// SGD on the f32 master weights and their bf16 copy in one pass: w −= lr · g; copy = w —
// `sgd_update` then `cast_bf16` without reading w back (14 bytes an element, not 18).
extern "C" __global__ void sgd_update_bf16(float* w, const float* g, bf16* copy, long long n, float lr) {
    const long long vectors = aligned16(w, g, copy) ? n / 4 : 0;
    GRID_STRIDE(q, vectors) {
        floats4 a = ((floats4*)w)[q];
        const floats4 b = ((const floats4*)g)[q];
        bf16x4 c;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            a.v[j] -= lr * b.v[j];
            st(&c.v[j], a.v[j]);
        }
        ((floats4*)w)[q] = a;
        ((bf16x4*)copy)[q] = c;
    }
    const long long done = vectors * 4;
    GRID_STRIDE(i, n - done) {
        const float updated = w[done + i] - lr * g[done + i];
        w[done + i] = updated;
        st(&copy[done + i], updated);
    }
}

// The same with the mirrored gradient's sum first (DualPipe's epilogue, gradients
// travelling in f32): g += r; w −= lr · g; copy = w — `accumulate`, `sgd_update` and
// `cast_bf16` in one pass (22 bytes an element instead of 30).
extern "C" __global__ void sgd_update_sum_bf16(float* w, float* g, const float* r, bf16* copy, long long n,
                                               float lr) {
    const long long vectors = aligned16(w, g, r) && aligned16(copy, copy, copy) ? n / 4 : 0;
    GRID_STRIDE(q, vectors) {
        floats4 a = ((floats4*)w)[q], b = ((floats4*)g)[q];
        const floats4 c = ((const floats4*)r)[q];
        bf16x4 d;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            b.v[j] += c.v[j];
            a.v[j] -= lr * b.v[j];
            st(&d.v[j], a.v[j]);
        }
        ((floats4*)g)[q] = b;
        ((floats4*)w)[q] = a;
        ((bf16x4*)copy)[q] = d;
    }
    const long long done = vectors * 4;
    GRID_STRIDE(i, n - done) {
        const float sum = g[done + i] + r[done + i];
        const float updated = w[done + i] - lr * sum;
        g[done + i] = sum;
        w[done + i] = updated;
        st(&copy[done + i], updated);
    }
}

extern "C" __global__ void mse_loss_bf16(const bf16* y, const bf16* t, bf16* dy, float* loss, float* partials,
                                         unsigned int* counter, long long n, float scale, int index) {
    mse_loss_body(y, t, dy, loss, partials, counter, n, scale, index);
}

extern "C" __global__ void synth_data_bf16(bf16* x, const float* step, long long n, float tag, float index, float s0,
                                             float s1, float s2, float s3) {
    synth_data_body(x, step, n, tag, index, s0, s1, s2, s3);
}
