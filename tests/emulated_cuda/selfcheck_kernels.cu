// Kernels that break the rules on purpose, compiled into the emulated driver (never into tiedae) so that
// tests/emulated_cuda.rs can show its checks fire: the test hands the driver a small PTX text naming them.

// Half the block waits at one __syncthreads, the other half at another: undefined on a GPU (synccheck
// reports it), a fault here.
extern "C" __global__ void emu_selfcheck_divergent_barrier(float* out) {
    if (threadIdx.x < blockDim.x / 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

// Every thread adds its index to out[0] after a barrier, in turn: run as fibers, the total is exact.
extern "C" __global__ void emu_selfcheck_barrier_sum(float* out) {
    __shared__ float partial[1024];
    partial[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (unsigned int i = 0; i < blockDim.x; ++i) sum += partial[i];
        out[blockIdx.x] = sum;
    }
}
