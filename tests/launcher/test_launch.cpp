// hylo-launch's pure logic: host and hostfile parsing, layout and placement checks, hylo argument scanning,
// command lines and shell quoting. The binary itself (dry runs, refusals, a real mpirun) is test_launch.sh.
#include <gtest/gtest.h>

#include <sstream>

#include "launcher/launch.h"

using namespace hylo::launch;

namespace {

// The message of the LaunchError `f` throws, and whether it was a usage error; fails when nothing is thrown.
template <typename F>
std::pair<std::string, bool> error_of(F&& f) {
  try {
    f();
  } catch (const LaunchError& e) {
    return {e.what(), e.usage()};
  }
  ADD_FAILURE() << "no LaunchError thrown";
  return {"", false};
}

Options layout(int dp, int cp, int tp) {
  Options o;
  o.layout = {dp, cp, tp};
  return o;
}

}  // namespace

TEST(Hosts, ParsesSlotsDefaultsAndMerges) {
  EXPECT_EQ(parse_hosts("h1:4,h2:4"), (std::vector<Host>{{"h1", 4}, {"h2", 4}}));
  EXPECT_EQ(parse_hosts("a"), (std::vector<Host>{{"a", 1}}));
  EXPECT_EQ(parse_hosts(" a:2 , b ,a:3"), (std::vector<Host>{{"a", 5}, {"b", 1}}));  // mpirun sums repeats
  for (const char* bad : {"", "h1:4,", ",h1", "h1:0", "h1:-2", "h1:x", "h1:", ":4", "h1:2147483648"}) {
    EXPECT_TRUE(error_of([&] { parse_hosts(bad); }).second) << bad;
  }
}

TEST(Hosts, ParsesHostfile) {
  std::istringstream in("# cluster\n\nnode1 slots=4 max_slots=4\n  node2   slots=2  # small one\nnode1 slots=1\n");
  EXPECT_EQ(parse_hostfile(in, "hf"), (std::vector<Host>{{"node1", 5}, {"node2", 2}}));
  std::istringstream no_slots("node1 slots=4\nnode2\n");
  EXPECT_EQ(error_of([&] { parse_hostfile(no_slots, "hf"); }).first,
            "hf line 2: host node2 has no slots=N (mpirun would count its cores, which the launcher cannot check)");
  std::istringstream empty("# nothing\n");
  EXPECT_EQ(error_of([&] { parse_hostfile(empty, "hf"); }).first, "hf: no hosts");
  std::istringstream bad("n slots=0\n");
  EXPECT_TRUE(error_of([&] { parse_hostfile(bad, "hf"); }).second);
}

TEST(Env, ParsesNameAndValue) {
  EXPECT_EQ(parse_env("FOO"), (EnvVar{"FOO", std::nullopt}));
  EXPECT_EQ(parse_env("FOO=a=b"), (EnvVar{"FOO", "a=b"}));
  EXPECT_EQ(parse_env("_X1="), (EnvVar{"_X1", ""}));
  for (const char* bad : {"", "=1", "1X=2", "A-B=1"}) EXPECT_TRUE(error_of([&] { parse_env(bad); }).second) << bad;
}

TEST(HyloArgs, FindsSubcommandModelAndLayoutFlags) {
  auto s = scan_hylo_args({"--log-level", "debug", "generate", "--model", "ck", "--prompt", "x"});
  EXPECT_EQ(s.subcommand, "generate");
  EXPECT_EQ(s.model, "ck");
  EXPECT_FALSE(s.has_layout_flag);
  s = scan_hylo_args({"--log-level=warn", "bench", "--model=m2", "--tp=2"});
  EXPECT_EQ(s.subcommand, "bench");
  EXPECT_EQ(s.model, "m2");
  EXPECT_TRUE(s.has_layout_flag);
  s = scan_hylo_args({"inspect", "dir", "--tp", "2", "--tps"});
  EXPECT_EQ(s.subcommand, "inspect");
  EXPECT_FALSE(s.model);
  EXPECT_TRUE(s.has_layout_flag);
  EXPECT_FALSE(scan_hylo_args({"generate", "--tps", "--cpx=1"}).has_layout_flag);
  EXPECT_EQ(scan_hylo_args({"--help"}).subcommand, "");
  EXPECT_TRUE(takes_layout_flags("generate"));
  EXPECT_TRUE(takes_layout_flags("bench"));
  EXPECT_FALSE(takes_layout_flags("inspect"));
  EXPECT_FALSE(takes_layout_flags("presets"));
}

TEST(Layout, WorldAndNp) {
  EXPECT_EQ(check_layout(layout(2, 2, 2)), 8);
  auto o = layout(1, 4, 2);
  o.np = 8;
  EXPECT_EQ(check_layout(o), 8);
  o.np = 6;
  const auto [msg, usage] = error_of([&] { check_layout(o); });
  EXPECT_EQ(msg, "world 6 != dp 1 x cp 4 x tp 2 (= 8)");
  EXPECT_TRUE(usage);
  EXPECT_EQ(error_of([&] { check_layout(layout(1, 0, 1)); }).first, "--cp must be >= 1, got 0");
  EXPECT_EQ(error_of([&] { check_layout(layout(1, 1, -2)); }).first, "--tp must be >= 1, got -2");
  EXPECT_EQ(error_of([&] { check_layout(layout(-1, 1, 1)); }).first, "--dp must be >= 1, got -1");
  o.np = 0;
  EXPECT_EQ(error_of([&] { check_layout(o); }).first, "--np must be >= 1, got 0");
  // Large degrees are refused before their product overflows.
  EXPECT_TRUE(error_of([&] { check_layout(layout(1 << 20, 1 << 20, 1 << 20)); }).second);
  EXPECT_TRUE(error_of([&] { check_layout(layout(1 << 16, 1 << 16, 1)); }).second);
}

TEST(Placement, HostSlots) {
  auto o = layout(1, 4, 2);
  o.hosts = {{"h1", 4}, {"h2", 2}};
  const auto [msg, usage] = error_of([&] { check_placement(o, 8); });
  EXPECT_EQ(msg,
            "too few host slots: 6 on h1:4,h2:2 for world 8 (dp 1 x cp 4 x tp 2); add hosts or slots, "
            "or --oversubscribe");
  EXPECT_FALSE(usage);
  o.oversubscribe = true;
  EXPECT_NO_THROW(check_placement(o, 8));
  o.gpus_per_node = 4;
  EXPECT_FALSE(error_of([&] { check_placement(o, 8); }).first.empty());  // two ranks would share a GPU
}

TEST(Placement, TpGroupsStayOnOneHost) {
  auto o = layout(1, 3, 2);
  o.hosts = {{"h1", 3}, {"h2", 3}};
  EXPECT_EQ(error_of([&] { check_placement(o, 6); }).first,
            "TP group of ranks 2-3 straddles hosts h1 and h2; give each host a multiple of TP 2 slots");
  o.hosts = {{"h1", 4}, {"h2", 3}};  // the second host is only partly used: ranks 4-5
  EXPECT_NO_THROW(check_placement(o, 6));
  o.hosts = {{"h1", 8}, {"h2", 8}};  // everything on h1
  o.layout = {1, 1, 8};
  EXPECT_NO_THROW(check_placement(o, 8));
  o.gpus_per_node = 4;
  EXPECT_EQ(error_of([&] { check_placement(o, 8); }).first,
            "TP 8 > --gpus-per-node 4: a TP group must sit on one node (NVLink); use CP across nodes instead");
  o.layout = {1, 2, 4};
  EXPECT_EQ(error_of([&] { check_placement(o, 8); }).first,
            "host h1 gets 8 ranks but has 4 GPUs (--gpus-per-node); lower its slots");
  o.hosts = {{"h1", 4}, {"h2", 4}};
  EXPECT_NO_THROW(check_placement(o, 8));
}

TEST(Placement, GpusPerNodeWithoutHosts) {
  auto o = layout(1, 3, 4);
  o.gpus_per_node = 6;  // ranks 4-7 would be on nodes 0 and 1
  EXPECT_EQ(error_of([&] { check_placement(o, 12); }).first,
            "TP groups would straddle nodes: ranks fill nodes of --gpus-per-node 6, not a multiple of TP 4 "
            "(ranks 4-7 span nodes 0 and 1)");
  o.layout = {1, 1, 4};  // one node: nothing to straddle
  EXPECT_NO_THROW(check_placement(o, 4));
  o.layout = {2, 3, 2};
  EXPECT_NO_THROW(check_placement(o, 12));
  o.gpus_per_node = -1;
  EXPECT_TRUE(error_of([&] { check_placement(o, 12); }).second);
  o.gpus_per_node = 0;  // no GPU count, no hosts: nothing known
  EXPECT_NO_THROW(check_placement(o, 12));
}

TEST(Command, MpirunDefaultsAndLayoutFlags) {
  auto o = layout(1, 2, 2);
  EXPECT_EQ(shell_join(build_command(o, "/b/hylo", {"generate", "--model", "m", "--prompt", "hi there"})),
            "mpirun -np 4 --map-by slot -x NCCL_NVLS_ENABLE=0 -x HYLO_TP=2 -x HYLO_CP=2 -x HYLO_DP=1 /b/hylo "
            "generate --model m --prompt 'hi there' --tp 2 --cp 2 --dp 1");
  // Not for other subcommands, nor for 1 x 1 x 1 (the engine's default).
  EXPECT_EQ(shell_join(build_command(o, "hylo", {"presets"})),
            "mpirun -np 4 --map-by slot -x NCCL_NVLS_ENABLE=0 -x HYLO_TP=2 -x HYLO_CP=2 -x HYLO_DP=1 hylo presets");
  EXPECT_EQ(shell_join(build_command(layout(1, 1, 1), "hylo", {"generate", "--model", "m"})),
            "mpirun -np 1 --map-by slot -x NCCL_NVLS_ENABLE=0 -x HYLO_TP=1 -x HYLO_CP=1 -x HYLO_DP=1 hylo generate "
            "--model m");
  EXPECT_TRUE(error_of([&] { build_command(o, "hylo", {"generate", "--tp", "2"}); }).second);
}

TEST(Command, MpirunOptions) {
  auto o = layout(2, 2, 2);
  o.allow_run_as_root = true;
  o.oversubscribe = true;
  o.hosts = {{"h1", 4}, {"h2", 4}};
  o.bind = Bind::kSocket;
  o.mpirun = "/opt/mpi/bin/mpirun";
  o.env = {{"NCCL_NVLS_ENABLE", "1"}, {"OMP_NUM_THREADS", "4"}, {"HOME", std::nullopt}};
  EXPECT_EQ(shell_join(build_command(o, "hylo", {"bench"})),
            "/opt/mpi/bin/mpirun --allow-run-as-root --oversubscribe -np 8 --map-by slot --host h1:4,h2:4 "
            "--bind-to socket -x HYLO_TP=2 -x HYLO_CP=2 -x HYLO_DP=2 -x NCCL_NVLS_ENABLE=1 -x OMP_NUM_THREADS=4 "
            "-x HOME hylo bench --tp 2 --cp 2 --dp 2");
  o.hostfile = "my hosts";
  o.env = {{"HYLO_CP", "3"}};
  EXPECT_EQ(error_of([&] { build_command(o, "hylo", {"bench"}); }).first,
            "--env HYLO_CP: the launcher sets HYLO_CP from --cp");
  o.env.clear();
  EXPECT_EQ(shell_join(build_command(o, "hylo", {"presets"})),
            "/opt/mpi/bin/mpirun --allow-run-as-root --oversubscribe -np 8 --map-by slot --hostfile 'my hosts' "
            "--bind-to socket -x NCCL_NVLS_ENABLE=0 -x HYLO_TP=2 -x HYLO_CP=2 -x HYLO_DP=2 hylo presets");
}

TEST(Command, Srun) {
  auto o = layout(1, 4, 2);
  o.launcher = Launcher::kSrun;
  o.allow_run_as_root = true;  // mpirun only
  o.env = {{"A", "1"}, {"B", std::nullopt}};
  EXPECT_EQ(shell_join(build_command(o, "hylo", {"generate", "--model", "m"})),
            "srun --ntasks=8 --distribution=block --export=ALL,NCCL_NVLS_ENABLE=0,HYLO_TP=2,HYLO_CP=4,HYLO_DP=1,A=1,B "
            "hylo generate --model m --tp 2 --cp 4 --dp 1");
  o.env.clear();
  o.gpus_per_node = 4;
  o.bind = Bind::kCore;
  o.oversubscribe = true;
  EXPECT_EQ(shell_join(build_command(o, "hylo", {"presets"})),
            "srun --ntasks=8 --ntasks-per-node=4 --distribution=block --cpu-bind=cores --overcommit "
            "--export=ALL,NCCL_NVLS_ENABLE=0,HYLO_TP=2,HYLO_CP=4,HYLO_DP=1 hylo presets");
  o.hosts = {{"a", 4}, {"b", 4}, {"c", 4}};  // c is not needed
  o.gpus_per_node = 0;
  o.bind = Bind::kDefault;
  o.oversubscribe = false;
  EXPECT_EQ(shell_join(build_command(o, "hylo", {"presets"})),
            "srun --ntasks=8 --nodes=2 --nodelist=a,b --ntasks-per-node=4 --distribution=block "
            "--export=ALL,NCCL_NVLS_ENABLE=0,HYLO_TP=2,HYLO_CP=4,HYLO_DP=1 hylo presets");
  o.hosts = {{"a", 4}, {"b", 2}, {"c", 2}};
  EXPECT_TRUE(error_of([&] { build_command(o, "hylo", {"presets"}); }).second);
  o.hosts.clear();
  o.env = {{"A", "x,y"}};
  EXPECT_EQ(error_of([&] { build_command(o, "hylo", {"presets"}); }).first,
            "--env A: srun's --export cannot carry a value with a comma");
}

TEST(Quote, ShellWords) {
  EXPECT_EQ(shell_quote("plain-word_1.txt"), "plain-word_1.txt");
  EXPECT_EQ(shell_quote("A=b,c:d/e@f%g+h"), "A=b,c:d/e@f%g+h");
  EXPECT_EQ(shell_quote(""), "''");
  EXPECT_EQ(shell_quote("two words"), "'two words'");
  EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
  EXPECT_EQ(shell_quote("$HOME*;|&\n"), "'$HOME*;|&\n'");
  EXPECT_EQ(shell_join({"a", "b c", ""}), "a 'b c' ''");
}

TEST(Suggestion, SmallerTpKeepsTheWorld) {
  EXPECT_EQ(smaller_tp_candidates({1, 1, 3}), (std::vector<int>{1}));
  EXPECT_EQ(smaller_tp_candidates({1, 2, 4}), (std::vector<int>{2, 1}));
  EXPECT_EQ(smaller_tp_candidates({1, 3, 4}), (std::vector<int>{3, 2, 1}));
  EXPECT_TRUE(smaller_tp_candidates({1, 4, 1}).empty());
  EXPECT_EQ(tp_refusal("ck", {1, 1, 3}, {"MLA heads = 4 is not divisible by TP 3", "x"}, 1),
            "model ck cannot be split with TP 3: MLA heads = 4 is not divisible by TP 3; x; use CP instead of TP: "
            "--tp 1 --cp 3");
  EXPECT_EQ(tp_refusal("ck", {2, 2, 4}, {"p"}, 2),
            "model ck cannot be split with TP 4: p; use CP instead of TP: --tp 2 --cp 4");
}

TEST(Layout, DpTakesTheRestOfNp) {
  auto o = layout(1, 1, 1);
  o.np = 2;
  derive_dp_from_np(o);
  EXPECT_EQ(o.layout, (hylo::comm::Layout{2, 1, 1}));
  o = layout(1, 4, 2);
  o.np = 16;
  derive_dp_from_np(o);
  EXPECT_EQ(o.layout.dp, 2);
  o = layout(1, 4, 2);
  o.np = 6;  // does not divide: left for check_layout to refuse with the numbers
  derive_dp_from_np(o);
  EXPECT_EQ(o.layout.dp, 1);
  EXPECT_EQ(error_of([&] { check_layout(o); }).first, "world 6 != dp 1 x cp 4 x tp 2 (= 8)");
  o = layout(1, 0, 2);
  o.np = 4;
  derive_dp_from_np(o);
  EXPECT_EQ(o.layout.dp, 1);
}
