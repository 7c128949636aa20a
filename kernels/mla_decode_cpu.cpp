#include "kernels/mla_decode.h"

#include "kernels/cpu_tiles.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace hylo::kernels {

namespace {

// Decode is one (or a few) query tokens against up to millions of cached latents: all T*nH query rows (16-96)
// fit in one task, and the parallelism is over the sequence. Each split streams its tokens in blocks of kBk:
// the block's [c | k_pe] rows are transposed once into [r+dr][kBk] and then serve every head (MQA), so the
// transpose costs ~1/(T*nH) of the score FLOPs. Scores and P.V run on the same kR x kW register tiles as
// attention_cpu.cpp (each output element one fixed-order fp32 sum; see there); the P.V value rows are the
// cached latents c_j themselves.
using cpu_tiles::kBk;
using cpu_tiles::kR;
using cpu_tiles::kW;
using cpu_tiles::online_softmax_rows;
using cpu_tiles::pv_tile;
using cpu_tiles::score_tile;
constexpr std::int64_t kMinSplit = 256;  // below this the per-split merge and packing overheads dominate
constexpr std::int64_t kMaxSplits = 128;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace

std::int64_t mla_decode_default_split(std::int64_t S) {
  const std::int64_t per = (S + kMaxSplits - 1) / kMaxSplits;
  return std::max(kMinSplit, (per + kBk - 1) / kBk * kBk);
}

void mla_decode_cpu(const MlaDecodeParams& p) {
  const std::int64_t n_heads = p.n_heads, r = p.kv_lora_rank, dr = p.rope_dim;
  const std::int64_t rows = p.T * n_heads;  // row = t * n_heads + h, the layout of q_lat, o_lat and lse
  const std::int64_t rows_pad = (rows + kR - 1) / kR * kR;
  const std::int64_t dk = r + dr;
  if (rows <= 0) return;
  if (p.S <= 0) {
    std::fill(p.o_lat, p.o_lat + rows * r, 0.0f);
    if (p.lse) std::fill(p.lse, p.lse + rows, kNegInf);
    return;
  }
  // Split boundaries depend on S (and split_tokens) only: never on the thread count.
  const std::int64_t split = p.split_tokens > 0 ? p.split_tokens : mla_decode_default_split(p.S);
  const std::int64_t n_split = (p.S + split - 1) / split;

  // scale * [q_lat | q_pe]; rows rows..rows_pad are zero padding that sees no key and is never written out.
  std::vector<float> qcat(rows_pad * dk, 0.0f);
  std::vector<float> part_o(n_split * rows * r);
  std::vector<float> part_lse(n_split * rows);

#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (std::int64_t row = 0; row < rows; ++row) {
      float* dst = qcat.data() + row * dk;
      for (std::int64_t d = 0; d < r; ++d) dst[d] = p.scale * p.q_lat[row * r + d];
      for (std::int64_t d = 0; d < dr; ++d) dst[r + d] = p.scale * p.q_pe[row * dr + d];
    }  // implicit barrier: qcat complete before any split reads it

    std::vector<float> kt(dk * kBk), prob(rows_pad * kBk), acc(rows_pad * r);
    std::vector<float> m(rows_pad), l(rows_pad), alpha(rows_pad);
    std::vector<std::int64_t> valid(rows_pad);

#pragma omp for schedule(dynamic, 1)
    for (std::int64_t sp = 0; sp < n_split; ++sp) {
      const std::int64_t s0 = sp * split, s1 = std::min(p.S, s0 + split);
      std::fill(m.begin(), m.end(), kNegInf);
      std::fill(l.begin(), l.end(), 0.0f);
      std::fill(acc.begin(), acc.end(), 0.0f);

      for (std::int64_t j0 = s0; j0 < s1; j0 += kBk) {
        const std::int64_t nk = std::min(kBk, s1 - j0);
        const float* cblk = p.cache + j0 * dk;
        for (std::int64_t d = 0; d < dk; ++d) {
          float* dst = kt.data() + d * kBk;
          for (std::int64_t jj = 0; jj < nk; ++jj) dst[jj] = cblk[jj * dk + d];
          std::fill(dst + nk, dst + kBk, 0.0f);  // the fixed-width score loop reads defined data
        }

        // Query t sits at position S-T+t and sees keys j <= S-T+t: a prefix of the block, not decreasing with
        // the row, so rows that see nothing here are a prefix [0, i_lo) and whole tiles of them are skipped.
        std::int64_t i_lo = rows_pad;
        for (std::int64_t row = rows_pad - 1; row >= 0; --row) {
          std::int64_t nv = 0;
          if (row < rows) {
            const std::int64_t lim = std::clamp<std::int64_t>(p.S - p.T + row / n_heads + 1, 0, p.S);
            nv = std::clamp<std::int64_t>(lim - j0, 0, nk);
          }
          valid[row] = nv;
          if (nv > 0) i_lo = row;
        }
        const std::int64_t t_lo = i_lo / kR * kR;
        for (std::int64_t row = t_lo; row < rows_pad; row += kR)
          score_tile(dk, qcat.data() + row * dk, kt.data(), prob.data() + row * kBk);

        // Online softmax per row: rescale the running sum and accumulator to the new running max.
        online_softmax_rows(t_lo, rows_pad, valid.data(), prob.data(), m.data(), l.data(), alpha.data());

        // P.V over the latents: the block's sum per tile in registers, then one rescale-and-add into the running
        // accumulator (fp32 rounding grows like sqrt(kBk) + sqrt(split/kBk) rather than sqrt(split)).
        for (std::int64_t row = t_lo; row < rows_pad; row += kR) {
          std::int64_t n = 0;
          for (std::int64_t i = 0; i < kR; ++i) n = std::max(n, valid[row + i]);
          const float* pt = prob.data() + row * kBk;
          float* at = acc.data() + row * r;
          std::int64_t c0 = 0;
          for (; c0 + kW <= r; c0 += kW) pv_tile<true>(n, pt, cblk, dk, c0, kW, alpha.data() + row, at, r);
          if (c0 < r) pv_tile<false>(n, pt, cblk, dk, c0, r - c0, alpha.data() + row, at, r);
        }
      }

      for (std::int64_t row = 0; row < rows; ++row) {
        float* po = part_o.data() + (sp * rows + row) * r;
        const float lr = l[row];
        if (lr > 0.0f) {
          const float* ar = acc.data() + row * r;
          for (std::int64_t c = 0; c < r; ++c) po[c] = ar[c] / lr;
          part_lse[sp * rows + row] = m[row] + std::log(lr);
        } else {  // causal: a split entirely after this query token
          std::fill(po, po + r, 0.0f);
          part_lse[sp * rows + row] = kNegInf;
        }
      }
    }

    // Exact n-way merge in split order (fixed): LSE = M + log sum_s exp(lse_s - M), o = sum_s exp(lse_s - LSE) o_s,
    // weights and sums in double (up to 128 terms). Fully-masked partials (-inf) contribute nothing.
    std::vector<double> od(r);
#pragma omp for schedule(static)
    for (std::int64_t row = 0; row < rows; ++row) {
      double mx = -std::numeric_limits<double>::infinity();
      for (std::int64_t sp = 0; sp < n_split; ++sp) mx = std::max<double>(mx, part_lse[sp * rows + row]);
      float* out = p.o_lat + row * r;
      if (mx == -std::numeric_limits<double>::infinity()) {
        std::fill(out, out + r, 0.0f);
        if (p.lse) p.lse[row] = kNegInf;
        continue;
      }
      double sum = 0.0;
      for (std::int64_t sp = 0; sp < n_split; ++sp) sum += std::exp(part_lse[sp * rows + row] - mx);
      const double lse = mx + std::log(sum);
      std::fill(od.begin(), od.end(), 0.0);
      for (std::int64_t sp = 0; sp < n_split; ++sp) {
        const float ls = part_lse[sp * rows + row];
        if (ls == kNegInf) continue;
        const double w = std::exp(ls - lse);
        const float* po = part_o.data() + (sp * rows + row) * r;
#pragma omp simd
        for (std::int64_t c = 0; c < r; ++c) od[c] += w * po[c];
      }
      for (std::int64_t c = 0; c < r; ++c) out[c] = static_cast<float>(od[c]);
      if (p.lse) p.lse[row] = static_cast<float>(lse);
    }
  }
}

}  // namespace hylo::kernels
