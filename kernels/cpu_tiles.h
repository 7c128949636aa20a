// Register-tiled fp32 building blocks shared by the CPU attention kernels (attention_cpu.cpp,
// mla_decode_cpu.cpp). Internal to kernels/: not an op.
//
// Both products run on kR x kW register tiles (kR rows, kW contiguous lanes): each loaded key/value vector
// feeds kR rows and each broadcast q/p value feeds kW lanes. Every output element is one sequential fp32 sum in
// a fixed order (d ascending for scores, keys ascending for P.V): nothing is reassociated, so results are
// bitwise the same whatever the thread count.
#pragma once

#include <cstdint>

namespace hylo::kernels::cpu_tiles {

inline constexpr std::int64_t kBk = 64;  // keys per block; multiple of kW
inline constexpr std::int64_t kR = 4;
inline constexpr std::int64_t kW = 8;

// s[r][0..kBk) = sum_d q[r][d] kt[d][0..kBk) for the kR rows at q (row stride dk); s row stride kBk.
// The unroll pragmas make the kR x kW accumulator a set of registers (8 SSE / 4 AVX vectors at 4 x 8): without
// them GCC keeps it on the stack and the loop runs load-add-store at a third of the speed.
inline void score_tile(std::int64_t dk, const float* __restrict q, const float* __restrict kt, float* __restrict s) {
  for (std::int64_t j0 = 0; j0 < kBk; j0 += kW) {
    float a[kR][kW] = {};
    for (std::int64_t d = 0; d < dk; ++d) {
      const float* kd = kt + d * kBk + j0;
#pragma GCC unroll 16
      for (std::int64_t r = 0; r < kR; ++r) {
        const float qd = q[r * dk + d];
#pragma GCC unroll 16
        for (std::int64_t j = 0; j < kW; ++j) a[r][j] += qd * kd[j];
      }
    }
    for (std::int64_t r = 0; r < kR; ++r)
      for (std::int64_t j = 0; j < kW; ++j) s[r * kBk + j0 + j] = a[r][j];
  }
}

// acc[r][c0..c0+w) = alpha[r] acc[r][..] + sum_{jj<n} prob[r][jj] v_jj[c0..c0+w) for kR rows; value row jj at
// v + jj * v_stride. Full tiles (w == kW) are register tiles like score_tile; the d_v % kW tail is generic.
template <bool kFull>
inline void pv_tile(std::int64_t n, const float* __restrict prob, const float* __restrict v, std::int64_t v_stride,
             std::int64_t c0, std::int64_t w, const float* __restrict alpha, float* __restrict acc,
             std::int64_t acc_stride) {
  float a[kR][kW] = {};
  for (std::int64_t jj = 0; jj < n; ++jj) {
    const float* vr = v + jj * v_stride + c0;
#pragma GCC unroll 16
    for (std::int64_t r = 0; r < kR; ++r) {
      const float pr = prob[r * kBk + jj];
      if constexpr (kFull) {
#pragma GCC unroll 16
        for (std::int64_t c = 0; c < kW; ++c) a[r][c] += pr * vr[c];
      } else {
        for (std::int64_t c = 0; c < w; ++c) a[r][c] += pr * vr[c];
      }
    }
  }
  const std::int64_t width = kFull ? kW : w;
  for (std::int64_t r = 0; r < kR; ++r) {
    float* ar = acc + r * acc_stride + c0;
    for (std::int64_t c = 0; c < width; ++c) ar[c] = alpha[r] * ar[c] + a[r][c];
  }
}

}  // namespace hylo::kernels::cpu_tiles
