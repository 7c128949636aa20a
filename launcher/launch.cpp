#include "launcher/launch.h"

#include <algorithm>
#include <charconv>
#include <limits>

namespace hylo::launch {

namespace {

[[noreturn]] void usage_error(const std::string& what) { throw LaunchError(what, true); }
[[noreturn]] void launch_error(const std::string& what) { throw LaunchError(what, false); }

std::string_view trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

// A slot count in [1, INT_MAX] (MPI numbers ranks with int, and sums of such counts cannot overflow int64);
// `what` says where it came from for the error message.
std::int64_t parse_slots(std::string_view text, const std::string& what) {
  std::int64_t value = 0;
  const auto* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end || value < 1 || value > std::numeric_limits<int>::max()) {
    usage_error(what + ": slots must be a whole number in [1, 2^31), got \"" + std::string(text) + "\"");
  }
  return value;
}

// Adds `host` to the list, summing slots with an earlier entry of the same name (mpirun's rule).
void add_host(std::vector<Host>& hosts, Host host) {
  for (auto& h : hosts) {
    if (h.name == host.name) {
      h.slots += host.slots;
      return;
    }
  }
  hosts.push_back(std::move(host));
}

bool is_identifier(std::string_view name) {
  if (name.empty() || (name[0] >= '0' && name[0] <= '9')) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

std::string ranks_text(std::int64_t first, std::int64_t last) {
  return "ranks " + std::to_string(first) + "-" + std::to_string(last);
}

std::string layout_text(const comm::Layout& l) {
  return "dp " + std::to_string(l.dp) + " x cp " + std::to_string(l.cp) + " x tp " + std::to_string(l.tp);
}

// Ranks per node in by-slot order; trailing unused hosts are dropped.
struct Placement {
  std::vector<std::string> names;
  std::vector<std::int64_t> counts;
};

Placement place_by_slot(const std::vector<Host>& hosts, std::int64_t world) {
  Placement p;
  std::int64_t left = world;
  for (const auto& h : hosts) {
    if (left == 0) break;
    const std::int64_t n = std::min(h.slots, left);
    p.names.push_back(h.name);
    p.counts.push_back(n);
    left -= n;
  }
  return p;
}

// The variables every rank gets, in command-line order: the launcher's own, then --env's.
std::vector<EnvVar> forwarded_env(const Options& o) {
  std::vector<EnvVar> env;
  const bool user_sets_nvls =
      std::any_of(o.env.begin(), o.env.end(), [](const EnvVar& e) { return e.name == "NCCL_NVLS_ENABLE"; });
  // The GPU machines require NVLink multicast off (GPU-MACHINE.md); --env NCCL_NVLS_ENABLE=... overrides it.
  if (!user_sets_nvls) env.push_back({"NCCL_NVLS_ENABLE", "0"});
  env.push_back({"HYLO_TP", std::to_string(o.layout.tp)});
  env.push_back({"HYLO_CP", std::to_string(o.layout.cp)});
  env.push_back({"HYLO_DP", std::to_string(o.layout.dp)});
  for (const auto& e : o.env) {
    if (e.name == "HYLO_TP" || e.name == "HYLO_CP" || e.name == "HYLO_DP") {
      std::string flag = "--" + e.name.substr(5);  // HYLO_TP -> --tp
      std::transform(flag.begin(), flag.end(), flag.begin(),
                     [](char c) { return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c; });
      usage_error("--env " + e.name + ": the launcher sets " + e.name + " from " + flag);
    }
    env.push_back(e);
  }
  return env;
}

// mpirun --bind-to core|socket|none; srun --cpu-bind=cores|sockets|none.
const char* bind_name(Bind bind, bool srun) {
  switch (bind) {
    case Bind::kCore:
      return srun ? "cores" : "core";
    case Bind::kSocket:
      return srun ? "sockets" : "socket";
    case Bind::kNone:
    case Bind::kDefault:
      break;
  }
  return "none";
}

std::string env_text(const EnvVar& e) { return e.value ? e.name + "=" + *e.value : e.name; }

}  // namespace

std::vector<Host> parse_hosts(std::string_view text) {
  std::vector<Host> hosts;
  std::size_t start = 0;
  while (start <= text.size()) {
    const auto comma = std::min(text.find(',', start), text.size());
    const auto item = trim(text.substr(start, comma - start));
    const auto colon = item.rfind(':');
    Host h;
    h.name = std::string(trim(item.substr(0, colon)));
    if (colon != std::string_view::npos) h.slots = parse_slots(trim(item.substr(colon + 1)), "--hosts " + h.name);
    if (h.name.empty()) usage_error("--hosts \"" + std::string(text) + "\": empty host name (syntax: h1:4,h2:4)");
    add_host(hosts, std::move(h));
    start = comma + 1;
  }
  return hosts;
}

std::vector<Host> parse_hostfile(std::istream& in, const std::string& source) {
  std::vector<Host> hosts;
  std::string line;
  std::int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    const auto where = source + " line " + std::to_string(number);
    std::string_view rest = trim(std::string_view(line).substr(0, line.find('#')));
    if (rest.empty()) continue;
    Host h;
    auto word_end = rest.find_first_of(" \t");
    h.name = std::string(rest.substr(0, word_end));
    bool have_slots = false;
    while (word_end != std::string_view::npos) {
      rest = trim(rest.substr(word_end));
      word_end = rest.find_first_of(" \t");
      const auto word = rest.substr(0, word_end);
      // OpenMPI also spells it "cpus=" and "count="; max_slots only caps oversubscription.
      for (std::string_view key : {"slots=", "cpus=", "count="}) {
        if (word.substr(0, key.size()) == key) {
          h.slots = parse_slots(word.substr(key.size()), where);
          have_slots = true;
        }
      }
    }
    if (!have_slots) {
      usage_error(where + ": host " + h.name +
                  " has no slots=N (mpirun would count its cores, which the launcher cannot check)");
    }
    add_host(hosts, std::move(h));
  }
  if (hosts.empty()) usage_error(source + ": no hosts");
  return hosts;
}

EnvVar parse_env(std::string_view text) {
  EnvVar e;
  const auto eq = text.find('=');
  e.name = std::string(text.substr(0, eq));
  if (eq != std::string_view::npos) e.value = std::string(text.substr(eq + 1));
  if (!is_identifier(e.name)) usage_error("--env \"" + std::string(text) + "\": expected NAME or NAME=VALUE");
  return e;
}

HyloArgs scan_hylo_args(const std::vector<std::string>& args) {
  HyloArgs out;
  std::size_t i = 0;
  // hylo's global options come before the subcommand; --log-level is the only one taking a separate value.
  for (; i < args.size(); ++i) {
    if (args[i] == "--log-level") {
      ++i;
    } else if (args[i].empty() || args[i][0] != '-') {
      out.subcommand = args[i];
      break;
    }
  }
  for (++i; i < args.size(); ++i) {
    const std::string_view a = args[i];
    if (a == "--model" && i + 1 < args.size()) out.model = args[i + 1];
    if (a.substr(0, 8) == "--model=") out.model = std::string(a.substr(8));
    for (std::string_view flag : {"--tp", "--cp", "--dp"}) {
      if (a == flag || (a.substr(0, flag.size()) == flag && a.size() > flag.size() && a[flag.size()] == '=')) {
        out.has_layout_flag = true;
      }
    }
  }
  return out;
}

bool takes_layout_flags(std::string_view subcommand) { return subcommand == "generate" || subcommand == "bench"; }

void derive_dp_from_np(Options& o) {
  const std::int64_t cp_tp = std::int64_t{o.layout.cp} * o.layout.tp;
  if (!o.np || *o.np < 1 || cp_tp < 1 || *o.np % cp_tp != 0) return;
  const std::int64_t dp = *o.np / cp_tp;
  if (dp <= std::numeric_limits<int>::max()) o.layout.dp = static_cast<int>(dp);
}

std::int64_t check_layout(const Options& o) {
  const auto& l = o.layout;
  for (auto [name, value] : {std::pair{"--dp", l.dp}, {"--cp", l.cp}, {"--tp", l.tp}}) {
    if (value < 1) usage_error(std::string(name) + " must be >= 1, got " + std::to_string(value));
  }
  // MPI ranks are int; each degree fits an int, so the int64 product of two cannot overflow, and the third
  // factor is only applied when the first two already fit.
  constexpr std::int64_t kMaxWorld = std::numeric_limits<int>::max();
  const std::int64_t dp_cp = std::int64_t{l.dp} * l.cp;
  if (dp_cp > kMaxWorld || dp_cp * l.tp > kMaxWorld) usage_error(layout_text(l) + " is more ranks than MPI can number");
  const std::int64_t world = dp_cp * l.tp;
  if (o.np) {
    if (*o.np < 1) usage_error("--np must be >= 1, got " + std::to_string(*o.np));
    try {
      // The one place that knows the layout rules; its message names the numbers.
      comm::ParallelState check(static_cast<int>(std::min(*o.np, kMaxWorld)), 0, l);
    } catch (const std::invalid_argument& e) {
      usage_error(e.what());
    }
  }
  return world;
}

void check_placement(const Options& o, std::int64_t world) {
  const int tp = o.layout.tp;
  const int gpn = o.gpus_per_node;
  if (gpn < 0) usage_error("--gpus-per-node must be >= 0, got " + std::to_string(gpn));
  if (gpn > 0 && tp > gpn) {
    usage_error("TP " + std::to_string(tp) + " > --gpus-per-node " + std::to_string(gpn) +
                ": a TP group must sit on one node (NVLink); use CP across nodes instead");
  }
  if (o.hosts.empty()) {
    if (gpn == 0) return;  // nothing known about nodes
    // Nodes of gpn ranks each: node boundaries at multiples of gpn below the world size.
    if (world > gpn && gpn % tp != 0) {
      const std::int64_t first = gpn - gpn % tp;
      usage_error("TP groups would straddle nodes: ranks fill nodes of --gpus-per-node " + std::to_string(gpn) +
                  ", not a multiple of TP " + std::to_string(tp) + " (" + ranks_text(first, first + tp - 1) +
                  " span nodes 0 and 1)");
    }
    return;
  }

  std::int64_t slots = 0;
  std::string host_list;
  for (const auto& h : o.hosts) {
    slots += h.slots;
    host_list += (host_list.empty() ? "" : ",") + h.name + ":" + std::to_string(h.slots);
  }
  if (slots < world) {
    if (!o.oversubscribe) {
      launch_error("too few host slots: " + std::to_string(slots) + " on " + host_list + " for world " +
                   std::to_string(world) + " (" + layout_text(o.layout) + "); add hosts or slots, or --oversubscribe");
    }
    if (gpn > 0) {
      launch_error("world " + std::to_string(world) + " > " + std::to_string(slots) + " host slots: with " +
                   "--gpus-per-node, --oversubscribe would put two ranks on one GPU");
    }
    return;  // oversubscribed mapping is mpirun's business; nothing by-slot to check
  }

  const Placement p = place_by_slot(o.hosts, world);
  std::int64_t first = 0;  // first rank on node i
  for (std::size_t i = 0; i < p.counts.size(); ++i) {
    if (gpn > 0 && p.counts[i] > gpn) {
      launch_error("host " + p.names[i] + " gets " + std::to_string(p.counts[i]) + " ranks but has " +
                   std::to_string(gpn) + " GPUs (--gpus-per-node); lower its slots");
    }
    // A node boundary inside a TP group means that group's all-reduces cross the network.
    if (i > 0 && first % tp != 0) {
      const std::int64_t group = first - first % tp;
      launch_error("TP group of " + ranks_text(group, group + tp - 1) + " straddles hosts " + p.names[i - 1] + " and " +
                   p.names[i] + "; give each host a multiple of TP " + std::to_string(tp) + " slots");
    }
    first += p.counts[i];
  }
}

std::vector<std::string> build_command(const Options& o, const std::string& hylo_binary,
                                       const std::vector<std::string>& hylo_args) {
  const std::int64_t world = std::int64_t{o.layout.dp} * o.layout.cp * o.layout.tp;
  const auto env = forwarded_env(o);
  std::vector<std::string> cmd;

  if (o.launcher == Launcher::kMpirun) {
    cmd = {o.mpirun};
    if (o.allow_run_as_root) cmd.push_back("--allow-run-as-root");
    if (o.oversubscribe) cmd.push_back("--oversubscribe");
    // By slot: consecutive ranks fill a node before the next, which keeps a TP group (consecutive ranks, TP
    // innermost) on one node. This is the placement check_placement verified.
    cmd.insert(cmd.end(), {"-np", std::to_string(world), "--map-by", "slot"});
    if (!o.hostfile.empty()) {
      cmd.insert(cmd.end(), {"--hostfile", o.hostfile});
    } else if (!o.hosts.empty()) {
      std::string list;
      for (const auto& h : o.hosts) list += (list.empty() ? "" : ",") + h.name + ":" + std::to_string(h.slots);
      cmd.insert(cmd.end(), {"--host", list});
    }
    if (o.bind != Bind::kDefault) {
      cmd.insert(cmd.end(), {"--bind-to", bind_name(o.bind, false)});
    }
    for (const auto& e : env) cmd.insert(cmd.end(), {"-x", env_text(e)});
  } else {
    cmd = {o.srun, "--ntasks=" + std::to_string(world)};
    if (!o.hosts.empty()) {
      // srun has no per-host slot list: name the hosts the ranks need and cap the ranks per node. That only
      // reproduces the by-slot placement when every used host has the same slots.
      const Placement p = place_by_slot(o.hosts, world);
      std::string nodes;
      for (std::size_t i = 0; i < p.names.size(); ++i) {
        if (o.hosts[i].slots != o.hosts[0].slots) {
          usage_error("srun places the same number of ranks on every node: hosts " + o.hosts[0].name + " and " +
                      o.hosts[i].name + " have " + std::to_string(o.hosts[0].slots) + " and " +
                      std::to_string(o.hosts[i].slots) + " slots");
        }
        nodes += (nodes.empty() ? "" : ",") + p.names[i];
      }
      cmd.insert(cmd.end(), {"--nodes=" + std::to_string(p.names.size()), "--nodelist=" + nodes,
                             "--ntasks-per-node=" + std::to_string(o.hosts[0].slots)});
    } else if (o.gpus_per_node > 0) {
      cmd.push_back("--ntasks-per-node=" + std::to_string(o.gpus_per_node));
    }
    cmd.push_back("--distribution=block");  // srun's by-slot: fill a node before the next
    if (o.bind != Bind::kDefault) {
      cmd.push_back(std::string("--cpu-bind=") + bind_name(o.bind, true));
    }
    if (o.oversubscribe) cmd.push_back("--overcommit");
    std::string exports = "ALL";  // keep the launcher's environment, as mpirun does for the ranks it starts
    for (const auto& e : env) {
      // --export separates variables with commas; a value holding one cannot be passed this way.
      if (e.value && e.value->find(',') != std::string::npos) {
        usage_error("--env " + e.name + ": srun's --export cannot carry a value with a comma");
      }
      exports += "," + env_text(e);
    }
    cmd.push_back("--export=" + exports);
  }

  cmd.push_back(hylo_binary);
  cmd.insert(cmd.end(), hylo_args.begin(), hylo_args.end());
  const HyloArgs scanned = scan_hylo_args(hylo_args);
  if (takes_layout_flags(scanned.subcommand)) {
    if (scanned.has_layout_flag) {
      usage_error("give the layout to hylo-launch (--tp/--cp/--dp before --), not to hylo " + scanned.subcommand);
    }
    // 1 x 1 x 1 is the engine's default: leaving the flags out keeps single-process runs working with an
    // engine that does not know them yet. HYLO_TP/CP/DP are exported either way.
    if (world > 1) {
      cmd.insert(cmd.end(), {"--tp", std::to_string(o.layout.tp), "--cp", std::to_string(o.layout.cp), "--dp",
                             std::to_string(o.layout.dp)});
    }
  }
  return cmd;
}

std::string shell_quote(std::string_view word) {
  const bool safe = !word.empty() && std::all_of(word.begin(), word.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           std::string_view("_@%+=:,./-").find(c) != std::string_view::npos;
  });
  if (safe) return std::string(word);
  std::string out = "'";
  for (char c : word) {
    if (c == '\'') {
      out += "'\\''";  // close the quote, an escaped quote, reopen
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::string shell_join(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) out += (out.empty() ? "" : " ") + shell_quote(a);
  return out;
}

std::vector<int> smaller_tp_candidates(const comm::Layout& layout) {
  std::vector<int> out;
  const std::int64_t tp_cp = std::int64_t{layout.tp} * layout.cp;
  for (int t = layout.tp - 1; t >= 1; --t) {
    if (tp_cp % t == 0) out.push_back(t);
  }
  return out;
}

std::string tp_refusal(const std::string& model, const comm::Layout& layout, const std::vector<std::string>& problems,
                       int suggested_tp) {
  std::string text = "model " + model + " cannot be split with TP " + std::to_string(layout.tp) + ": ";
  for (std::size_t i = 0; i < problems.size(); ++i) text += (i ? "; " : "") + problems[i];
  const std::int64_t cp = std::int64_t{layout.tp} * layout.cp / suggested_tp;
  return text + "; use CP instead of TP: --tp " + std::to_string(suggested_tp) + " --cp " + std::to_string(cp);
}

}  // namespace hylo::launch
