// Starting processes for hylo-launch: the launch itself (stdio inherited, SIGINT / SIGTERM forwarded, exit
// status returned) and the model check (output captured).
#pragma once

#include <string>
#include <vector>

namespace hylo::launch {

// Runs argv (argv[0] looked up on PATH) with the launcher's stdin, stdout, stderr and environment, and waits
// for it. SIGINT and SIGTERM sent to the launcher alone are passed on to the child (see process.cpp for why a
// Ctrl-C from the terminal is not). Returns the child's exit status, or 128 + N when signal N ended it.
// Throws LaunchError when the program cannot be started.
int run_forwarding_signals(const std::vector<std::string>& argv);

struct Captured {
  int status = 0;   // exit status, or 128 + signal
  std::string out;  // everything it wrote to stdout
  std::string err;  // everything it wrote to stderr
};
// Runs argv to completion, collecting its stdout and stderr. Throws LaunchError when it cannot be started.
Captured run_capture(const std::vector<std::string>& argv);

}  // namespace hylo::launch
