// `hylo generate`: run a prompt through the CPU reference engine and continue it.
#pragma once

#include <cstdint>
#include <string>

#include "runtime/sampler.h"

namespace hylo {

struct GenerateArgs {
  std::string model;
  std::string prompt;        // text (needs the tokenizer)
  std::string prompt_file;   // text file (needs the tokenizer)
  std::string token_ids;     // file of whitespace-separated token ids
  std::int64_t max_new_tokens = 32;
  std::int64_t chunk_size = 0;  // 0: 2048 on the CPU, 8192 on the GPU
  std::int64_t max_context = 0;  // 0: no limit beyond memory
  SamplingParams sampling;
  std::string dump_logits;   // safetensors file for the prompt's logits
  bool decompressed_decode = false;
  bool ignore_eos = false;
  bool chat = false;          // wrap the prompt as a user message in the family's chat format
  std::string system;         // system message for --chat
  bool no_special = false;    // special tokens in the prompt text are plain text
  std::string tokenizer;      // tokenizer directory (default: the model directory)
  int threads = 0;             // 0: all cores (distributed: the cores divided among the node's ranks)
  // Parallel layout (PARALLEL.md): 0 = not given. Under mpirun/srun, or with any of these flags, every rank
  // runs this same command; world = dp x cp x tp, cp defaults to world / (tp dp).
  int tp = 0;
  int cp = 0;
  int dp = 0;
  std::string cp_split = "zigzag";  // or "contiguous"
  std::string device = "cpu";       // "cpu" (the reference engine) or "cuda" (one GPU; builds with CUDA only)
  // GPU ranks with TP / CP (cli/gpu_transport.h): "nccl" or "mpi" ("" = nccl where built with NCCL, else mpi), and
  // the deadline of the GPU transports' watchdog in seconds. CPU runs (MPI on host buffers) get the deadline only when
  // --comm-timeout is given (comm_timeout_given): a long CPU prefill may keep a peer waiting for minutes.
  std::string transport;
  double comm_timeout = 600.0;
  bool comm_timeout_given = false;
  std::int64_t capacity = 0;        // cuda: tokens the sequence may hold (0: prompt + max new tokens)
};

int run_generate(const GenerateArgs& args);

// True when started as one rank of an MPI job (mpirun / srun set these), or when a layout flag is given.
bool generate_wants_mpi(const GenerateArgs& args);

// The distributed form: starts MPI, runs generate as one rank (rank 0 reads the input and prints results,
// logs are rank-tagged), and turns an error on any rank into a message naming the rank and a job-wide abort
// with a non-zero status.
int run_generate_mpi(const GenerateArgs& args, const std::string& log_level, int* argc, char*** argv);

// Reads whitespace-separated non-negative integers (each < vocab). Error(kUsage) naming the file, the
// position and the offending text otherwise.
std::vector<std::int32_t> read_token_ids(const std::string& path, std::int64_t vocab);

}  // namespace hylo
