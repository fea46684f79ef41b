// CUDA kernel of lorenza::philox_normal_: the noise stream made on the device (philox.h), never
// copied from the host. One thread makes four consecutive elements from one Philox call.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>

#include "ops.h"
#include "philox.h"

namespace lorenza {

namespace {

constexpr int kThreads = 256;

__global__ void philox_fill_kernel(float* dst, int64_t n, uint64_t key, uint64_t start) {
  // Thread t covers the stream counter (start / 4) + t, i.e. elements 4 c .. 4 c + 3 of the
  // stream, of which those in [start, start + n) are written.
  const uint64_t first_counter = start >> 2;
  const uint64_t counter = first_counter + blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x;
  const philox::Normal4 r = philox::randn4x(key, counter);
#pragma unroll
  for (int lane = 0; lane < 4; ++lane) {
    const uint64_t element = 4 * counter + lane;
    if (element >= start && element < start + static_cast<uint64_t>(n)) {
      dst[element - start] = r.v[lane];
    }
  }
}

}  // namespace

// Fills dst[0 .. n) with elements start .. start + n - 1 of the stream `key`, on `stream`.
void philox_fill_cuda(float* dst, int64_t n, uint64_t key, uint64_t start, cudaStream_t stream) {
  if (n <= 0) {
    return;
  }
  const uint64_t counters = ((start + n + 3) >> 2) - (start >> 2);
  const uint64_t blocks = (counters + kThreads - 1) / kThreads;
  philox_fill_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(dst, n, key, start);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void philox_normal_cuda(const at::Tensor& out, int64_t key, int64_t start) {
  TORCH_CHECK(out.is_cuda(), "lorenza::philox_normal_: out must be a CUDA tensor, got ", out.device());
  TORCH_CHECK(out.scalar_type() == at::kFloat, "lorenza::philox_normal_: out must be float32, got ",
              out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "lorenza::philox_normal_: out must be contiguous");
  TORCH_CHECK(start >= 0, "lorenza::philox_normal_: start must be >= 0, got ", start);
  TORCH_CHECK(start <= std::numeric_limits<int64_t>::max() - out.numel(),
              "lorenza::philox_normal_: start + numel overflows");
  const c10::cuda::CUDAGuard guard(out.device());
  philox_fill_cuda(out.data_ptr<float>(), out.numel(), static_cast<uint64_t>(key),
                   static_cast<uint64_t>(start), c10::cuda::getCurrentCUDAStream());
}

}  // namespace lorenza
