// Operator schemas, CPU registrations and the Python module of lorenza._C.
#include <ATen/core/Tensor.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <tuple>

namespace lorenza {

// noise_cpu.cpp
void philox_normal_cpu(const at::Tensor& out, int64_t key, int64_t start);
// rsvd_cpu.cpp
std::tuple<at::Tensor, at::Tensor, at::Tensor> rsvd_cpu(const at::Tensor& A, int64_t rank,
                                                        int64_t oversample, int64_t power_iters,
                                                        int64_t key, bool allow_tf32);
#ifdef LORENZA_WITH_CUDA
// noise_cuda.cu, rsvd_cuda.cu
void philox_normal_cuda(const at::Tensor& out, int64_t key, int64_t start);
std::tuple<at::Tensor, at::Tensor, at::Tensor> rsvd_cuda(const at::Tensor& A, int64_t rank,
                                                         int64_t oversample, int64_t power_iters,
                                                         int64_t key, bool allow_tf32);
#endif

}  // namespace lorenza

TORCH_LIBRARY(lorenza, m) {
  m.def("philox_normal_(Tensor(a!) out, int key, int start) -> ()");
  m.def(
      "rsvd(Tensor A, int rank, int oversample, int power_iters, int key, bool allow_tf32=False)"
      " -> (Tensor U, Tensor S, Tensor Vh)");
}

TORCH_LIBRARY_IMPL(lorenza, CPU, m) {
  m.impl("philox_normal_", &lorenza::philox_normal_cpu);
  m.impl("rsvd", &lorenza::rsvd_cpu);
}

#ifdef LORENZA_WITH_CUDA
TORCH_LIBRARY_IMPL(lorenza, CUDA, m) {
  m.impl("philox_normal_", &lorenza::philox_normal_cuda);
  m.impl("rsvd", &lorenza::rsvd_cuda);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Compiled kernels of lorenza: importing this module registers torch.ops.lorenza.*";
  m.def(
      "has_cuda",
      []() {
#ifdef LORENZA_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "True when the extension was built with its CUDA kernels.");
}
