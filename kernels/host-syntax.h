// Stubs of the CUDA built-ins the kernels use, so that a host C++ compiler can check the
// kernel sources' syntax and types (runtime/tests/kernel_sources.rs) on machines without
// CUDA: CI has no NVRTC, and a kernel that does not compile fails every GPU run at start-up.
// Declarations only where the kernels' behaviour is not at stake; nothing here runs.
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
struct pw_dim3 { unsigned x, y, z; };
static pw_dim3 blockIdx, blockDim, threadIdx, gridDim;
float __uint_as_float(unsigned);
unsigned __float_as_uint(float);
void __syncthreads();
void __threadfence();
void __threadfence_system();
void __nanosleep(unsigned int);
unsigned atomicInc(unsigned*, unsigned);
double __dmul_rn(double, double);
double __dsub_rn(double, double);
#include <cmath>
inline float tanhf(float x) { return std::tanh(x); }
float __expf(float);
float __fdividef(float, float);
inline float powf(float a, float b) { return std::pow(a, b); }
inline float sqrtf(float a) { return std::sqrt(a); }
inline float fmaxf(float a, float b) { return a > b ? a : b; }
