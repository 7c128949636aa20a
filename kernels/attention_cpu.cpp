#include "kernels/attention.h"

#include "kernels/cpu_tiles.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace hylo::kernels {

namespace {

// Task = kBq query rows of one head; it streams the keys in blocks of kBk. Per thread: the scaled q block
// (kBq*d_qk), one transposed key block (d_qk*kBk), the block's probabilities (kBq*kBk) and the output
// accumulator (kBq*d_v): ~110 KiB at d = 128, L2 resident. kBq = 64 rather than 32 halves the share of the key
// transpose (a strided gather, ~1/5 of the time at 32); 128 measured no better.
//
// Both products run on kR x kW register tiles (kR rows, kW contiguous lanes): each loaded key/value vector
// feeds kR rows and each broadcast q/p value feeds kW lanes (16 flops per 3 loads at 4 x 8 on SSE, against 2 per
// 3 for a plain axpy). Every output element is still one sequential fp32 sum in a fixed order (d ascending for
// scores, keys ascending for P.V): nothing is reassociated, and the result is bitwise the same whatever the
// thread count. Measured on one core of the build machine (AMD EPYC, SSE2 baseline, causal T = S = 2048, 32/8
// heads, d 64): 5.9 GFLOP/s with one-row loops, 10-14 with the tiles.
constexpr std::int64_t kBq = 64;  // multiple of kR
using cpu_tiles::kBk;
using cpu_tiles::kR;
using cpu_tiles::kW;
using cpu_tiles::online_softmax_rows;
using cpu_tiles::pv_tile;
using cpu_tiles::score_tile;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace

void attention_cpu(const AttentionParams& p) {
  if (p.T <= 0 || p.n_heads <= 0) return;
  const std::int64_t group = p.n_heads / p.n_kv_heads;
  const std::int64_t d_qk = p.d_qk, d_v = p.d_v;
  const std::int64_t n_qb = (p.T + kBq - 1) / kBq;
  const std::int64_t n_tasks = n_qb * p.n_heads;
  const std::int64_t k_stride = p.n_kv_heads * d_qk, v_stride = p.n_kv_heads * d_v;

  // Number of keys row i sees: a prefix [0, lim) of the keys (the causal mask is prefix-shaped per row).
  auto key_limit = [&](std::int64_t i) -> std::int64_t {
    if (!p.causal) return p.S;
    return std::clamp<std::int64_t>(p.q_offset + i + 1, 0, p.S);
  };

#pragma omp parallel
  {
    std::vector<float> qs(kBq * d_qk), kt(d_qk * kBk), prob(kBq * kBk), acc(kBq * d_v);
    float m[kBq], l[kBq], alpha[kBq];
    std::int64_t valid[kBq];

    // Dynamic: causal tasks differ in cost by up to T/kBq; the heaviest (last query blocks) are handed out first.
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t task = 0; task < n_tasks; ++task) {
      const std::int64_t qb = n_qb - 1 - task / p.n_heads;
      const std::int64_t h = task % p.n_heads;
      const std::int64_t kvh = h / group;
      const std::int64_t i0 = qb * kBq;
      const std::int64_t nq = std::min(kBq, p.T - i0);
      const std::int64_t nq_pad = (nq + kR - 1) / kR * kR;

      // Scale folded into q once per task rather than into every score. Padding rows (nq..nq_pad) are zero and
      // see no key: they ride along in the last tile and are never written out.
      for (std::int64_t i = 0; i < nq_pad; ++i) {
        float* dst = qs.data() + i * d_qk;
        if (i < nq) {
          const float* qrow = p.q + ((i0 + i) * p.n_heads + h) * d_qk;
          for (std::int64_t d = 0; d < d_qk; ++d) dst[d] = p.scale * qrow[d];
        } else {
          std::fill(dst, dst + d_qk, 0.0f);
        }
        m[i] = kNegInf;
        l[i] = 0.0f;
      }
      std::fill(acc.begin(), acc.begin() + nq_pad * d_v, 0.0f);

      const std::int64_t kmax = key_limit(i0 + nq - 1);  // the last row sees the most keys
      for (std::int64_t j0 = 0; j0 < kmax; j0 += kBk) {
        const std::int64_t nk = std::min(kBk, kmax - j0);
        // Transpose the key block to [d_qk][kBk]; zero the tail so the fixed-width score loop reads defined data.
        const float* kblk = p.k + (j0 * p.n_kv_heads + kvh) * d_qk;
        for (std::int64_t d = 0; d < d_qk; ++d) {
          float* dst = kt.data() + d * kBk;
          for (std::int64_t jj = 0; jj < nk; ++jj) dst[jj] = kblk[jj * k_stride + d];
        }
        if (nk < kBk)
          for (std::int64_t d = 0; d < d_qk; ++d)
            std::fill(kt.begin() + d * kBk + nk, kt.begin() + (d + 1) * kBk, 0.0f);

        // valid[i]: keys of this block row i sees, a prefix. It does not decrease with i, so the rows that see
        // nothing (causal) are a prefix [0, i_lo) and whole tiles of them are skipped.
        std::int64_t i_lo = nq_pad;
        for (std::int64_t i = nq_pad - 1; i >= 0; --i) {
          valid[i] = i < nq ? std::clamp<std::int64_t>(key_limit(i0 + i) - j0, 0, nk) : 0;
          if (i < nq && valid[i] > 0) i_lo = i;
        }
        const std::int64_t t_lo = i_lo / kR * kR;
        for (std::int64_t i = t_lo; i < nq_pad; i += kR)
          score_tile(d_qk, qs.data() + i * d_qk, kt.data(), prob.data() + i * kBk);

        // Online softmax per row: rescale the running sum and accumulator to the new running max.
        online_softmax_rows(t_lo, nq_pad, valid, prob.data(), m, l, alpha);

        // P.V: the block's sum per tile in registers, then one rescale-and-add into the running accumulator, so
        // fp32 rounding grows like sqrt(kBk) + sqrt(S/kBk) rather than sqrt(S).
        const float* vblk = p.v + (j0 * p.n_kv_heads + kvh) * d_v;
        for (std::int64_t i = t_lo; i < nq_pad; i += kR) {
          std::int64_t n = 0;
          for (std::int64_t r = 0; r < kR; ++r) n = std::max(n, valid[i + r]);
          const float* pt = prob.data() + i * kBk;
          float* at = acc.data() + i * d_v;
          std::int64_t c0 = 0;
          for (; c0 + kW <= d_v; c0 += kW) pv_tile<true>(n, pt, vblk, v_stride, c0, kW, alpha + i, at, d_v);
          if (c0 < d_v) pv_tile<false>(n, pt, vblk, v_stride, c0, d_v - c0, alpha + i, at, d_v);
        }
      }

      for (std::int64_t i = 0; i < nq; ++i) {
        float* orow = p.o + ((i0 + i) * p.n_heads + h) * d_v;
        const float* ai = acc.data() + i * d_v;
        if (l[i] > 0.0f) {
          for (std::int64_t c = 0; c < d_v; ++c) orow[c] = ai[c] / l[i];
          if (p.lse) p.lse[(i0 + i) * p.n_heads + h] = m[i] + std::log(l[i]);
        } else {  // saw no key: the merge's neutral element
          std::fill(orow, orow + d_v, 0.0f);
          if (p.lse) p.lse[(i0 + i) * p.n_heads + h] = kNegInf;
        }
      }
    }
  }
}

void merge_attention_partials_cpu(std::int64_t rows, std::int64_t d_v, float* o_a, float* lse_a, const float* o_b,
                                  const float* lse_b) {
  // Decode merges are tiny (nH rows); only fan out when there is real work.
#pragma omp parallel for schedule(static) if (rows * d_v > (1 << 16))
  for (std::int64_t r = 0; r < rows; ++r) {
    float* oa = o_a + r * d_v;
    const float* ob = o_b + r * d_v;
    const float la = lse_a[r], lb = lse_b[r];
    if (lb == kNegInf) {  // b saw no key: a unchanged (and a clean 0 if neither saw any)
      if (la == kNegInf) std::fill(oa, oa + d_v, 0.0f);
      continue;
    }
    if (la == kNegInf) {
      std::copy(ob, ob + d_v, oa);
      lse_a[r] = lb;
      continue;
    }
    // Both finite: log(e^a + e^b) = max + log1p(e^(min - max)), no overflow, no cancellation.
    const double hi = std::max<double>(la, lb), lo = std::min<double>(la, lb);
    const double lse = hi + std::log1p(std::exp(lo - hi));
    const float wa = static_cast<float>(std::exp(static_cast<double>(la) - lse));
    const float wb = static_cast<float>(std::exp(static_cast<double>(lb) - lse));
#pragma omp simd
    for (std::int64_t c = 0; c < d_v; ++c) oa[c] = wa * oa[c] + wb * ob[c];
    lse_a[r] = static_cast<float>(lse);
  }
}

}  // namespace hylo::kernels
