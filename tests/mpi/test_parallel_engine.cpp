// The distributed CPU engine against the single-process engine (issue: distributed runtime; PARALLEL.md 4).
//
// Run under mpirun with WORLD ranks; every (TP, CP) layout with TP x CP = WORLD that hylo-tiny allows is
// checked, zigzag and contiguous:
//   - prefill of a 2,003-token prompt (not a multiple of 2 CP): final hidden states of every position, logits at
//     sampled positions (every 16th, every chunk's first and last token) and the last token's logits through
//     the engine's own vocab-parallel head, each within 1e-4 relative L2 of the single-process run;
//   - 32 greedy tokens through sample_sharded and CP decode: identical tokens, every step's logits within 1e-4;
//   - prompts shorter than 2 CP chunks (1, 2, 2 CP - 1, 2 CP + 1 tokens): last logits and 4 greedy tokens;
//   - communication accounting: the bytes of the MLA latent ring, the state summaries and the conv halos equal
//     the formulas of PARALLEL.md (float32 here: 4 bytes per value);
//   - usage errors that must not hang (multi-token forward with CP, a second CP prefill).
// The reference runs on world rank 0 and is broadcast (one copy of the work, not WORLD).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/parallel_state.h"
#include "comm/stats.h"
#include "common/error.h"
#include "model/model_weights.h"
#include "model/presets.h"
#include "mpi_gtest_main.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"

using namespace hylo;
using comm::MpiCommunicator;
using comm::SeqSplit;

namespace {

constexpr std::uint64_t kSeed = 20261127;
constexpr std::int64_t kPromptLen = 2003;
constexpr int kSteps = 32;
constexpr double kTol = 1e-4;

const ModelConfig& tiny() {
  static const ModelConfig c = load_preset("hylo-tiny");
  return c;
}

const ModelWeights& full_weights() {
  static const ModelWeights w = random_model_weights(tiny(), kSeed);
  return w;
}

std::vector<std::int32_t> make_prompt(std::int64_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int32_t> id(0, static_cast<std::int32_t>(tiny().vocab_size - 1));
  std::vector<std::int32_t> p(static_cast<std::size_t>(n));
  for (auto& t : p) t = id(rng);
  return p;
}

struct Reference {
  std::vector<float> hidden;       // [L, H] final-normed (empty for short prompts)
  std::vector<float> last_logits;  // [V]
  std::vector<std::int32_t> tokens;
  std::vector<float> step_logits;  // [steps - 1, V]: logits after feeding tokens[0 .. steps-2]
};

// Single process, computed on world rank 0 and broadcast to every rank.
Reference reference(MpiCommunicator& world, const std::vector<std::int32_t>& prompt, int steps, bool want_hidden) {
  const std::int64_t V = tiny().vocab_size, H = tiny().hidden_size, L = static_cast<std::int64_t>(prompt.size());
  Reference r;
  r.hidden.resize(want_hidden ? static_cast<std::size_t>(L * H) : 0);
  r.last_logits.resize(static_cast<std::size_t>(V));
  r.tokens.resize(static_cast<std::size_t>(steps));
  r.step_logits.resize(static_cast<std::size_t>((steps - 1) * V));
  if (world.rank() == 0) {
    CpuEngine e(tiny(), full_weights());
    SequenceState st = e.new_sequence();
    std::vector<float> logits, hidden;
    e.prefill(st, prompt, 0, logits, false, want_hidden ? &hidden : nullptr);
    if (want_hidden) r.hidden = hidden;
    r.last_logits = logits;
    Sampler s(SamplingParams{});
    for (int i = 0; i < steps; ++i) {
      r.tokens[static_cast<std::size_t>(i)] = s.sample(logits.data(), V);
      if (i + 1 == steps) break;
      e.forward(st, std::span<const std::int32_t>(&r.tokens[static_cast<std::size_t>(i)], 1), logits.data(), false);
      std::copy(logits.begin(), logits.end(), r.step_logits.begin() + i * V);
    }
  }
  auto bcast = [&](auto& v) { world.broadcast(v.data(), static_cast<std::int64_t>(v.size() * sizeof(v[0])), 0); };
  bcast(r.hidden);
  bcast(r.last_logits);
  bcast(r.tokens);
  bcast(r.step_logits);
  return r;
}

double rel_l2(const float* got, const float* ref, std::int64_t n) {
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(got[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// The full logits row from the TP ranks' slices (ranks hold consecutive vocab ranges).
std::vector<float> gather_vocab(comm::Communicator& tp, const std::vector<float>& local) {
  const comm::GatheredBytes g = tp.allgatherv(local.data(), static_cast<std::int64_t>(local.size() * sizeof(float)));
  std::vector<float> full(g.data.size() / sizeof(float));
  std::memcpy(full.data(), g.data.data(), g.data.size());
  return full;
}

// Test-side logits of one final-normed hidden row with the full (tied) head: independent of the engine's head.
void head_logits(const float* h, float* out) {
  const std::int64_t V = tiny().vocab_size, H = tiny().hidden_size;
  const float* w = full_weights().head().ptr();
  for (std::int64_t v = 0; v < V; ++v) {
    double acc = 0;
    for (std::int64_t i = 0; i < H; ++i) acc += static_cast<double>(w[v * H + i]) * h[i];
    out[v] = static_cast<float>(acc);
  }
}

struct Layouts {
  int tp, cp;
};

// (TP, CP) with TP x CP = world, restricted to what hylo-tiny divides (TP in {1, 2}).
std::vector<Layouts> layouts_for(int world) {
  std::vector<Layouts> out;
  for (int tp : {1, 2}) {
    if (world % tp == 0) out.push_back({tp, world / tp});
  }
  return out;
}

class ParallelEngine : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    stats_ = std::make_shared<comm::CommStats>();
    world_ = std::make_unique<MpiCommunicator>(MpiCommunicator::world("world", stats_));
  }
  static void TearDownTestSuite() { world_.reset(); }
  static std::shared_ptr<comm::CommStats> stats_;
  static std::unique_ptr<MpiCommunicator> world_;
};
std::shared_ptr<comm::CommStats> ParallelEngine::stats_;
std::unique_ptr<MpiCommunicator> ParallelEngine::world_;

TEST_F(ParallelEngine, PrefillDecodeAndBytesMatchSingleProcess) {
  MpiCommunicator& world = *world_;
  const std::int64_t V = tiny().vocab_size, H = tiny().hidden_size, L = kPromptLen;
  const auto prompt = make_prompt(L, kSeed + 1);
  const Reference ref = reference(world, prompt, kSteps, true);
  const auto& c = tiny();
  const std::int64_t lat = c.mla.latent_dim();
  for (const Layouts lay : layouts_for(world.size())) {
    const comm::ParallelState ps(world.size(), world.rank(), comm::Layout{1, lay.cp, lay.tp});
    comm::ParallelComms pc = comm::make_parallel_comms(ps, world);
    for (SeqSplit split : {SeqSplit::kZigzag, SeqSplit::kContiguous}) {
      if (lay.cp == 1 && split == SeqSplit::kContiguous) continue;
      const std::string what = "TP " + std::to_string(lay.tp) + " x CP " + std::to_string(lay.cp) + " " +
                               std::string(comm::to_string(split));
      SCOPED_TRACE(what);
      CpuEngine e(c, full_weights(), {}, EngineParallel{&pc.tp, &pc.cp, split});
      ASSERT_EQ(e.vocab_local(), V / lay.tp);
      SequenceState st = e.new_sequence();
      std::vector<float> logits, hidden;
      stats_->reset();
      e.prefill(st, prompt, 0, logits, false, &hidden);

      // Hidden states of this rank's positions, and logits at sampled positions.
      const auto ranges = e.local_ranges(L);
      double num = 0, den = 0;
      std::vector<float> lg(static_cast<std::size_t>(V)), lr(lg.size());
      double worst_logits = 0;
      std::int64_t row = 0, sampled = 0;
      for (const auto& r : ranges) {
        for (std::int64_t t = r.begin; t < r.end; ++t, ++row) {
          const float* got = hidden.data() + row * H;
          const float* want = ref.hidden.data() + t * H;
          for (std::int64_t i = 0; i < H; ++i) {
            const double d = static_cast<double>(got[i]) - want[i];
            num += d * d;
            den += static_cast<double>(want[i]) * want[i];
          }
          if (ps.coords().tp == 0 && (t % 16 == 0 || t == r.begin || t == r.end - 1)) {
            head_logits(got, lg.data());
            head_logits(want, lr.data());
            worst_logits = std::max(worst_logits, rel_l2(lg.data(), lr.data(), V));
            ++sampled;
          }
        }
      }
      double sums[2] = {num, den};
      pc.cp.allreduce_sum(sums, 2);
      const double hidden_err = std::sqrt(sums[0] / sums[1]);
      EXPECT_LE(hidden_err, kTol) << "final hidden states of all " << L << " positions";
      EXPECT_LE(worst_logits, kTol) << "logits at " << sampled << " sampled positions";

      // The last token's logits through the engine's vocab-parallel head.
      const auto last = gather_vocab(pc.tp, logits);
      ASSERT_EQ(static_cast<std::int64_t>(last.size()), V);
      const double last_err = rel_l2(last.data(), ref.last_logits.data(), V);
      EXPECT_LE(last_err, kTol);

      // Bytes per layer (PARALLEL.md 2.1, 2.2), float32 payloads.
      if (lay.cp > 1) {
        const comm::SequencePartition part(split, L, lay.cp);
        const int slots = part.slots();
        const int next = comm::ring_next(ps.coords().cp, lay.cp);
        const auto& lc = c;  // head counts below are this TP rank's share
        for (std::int64_t i = 0; i < c.num_layers; ++i) {
          const std::string layer = "prefill / layer " + std::to_string(i) + " ";
          switch (c.layers[static_cast<std::size_t>(i)]) {
            case MixerKind::kMLA: {
              const auto sent = stats_->total(layer + "mla / cp ring", "cp", "isend").bytes_sent;
              EXPECT_EQ(sent, (L - part.local_size(next)) * lat * 4) << "layer " << i;
              double all = static_cast<double>(sent);
              pc.cp.allreduce_sum(&all, 1);
              // Summed over the ring: (CP - 1) L (r + dr) values, i.e. (CP-1)/CP L (r+dr) per rank on average.
              EXPECT_EQ(static_cast<std::int64_t>(all), (lay.cp - 1) * L * lat * 4) << "layer " << i;
              break;
            }
            case MixerKind::kMamba2: {
              const auto& m = lc.mamba2;
              const std::int64_t nh = m.num_heads / lay.tp, C = m.conv_channels() / lay.tp;
              EXPECT_EQ(stats_->total(layer + "mamba2 / state exchange", "cp").bytes_sent,
                        slots * (nh + nh * m.head_dim * m.d_state) * 4);
              EXPECT_EQ(stats_->total(layer + "mamba2 / conv halo", "cp").bytes_sent, slots * (1 + (m.d_conv - 1) * C) * 4);
              break;
            }
            case MixerKind::kGDN: {
              const auto& g = lc.gdn;
              const std::int64_t hv = g.num_v_heads / lay.tp, dk = g.head_k_dim, dv = g.head_v_dim;
              const std::int64_t ch = (2 * g.key_dim() + g.value_dim()) / lay.tp;
              EXPECT_EQ(stats_->total(layer + "gdn / state exchange", "cp").bytes_sent, slots * hv * dk * (dk + dv) * 4);
              EXPECT_EQ(stats_->total(layer + "gdn / conv halo", "cp").bytes_sent, slots * (1 + (g.conv_size - 1) * ch) * 4);
              break;
            }
          }
        }
      }
      if (lay.tp > 1) {
        // One all-reduce of [L_local, H] per mixer and per MLP.
        const auto local_rows = e.local_ranges(L);
        std::int64_t rows = 0;
        for (const auto& r : local_rows) rows += r.size();
        EXPECT_EQ(stats_->total("prefill / layer 0 mlp", "tp", "allreduce_sum").bytes_sent, rows * H * 4);
      }

      // Greedy continuation: sharded sampling, CP decode.
      Sampler s(SamplingParams{});
      double worst_step = 0;
      for (int i = 0; i < kSteps; ++i) {
        const std::int32_t next =
            sample_sharded(s, logits.data(), e.vocab_begin(), e.vocab_local(), V, lay.tp > 1 ? &pc.tp : nullptr);
        ASSERT_EQ(next, ref.tokens[static_cast<std::size_t>(i)]) << "greedy token " << i;
        if (i + 1 == kSteps) break;
        e.forward(st, std::span<const std::int32_t>(&next, 1), logits.data(), false);
        const auto full = gather_vocab(pc.tp, logits);
        worst_step = std::max(worst_step, rel_l2(full.data(), ref.step_logits.data() + i * V, V));
      }
      EXPECT_LE(worst_step, kTol) << "decode logits";
      if (lay.cp > 1) {
        // Latent shards: this rank's prompt tokens plus its round-robin share of the decoded ones.
        std::int64_t mine = 0;
        for (const auto& r : e.local_ranges(L)) mine += r.size();
        for (std::int64_t p = L; p < L + kSteps - 1; ++p) mine += comm::decode_owner(p, lay.cp) == ps.coords().cp;
        EXPECT_EQ(static_cast<std::int64_t>(st.layers[0].latents.size()), mine * lat);
      }
      if (world.rank() == 0) {
        std::printf("  %-26s hidden %.2e  last logits %.2e  sampled logits %.2e  decode %.2e\n", what.c_str(),
                    hidden_err, last_err, worst_logits, worst_step);
      }
    }
  }
}

TEST_F(ParallelEngine, PromptsShorterThanTheChunks) {
  MpiCommunicator& world = *world_;
  const std::int64_t V = tiny().vocab_size;
  for (const Layouts lay : layouts_for(world.size())) {
    const comm::ParallelState ps(world.size(), world.rank(), comm::Layout{1, lay.cp, lay.tp});
    comm::ParallelComms pc = comm::make_parallel_comms(ps, world);
    std::vector<std::int64_t> lengths = {1, 2, 2 * lay.cp - 1, 2 * lay.cp + 1};
    std::sort(lengths.begin(), lengths.end());
    lengths.erase(std::unique(lengths.begin(), lengths.end()), lengths.end());
    for (const std::int64_t L : lengths) {
      const auto prompt = make_prompt(L, kSeed + 100 + static_cast<std::uint64_t>(L));
      const Reference ref = reference(world, prompt, 4, false);
      for (SeqSplit split : {SeqSplit::kZigzag, SeqSplit::kContiguous}) {
        SCOPED_TRACE("TP " + std::to_string(lay.tp) + " x CP " + std::to_string(lay.cp) + " " +
                     std::string(comm::to_string(split)) + ", " + std::to_string(L) + " tokens");
        CpuEngine e(tiny(), full_weights(), {}, EngineParallel{&pc.tp, &pc.cp, split});
        SequenceState st = e.new_sequence();
        std::vector<float> logits;
        e.prefill(st, prompt, 0, logits, false);
        const auto full = gather_vocab(pc.tp, logits);
        EXPECT_LE(rel_l2(full.data(), ref.last_logits.data(), V), kTol);
        Sampler s(SamplingParams{});
        for (int i = 0; i < 4; ++i) {
          const std::int32_t next =
              sample_sharded(s, logits.data(), e.vocab_begin(), e.vocab_local(), V, lay.tp > 1 ? &pc.tp : nullptr);
          ASSERT_EQ(next, ref.tokens[static_cast<std::size_t>(i)]) << "greedy token " << i;
          if (i < 3) e.forward(st, std::span<const std::int32_t>(&next, 1), logits.data(), false);
        }
      }
    }
  }
}

// Sampling over a sharded vocabulary draws exactly what one process draws from the full row.
TEST_F(ParallelEngine, ShardedSamplingEqualsFullSampling) {
  MpiCommunicator& world = *world_;
  const int n = world.size();
  const std::int64_t V = 1000 * n;  // slices of 1000 ids
  std::vector<float> full(static_cast<std::size_t>(V));
  std::mt19937_64 rng(5);
  std::normal_distribution<float> d(0.0f, 3.0f);
  for (auto& v : full) v = std::round(d(rng) * 4.0f) / 4.0f;  // many exact ties across slices
  const std::vector<SamplingParams> cases = {
      {0.0f, 0, 1.0f, 1}, {0.8f, 0, 1.0f, 2}, {1.0f, 40, 1.0f, 3}, {0.7f, 5, 0.9f, 4}, {1.3f, 0, 0.5f, 5}};
  for (const auto& sp : cases) {
    Sampler whole(sp), sharded(sp);
    const float* mine = full.data() + static_cast<std::int64_t>(world.rank()) * 1000;
    for (int draw = 0; draw < 50; ++draw) {
      const auto a = whole.sample(full.data(), V);
      const auto b = sample_sharded(sharded, mine, world.rank() * 1000, 1000, V, &world);
      ASSERT_EQ(a, b) << "temperature " << sp.temperature << " top_k " << sp.top_k << " top_p " << sp.top_p
                      << " draw " << draw;
    }
  }
}

TEST_F(ParallelEngine, UsageErrorsInsteadOfHangs) {
  MpiCommunicator& world = *world_;
  if (world.size() == 1) GTEST_SKIP() << "needs CP > 1";
  const comm::ParallelState ps(world.size(), world.rank(), comm::Layout{1, world.size(), 1});
  comm::ParallelComms pc = comm::make_parallel_comms(ps, world);
  CpuEngine e(tiny(), full_weights(), {}, EngineParallel{nullptr, &pc.cp, SeqSplit::kZigzag});
  SequenceState st = e.new_sequence();
  const auto prompt = make_prompt(17, 9);
  std::vector<float> logits(static_cast<std::size_t>(tiny().vocab_size));
  // Local checks, thrown on every rank before any collective.
  EXPECT_THROW(e.forward(st, prompt, logits.data(), false), Error);
  e.prefill(st, prompt, 0, logits, false);
  EXPECT_THROW(e.prefill(st, prompt, 0, logits, false), Error);
  EXPECT_THROW(e.forward(st, std::span<const std::int32_t>(prompt.data(), 2), logits.data(), false), Error);
}

}  // namespace

int main(int argc, char** argv) { return hylo::testing_mpi::run_all(argc, argv, "parallel_engine"); }
