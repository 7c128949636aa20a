// Register-tiled fp32 building blocks shared by the CPU attention kernels (attention_cpu.cpp,
// mla_decode_cpu.cpp). Internal to kernels/: not an op.
//
// Both products run on kR x kW register tiles (kR rows, kW contiguous lanes): each loaded key/value vector
// feeds kR rows and each broadcast q/p value feeds kW lanes. Every output element is one sequential fp32 sum in
// a fixed order (d ascending for scores, keys ascending for P.V): nothing is reassociated, so results are
// bitwise the same whatever the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

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

// Online softmax over one key block for rows [lo, hi): prob[row][0..kBk) holds the block's scaled scores, of
// which the first valid[row] count. Rescales the running max m and sum l, turns the scores into
// exp(score - new max) (zero past valid[row]), and sets alpha[row], the factor the caller applies to the row's
// running accumulator. A row that sees no key of this block gets zero weights and alpha 1 (accumulator kept).
inline void online_softmax_rows(std::int64_t lo, std::int64_t hi, const std::int64_t* valid, float* prob, float* m,
                                float* l, float* alpha) {
  for (std::int64_t row = lo; row < hi; ++row) {
    float* pr = prob + row * kBk;
    const std::int64_t nv = valid[row];
    if (nv == 0) {
      std::fill(pr, pr + kBk, 0.0f);
      alpha[row] = 1.0f;
      continue;
    }
    float mx = -std::numeric_limits<float>::infinity();
    for (std::int64_t jj = 0; jj < nv; ++jj) mx = std::max(mx, pr[jj]);
    const float m_new = std::max(m[row], mx);
    alpha[row] = std::exp(m[row] - m_new);  // exp(-inf) = 0 on the row's first block
    float sum = 0.0f;
    for (std::int64_t jj = 0; jj < nv; ++jj) {
      pr[jj] = std::exp(pr[jj] - m_new);
      sum += pr[jj];
    }
    std::fill(pr + nv, pr + kBk, 0.0f);
    l[row] = l[row] * alpha[row] + sum;
    m[row] = m_new;
  }
}

}  // namespace hylo::kernels::cpu_tiles
