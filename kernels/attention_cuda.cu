// CUDA twin of kernels/attention_cpu.cpp (see attention_cuda.h).
//
// Layout of the work: one block of 4 warps per (64-query tile, query head); each warp owns 16 query rows. The
// block streams the keys its tile can see in tiles of 64 through shared memory:
//   S = Q K^T   16 x 64 per warp, mma.sync m16n8k16 (bf16 in, fp32 accumulate), A and B fragments by ldmatrix
//   online softmax on the fp32 accumulator registers (the mma C layout tells each thread its rows: g and g + 8)
//   O += P V    the score accumulators are repacked as bf16 A fragments in registers (the C layout of two
//               adjacent 16 x 8 tiles is the A layout of one 16 x 16 tile), V fragments by ldmatrix.trans
// O stays in registers for the whole key loop (DV/2 floats per thread). K and V have separate buffers so that
// the copy of V(t) overlaps the scores of tile t and the copy of K(t+1) overlaps P V(t) (cp.async).
//
// Head dims are padded to the instantiated DQK/DV (multiples of 16) with zeros in shared memory, and keys past
// S are zero rows: padded lanes contribute exactly 0 and never NaN. Shared memory at (DQK, DV) = (128, 128):
// 3 tiles of 64 x 136 bf16 = 52 KiB (4 blocks per SM on H100); (256, 256): 101 KiB.
//
// Measured (H200, 2026-11-27): causal L = 16384, 16/8 heads, d 128: 230 TFLOP/s (4 L^2 H d / 2), about a third
// of cuDNN's SDPA on that card (docs PERFORMANCE.md). The next steps are the usual ones: two 16-row blocks per
// warp (halves the K/V fragment loads per mma), Q fragments kept in registers, then wgmma + TMA on sm_90a.
//
// mma.sync m16n8k16 fragment layouts used below (PTX ISA, "Matrix fragments for mma.m16n8k16"), g = lane / 4,
// t = lane % 4: A (16 x 16, row-major) regs {(g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)};
// B (16 x 8, k x n) regs {(k 2t..2t+1, n g), (k 2t+8.., n g)}; C (16 x 8) {(g, 2t), (g, 2t+1), (g+8, 2t),
// (g+8, 2t+1)}. ldmatrix.x4 gives register i the 8 x 8 matrix whose row addresses lanes 8i..8i+7 supplied, thread
// holding (row g, cols 2t..2t+1), or with .trans (rows 2t..2t+1, col g).
#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/attention_cuda.h"
#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_mma.cuh"

namespace hylo::kernels {

namespace {

using cuda::bf16;

constexpr int kBQ = 64;  // queries per block (4 warps x 16 rows)
constexpr int kBK = 64;  // keys per tile
constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// By value: std::min / std::max take references, which in device code can park int64 operands in local memory.
__device__ __forceinline__ std::int64_t min64(std::int64_t x, std::int64_t y) { return x < y ? x : y; }
__device__ __forceinline__ std::int64_t max64(std::int64_t x, std::int64_t y) { return x > y ? x : y; }

using namespace cuda;  // the primitives of kernels/cuda_mma.cuh


// Copies a kRows x DP tile into shared memory (row pitch LD elements): row `row` from src + row * row_stride,
// columns [0, d) of rows [0, n_valid); everything else zero. vec: src and row_stride 16-byte aligned and
// d % 8 == 0, so every 8-column chunk is one asynchronous 16-byte copy; otherwise synchronous 2-byte loads.
template <int kRows, int DP, int LD>
__device__ __forceinline__ void load_tile(bf16* __restrict__ dst, const bf16* __restrict__ src, std::int64_t row_stride,
                                          int n_valid, int d, bool vec) {
  constexpr int kChunks = DP / 8;
  for (int c = threadIdx.x; c < kRows * kChunks; c += kThreads) {
    const int row = c / kChunks, col = (c % kChunks) * 8;
    bf16* s = dst + row * LD + col;
    if (row < n_valid && col < d) {
      const bf16* g = src + row * row_stride + col;
      if (vec) {
        cp_async16(s, g);
      } else {
        const unsigned short* gs = reinterpret_cast<const unsigned short*>(g);
        unsigned w[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const unsigned lo = col + 2 * e < d ? gs[2 * e] : 0u;
          const unsigned hi = col + 2 * e + 1 < d ? gs[2 * e + 1] : 0u;
          w[e] = lo | (hi << 16);
        }
        *reinterpret_cast<uint4*>(s) = make_uint4(w[0], w[1], w[2], w[3]);
      }
    } else {
      *reinterpret_cast<uint4*>(s) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

struct AttnArgs {
  std::int64_t T, S, n_heads, group, n_qt;
  int d_qk, d_v;
  const bf16* q;
  const bf16* k;
  const bf16* v;
  std::int64_t q_rs, q_hs, k_rs, k_hs, v_rs, v_hs;
  float* o;
  float* lse;
  float scale_log2;  // scale * log2(e): the softmax runs in base 2
  bool causal;
  std::int64_t q_offset;
  bool vec_q, vec_k, vec_v;
};

template <int DQK, int DV>
constexpr int attn_smem_bytes() {
  return (2 * kBQ * (DQK + 8) + kBK * (DV + 8)) * static_cast<int>(sizeof(bf16));
}

template <int DQK, int DV>
__global__ void __launch_bounds__(kThreads) attention_kernel(const AttnArgs a) {
  static_assert(DQK % 16 == 0 && DV % 16 == 0, "padded head dims are multiples of 16");
  constexpr int LDQ = DQK + 8;  // +16 bytes per row: the 8 rows of an ldmatrix hit distinct bank groups
  constexpr int LDV = DV + 8;
  constexpr int kNT = DV / 8;  // 8-column output tiles per warp row block
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* Ks = Qs + kBQ * LDQ;
  bf16* Vs = Ks + kBK * LDQ;

  // Heaviest causal tiles (the last queries) first, heads of one kv group adjacent (K/V shared in L2).
  const std::int64_t bid = blockIdx.x;
  const std::int64_t qt = a.n_qt - 1 - bid / a.n_heads;
  const std::int64_t h = bid % a.n_heads;
  const std::int64_t kvh = h / a.group;
  const std::int64_t i0 = qt * kBQ;
  const int nq = static_cast<int>(min64(kBQ, a.T - i0));

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t4 = lane & 3;
  // Keys the tile sees: a prefix [0, kend) (the last row sees the most).
  const std::int64_t kend = a.causal ? min64(a.S, max64(0, a.q_offset + i0 + nq)) : a.S;

  float acc[kNT][4];
#pragma unroll
  for (int n = 0; n < kNT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};

  if (kend > 0) {
    // Key limit of this thread's two rows (tile rows warp*16 + g and + 8): row i sees keys [0, lim).
    std::int64_t lim[2];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const std::int64_t i = i0 + warp * 16 + g + 8 * rr;
      lim[rr] = a.causal ? min64(a.S, max64(0, a.q_offset + i + 1)) : a.S;
    }
    const bf16* kbase = a.k + kvh * a.k_hs;
    const bf16* vbase = a.v + kvh * a.v_hs;
    load_tile<kBQ, DQK, LDQ>(Qs, a.q + i0 * a.q_rs + h * a.q_hs, a.q_rs, nq, a.d_qk, a.vec_q);
    load_tile<kBK, DQK, LDQ>(Ks, kbase, a.k_rs, static_cast<int>(min64(kBK, a.S)), a.d_qk, a.vec_k);
    cp_async_commit();

    // ldmatrix row addresses (bytes) of this lane; see the fragment layouts at the top.
    const int mi = lane >> 3, r8 = lane & 7;
    const unsigned q_addr = smem_u32(Qs + (warp * 16 + (mi & 1) * 8 + r8) * LDQ + (mi >> 1) * 8);
    const unsigned k_addr = smem_u32(Ks + ((mi >> 1) * 8 + r8) * LDQ + (mi & 1) * 8);
    const unsigned v_addr = smem_u32(Vs + ((mi & 1) * 8 + r8) * LDV + (mi >> 1) * 8);

    const std::int64_t n_kt = (kend + kBK - 1) / kBK;
    for (std::int64_t kt = 0; kt < n_kt; ++kt) {
      const std::int64_t j0 = kt * kBK;
      cp_async_wait_all();
      __syncthreads();  // K(kt) (and Q) visible; every warp is done with V(kt-1)
      load_tile<kBK, DV, LDV>(Vs, vbase + j0 * a.v_rs, a.v_rs, static_cast<int>(min64(kBK, a.S - j0)), a.d_v, a.vec_v);
      cp_async_commit();

      // S = Q K^T: this warp's 16 rows x 64 keys (8 tiles of 8 keys).
      float s[8][4];
#pragma unroll
      for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < DQK / 16; ++kk) {
        unsigned qa[4];
        ldsm_x4(q_addr + kk * 32, qa);
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          unsigned kb[4];
          ldsm_x4(k_addr + (np * 16 * LDQ + kk * 16) * 2, kb);
          mma_bf16(s[2 * np], qa, kb[0], kb[1]);
          mma_bf16(s[2 * np + 1], qa, kb[2], kb[3]);
        }
      }

      // Scale to base 2; mask keys past S or past a row's causal limit (only in tiles that need it).
      const bool need_mask = j0 + kBK > a.S || (a.causal && j0 + kBK - 1 > a.q_offset + i0);
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[n][e] *= a.scale_log2;
          if (need_mask && j0 + n * 8 + 2 * t4 + (e & 1) >= lim[e >> 1]) s[n][e] = -INFINITY;
        }

        // Online softmax for rows g (e = 0, 1) and g + 8 (e = 2, 3); a row is spread over the 4 lanes of a quad.
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * rr], s[n][2 * rr + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m_run[rr], mx);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // no key seen yet: avoid -inf - -inf
        const float alpha = fast_exp2(m_run[rr] - m_use);
        m_run[rr] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          s[n][2 * rr] = fast_exp2(s[n][2 * rr] - m_use);
          s[n][2 * rr + 1] = fast_exp2(s[n][2 * rr + 1] - m_use);
          sum += s[n][2 * rr] + s[n][2 * rr + 1];
        }
        l_run[rr] = l_run[rr] * alpha + sum;  // this lane's share; the quad is summed once at the end
#pragma unroll
        for (int n = 0; n < kNT; ++n) {
          acc[n][2 * rr] *= alpha;
          acc[n][2 * rr + 1] *= alpha;
        }
      }

      cp_async_wait_all();
      __syncthreads();  // V(kt) visible; every warp is done with K(kt)
      if (kt + 1 < n_kt) {
        const std::int64_t j1 = j0 + kBK;
        load_tile<kBK, DQK, LDQ>(Ks, kbase + j1 * a.k_rs, a.k_rs, static_cast<int>(min64(kBK, a.S - j1)), a.d_qk,
                                 a.vec_k);
        cp_async_commit();
      }

      // O += P V: P (16 x 64) straight from the score registers, in 4 steps of 16 keys.
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const unsigned pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int np = 0; np < DV / 16; ++np) {
          unsigned vb[4];
          ldsm_x4_trans(v_addr + (kk * 16 * LDV + np * 16) * 2, vb);
          mma_bf16(acc[2 * np], pa, vb[0], vb[1]);
          mma_bf16(acc[2 * np + 1], pa, vb[2], vb[3]);
        }
      }
    }
  }

  // Finalize: o = acc / l; a row that saw no key gets o = 0, lse = -inf (the merge's neutral element).
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    float l = l_run[rr];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int row = warp * 16 + g + 8 * rr;
    if (row >= nq) continue;
    const std::int64_t i = i0 + row;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    float* orow = a.o + (i * a.n_heads + h) * a.d_v;
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
      const int c = n * 8 + 2 * t4;
      if (c < a.d_v) orow[c] = acc[n][2 * rr] * inv;
      if (c + 1 < a.d_v) orow[c + 1] = acc[n][2 * rr + 1] * inv;
    }
    if (a.lse != nullptr && t4 == 0) a.lse[i * a.n_heads + h] = l > 0.0f ? (m_run[rr] + log2f(l)) * kLn2 : -INFINITY;
  }
}

template <int DQK, int DV>
void launch_attention(const AttnArgs& a, std::int64_t blocks, cudaStream_t stream) {
  constexpr int smem = attn_smem_bytes<DQK, DV>();
  HYLO_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<DQK, DV>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  attention_kernel<DQK, DV><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(a);
  HYLO_CUDA_LAUNCH_CHECK();
}

template <int DQK>
void dispatch_dv(const AttnArgs& a, std::int64_t blocks, cudaStream_t stream) {
  if (a.d_v <= 32) return launch_attention<DQK, 32>(a, blocks, stream);
  if (a.d_v <= 64) return launch_attention<DQK, 64>(a, blocks, stream);
  if (a.d_v <= 128) return launch_attention<DQK, 128>(a, blocks, stream);
  return launch_attention<DQK, 256>(a, blocks, stream);
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// wa a + wb b with one explicit rounding order (a fused multiply-add of wa a onto the product wb b), so the
// pairwise and the chained merge cannot differ by the compiler's choice of contraction.
__device__ __forceinline__ float merge_mix(float wa, float a, float wb, float b) { return __fmaf_rn(wa, a, __fmul_rn(wb, b)); }

// One step of an exact merge of partial b into partial a, from their LSEs (la is updated to the merged LSE): what to
// do with o, and the weights of kMix, in double like the CPU twin. Shared by the pairwise and the chained merge, so
// both give the same bits. -inf on either side needs no arithmetic: b saw no key (keep a, or a clean 0 if a saw
// none either), or a saw none (take b).
enum : int { kKeep = 0, kZero = 1, kCopyB = 2, kMix = 3 };
__device__ __forceinline__ int merge_step(float& la, float lb, float& wa, float& wb) {
  if (lb == -INFINITY) return la == -INFINITY ? kZero : kKeep;
  if (la == -INFINITY) {
    la = lb;
    return kCopyB;
  }
  const double hi = fmax(static_cast<double>(la), static_cast<double>(lb));
  const double lo = fmin(static_cast<double>(la), static_cast<double>(lb));
  const double l = hi + log1p(exp(lo - hi));
  wa = static_cast<float>(exp(static_cast<double>(la) - l));
  wb = static_cast<float>(exp(static_cast<double>(lb) - l));
  la = static_cast<float>(l);
  return kMix;
}

// One warp per row. lse_a[row] is written after every lane has read it.
__global__ void merge_partials_kernel(std::int64_t rows, std::int64_t d_v, float* o_a, float* lse_a, const float* o_b,
                                      const float* lse_b) {
  const int lane = threadIdx.x & 31;
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows;
       r += warps) {
    float* oa = o_a + r * d_v;
    const float* ob = o_b + r * d_v;
    float la = lse_a[r];
    const float lb = lse_b[r];
    __syncwarp();
    float wa = 0.0f, wb = 0.0f;
    const int act = merge_step(la, lb, wa, wb);
    if (act == kZero) {  // neither saw a key: a clean 0
      for (std::int64_t c = lane; c < d_v; c += 32) oa[c] = 0.0f;
    } else if (act == kCopyB) {
      for (std::int64_t c = lane; c < d_v; c += 32) oa[c] = ob[c];
    } else if (act == kMix) {
      for (std::int64_t c = lane; c < d_v; c += 32) oa[c] = merge_mix(wa, oa[c], wb, ob[c]);
    }
    if (lane == 0 && act != kKeep && act != kZero) lse_a[r] = la;
  }
}

// merge_attention_partials_chain_cuda: the pairwise merge above applied to partials 1, 2, ... n - 1 in turn, for one
// row per warp in one launch. Lane 0 walks the row's chain of LSEs first (the pairwise kernel's branches and double
// arithmetic, step by step) into per-step actions in shared memory; then every lane carries its columns of o
// through the steps in registers. Same operations in the same order as n - 1 pairwise calls: bitwise the same.
constexpr int kChainMax = 64;
constexpr int kChainWarps = 8;

__global__ void __launch_bounds__(32 * kChainWarps)
    merge_chain_kernel(std::int64_t rows, std::int64_t d_v, int n, const float* __restrict__ parts,
                       std::int64_t part_stride, std::int64_t lse_offset, float* __restrict__ o,
                       float* __restrict__ lse_out) {
  __shared__ float w_s[kChainWarps][kChainMax][2];
  __shared__ int act_s[kChainWarps][kChainMax];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * kChainWarps;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kChainWarps + wid; r < rows; r += warps) {
    __syncwarp();  // the previous row's actions are consumed
    if (lane == 0) {
      float la = parts[lse_offset + r];
      for (int j = 1; j < n; ++j) {
        const float lb = parts[j * part_stride + lse_offset + r];
        float wa = 0.0f, wb = 0.0f;
        const int act = merge_step(la, lb, wa, wb);
        act_s[wid][j] = act;
        w_s[wid][j][0] = wa;
        w_s[wid][j][1] = wb;
      }
      if (lse_out != nullptr) lse_out[r] = la;
    }
    __syncwarp();
    for (std::int64_t c = lane; c < d_v; c += 32) {
      float v = parts[r * d_v + c];
      for (int j = 1; j < n; ++j) {
        const int act = act_s[wid][j];
        const float ob = parts[j * part_stride + r * d_v + c];
        v = act == kKeep ? v : act == kZero ? 0.0f : act == kCopyB ? ob : merge_mix(w_s[wid][j][0], v, w_s[wid][j][1], ob);
      }
      o[r * d_v + c] = v;
    }
  }
}

}  // namespace

void attention_cuda(const AttentionCudaParams& p, cudaStream_t stream) {
  if (p.T <= 0 || p.n_heads <= 0) return;
  if (p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads != 0)
    throw std::invalid_argument("attention_cuda: n_kv_heads must divide n_heads");
  if (p.d_qk < 1 || p.d_qk > 256 || p.d_v < 1 || p.d_v > 256)
    throw std::invalid_argument("attention_cuda: head dims must be in 1..256 (got d_qk " + std::to_string(p.d_qk) +
                                ", d_v " + std::to_string(p.d_v) + ")");
  if (p.S < 0) throw std::invalid_argument("attention_cuda: S < 0");
  AttnArgs a{};
  a.T = p.T;
  a.S = p.S;
  a.n_heads = p.n_heads;
  a.group = p.n_heads / p.n_kv_heads;
  a.n_qt = (p.T + kBQ - 1) / kBQ;
  a.d_qk = static_cast<int>(p.d_qk);
  a.d_v = static_cast<int>(p.d_v);
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.q_hs = p.q_head_stride > 0 ? p.q_head_stride : p.d_qk;
  a.q_rs = p.q_row_stride > 0 ? p.q_row_stride : p.n_heads * p.d_qk;
  a.k_hs = p.k_head_stride > 0 ? p.k_head_stride : p.d_qk;
  a.k_rs = p.k_row_stride > 0 ? p.k_row_stride : p.n_kv_heads * p.d_qk;
  a.v_hs = p.v_head_stride > 0 ? p.v_head_stride : p.d_v;
  a.v_rs = p.v_row_stride > 0 ? p.v_row_stride : p.n_kv_heads * p.d_v;
  a.o = p.o;
  a.lse = p.lse;
  a.scale_log2 = p.scale * kLog2e;
  a.causal = p.causal;
  a.q_offset = p.q_offset;
  a.vec_q = aligned16(p.q) && a.q_rs % 8 == 0 && a.q_hs % 8 == 0 && p.d_qk % 8 == 0;
  a.vec_k = aligned16(p.k) && a.k_rs % 8 == 0 && a.k_hs % 8 == 0 && p.d_qk % 8 == 0;
  a.vec_v = aligned16(p.v) && a.v_rs % 8 == 0 && a.v_hs % 8 == 0 && p.d_v % 8 == 0;
  const std::int64_t blocks = a.n_qt * p.n_heads;
  if (blocks > std::numeric_limits<int>::max()) throw std::invalid_argument("attention_cuda: too many query tiles");
  if (p.d_qk <= 32) return dispatch_dv<32>(a, blocks, stream);
  if (p.d_qk <= 64) return dispatch_dv<64>(a, blocks, stream);
  if (p.d_qk <= 128) return dispatch_dv<128>(a, blocks, stream);
  if (p.d_qk <= 192) return dispatch_dv<192>(a, blocks, stream);
  return dispatch_dv<256>(a, blocks, stream);
}

void merge_attention_partials_cuda(std::int64_t rows, std::int64_t d_v, float* o_a, float* lse_a, const float* o_b,
                                   const float* lse_b, cudaStream_t stream) {
  if (rows <= 0) return;
  constexpr int kMergeThreads = 256;  // 8 rows per block
  const std::int64_t blocks = std::min<std::int64_t>((rows + 7) / 8, std::int64_t{1} << 20);
  merge_partials_kernel<<<static_cast<unsigned>(blocks), kMergeThreads, 0, stream>>>(rows, d_v, o_a, lse_a, o_b, lse_b);
  HYLO_CUDA_LAUNCH_CHECK();
}

void merge_attention_partials_chain_cuda(std::int64_t rows, std::int64_t d_v, int n, const float* parts,
                                         std::int64_t part_stride, std::int64_t lse_offset, float* o, float* lse,
                                         cudaStream_t stream) {
  if (n < 1 || n > kChainMax)
    throw std::invalid_argument("merge_attention_partials_chain_cuda: " + std::to_string(n) +
                                " partials; 1 .. " + std::to_string(kChainMax) + " are supported");
  if (rows <= 0) return;
  if (lse_offset < rows * d_v || (n > 1 && part_stride < lse_offset + rows))
    throw std::invalid_argument("merge_attention_partials_chain_cuda: a partial is o [rows, d_v] then lse [rows]: "
                                "lse_offset must be >= rows x d_v and part_stride >= lse_offset + rows");
  const std::int64_t blocks = std::min<std::int64_t>((rows + kChainWarps - 1) / kChainWarps, std::int64_t{1} << 20);
  merge_chain_kernel<<<static_cast<unsigned>(blocks), 32 * kChainWarps, 0, stream>>>(rows, d_v, n, parts, part_stride,
                                                                                     lse_offset, o, lse);
  HYLO_CUDA_LAUNCH_CHECK();
}

}  // namespace hylo::kernels
