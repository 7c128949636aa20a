// CUDA twin of kernels/mamba2_cpu.cpp: the token-by-token Mamba2 scan and the context-parallel state
// correction, fp32 storage and arithmetic, fp64 for the per-token dt / log-decay bookkeeping exactly as the CPU
// twin does it (see mamba2.h for the math).
//
// Layout of the work (both kernels):
//   grid (ceil(P / kWarps), n_heads), block kThreads = 32 * kWarps.
//   Warp w of block (bx, h) owns state row (h, p = bx * kWarps + w): N floats, lane l holding n = l + 32 j for
//   j < K (K = ceil(N / 32) rounded up to a power of two, a template parameter: N <= 32 K). The row stays in
//   registers for the whole call; tokens are walked in order. Lanes with n >= N hold 0 and read zero-padded
//   B/C, so they contribute exactly nothing and need no branch.
//   Every kStage tokens the block stages what its rows share into shared memory: C_t (and B_t, x_t of its rows,
//   dt_t, exp(a_t)) for the kStage tokens; one __syncthreads per stage, none per token. y_t[h, p] = C_t . h_t
//   is a warp reduction (fixed butterfly order: deterministic).
//
// Precision: as on the CPU, dt = softplus(dt_raw + dt_bias) and a = dt * A are fp64, the per-token decay is
// float(exp(a)), and sums over tokens (log_decay_total, the correction's cumulative log-decay) are fp64: an fp32
// running sum over 1M tokens would reach |sum| ~ 1e4..1e6 where one ulp is ~1e-3..6e-2, far beyond the 1e-5
// budget, in fp64 the error stays ~1e-10 relative. The state update and dot products are fp32 with explicit
// fmaf, so the arithmetic of a token does not depend on where a stage or a call boundary falls: splitting a
// call in two gives bit-identical y and state (tests/gpu/test_scans_cuda.cpp checks this).
//
// Cost (HyLo-Llama-6MLA22M2: nh 24, P = N = 128): 24 x 16 = 384 blocks of 256 threads; per token a warp does
// 2 x 4 FMAs per lane plus one 5-step shuffle reduction, a chain of dependent latencies, not throughput.
// Measured on an H200: T = 1 in 4.5 us (launch included; the 1.5 MiB state read + written once), T = 4096 in
// 1.9 ms = 0.47 us per token, i.e. ~0.5 s per layer for 1M tokens: fine for decode, a stopgap for prefill until
// the chunked SSD kernel lands (mamba2_scan_cuda is the place that will choose it).
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"
#include "kernels/mamba2_cuda.h"

namespace hylo::kernels {
namespace {

using std::int64_t;

constexpr int kWarps = 8;               // state rows per block, one per warp
constexpr int kThreads = 32 * kWarps;   // 256
constexpr int kStage = 16;              // tokens staged in shared memory at a time

enum class Mode { kScan, kCorrection };

// softplus in fp64 exactly as mamba2_cpu.cpp: log1p(exp(v)), v itself above 20.
__device__ __forceinline__ double softplus_d(double v) { return v > 20.0 ? v : log1p(exp(v)); }

// kScan:       the recurrence from p.state (in/out), writes y (and log_decay_total).
// kCorrection: y_t += exp(cum_t) * (state_in row . C_t); reads only C, dt, dt_bias, A_log, y.
template <int K, Mode kMode>
__global__ void __launch_bounds__(kThreads) mamba2_recurrent_kernel(Mamba2ScanParams p, const float* state_in) {
  cuda::pdl_trigger();  // the next kernel (a GEMV) may start streaming its weights
  cuda::pdl_wait();     // a programmatic dependent: what the previous kernel wrote is visible from here
  constexpr bool kIsScan = kMode == Mode::kScan;
  constexpr int NP = 32 * K;             // padded d_state
  constexpr int kBRows = kIsScan ? kStage : 1;  // the correction needs no B / x / dt staging
  __shared__ float sC[kStage][NP];       // C_t of this head, zero beyond N
  __shared__ float sB[kBRows][NP];       // B_t of this head's group, zero beyond N
  __shared__ float sx[kBRows][kWarps];   // x_t[p] of this block's rows
  __shared__ float sdt[kBRows];          // float(dt_t)
  __shared__ float sdecay[kStage];       // scan: float(exp(a_t)); correction: float(exp(cum_t))
  __shared__ double sa[kStage];          // a_t = dt_t * A (fp64); correction: then cum_t

  const int64_t T = p.T, nh = p.n_heads, P = p.head_dim, N = p.d_state, G = p.n_groups;
  const int64_t h = blockIdx.y;
  const int64_t g = h / (nh / G);
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kWarps;
  const int64_t row = row0 + warp;
  const bool active = row < P;  // warp-uniform: whole warps are idle when P is not a multiple of kWarps
  const double A = -exp(static_cast<double>(p.A_log[h]));
  const double dt_bias = static_cast<double>(p.dt_bias[h]);
  const float d_skip = kIsScan ? p.D[h] : 0.0f;

  float s[K];  // this lane's part of the state row
  {
    const float* src = (kIsScan ? p.state : state_in) + (h * P + row) * N;
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int n = lane + 32 * j;
      s[j] = (active && n < N) ? src[n] : 0.0f;
    }
  }

  // Thread 0's running fp64 sum over the tokens so far: log_decay_total (scan) or the cumulative log-decay
  // (correction). Only thread 0 uses it; one thread, tokens in order: deterministic.
  double run = 0.0;
  for (int64_t t0 = 0; t0 < T; t0 += kStage) {
    const int len = static_cast<int>(T - t0 < kStage ? T - t0 : kStage);
    __syncthreads();  // every warp is done with the previous stage's shared data
    for (int i = static_cast<int>(threadIdx.x); i < len * NP; i += kThreads) {
      const int tt = i / NP, n = i % NP;
      const int64_t t = t0 + tt;
      sC[tt][n] = n < N ? p.C[(t * nh + h) * N + n] : 0.0f;
      if constexpr (kIsScan) sB[tt][n] = n < N ? p.B[(t * G + g) * N + n] : 0.0f;
    }
    if constexpr (kIsScan) {
      for (int i = static_cast<int>(threadIdx.x); i < len * kWarps; i += kThreads) {
        const int tt = i / kWarps, w = i % kWarps;
        const int64_t r = row0 + w;
        sx[tt][w] = r < P ? p.x[((t0 + tt) * G + g) * P + r] : 0.0f;
      }
    }
    if (static_cast<int>(threadIdx.x) < len) {
      const int tt = static_cast<int>(threadIdx.x);
      const double dt = softplus_d(static_cast<double>(p.dt[(t0 + tt) * nh + h]) + dt_bias);
      const double a = dt * A;
      sa[tt] = a;
      if constexpr (kIsScan) {
        sdt[tt] = static_cast<float>(dt);
        sdecay[tt] = static_cast<float>(exp(a));
      }
    }
    if constexpr (!kIsScan) {
      // cum_t = sum_{s <= t} a_s over the whole call, in fp64, sequentially by thread 0; then exp in parallel.
      __syncthreads();
      if (threadIdx.x == 0) {
        for (int tt = 0; tt < len; ++tt) {
          run += sa[tt];
          sa[tt] = run;
        }
      }
      __syncthreads();
      if (static_cast<int>(threadIdx.x) < len) sdecay[threadIdx.x] = static_cast<float>(exp(sa[threadIdx.x]));
    }
    __syncthreads();

    if (active) {
      for (int tt = 0; tt < len; ++tt) {
        const int64_t yi = ((t0 + tt) * nh + h) * P + row;
        const float decay = sdecay[tt];
        float acc = 0.0f;
        if constexpr (kIsScan) {
          // h_t = exp(a_t) h_{t-1} + dt_t x_t[p] B_t;  y_t[p] = h_t . C_t + D x_t[p]
          const float xv = sx[tt][warp];
          const float coef = sdt[tt] * xv;
#pragma unroll
          for (int j = 0; j < K; ++j) {
            const int n = lane + 32 * j;
            s[j] = fmaf(coef, sB[tt][n], decay * s[j]);
            acc = fmaf(s[j], sC[tt][n], acc);
          }
          acc = cuda::warp_sum(acc);
          if (lane == 0) p.y[yi] = fmaf(d_skip, xv, acc);
        } else {
          // y_t[p] += exp(cum_t) (state_in row . C_t); the row itself never changes.
#pragma unroll
          for (int j = 0; j < K; ++j) acc = fmaf(s[j], sC[tt][lane + 32 * j], acc);
          acc = cuda::warp_sum(acc);
          if (lane == 0) p.y[yi] = fmaf(decay, acc, p.y[yi]);
        }
      }
    }
    if constexpr (kIsScan) {
      if (threadIdx.x == 0)
        for (int tt = 0; tt < len; ++tt) run += sa[tt];
    } else {
      // cum is non-increasing (a <= 0): once exp(cum) is exactly 0 it stays 0 and the remaining tokens would
      // add exactly nothing (the CPU twin stops there too). sdecay is shared, so the exit is block-uniform.
      if (sdecay[len - 1] == 0.0f) break;
    }
  }

  if constexpr (kIsScan) {
    if (active) {
      float* dst = p.state + (h * P + row) * N;
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int n = lane + 32 * j;
        if (n < N) dst[n] = s[j];
      }
    }
    if (p.log_decay_total != nullptr && blockIdx.x == 0 && threadIdx.x == 0)
      p.log_decay_total[h] = static_cast<float>(run);
  }
}

template <Mode kMode>
void launch_recurrent(const Mamba2ScanParams& p, const float* state_in, cudaStream_t stream) {
  if (p.n_heads > 65535) throw std::invalid_argument("mamba2 cuda: n_heads > 65535 is not supported");
  const std::int64_t blocks_x = cuda::ceil_div(p.head_dim, kWarps);
  const dim3 grid(static_cast<unsigned>(blocks_x > 0 ? blocks_x : 1), static_cast<unsigned>(p.n_heads));
  const std::int64_t N = p.d_state;
  // The closed set of instantiations: lanes hold K = 1, 2, 4 or 8 state entries of a row.
  if (N <= 32) {
    cuda::launch_pdl(mamba2_recurrent_kernel<1, kMode>, dim3(grid), dim3(kThreads), 0, stream,
                     cuda::pdl_allowed(stream), p, state_in);
  } else if (N <= 64) {
    cuda::launch_pdl(mamba2_recurrent_kernel<2, kMode>, dim3(grid), dim3(kThreads), 0, stream,
                     cuda::pdl_allowed(stream), p, state_in);
  } else if (N <= 128) {
    cuda::launch_pdl(mamba2_recurrent_kernel<4, kMode>, dim3(grid), dim3(kThreads), 0, stream,
                     cuda::pdl_allowed(stream), p, state_in);
  } else if (N <= 256) {
    cuda::launch_pdl(mamba2_recurrent_kernel<8, kMode>, dim3(grid), dim3(kThreads), 0, stream,
                     cuda::pdl_allowed(stream), p, state_in);
  } else {
    throw std::invalid_argument("mamba2 cuda: d_state " + std::to_string(N) + " > 256 is not supported");
  }
  HYLO_CUDA_LAUNCH_CHECK();
}

}  // namespace

void mamba2_scan_recurrent_cuda(const Mamba2ScanParams& p, cudaStream_t stream) {
  if (p.n_heads <= 0) return;
  if (p.T <= 0) {
    // Nothing to scan; the empty span's log-decay is 0 (as mamba2_scan_recurrent_cpu writes it).
    if (p.log_decay_total != nullptr)
      HYLO_CUDA_CHECK(cudaMemsetAsync(p.log_decay_total, 0, static_cast<std::size_t>(p.n_heads) * sizeof(float),
                                      stream));
    return;
  }
  launch_recurrent<Mode::kScan>(p, nullptr, stream);
}

void mamba2_scan_cuda(const Mamba2ScanParams& p, cudaStream_t stream) {
  // Algorithm choice lives here. Only the recurrent kernel exists so far; a chunked SSD kernel for prefill
  // (T >> 1) will be selected here once it exists and has been measured against this one.
  mamba2_scan_recurrent_cuda(p, stream);
}

void mamba2_state_correction_cuda(const Mamba2ScanParams& p, const float* state_in, cudaStream_t stream) {
  if (p.T <= 0 || p.n_heads <= 0 || p.head_dim <= 0) return;
  launch_recurrent<Mode::kCorrection>(p, state_in, stream);
}

}  // namespace hylo::kernels
