// Mamba2 scan on the CPU, fp32 storage, OpenMP over heads (see mamba2.h for the math).
//
// Precision choices (the test holds both algorithms to 1e-5 relative L2 against fp64):
// - dt, a = dt*A and the within-chunk cumulative log-decays cs are kept in double. cs reaches |cs| ~ L*|a|
//   (hundreds for L = 256 and a fast-decaying head), and an fp32 cumsum carries an absolute error ~|cs|*2^-24
//   into every exp(cs_t - cs_s): 1e-5 relative at |cs| ~ 200, i.e. the whole error budget, in the weights of
//   *recent* tokens, which are the ones that matter. In double that error is gone for L*(1 + 1) extra flops.
// - Everything O(L^2) or O(L P N) (dot products, the state) is fp32, as the GPU kernel will do it.
// - Exps are evaluated in double on the difference (always <= 0, so in (0, 1]: no overflow however long
//   the chunk, and the float conversion cannot overflow either).
//
// The small per-head products (C B^T within a chunk, C h_in, the state update) are plain loops, not BLAS:
// they run inside the per-head OpenMP region (BLAS stays outside OpenMP regions, kernels/README.md) and are
// tiny (L x L x N with L <= 256). Inner loops are written as axpys over contiguous memory so the compiler
// vectorizes them without -ffast-math (it will not reorder a floating-point dot-product reduction).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/mamba2.h"

namespace hylo::kernels {
namespace {

// softplus(v) = log(1 + e^v); above 20, log1p(e^v) = v + e^-v rounds to v in double and exp would only
// approach overflow further out, so return v.
inline double softplus(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }

// Per-head constants shared by both algorithms, so they compute identical dt and a.
struct HeadConsts {
  double A;  // -exp(A_log) < 0
  double dt_bias;
};

inline HeadConsts head_consts(const Mamba2ScanParams& p, std::int64_t h) {
  return {-std::exp(static_cast<double>(p.A_log[h])), static_cast<double>(p.dt_bias[h])};
}

}  // namespace

void mamba2_scan_recurrent_cpu(const Mamba2ScanParams& p) {
  const std::int64_t T = p.T, nh = p.n_heads, P = p.head_dim, N = p.d_state, G = p.n_groups;
  const std::int64_t heads_per_group = nh / G;

  // One head per iteration, each head's tokens in order: the result is independent of the thread count.
#pragma omp parallel for schedule(static)
  for (std::int64_t h = 0; h < nh; ++h) {
    const std::int64_t g = h / heads_per_group;
    const HeadConsts hc = head_consts(p, h);
    const float d_skip = p.D[h];
    float* S = p.state + h * P * N;  // [P, N], updated in place token by token
    double total = 0.0;
    for (std::int64_t t = 0; t < T; ++t) {
      const double dt = softplus(static_cast<double>(p.dt[t * nh + h]) + hc.dt_bias);
      const double a = dt * hc.A;
      total += a;
      const float decay = static_cast<float>(std::exp(a));
      const float dtf = static_cast<float>(dt);
      const float* x = p.x + (t * G + g) * P;
      const float* B = p.B + (t * G + g) * N;
      const float* C = p.C + (t * nh + h) * N;
      float* y = p.y + (t * nh + h) * P;
      for (std::int64_t i = 0; i < P; ++i) {
        const float coef = dtf * x[i];
        float* row = S + i * N;
        float acc = 0.0f;
        for (std::int64_t n = 0; n < N; ++n) {
          row[n] = decay * row[n] + coef * B[n];
          acc += row[n] * C[n];
        }
        y[i] = acc + d_skip * x[i];
      }
    }
    if (p.log_decay_total != nullptr) p.log_decay_total[h] = static_cast<float>(total);
  }
}

void mamba2_scan_chunked_cpu(const Mamba2ScanParams& p, std::int64_t chunk_size) {
  const std::int64_t T = p.T, nh = p.n_heads, P = p.head_dim, N = p.d_state, G = p.n_groups;
  const std::int64_t heads_per_group = nh / G;
  const std::int64_t L = std::min(chunk_size, T);  // longest chunk actually formed

#pragma omp parallel
  {
    // Per-thread scratch, reused across this thread's heads and chunks. For L = 256, N = P = 128:
    // Bt 128 KiB + St 64 KiB + a few KiB, all L2-resident.
    std::vector<double> cs(L);     // cs[s] = a_0 + ... + a_s within the chunk
    std::vector<float> dts(L);     // dt_s of the chunk
    std::vector<float> w(L);       // state-update weights exp(cs_last - cs_s) dt_s
    std::vector<float> Bt(N * L);  // [N, L]: the chunk's B transposed, so C_t . B_s is axpys over s
    std::vector<float> St(N * P);  // [N, P]: h_in transposed, so C_t . h_in is axpys over p
    std::vector<float> row(L);     // one row t of the masked L x L block: exp(cs_t - cs_s) dt_s C_t.B_s
    std::vector<float> acc(P);     // y_t being accumulated

#pragma omp for schedule(static)
    for (std::int64_t h = 0; h < nh; ++h) {
      const std::int64_t g = h / heads_per_group;
      const HeadConsts hc = head_consts(p, h);
      const float d_skip = p.D[h];
      float* S = p.state + h * P * N;  // [P, N]: h_in of the current chunk, becomes h_out in place
      double total = 0.0;

      for (std::int64_t t0 = 0; t0 < T; t0 += L) {
        const std::int64_t len = std::min(L, T - t0);
        const float* xc = p.x + (t0 * G + g) * P;   // x_s at xc + s * G * P
        const float* Bc = p.B + (t0 * G + g) * N;   // B_s at Bc + s * G * N
        const float* Cc = p.C + (t0 * nh + h) * N;  // C_t at Cc + t * nh * N
        const std::int64_t xs = G * P, bs = G * N, cstr = nh * N;

        double run = 0.0;
        for (std::int64_t s = 0; s < len; ++s) {
          const double dt = softplus(static_cast<double>(p.dt[(t0 + s) * nh + h]) + hc.dt_bias);
          run += dt * hc.A;
          cs[s] = run;
          dts[s] = static_cast<float>(dt);
        }
        for (std::int64_t s = 0; s < len; ++s)
          for (std::int64_t n = 0; n < N; ++n) Bt[n * L + s] = Bc[s * bs + n];
        for (std::int64_t i = 0; i < P; ++i)
          for (std::int64_t n = 0; n < N; ++n) St[n * P + i] = S[i * N + n];

        // Outputs. y_t = exp(cs_t) C_t . h_in                      (inter-chunk: the carried state)
        //              + sum_{s<=t} exp(cs_t - cs_s) dt_s (C_t . B_s) x_s   (intra-chunk, causal L x L block)
        //              + D x_t
        // The L x L block (C B^T masked and decayed) is formed one row at a time: same products as the
        // matrix form, O(L) memory instead of O(L^2) (chunk_size = T must not cost T^2).
        for (std::int64_t t = 0; t < len; ++t) {
          const float* Ct = Cc + t * cstr;
          std::fill(row.begin(), row.begin() + t + 1, 0.0f);
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (std::int64_t n = 0; n < N; ++n) {
            const float c = Ct[n];
            const float* bt = Bt.data() + n * L;
            for (std::int64_t s = 0; s <= t; ++s) row[s] += c * bt[s];
            const float* st = St.data() + n * P;
            for (std::int64_t i = 0; i < P; ++i) acc[i] += c * st[i];
          }
          const float in_decay = static_cast<float>(std::exp(cs[t]));
          for (std::int64_t i = 0; i < P; ++i) acc[i] *= in_decay;
          for (std::int64_t s = 0; s <= t; ++s) {
            const float m = row[s] * static_cast<float>(std::exp(cs[t] - cs[s])) * dts[s];
            const float* x_s = xc + s * xs;
            for (std::int64_t i = 0; i < P; ++i) acc[i] += m * x_s[i];
          }
          const float* x_t = xc + t * xs;
          float* y = p.y + ((t0 + t) * nh + h) * P;
          for (std::int64_t i = 0; i < P; ++i) y[i] = acc[i] + d_skip * x_t[i];
        }

        // State. h_out = exp(cs_last) h_in + sum_s exp(cs_last - cs_s) dt_s x_s (x) B_s
        const double cs_last = cs[len - 1];
        for (std::int64_t s = 0; s < len; ++s) w[s] = static_cast<float>(std::exp(cs_last - cs[s])) * dts[s];
        const float out_decay = static_cast<float>(std::exp(cs_last));
        for (std::int64_t i = 0; i < P; ++i) {
          float* srow = S + i * N;
          for (std::int64_t n = 0; n < N; ++n) srow[n] *= out_decay;
          for (std::int64_t s = 0; s < len; ++s) {
            const float coef = w[s] * xc[s * xs + i];
            const float* b = Bc + s * bs;
            for (std::int64_t n = 0; n < N; ++n) srow[n] += coef * b[n];
          }
        }
        total += cs_last;
      }
      if (p.log_decay_total != nullptr) p.log_decay_total[h] = static_cast<float>(total);
    }
  }
}

void mamba2_state_correction_cpu(const Mamba2ScanParams& p, const float* state_in) {
  const std::int64_t T = p.T, nh = p.n_heads, P = p.head_dim, N = p.d_state;
#pragma omp parallel for schedule(static)
  for (std::int64_t h = 0; h < nh; ++h) {
    const HeadConsts hc = head_consts(p, h);
    const float* S = state_in + h * P * N;
    double cum = 0.0;
    for (std::int64_t t = 0; t < T; ++t) {
      cum += softplus(static_cast<double>(p.dt[t * nh + h]) + hc.dt_bias) * hc.A;
      const float decay = static_cast<float>(std::exp(cum));
      if (decay == 0.0f) break;  // the incoming state has decayed away for this and every later token
      const float* C = p.C + (t * nh + h) * N;
      float* y = p.y + (t * nh + h) * P;
      for (std::int64_t i = 0; i < P; ++i) {
        const float* row = S + i * N;
        float acc = 0.0f;
        for (std::int64_t n = 0; n < N; ++n) acc += row[n] * C[n];
        y[i] += decay * acc;
      }
    }
  }
}

}  // namespace hylo::kernels
