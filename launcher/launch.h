// hylo-launch's pure logic: parse hosts and hostfiles, check a parallel layout against where its ranks will be
// placed, find the hylo subcommand and model in the user's hylo arguments, and turn all of it into one
// mpirun or srun command line. No processes are started here (see process.h), so all of it is unit-tested.
//
// The launcher knows layouts and hosts, nothing of the engine: the ranks learn their layout from the flags
// `--tp N --cp N --dp N` appended to `hylo generate` / `hylo bench` and from HYLO_TP / HYLO_CP / HYLO_DP in
// their environment (the contract is written down in README.md).
#pragma once

#include <cstdint>
#include <istream>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "comm/parallel_state.h"

namespace hylo::launch {

// Every refusal: one line of text; `usage` errors (bad flags) exit 2, the others 1.
class LaunchError : public std::runtime_error {
 public:
  LaunchError(const std::string& what, bool usage) : std::runtime_error(what), usage_(usage) {}
  bool usage() const { return usage_; }

 private:
  bool usage_;
};

enum class Launcher { kMpirun, kSrun };
enum class Bind { kDefault, kCore, kSocket, kNone };  // kDefault: leave binding to mpirun / srun

struct Host {
  std::string name;
  std::int64_t slots = 1;
  friend bool operator==(const Host&, const Host&) = default;
};

// An environment variable forwarded to every rank: NAME=VALUE, or NAME alone (its value here, at launch).
struct EnvVar {
  std::string name;
  std::optional<std::string> value;
  friend bool operator==(const EnvVar&, const EnvVar&) = default;
};

// "h1:4,h2:4" (OpenMPI's --host syntax; a host without ":N" has 1 slot). A host named twice gets the sum of its
// slots, as mpirun does. Throws a usage LaunchError for empty names or slot counts < 1.
std::vector<Host> parse_hosts(std::string_view text);
// OpenMPI hostfile: "host slots=N [max_slots=M]" per line, '#' comments, blank lines. `source` names the file
// in errors. A line without slots= is refused: mpirun would then count the node's cores, which we cannot know
// here, and the placement check needs the number.
std::vector<Host> parse_hostfile(std::istream& in, const std::string& source);
// "NAME" or "NAME=VALUE"; NAME must be a shell identifier.
EnvVar parse_env(std::string_view text);

// The hylo command the user wrote after `--`.
struct HyloArgs {
  std::string subcommand;            // "generate", "inspect", ...; empty when none was found
  std::optional<std::string> model;  // the value of --model DIR / --model=DIR, if any
  bool has_layout_flag = false;      // --tp / --cp / --dp already present (the launcher owns them)
};
HyloArgs scan_hylo_args(const std::vector<std::string>& args);
// Only these subcommands run the distributed engine and accept the layout flags.
bool takes_layout_flags(std::string_view subcommand);

struct Options {
  comm::Layout layout;             // degrees as given (validated by `check_layout`)
  std::optional<std::int64_t> np;  // --np, checked against dp * cp * tp
  std::vector<Host> hosts;         // from --hosts or --hostfile (empty: the launcher's default)
  std::string hostfile;            // the --hostfile path, passed through to mpirun as is
  int gpus_per_node = 0;           // 0: no GPU placement checks
  Launcher launcher = Launcher::kMpirun;
  std::vector<EnvVar> env;  // --env, in order
  Bind bind = Bind::kDefault;
  std::string mpirun = "mpirun";
  std::string srun = "srun";
  bool allow_run_as_root = false;
  bool oversubscribe = false;
};

// `--np N` without `--dp`: DP takes what TP x CP leaves (N / (cp * tp) data-parallel replicas), so
// `hylo-launch --np 2 -- presets` runs two ranks. Left alone when it does not divide: check_layout then names
// the numbers.
void derive_dp_from_np(Options& options);
// The world size after checking every degree >= 1 and --np (if given) == dp * cp * tp.
// Message on mismatch: "world 6 != dp 1 x cp 4 x tp 2 (= 8)" (from comm::ParallelState).
std::int64_t check_layout(const Options& options);
// Checks where the ranks land: enough host slots (unless --oversubscribe), no node given more ranks than it
// has GPUs, TP <= gpus-per-node, and no TP group split across two nodes. Ranks are placed by slot: node i
// holds the next min(slots_i, ranks left) ranks, so a node holds a run of consecutive ranks; the nodes are the
// hosts when known, else nodes of gpus-per-node ranks each (nothing to check when neither is known).
void check_placement(const Options& options, std::int64_t world);

// The full command: launcher, its flags, the forwarded environment, then `hylo_binary hylo_args...` with the
// layout flags appended for generate / bench. Throws LaunchError for conflicts (the user setting HYLO_TP
// through --env or --tp inside the hylo arguments, srun with unequal host slots, ...).
std::vector<std::string> build_command(const Options& options, const std::string& hylo_binary,
                                       const std::vector<std::string>& hylo_args);

// POSIX shell quoting: words made only of safe characters stay bare, others go in single quotes.
std::string shell_quote(std::string_view word);
std::string shell_join(const std::vector<std::string>& argv);

// The one-line refusal for a model that cannot be split `tp` ways, with a layout suggestion that keeps the
// world size: `problems` are hylo inspect's tp_problems, `suggested_tp` the largest TP that has none.
std::string tp_refusal(const std::string& model, const comm::Layout& layout, const std::vector<std::string>& problems,
                       int suggested_tp);
// Candidate TP degrees for that suggestion: the divisors of tp * cp below tp, largest first (1 always last).
std::vector<int> smaller_tp_candidates(const comm::Layout& layout);

}  // namespace hylo::launch
