// The CUDA engine against the CPU engine (its oracle), label gpu:
//   - hylo-tiny (random weights): logits of every position of a 300-token prompt and 64 teacher-forced decode
//     steps (bf16 activations into GEMMs and attention against fp32), bounded by the model's conditioning;
//   - the reduced-width released layouts: all logits <= 2e-2 and 64 greedy tokens identical.
// Both engines run the same weights, rounded to bf16 (what a bf16 checkpoint holds; round_weights_to_bf16), so
// the comparison measures the engine, not the rounding of an fp32 checkpoint.
//   - chunked prefill with tiny chunks and attention blocks (every chunk / block / merge path) on 700 tokens;
//   - the reduced-width released layouts of tests/golden (HF-made checkpoints): last-position logits <= 2e-2;
//   - the memory planner refuses an impossible capacity with the numbers and a CP degree.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "gpu_test.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/model_weights.h"
#include "model/presets.h"
#include "model/weights.h"
#include "runtime/cuda_engine.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"

namespace hylo {
namespace {

using gpu_test::rel_l2;

std::vector<std::int32_t> prompt_of(std::int64_t n, std::int64_t vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int32_t> d(0, static_cast<std::int32_t>(vocab - 1));
  std::vector<std::int32_t> p(static_cast<std::size_t>(n));
  for (auto& t : p) t = d(rng);
  return p;
}

// Worst per-position relative L2 over [T, V] logits.
double worst_row(const std::vector<float>& got, const std::vector<float>& ref, std::int64_t T, std::int64_t V) {
  double worst = 0;
  for (std::int64_t t = 0; t < T; ++t) worst = std::max(worst, rel_l2(got.data() + t * V, ref.data() + t * V, V));
  return worst;
}

// hylo-tiny with random weights is badly conditioned: rounding its weights to bf16 (a 2^-9 relative change)
// moves its logits by ~2.6e-2 relative L2 in the CPU engine alone (measured here as `floor`). bf16 activations
// perturb it the same way, so for this model the GPU is held to max(2e-2, 1.25 x floor); the HF-made layouts
// below are well conditioned and held to 2e-2 flat. Decode is checked teacher-forced (both engines are fed the
// CPU's greedy tokens), so a near-tie cannot hide or fake a difference; greedy agreement is checked on the
// well-conditioned layouts.
TEST(CudaEngine, TinyMatchesCpuAllPositionsAndDecode) {
  const ModelConfig c = load_preset("hylo-tiny");
  const std::int64_t T = 300, V = c.vocab_size, steps = 64;
  const auto prompt = prompt_of(T, V, 6);
  ModelWeights w = random_model_weights(c, 5);
  CpuEngine exact(c, w);  // fp32 weights: measures the model's sensitivity to bf16 rounding
  round_weights_to_bf16(w);
  CpuEngine cpu(c, w);
  CudaEngine gpu(c, w, T + steps);
  SequenceState se = exact.new_sequence(), st = cpu.new_sequence();
  std::vector<float> le, ref, got(static_cast<std::size_t>(T * V));
  exact.prefill(se, prompt, 0, le, true);
  cpu.prefill(st, prompt, 0, ref, true);
  gpu.forward(prompt, got.data(), true);
  EXPECT_EQ(gpu_test::count_nonfinite(got), 0);
  const double floor = rel_l2(ref, le);
  const double bound = std::max(2e-2, 1.25 * floor);
  const double all = rel_l2(got, ref), worst = worst_row(got, ref, T, V);
  std::printf("  hylo-tiny %lld tokens on %s: logits rel L2 %.2e overall (worst position %.2e); bf16-weight floor "
              "%.2e -> bound %.2e\n",
              static_cast<long long>(T), gpu.device_name().c_str(), all, worst, floor, bound);
  EXPECT_LE(all, bound);
  // Decode, teacher-forced with the bf16 CPU engine's greedy tokens; the floor is taken per step the same way.
  Sampler sc(SamplingParams{});
  std::vector<float> lx(le.end() - V, le.end()), lc(ref.end() - V, ref.end()), lg(got.end() - V, got.end());
  double worst_step = 0, worst_floor = 0;
  int same = 0;
  for (std::int64_t i = 0; i < steps; ++i) {
    const std::int32_t a = sc.sample(lc.data(), V);
    same += Sampler(SamplingParams{}).sample(lg.data(), V) == a;
    exact.forward(se, std::span<const std::int32_t>(&a, 1), lx.data(), false);
    cpu.forward(st, std::span<const std::int32_t>(&a, 1), lc.data(), false);
    gpu.forward(std::span<const std::int32_t>(&a, 1), lg.data(), false);
    worst_step = std::max(worst_step, rel_l2(lg.data(), lc.data(), V));
    worst_floor = std::max(worst_floor, rel_l2(lc.data(), lx.data(), V));
  }
  const double step_bound = std::max(2e-2, 1.25 * worst_floor);
  std::printf("  decode (teacher-forced, %lld steps): worst logits rel L2 %.2e (floor %.2e -> bound %.2e); GPU argmax = "
              "CPU argmax at %d steps\n",
              static_cast<long long>(steps), worst_step, worst_floor, step_bound, same);
  EXPECT_LE(worst_step, step_bound);
}

// Chunked prefill with tiny chunks and attention blocks (every chunk / block / merge path) against one chunk on
// the same GPU (only summation order may differ); the CPU difference is printed (bounded in the test above).
TEST(CudaEngine, ChunkedPrefillAndAttentionBlocks) {
  const ModelConfig c = load_preset("hylo-tiny");
  const std::int64_t T = 700, V = c.vocab_size;
  const auto prompt = prompt_of(T, V, 8);
  ModelWeights w = random_model_weights(c, 9);
  round_weights_to_bf16(w);
  CpuEngine cpu(c, w);
  SequenceState st = cpu.new_sequence();
  std::vector<float> ref;
  cpu.prefill(st, prompt, 0, ref, false);
  CudaEngine whole(c, w, T);
  std::vector<float> one(static_cast<std::size_t>(V));
  whole.forward(prompt, one.data(), false);
  CudaEngineOptions o;
  o.prefill_chunk = 64;
  o.attention_block = 100;  // not a multiple of the chunk: blocks straddle chunks
  CudaEngine gpu(c, w, T, o);
  std::vector<float> got(static_cast<std::size_t>(V));
  gpu.forward(prompt, got.data(), false);
  const double vs_gpu = rel_l2(got, one), vs_cpu = rel_l2(got, ref);
  std::printf("  chunk 64, attention block 100, %lld tokens: last logits rel L2 %.2e vs one chunk, %.2e vs CPU\n",
              static_cast<long long>(T), vs_gpu, vs_cpu);
  EXPECT_LE(vs_gpu, 2e-2);
  // reset() starts over: the same prompt gives the same logits bit for bit.
  gpu.reset();
  std::vector<float> again(static_cast<std::size_t>(V));
  gpu.forward(prompt, again.data(), false);
  EXPECT_EQ(again, got);
}

TEST(CudaEngine, GoldenReducedWidthLayouts) {
  namespace fs = std::filesystem;
  for (const char* name : {"mla", "mamba2", "gdn", "mixed", "slice-HyLo-Llama-6MLA22M2", "slice-HyLo-Llama-8MLA8GDN", "slice-HyLo-Qwen-7MLA21GDN",
                           "slice-HyLo-Qwen-14MLA14M2"}) {
    SCOPED_TRACE(name);
    // HYLO_SOURCE_DIR in the environment wins: binaries built here also run from a copy of the tree elsewhere.
    const char* src = std::getenv("HYLO_SOURCE_DIR");
    const fs::path dir = fs::path(src != nullptr ? src : HYLO_SOURCE_DIR) / "tests" / "golden" / name;
    const ModelConfig cfg = load_model_config(dir);
    const auto ckpt = SafetensorsCheckpoint::open(dir);
    const auto bound = bind_weights(cfg, ckpt);
    const auto prompt = prompt_of(150, cfg.vocab_size, 10);
    ModelWeights w = load_model_weights(cfg, bound);
    round_weights_to_bf16(w);
    CpuEngine cpu(cfg, w);
    SequenceState st = cpu.new_sequence();
    std::vector<float> ref;
    cpu.prefill(st, prompt, 0, ref, true);
    CudaEngine gpu(cfg, w, static_cast<std::int64_t>(prompt.size()));
    std::vector<float> got(ref.size());
    gpu.forward(prompt, got.data(), true);
    const auto T = static_cast<std::int64_t>(prompt.size());
    const double worst = worst_row(got, ref, T, cfg.vocab_size);
    std::printf("  %-28s rel L2 %.2e overall, worst position %.2e; positions 0, 1, 10, %lld: %.2e %.2e %.2e %.2e\n", name,
                rel_l2(got, ref), worst, static_cast<long long>(T - 1), rel_l2(got.data(), ref.data(), cfg.vocab_size),
                rel_l2(got.data() + cfg.vocab_size, ref.data() + cfg.vocab_size, cfg.vocab_size),
                rel_l2(got.data() + 10 * cfg.vocab_size, ref.data() + 10 * cfg.vocab_size, cfg.vocab_size),
                rel_l2(got.data() + (T - 1) * cfg.vocab_size, ref.data() + (T - 1) * cfg.vocab_size, cfg.vocab_size));
    EXPECT_LE(rel_l2(got, ref), 2e-2);
    // 64 decode steps, teacher-forced with the CPU's greedy tokens: every step's logits within 2e-2. Argmax
    // agreement is reported, not asserted: these random-weight 256-token vocabularies have near-ties
    // (top-2 margins below bf16 resolution), where either choice is right.
    CudaEngine g2(cfg, w, T + 64);
    std::vector<float> lg(static_cast<std::size_t>(cfg.vocab_size));
    g2.forward(prompt, lg.data(), false);
    std::vector<float> lc(ref.end() - cfg.vocab_size, ref.end());
    Sampler sc(SamplingParams{});
    int agree = 0;
    double worst_step = 0;
    for (int i = 0; i < 64; ++i) {
      const std::int32_t a = sc.sample(lc.data(), cfg.vocab_size);
      agree += Sampler(SamplingParams{}).sample(lg.data(), cfg.vocab_size) == a;
      cpu.forward(st, std::span<const std::int32_t>(&a, 1), lc.data(), false);
      g2.forward(std::span<const std::int32_t>(&a, 1), lg.data(), false);
      worst_step = std::max(worst_step, rel_l2(lg.data(), lc.data(), cfg.vocab_size));
    }
    std::printf("  %-28s decode: worst step rel L2 %.2e, argmax agrees at %d/64 steps\n", name, worst_step, agree);
    EXPECT_LE(worst_step, 2e-2);
  }
}

// Every algorithm the engine can pick, on a well-conditioned HF-made layout (golden "mixed": MLA, Mamba2 and
// GDN layers) against the CPU engine on the same bf16 weights, over a sequence that exercises each transition:
// a chunked prefill (chunk 64, prompt not a multiple), 3 decode steps, a second prefill that continues the
// sequence (the prefill K/V cache must first fill the positions the decode steps added), 2 more decode steps.
// Variants: the defaults (cuDNN attention, prefill K/V cache, chunked scans, GEMV decode), and each of them
// switched off in turn (own attention kernel; latents re-decompressed per block of 100 keys, straddling chunks;
// recurrent scans; cuBLASLt decode, which also runs the norms / SwiGLU as their own kernels instead of inside
// the GEMVs; decode steps launched one kernel at a time instead of one captured graph). Every step's logits
// within 2e-2 of the CPU.
TEST(CudaEngine, EveryEnginePathMatchesCpu) {
  namespace fs = std::filesystem;
  const char* src = std::getenv("HYLO_SOURCE_DIR");
  const fs::path dir = fs::path(src != nullptr ? src : HYLO_SOURCE_DIR) / "tests" / "golden" / "mixed";
  const ModelConfig cfg = load_model_config(dir);
  const auto ckpt = SafetensorsCheckpoint::open(dir);
  ModelWeights w = load_model_weights(cfg, bind_weights(cfg, ckpt));
  round_weights_to_bf16(w);
  const std::int64_t V = cfg.vocab_size;
  const auto p1 = prompt_of(201, V, 21), p2 = prompt_of(77, V, 22);
  struct Variant {
    const char* name;
    CudaEngineOptions o;
  };
  std::vector<Variant> variants(6);
  variants[0].name = "defaults";
  variants[1].name = "own attention kernel";
  variants[1].o.cudnn_attention = false;
  variants[2].name = "no prefill K/V cache, blocks of 100";
  variants[2].o.prefill_kv_cache = false;
  variants[2].o.attention_block = 100;
  variants[3].name = "recurrent scans";
  variants[3].o.chunked_scans = false;
  variants[4].name = "cuBLASLt decode";
  variants[4].o.decode_gemv = false;
  variants[5].name = "decode steps launched (no CUDA graph)";
  variants[5].o.decode_graph = false;
  for (auto& v : variants) {
    SCOPED_TRACE(v.name);
    v.o.prefill_chunk = 64;
    CpuEngine cpu(cfg, w);
    SequenceState st = cpu.new_sequence();
    CudaEngine gpu(cfg, w, 201 + 3 + 77 + 2, v.o);
    std::vector<float> ref, got(static_cast<std::size_t>(V));
    double worst = 0;
    auto step = [&](std::span<const std::int32_t> toks) {
      if (toks.size() > 1) {
        cpu.prefill(st, toks, 0, ref, false);
      } else {
        ref.resize(static_cast<std::size_t>(V));
        cpu.forward(st, toks, ref.data(), false);
      }
      gpu.forward(toks, got.data(), false);
      EXPECT_EQ(gpu_test::count_nonfinite(got), 0);
      worst = std::max(worst, rel_l2(got.data(), ref.data(), V));
      return static_cast<std::int32_t>(Sampler(SamplingParams{}).sample(ref.data(), V));
    };
    std::int32_t t = step(p1);
    for (int i = 0; i < 3; ++i) t = step(std::span<const std::int32_t>(&t, 1));
    t = step(p2);
    for (int i = 0; i < 2; ++i) t = step(std::span<const std::int32_t>(&t, 1));
    std::printf("  %-38s %s: worst step logits rel L2 %.2e\n", v.name, gpu.describe_attention().c_str(), worst);
    EXPECT_LE(worst, 2e-2);
    EXPECT_EQ(gpu.length(), 201 + 3 + 77 + 2);
  }
}

// The captured decode graph replays exactly the kernels a launched step runs (positions read from the device):
// logits bitwise equal, step after step, across a prefill continuation. forward_top's GPU top-k equals the host's
// top-k (ties by the lower id) of the same engine's logits, values bitwise; k = 1 is the greedy token.
TEST(CudaEngine, DecodeGraphAndGpuTopKMatchLaunchedSteps) {
  namespace fs = std::filesystem;
  const char* src = std::getenv("HYLO_SOURCE_DIR");
  const fs::path dir = fs::path(src != nullptr ? src : HYLO_SOURCE_DIR) / "tests" / "golden" / "mixed";
  const ModelConfig cfg = load_model_config(dir);
  const auto ckpt = SafetensorsCheckpoint::open(dir);
  const ModelWeights w = load_model_weights(cfg, bind_weights(cfg, ckpt));
  const std::int64_t V = cfg.vocab_size;
  CudaEngineOptions launched;
  launched.decode_graph = false;
  CudaEngine graph(cfg, w, 200), plain(cfg, w, 200, launched), top(cfg, w, 200);
  const auto p1 = prompt_of(70, V, 31), p2 = prompt_of(9, V, 32);
  std::vector<float> lg(static_cast<std::size_t>(V)), lp(lg.size());
  graph.forward(p1, lg.data(), false);
  plain.forward(p1, lp.data(), false);
  top.forward(p1, nullptr, false);
  auto host_top = [&](int k) {
    std::vector<std::int32_t> ids(static_cast<std::size_t>(V));
    for (std::int64_t i = 0; i < V; ++i) ids[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i);
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](std::int32_t a, std::int32_t b) {
      const float x = lg[static_cast<std::size_t>(a)], y = lg[static_cast<std::size_t>(b)];
      return x > y || (x == y && a < b);
    });
    ids.resize(static_cast<std::size_t>(k));
    return ids;
  };
  std::int32_t t = host_top(1)[0];
  int steps = 0;
  for (int i = 0; i < 8; ++i) {
    if (i == 4) {  // a prefill in between: the graph must keep working at the new positions
      graph.forward(p2, lg.data(), false);
      plain.forward(p2, lp.data(), false);
      top.forward(p2, nullptr, false);
      t = host_top(1)[0];
    }
    graph.forward(std::span<const std::int32_t>(&t, 1), lg.data(), false);
    plain.forward(std::span<const std::int32_t>(&t, 1), lp.data(), false);
    ASSERT_EQ(std::memcmp(lg.data(), lp.data(), sizeof(float) * lg.size()), 0) << "step " << i;
    const int k = i % 2 == 0 ? 1 : 40;
    const auto best = top.forward_top(std::span<const std::int32_t>(&t, 1), k);
    const auto want = host_top(k);
    ASSERT_EQ(best.size(), want.size());
    for (std::size_t j = 0; j < want.size(); ++j) {
      EXPECT_EQ(best[j].second, want[j]) << "step " << i << " rank " << j;
      EXPECT_EQ(best[j].first, lg[static_cast<std::size_t>(want[j])]) << "step " << i << " rank " << j;
    }
    t = want[0];
    ++steps;
  }
  EXPECT_EQ(steps, 8);
  EXPECT_EQ(graph.length(), 70 + 9 + 8);
  EXPECT_EQ(top.length(), graph.length());
}

TEST(CudaEngine, RefusesWhatCannotFitWithTheNumbers) {
  const ModelConfig c = load_preset("HyLo-Llama-6MLA22M2");
  const ModelConfig tiny = load_preset("hylo-tiny");
  try {
    CudaEngine e(tiny, random_model_weights(tiny, 1), std::int64_t{1} << 36);
    FAIL() << "a 2^36-token capacity was accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("latent cache"), std::string::npos) << m;
    EXPECT_NE(m.find("free of"), std::string::npos) << m;
    EXPECT_NE(m.find("--cp"), std::string::npos) << m;
    std::printf("  refusal: %s\n", m.c_str());
  }
  // The plan grows with the capacity only through the latent cache.
  const auto a = plan_cuda_memory(c, {}, 1000), b = plan_cuda_memory(c, {}, 2000);
  EXPECT_EQ(b.latent_cache, 2 * a.latent_cache);
  EXPECT_EQ(b.weights, a.weights);
  EXPECT_EQ(a.latent_cache, 1000ull * c.count(MixerKind::kMLA) * c.mla.latent_dim() * 2);
}

}  // namespace
}  // namespace hylo

HYLO_GPU_TEST_MAIN()
