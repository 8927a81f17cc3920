// A memset as a kernel (runtime/src/graph.rs): the memset nodes that cuBLASLt's split-K and
// stream-K products capture into a graph cost host time at every replay, kernel nodes do
// not. Same effect as the memset node it replaces: `height` rows of `width` elements of
// `element_size` bytes (1, 2 or 4), each `value`, rows `pitch` bytes apart. The runtime
// prepends common.cuh (words16, GRID_STRIDE).

extern "C" __global__ void fill_memset(unsigned char* dst, unsigned long long pitch, unsigned int value,
                                       unsigned int element_size, unsigned long long width,
                                       unsigned long long height) {
    const unsigned long long row_bytes = width * element_size;
    const unsigned long long bytes = row_bytes * height;
    // The usual case (a workspace or an output cleared whole): one contiguous, 16-byte
    // aligned range, written 16 bytes a store with the value repeated to fill them.
    if ((pitch == row_bytes || height == 1) && ((unsigned long long)dst % 16 == 0) && bytes % 16 == 0) {
        const unsigned int word = element_size == 4   ? value
                                  : element_size == 2 ? (value & 0xffffu) * 0x10001u
                                                      : (value & 0xffu) * 0x01010101u;
        const words16 pattern = {{word, word, word, word}};
        GRID_STRIDE(i, (long long)(bytes / 16)) { ((words16*)dst)[i] = pattern; }
        return;
    }
    GRID_STRIDE(i, (long long)(width * height)) {
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
