// Philox4x32-10 and Box-Muller, header-only, for host C++ and CUDA device code.
//
// Element i of the noise stream with 64-bit key `key` is lane i % 4 of randn4x(key, i / 4):
//   counter words (lo32(i / 4), hi32(i / 4), 0, 0), key words (lo32(key), hi32(key)),
//   ten Philox rounds, each 32-bit output word mapped to a uniform in [0, 1) the way Triton's
//   uint_to_uniform_float does, and Box-Muller on the pairs (w0, w1), (w2, w3).
// This is bit-for-bit the scheme of Triton's tl.randn4x and of lorenza/reference/philox.py, up to
// the last-ulp differences of the float32 log / sin / cos implementations. All math is float32;
// do not compile this with -ffast-math or --use_fast_math if values must match other backends.
#pragma once

#include <cstdint>
#include <math.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LORENZA_HD __host__ __device__
#else
#define LORENZA_HD
#endif

namespace lorenza {
namespace philox {

constexpr uint32_t kRoundA = 0xD2511F53u;  // multiplies c0
constexpr uint32_t kRoundB = 0xCD9E8D57u;  // multiplies c2
constexpr uint32_t kKeyA = 0x9E3779B9u;    // Weyl increment of k0
constexpr uint32_t kKeyB = 0xBB67AE85u;    // Weyl increment of k1
constexpr int kRounds = 10;
constexpr float kUniformScale = 4.6566127342e-10f;  // (2^31 - 1) * scale < 1 in float32
constexpr float kMinUniform = 1.0e-7f;
constexpr float kTwoPi = 6.283185307179586f;

struct Words4 {
  uint32_t w[4];
};

struct Normal4 {
  float v[4];
};

LORENZA_HD inline uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// The four 32-bit Philox4x32-10 output words for the 64-bit `counter` under the 64-bit `key`.
LORENZA_HD inline Words4 philox4x32(uint64_t key, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter);
  uint32_t c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0u;
  uint32_t c3 = 0u;
  uint32_t k0 = static_cast<uint32_t>(key);
  uint32_t k1 = static_cast<uint32_t>(key >> 32);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < kRounds; ++round) {
    const uint32_t prev_c0 = c0;
    const uint32_t prev_c2 = c2;
    c0 = mulhi32(kRoundB, prev_c2) ^ c1 ^ k0;
    c2 = mulhi32(kRoundA, prev_c0) ^ c3 ^ k1;
    c1 = kRoundB * prev_c2;  // low 32 bits (unsigned wrap-around)
    c3 = kRoundA * prev_c0;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  Words4 out;
  out.w[0] = c0;
  out.w[1] = c1;
  out.w[2] = c2;
  out.w[3] = c3;
  return out;
}

// Triton's uint_to_uniform_float: the word as int32, negatives folded with ~x, times the scale.
LORENZA_HD inline float uint_to_uniform(uint32_t word) {
  const uint32_t folded = (word & 0x80000000u) ? ~word : word;  // the int32 value is now >= 0
  return static_cast<float>(static_cast<int32_t>(folded)) * kUniformScale;
}

// Box-Muller on one pair of uniforms; writes the cosine branch to *n0 and the sine branch to *n1.
LORENZA_HD inline void box_muller(float u1, float u2, float* n0, float* n1) {
  u1 = fmaxf(kMinUniform, u1);
  const float theta = kTwoPi * u2;
  const float radius = sqrtf(-2.0f * logf(u1));
  *n0 = radius * cosf(theta);
  *n1 = radius * sinf(theta);
}

// Four standard normals: Triton's randn4x(key, counter).
LORENZA_HD inline Normal4 randn4x(uint64_t key, uint64_t counter) {
  const Words4 r = philox4x32(key, counter);
  Normal4 out;
  box_muller(uint_to_uniform(r.w[0]), uint_to_uniform(r.w[1]), &out.v[0], &out.v[1]);
  box_muller(uint_to_uniform(r.w[2]), uint_to_uniform(r.w[3]), &out.v[2], &out.v[3]);
  return out;
}

}  // namespace philox
}  // namespace lorenza
