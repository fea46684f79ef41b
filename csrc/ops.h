// Everything one file of lorenza._C calls in another: the CPU and CUDA kernels of the ops that
// ops.cpp registers, and the Philox fills the rSVDs draw their sketch with.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

#if defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace lorenza {

// noise_cpu.cpp: elements start .. start + n - 1 of stream `key` into dst[0 .. n - 1].
void philox_fill_cpu(float* dst, int64_t n, uint64_t key, uint64_t start);
// noise_cpu.cpp: lorenza::philox_normal_(Tensor(a!) out, int key, int start) -> ()
void philox_normal_cpu(const at::Tensor& out, int64_t key, int64_t start);
// rsvd_cpu.cpp: lorenza::rsvd(Tensor A, int rank, int oversample, int power_iters, int key,
//                             bool allow_tf32) -> (Tensor U, Tensor S, Tensor Vh)
std::tuple<at::Tensor, at::Tensor, at::Tensor> rsvd_cpu(const at::Tensor& A, int64_t rank,
                                                        int64_t oversample, int64_t power_iters,
                                                        int64_t key, bool allow_tf32);

#ifdef LORENZA_WITH_CUDA
// noise_cuda.cu and rsvd_cuda.cu: the same ops for CUDA tensors.
void philox_normal_cuda(const at::Tensor& out, int64_t key, int64_t start);
std::tuple<at::Tensor, at::Tensor, at::Tensor> rsvd_cuda(const at::Tensor& A, int64_t rank,
                                                         int64_t oversample, int64_t power_iters,
                                                         int64_t key, bool allow_tf32);
#endif

#if defined(__CUDACC__)
// noise_cuda.cu: the fill on the device, on `stream`.
void philox_fill_cuda(float* dst, int64_t n, uint64_t key, uint64_t start, cudaStream_t stream);
#endif

}  // namespace lorenza
