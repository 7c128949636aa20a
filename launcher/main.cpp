// hylo-launch: turns a parallel layout into an mpirun (or srun) command for the hylo binary, checks the layout,
// the hosts and the model's divisibility before any rank starts, then runs the command and returns its status.
//
//     hylo-launch [options] -- <hylo subcommand and args>
//     hylo-launch --tp 2 --cp 2 -- generate --model ckpt --prompt-file book.txt
//
// Errors are one line "hylo-launch: ..." and exit 2 (usage) or 1; otherwise the exit status is the launched
// command's (128 + N when signal N ended it).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "launcher/launch.h"
#include "launcher/process.h"

namespace fs = std::filesystem;
using namespace hylo::launch;

namespace {

bool verbose = false;

void note(const std::string& text) {
  if (verbose) std::fprintf(stderr, "hylo-launch: %s\n", text.c_str());
}

// `name` looked up on PATH, as an absolute path; nullopt when not found.
std::optional<fs::path> find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return std::nullopt;
  std::string_view rest = path;
  while (true) {
    const auto colon = rest.find(':');
    const fs::path dir(rest.substr(0, colon));
    const fs::path candidate = (dir.empty() ? fs::path(".") : dir) / name;
    if (access(candidate.c_str(), X_OK) == 0) return fs::absolute(candidate).lexically_normal();
    if (colon == std::string_view::npos) return std::nullopt;
    rest.remove_prefix(colon + 1);
  }
}

// The hylo binary the ranks run, as an absolute path (ranks on other nodes do not share our PATH):
// --hylo if given; else the hylo installed next to hylo-launch; else the build tree's src/hylo (hylo-launch is
// built in launcher/); else hylo on PATH.
fs::path find_hylo(const std::string& given) {
  if (!given.empty()) {
    if (given.find('/') != std::string::npos) return fs::absolute(given).lexically_normal();
    if (auto p = find_on_path(given)) return *p;
    throw LaunchError("--hylo " + given + ": not found on PATH", true);
  }
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const fs::path& candidate : {self.parent_path() / "hylo", self.parent_path() / ".." / "src" / "hylo"}) {
      if (access(candidate.c_str(), X_OK) == 0) return candidate.lexically_normal();
    }
  }
  if (auto p = find_on_path("hylo")) return *p;
  throw LaunchError("cannot find the hylo binary (looked next to hylo-launch and on PATH); give --hylo PATH", true);
}

std::vector<std::string> inspect_command(const fs::path& hylo, const std::string& model, int tp) {
  return {hylo.string(),   "--log-level", "error", "inspect",         model,
          "--config-only", "--json",      "--tp",  std::to_string(tp)};
}

// hylo inspect's tp_problems for `tp`; throws with hylo's own message when the model cannot be read.
std::vector<std::string> tp_problems(const fs::path& hylo, const std::string& model, int tp) {
  const Captured c = run_capture(inspect_command(hylo, model, tp));
  if (c.status != 0) {
    std::string why = c.err.substr(0, c.err.find('\n'));
    if (why.rfind("hylo: ", 0) == 0) why.erase(0, 6);
    throw LaunchError("cannot check model " + model + " (hylo inspect exited with " + std::to_string(c.status) +
                          (why.empty() ? "" : ": " + why) + ")",
                      false);
  }
  try {
    return nlohmann::json::parse(c.out).at("tp_problems").get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    throw LaunchError("cannot read hylo inspect --json output for " + model + ": " + e.what(), false);
  }
}

// Refuses a TP degree the model's heads / sizes do not divide, suggesting the largest TP that works with the
// same world size (TP 1 always does).
void check_model(const fs::path& hylo, const std::string& model, const hylo::comm::Layout& layout) {
  const auto problems = tp_problems(hylo, model, layout.tp);
  if (problems.empty()) {
    note("model " + model + " splits with TP " + std::to_string(layout.tp));
    return;
  }
  int suggestion = 1;
  for (int tp : smaller_tp_candidates(layout)) {
    if (tp == 1 || tp_problems(hylo, model, tp).empty()) {
      suggestion = tp;
      break;
    }
  }
  throw LaunchError(tp_refusal(model, layout, problems, suggestion), false);
}

int run(int argc, char** argv) {
  // Everything after the first "--" belongs to hylo. Splitting here, before CLI11 sees anything, keeps hylo's
  // own flags (--model, --tp of inspect, ...) from being taken as the launcher's.
  int split = 1;
  while (split < argc && std::string_view(argv[split]) != "--") ++split;
  std::vector<std::string> hylo_args(argv + std::min(split + 1, argc), argv + argc);

  Options o;
  std::optional<std::int64_t> np;
  std::string hosts, hostfile, launcher, bind, hylo_path, model;
  std::vector<std::string> env;
  bool dry_run = false;

  CLI::App app{
      "hylo-launch: run hylo over a parallel layout with mpirun or srun\n"
      "usage: hylo-launch [options] -- <hylo subcommand and args>"};
  app.add_option("--tp", o.layout.tp, "Tensor-parallel degree (innermost: a TP group is consecutive ranks)")
      ->capture_default_str();
  app.add_option("--cp", o.layout.cp, "Context-parallel degree")->capture_default_str();
  app.add_option("--dp", o.layout.dp, "Data-parallel degree")->capture_default_str();
  app.add_option("--np", np, "World size (default dp x cp x tp; must equal it; without --dp, DP takes the rest)");
  auto* hosts_opt = app.add_option("--hosts", hosts, "Hosts and slots: h1:4,h2:4");
  app.add_option("--hostfile", hostfile, "OpenMPI hostfile (lines \"host slots=N\")")->excludes(hosts_opt);
  app.add_option("--gpus-per-node", o.gpus_per_node, "GPUs per node: check TP groups stay on one node (0: no check)")
      ->capture_default_str();
  app.add_option("--launcher", launcher, "mpirun or srun (default mpirun; srun inside Slurm)")
      ->check(CLI::IsMember({"mpirun", "srun"}));
  app.add_option("--env", env, "NAME[=VALUE] for every rank (repeatable)")->allow_extra_args(false);
  app.add_option("--bind", bind, "Bind ranks to a core, socket or none (default: the launcher's)")
      ->check(CLI::IsMember({"core", "socket", "none"}));
  app.add_option("--mpirun", o.mpirun, "mpirun program")->capture_default_str();
  app.add_option("--srun", o.srun, "srun program")->capture_default_str();
  app.add_option("--hylo", hylo_path, "hylo binary (default: next to hylo-launch, else on PATH)");
  app.add_option("--model", model, "Checkpoint for the divisibility check (default: hylo's --model)");
  app.add_flag("--allow-run-as-root", o.allow_run_as_root, "Pass --allow-run-as-root to mpirun (automatic as root)");
  app.add_flag("--oversubscribe", o.oversubscribe, "Allow more ranks than slots");
  app.add_flag("--dry-run", dry_run, "Check, print the command (shell-quoted, one line) and exit");
  app.add_flag("-v,--verbose", verbose, "Say what is checked and run");
  app.footer(
      "The ranks learn the layout from --tp/--cp/--dp appended to `hylo generate` and `hylo bench`\n"
      "and from HYLO_TP, HYLO_CP, HYLO_DP in their environment.");
  const bool wants_help =
      std::any_of(argv + 1, argv + split, [](std::string_view a) { return a == "-h" || a == "--help"; });
  if (hylo_args.empty() && !wants_help) {
    throw LaunchError("no hylo command: put it after --, e.g. hylo-launch --tp 2 -- generate --model DIR ...", true);
  }
  try {
    app.parse(split, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    throw LaunchError(e.what(), true);
  }
  o.np = np;
  if (app.count("--dp") == 0) derive_dp_from_np(o);
  if (!launcher.empty()) {
    o.launcher = launcher == "srun" ? Launcher::kSrun : Launcher::kMpirun;
  } else if (const char* job = std::getenv("SLURM_JOB_ID"); job != nullptr && *job != '\0') {
    o.launcher = Launcher::kSrun;  // inside a Slurm allocation srun knows the nodes; mpirun may not
  }
  if (!bind.empty()) o.bind = bind == "core" ? Bind::kCore : bind == "socket" ? Bind::kSocket : Bind::kNone;
  // OpenMPI refuses to start as root without it; everything on the GPU machines runs as root.
  if (geteuid() == 0) o.allow_run_as_root = true;
  for (const auto& e : env) {
    o.env.push_back(parse_env(e));
    if (!o.env.back().value && std::getenv(o.env.back().name.c_str()) == nullptr) {
      throw LaunchError("--env " + e + ": not set here (give " + e + "=VALUE)", true);
    }
  }
  if (!hosts.empty()) o.hosts = parse_hosts(hosts);
  if (!hostfile.empty()) {
    std::ifstream in(hostfile);
    if (!in) throw LaunchError("--hostfile " + hostfile + ": cannot open", true);
    o.hosts = parse_hostfile(in, hostfile);
    o.hostfile = hostfile;
  }

  const std::int64_t world = check_layout(o);
  check_placement(o, world);
  note("world " + std::to_string(world) + " = dp " + std::to_string(o.layout.dp) + " x cp " +
       std::to_string(o.layout.cp) + " x tp " + std::to_string(o.layout.tp));

  const fs::path hylo = find_hylo(hylo_path);
  const HyloArgs scanned = scan_hylo_args(hylo_args);
  if (model.empty() && scanned.model) model = *scanned.model;
  if (!model.empty()) check_model(hylo, model, o.layout);

  const auto cmd = build_command(o, hylo.string(), hylo_args);
  if (dry_run) {
    std::printf("%s\n", shell_join(cmd).c_str());
    return 0;
  }
  if (access(hylo.c_str(), X_OK) != 0) throw LaunchError("hylo binary " + hylo.string() + " is not executable", false);
  note("running: " + shell_join(cmd));
  std::fflush(stdout);  // nothing of ours may show up after the ranks' output
  return run_forwarding_signals(cmd);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const LaunchError& e) {
    std::fprintf(stderr, "hylo-launch: %s\n", e.what());
    return e.usage() ? 2 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hylo-launch: %s\n", e.what());
    return 1;
  }
}
