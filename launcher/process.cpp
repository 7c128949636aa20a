#include "launcher/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>

#include "launcher/launch.h"

extern char** environ;

namespace hylo::launch {

namespace {

// The child the signal handler forwards to (0: not started yet) and a signal that came before it started.
std::atomic<pid_t> g_child{0};
volatile std::sig_atomic_t g_pending_signal = 0;
static_assert(std::atomic<pid_t>::is_always_lock_free, "read from a signal handler");

// A Ctrl-C (or Ctrl-\ etc.) typed at the terminal is sent by the kernel to the whole foreground process group:
// the child, started in our group, already has it. Passing it on again would deliver it twice, and mpirun takes
// a second SIGINT as "kill everything now" instead of a clean shutdown. So only signals sent to the launcher
// alone (kill(1), a batch scheduler: si_code SI_USER / SI_QUEUE / SI_TKILL, all <= 0) are forwarded.
extern "C" void forward_signal(int sig, siginfo_t* info, void* /*context*/) {
  if (info != nullptr && info->si_code > 0) return;
  const pid_t child = g_child.load();
  if (child > 0) {
    kill(child, sig);
  } else {
    g_pending_signal = sig;
  }
}

int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

int wait_for(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw LaunchError(std::string("waitpid: ") + std::strerror(errno), false);
  }
  return decode_status(status);
}

std::vector<char*> c_argv(const std::vector<std::string>& argv) {
  std::vector<char*> out;
  for (const auto& a : argv) out.push_back(const_cast<char*>(a.c_str()));  // posix_spawn's signature; not written
  out.push_back(nullptr);
  return out;
}

// posix_spawnp with the given file actions; throws naming the program when it cannot start.
pid_t spawn(const std::vector<std::string>& argv, const posix_spawn_file_actions_t* actions) {
  if (argv.empty()) throw LaunchError("nothing to run", false);
  auto args = c_argv(argv);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, args[0], actions, nullptr, args.data(), environ);
  if (rc != 0) throw LaunchError("cannot start " + argv[0] + ": " + std::strerror(rc), false);
  return pid;
}

// Reads both pipes until both close; poll so that a child filling one pipe never blocks on the other.
void drain(int out_fd, int err_fd, Captured& c) {
  pollfd fds[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
  std::string* sinks[2] = {&c.out, &c.err};
  int open_count = 2;
  char buf[4096];
  while (open_count > 0) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      throw LaunchError(std::string("poll: ") + std::strerror(errno), false);
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      const ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        sinks[i]->append(buf, static_cast<std::size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;  // poll ignores negative descriptors
        --open_count;
      }
    }
  }
}

}  // namespace

int run_forwarding_signals(const std::vector<std::string>& argv) {
  struct sigaction sa {};
  sa.sa_sigaction = forward_signal;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  // The child starts with default dispositions for both signals: exec resets caught signals.
  const pid_t pid = spawn(argv, nullptr);
  g_child.store(pid);
  if (g_pending_signal != 0) kill(pid, g_pending_signal);  // arrived while the child was being started
  return wait_for(pid);
}

Captured run_capture(const std::vector<std::string>& argv) {
  int out[2];
  int err[2];
  if (pipe2(out, O_CLOEXEC) != 0) throw LaunchError(std::string("pipe: ") + std::strerror(errno), false);
  if (pipe2(err, O_CLOEXEC) != 0) {
    close(out[0]);
    close(out[1]);
    throw LaunchError(std::string("pipe: ") + std::strerror(errno), false);
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  // dup2 clears close-on-exec on the copies, so the child keeps fds 1 and 2 and loses the originals.
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err[1], STDERR_FILENO);
  pid_t pid = 0;
  try {
    pid = spawn(argv, &actions);
  } catch (...) {
    posix_spawn_file_actions_destroy(&actions);
    for (int fd : {out[0], out[1], err[0], err[1]}) close(fd);
    throw;
  }
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);  // the child holds the write ends now; EOF comes when it exits
  close(err[1]);
  Captured c;
  drain(out[0], err[0], c);
  c.status = wait_for(pid);
  return c;
}

}  // namespace hylo::launch
