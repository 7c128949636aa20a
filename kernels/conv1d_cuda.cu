// CUDA twin of kernels/conv1d_cpu.cpp. Kernel 1 (K = 4: causal_conv1d_run_kernel below, a window in registers
// over runs of tokens; other K: this generic form): one thread per (token, channel), K taps read from the virtual
// sequence [state ; x] (consecutive threads take consecutive channels: coalesced), accumulated in the CPU
// twin's order (bias, then taps j = 0..K-1). Kernel 2, launched after it on the same stream so that every read
// of the old state is done: one thread per channel shifts the state in place. New row i is virtual row T + i;
// it comes from old state row T + i when T + i < K-1 (only for T < K-1), else from x. Rows are written in
// increasing i, and the source row T + i > i is rewritten only at the later step T + i, after it was read.
// Short calls (K = 4, T <= kRun: every decode step) are one kernel: each thread owns one channel for all T tokens,
// keeps the old state of its channel in registers and writes the new one itself at the end (no second launch).
#include <algorithm>

#include "kernels/conv1d_cuda.h"
#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"

namespace hylo::kernels {

namespace {

constexpr int kThreads = 256;
constexpr std::int64_t kMaxBlocksX = std::int64_t{1} << 16;
constexpr std::int64_t kMaxBlocksY = 65535;

__global__ void causal_conv1d_kernel(CausalConv1dCudaParams p, std::int64_t xs, std::int64_t ss) {
  cuda::pdl_trigger();  // the next kernel (a GEMV) may start streaming its weights
  cuda::pdl_wait();     // a programmatic dependent: what the previous kernel wrote is visible from here
  const std::int64_t C = p.channels, K = p.kernel, keep = K - 1;
  const std::int64_t c_stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t t = blockIdx.y; t < p.T; t += gridDim.y) {
    for (std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < C; c += c_stride) {
      float acc = p.bias ? p.bias[c] : 0.0f;
      for (std::int64_t j = 0; j < K; ++j) {
        const std::int64_t i = t + j;  // row of [state ; x]
        const float v = i < keep ? p.state[i * ss + c] : p.x[(i - keep) * xs + c];
        acc += p.w[c * K + j] * v;
      }
      if (p.silu) acc = acc / (1.0f + expf(-acc));
      p.y[t * C + c] = acc;
    }
  }
}

// Kernel 1 for K = KT known at compile time (the HyLo models use 4): one thread per (channel, run of kRun
// consecutive tokens) with the K-tap window in registers, so every input row is read once per run instead of K
// times, and the taps once per thread. Same accumulation order as the generic kernel (bias, then j = 0..K-1).
constexpr std::int64_t kRun = 32;

// kShift: the whole call is one run (gridDim.y == 1, T <= kRun) and the thread also shifts its channel's state.
template <int KT, bool kShift>
__global__ void causal_conv1d_run_kernel(CausalConv1dCudaParams p, std::int64_t xs, std::int64_t ss) {
  cuda::pdl_trigger();  // the next kernel (a GEMV) may start streaming its weights
  cuda::pdl_wait();     // a programmatic dependent: what the previous kernel wrote is visible from here
  const std::int64_t C = p.channels, keep = KT - 1;
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float w[KT];
#pragma unroll
  for (int j = 0; j < KT; ++j) w[j] = p.w[c * KT + j];
  const float bias = p.bias ? p.bias[c] : 0.0f;
  for (std::int64_t t0 = static_cast<std::int64_t>(blockIdx.y) * kRun; t0 < p.T;
       t0 += static_cast<std::int64_t>(gridDim.y) * kRun) {
    const std::int64_t t1 = t0 + kRun < p.T ? t0 + kRun : p.T;
    float win[KT];
#pragma unroll
    for (int j = 0; j < KT - 1; ++j) {
      const std::int64_t i = t0 + j;  // row of [state ; x]
      win[j] = i < keep ? p.state[i * ss + c] : p.x[(i - keep) * xs + c];
    }
    float old[KT - 1];  // the channel's old state (t0 == 0 when kShift)
#pragma unroll
    for (int j = 0; j < KT - 1; ++j) old[j] = win[j];
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t i = t + keep;
      win[KT - 1] = i < keep ? p.state[i * ss + c] : p.x[(i - keep) * xs + c];
      float acc = bias;
#pragma unroll
      for (int j = 0; j < KT; ++j) acc += w[j] * win[j];
      if (p.silu) acc = acc / (1.0f + expf(-acc));
      p.y[t * C + c] = acc;
#pragma unroll
      for (int j = 0; j < KT - 1; ++j) win[j] = win[j + 1];
    }
    if constexpr (kShift) {
#pragma unroll
      for (int i = 0; i < KT - 1; ++i) {
        const std::int64_t src = p.T + i;  // row of [old state ; x]
        p.state[i * ss + c] = src < keep ? old[src] : p.x[(src - keep) * xs + c];
      }
    }
  }
}

__global__ void conv_state_update_kernel(CausalConv1dCudaParams p, std::int64_t xs, std::int64_t ss) {
  cuda::pdl_trigger();  // the next kernel (a GEMV) may start streaming its weights
  cuda::pdl_wait();     // a programmatic dependent: what the previous kernel wrote is visible from here
  const std::int64_t C = p.channels, keep = p.kernel - 1;
  const std::int64_t c_stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < C; c += c_stride) {
    for (std::int64_t i = 0; i < keep; ++i) {
      const std::int64_t src = p.T + i;  // row of [state ; x]
      p.state[i * ss + c] = src < keep ? p.state[src * ss + c] : p.x[(src - keep) * xs + c];
    }
  }
}

}  // namespace

void causal_conv1d_cuda(const CausalConv1dCudaParams& p, cudaStream_t stream) {
  if (p.T <= 0 || p.channels <= 0 || p.kernel <= 0) return;
  const std::int64_t xs = p.x_stride ? p.x_stride : p.channels;
  const std::int64_t ss = p.state_stride ? p.state_stride : p.channels;
  const auto cblocks = static_cast<unsigned>(std::min(cuda::ceil_div(p.channels, kThreads), kMaxBlocksX));
  if (p.kernel == 4 && cuda::ceil_div(p.channels, kThreads) <= kMaxBlocksX) {
    const dim3 grid(cblocks, static_cast<unsigned>(std::min(cuda::ceil_div(p.T, kRun), kMaxBlocksY)));
    if (p.T <= kRun) {
      cuda::launch_pdl(causal_conv1d_run_kernel<4, true>, dim3(grid), dim3(kThreads), 0, stream,
                       cuda::pdl_allowed(stream), p, xs, ss);
      HYLO_CUDA_LAUNCH_CHECK();
      return;
    }
    cuda::launch_pdl(causal_conv1d_run_kernel<4, false>, dim3(grid), dim3(kThreads), 0, stream,
                     cuda::pdl_allowed(stream), p, xs, ss);
  } else {
    const dim3 grid(cblocks, static_cast<unsigned>(std::min(p.T, kMaxBlocksY)));
    cuda::launch_pdl(causal_conv1d_kernel, dim3(grid), dim3(kThreads), 0, stream, cuda::pdl_allowed(stream), p, xs, ss);
  }
  HYLO_CUDA_LAUNCH_CHECK();
  if (p.kernel > 1) {
    cuda::launch_pdl(conv_state_update_kernel, dim3(cblocks), dim3(kThreads), 0, stream, cuda::pdl_allowed(stream), p,
                     xs, ss);
    HYLO_CUDA_LAUNCH_CHECK();
  }
}

}  // namespace hylo::kernels
