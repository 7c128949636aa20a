// Communication accounting: every call through a Communicator adds (label, communicator, op, bytes sent,
// bytes received, seconds) to a CommStats table, so a run can say where its bytes and its waiting went.
//
// Labels: a CommLabel guard names the work in progress on the calling thread ("layer 3 mla ring"); guards
// nest and join with " / " ("prefill / layer 3 mla ring"). Calls outside any guard are labelled "-".
//
// What is counted (payload, not wire traffic; an algorithm's internal hops are the transport's business):
//   send / isend        sent = bytes                     recv / irecv   received = bytes
//   allreduce_sum       sent = received = count * sizeof(T)
//   allgather           sent = block, received = (size - 1) * block     (the other ranks' blocks)
//   allgatherv          sent = own block, received = the other ranks' blocks (the size exchange inside is
//                       not counted)
//   broadcast           root: sent = bytes; others: received = bytes
//   barrier             calls and seconds only
// seconds = wall time the calling thread spent inside the call; for isend / irecv, the post plus the wait
// that completed the request. A well-overlapped ring therefore shows little time: time here is time that
// communication was NOT hidden behind compute.
//
// Thread-safety: a table is guarded by its own mutex; the label stack is per thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace hylo::comm {

struct CommRecord {
  std::string label;
  std::string comm;  // communicator name: "world", "tp", "cp", "dp", ...
  std::string op;    // "send", "isend", "allreduce_sum", ...
  std::int64_t calls = 0;
  std::int64_t bytes_sent = 0;
  std::int64_t bytes_received = 0;
  double seconds = 0;
};

class CommStats {
 public:
  // The process-wide table that communicators use unless given their own; the run summary prints it.
  static std::shared_ptr<CommStats> global();

  // Adds one call under the calling thread's current label.
  void record(std::string_view comm, std::string_view op, std::int64_t bytes_sent, std::int64_t bytes_received,
              double seconds);
  // Same, with an explicit label (a request completed later keeps the label it was posted under).
  void record(std::string_view label, std::string_view comm, std::string_view op, std::int64_t bytes_sent,
              std::int64_t bytes_received, double seconds);

  // One row per (label, comm, op), sorted by those three.
  std::vector<CommRecord> records() const;
  // Sum of every row matching the given non-empty fields (empty = any).
  CommRecord total(std::string_view label = {}, std::string_view comm = {}, std::string_view op = {}) const;
  void reset();

  // A fixed-width table: one row per (label, comm, op), then per-op totals over all labels, then the total.
  // Columns: calls, MiB sent, MiB received, seconds, and GB/s = (sent + received) / seconds / 1e9.
  void print_summary(std::ostream& out, std::string_view title = "communication") const;

 private:
  struct Cell {
    std::int64_t calls = 0;
    std::int64_t sent = 0;
    std::int64_t received = 0;
    double seconds = 0;
  };
  using Key = std::tuple<std::string, std::string, std::string>;  // label, comm, op
  mutable std::mutex mutex_;
  std::map<Key, Cell, std::less<>> table_;
};

// RAII label scope for the calling thread. Not movable: it restores the label it replaced when it ends.
class CommLabel {
 public:
  explicit CommLabel(std::string_view label);
  ~CommLabel();
  CommLabel(const CommLabel&) = delete;
  CommLabel& operator=(const CommLabel&) = delete;

 private:
  std::size_t previous_length_;
};

// The calling thread's current label ("-" outside any CommLabel).
std::string current_comm_label();

}  // namespace hylo::comm
