// CPU kernel of lorenza::philox_normal_: fill a float32 tensor with a slice of a Philox noise stream.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <limits>

#include "ops.h"
#include "philox.h"

namespace lorenza {

// Writes elements start .. start + n - 1 of stream `key` to dst[0 .. n - 1]. Each 4-lane Philox
// block is computed once; blocks are split across threads with at::parallel_for.
void philox_fill_cpu(float* dst, int64_t n, uint64_t key, uint64_t start) {
  if (n <= 0) {
    return;
  }
  const uint64_t first_block = start >> 2;
  const uint64_t last_block = (start + static_cast<uint64_t>(n) - 1) >> 2;
  const int64_t blocks = static_cast<int64_t>(last_block - first_block + 1);
  constexpr int64_t kGrain = 4096;  // blocks per task: ~16k normals, well above the spawn cost
  at::parallel_for(0, blocks, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const uint64_t block = first_block + static_cast<uint64_t>(b);
      const philox::Normal4 r = philox::randn4x(key, block);
      // Position of lane 0 of this block in dst; may be negative for the first block.
      const int64_t base = static_cast<int64_t>(4 * block - start);
      if (base >= 0 && base + 4 <= n) {
        float* out = dst + base;
        out[0] = r.v[0];
        out[1] = r.v[1];
        out[2] = r.v[2];
        out[3] = r.v[3];
      } else {
        for (int lane = 0; lane < 4; ++lane) {
          const int64_t pos = base + lane;
          if (pos >= 0 && pos < n) {
            dst[pos] = r.v[lane];
          }
        }
      }
    }
  });
}

// lorenza::philox_normal_(Tensor(a!) out, int key, int start) -> ()
void philox_normal_cpu(const at::Tensor& out, int64_t key, int64_t start) {
  TORCH_CHECK(out.device().is_cpu(), "lorenza::philox_normal_: out must be a CPU tensor, got ",
              out.device());
  TORCH_CHECK(out.scalar_type() == at::kFloat,
              "lorenza::philox_normal_: out must be float32, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "lorenza::philox_normal_: out must be contiguous");
  TORCH_CHECK(start >= 0, "lorenza::philox_normal_: start must be >= 0, got ", start);
  const int64_t n = out.numel();
  TORCH_CHECK(start <= std::numeric_limits<int64_t>::max() - n,
              "lorenza::philox_normal_: start + numel overflows int64 (start=", start,
              ", numel=", n, ")");
  if (n == 0) {
    return;
  }
  // A negative key stands for the same 64 bits as the unsigned value (two's complement), as in
  // the Python reference where key & 0xFFFFFFFF and (key >> 32) & 0xFFFFFFFF are taken.
  philox_fill_cpu(out.data_ptr<float>(), n, static_cast<uint64_t>(key), static_cast<uint64_t>(start));
}

}  // namespace lorenza
