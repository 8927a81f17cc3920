// The CUDA built-ins the element-wise kernels use, defined for a CPU run, and a grid run
// one thread at a time (runtime/tests/kernel_sources.rs): the kernel file, assembled as the
// runtime hands it to NVRTC, is compiled after kernels/host-syntax.h and before this file.
// Kernels with barriers or shared memory (the loss reduction) cannot run this way.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
float __expf(float x) { return std::exp(x); }
float __fdividef(float a, float b) { return a / b; }
void __syncthreads() {}
void __threadfence() {}
void __threadfence_system() {}
void __nanosleep(unsigned int) {}
unsigned atomicInc(unsigned* p, unsigned limit) { unsigned old = *p; *p = old >= limit ? 0 : old + 1; return old; }
double __dmul_rn(double a, double b) { return a * b; }
double __dsub_rn(double a, double b) { return a - b; }

// Blocks of 256 threads, at most 4096 of them, as the runtime launches element-wise kernels.
template <typename F>
void grid(long long n, F kernel) {
    long long blocks = (n + 255) / 256;
    gridDim.x = blocks < 1 ? 1 : (blocks > 4096 ? 4096 : blocks);
    blockDim.x = 256;
    for (unsigned b = 0; b < gridDim.x; ++b)
        for (unsigned t = 0; t < blockDim.x; ++t) {
            blockIdx.x = b;
            threadIdx.x = t;
            kernel();
        }
}

template <typename T> T from_float(float f);
template <> float from_float<float>(float f) { return f; }
template <> bf16 from_float<bf16>(float f) { return to_bf16(f); }
template <typename T> unsigned bits(T v);
template <> unsigned bits<float>(float v) { return __float_as_uint(v); }
template <> unsigned bits<bf16>(bf16 v) { return v; }

