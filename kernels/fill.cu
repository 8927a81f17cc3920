// A memset as a kernel (runtime/src/graph.rs, `--memset-kernels`): the memset nodes that
// cuBLASLt's split-K and stream-K products capture into a graph cost host time at every
// replay, kernel nodes do not. Same effect as the memset node it replaces: `height` rows
// of `width` elements of `element_size` bytes (1, 2 or 4), each `value`, rows `pitch`
// bytes apart.

extern "C" __global__ void fill_memset(unsigned char* dst, unsigned long long pitch, unsigned int value,
                                       unsigned int element_size, unsigned long long width,
                                       unsigned long long height) {
    const unsigned long long total = width * height;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < total;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        unsigned char* p = dst + (i / width) * pitch + (i % width) * element_size;
        if (element_size == 4) {
            *(unsigned int*)p = value;
        } else if (element_size == 2) {
            *(unsigned short*)p = (unsigned short)value;
        } else {
            *p = (unsigned char)value;
        }
    }
}
