// Runs the GELU kernels on the CPU (runtime/tests/kernel_sources.rs), after host/emulate.h.
// Compiled with PW_BF16 after bf16.cu, without it after elementwise.cu. Usage: run_gelu N.
// Prints, per input element at an aligned and at a misaligned start (the kernels' 16-byte
// path and their one-element path), the input x, the upstream gradient dy, gelu(x),
// dy * gelu'(x) out of place and in place, as raw bits in hex.
#include <cstdlib>

template <typename T, typename Fwd, typename Bwd>
void run(long long n, Fwd forward, Bwd backward) {
    // 16-byte aligned storage, and one element in: the kernels' two paths.
    for (int shift = 0; shift < 2; ++shift) {
        // Each array 16-byte aligned (a whole number of 16 bytes apart), then all shifted.
        const long long stride = (n + 16 + 7) / 8 * 8;
        std::vector<T> store(4 * stride + 16);
        T* base = store.data();
        while (reinterpret_cast<unsigned long long>(base) % 16) ++base;
        T *x = base + shift, *dy = x + stride, *y = dy + stride, *dx = y + stride;
        for (long long i = 0; i < n; ++i) {
            x[i] = from_float<T>(-6.0f + 12.0f * (float)((i * 7919) % n) / (float)n);
            dy[i] = from_float<T>(0.5f - (float)((i * 104729) % 1000) / 1000.0f);
        }
        grid(n, [&] { forward(x, y, n); });
        grid(n, [&] { backward(x, dy, dx, n); });
        std::vector<T> inplace(dy, dy + n);
        grid(n, [&] { backward(x, inplace.data(), inplace.data(), n); });
        for (long long i = 0; i < n; ++i)
            std::printf("%d %08x %08x %08x %08x %08x\n", shift, bits(x[i]), bits(dy[i]), bits(y[i]), bits(dx[i]),
                        bits(inplace[i]));
    }
}

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    long long n = std::atoll(argv[1]);
#ifdef PW_BF16
    run<bf16>(n, gelu_forward_bf16, gelu_backward_bf16);
#else
    run<float>(n, gelu_forward, gelu_backward);
#endif
    return 0;
}
