// Operator schemas, CPU registrations and the Python module of lorenza._C.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(lorenza, m) {
  // SymInt: a traced step passes the key of a Gaussian basis symbolically (one graph for every key)
  m.def("philox_normal_(Tensor(a!) out, SymInt key, SymInt start) -> ()");
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
