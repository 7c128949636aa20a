#include "comm/stats.h"

#include <algorithm>
#include <cstdio>

namespace hylo::comm {

namespace {

// The label stack of this thread, joined: "prefill / layer 3 mla ring". Empty outside any CommLabel.
thread_local std::string t_label;

constexpr std::string_view kNoLabel = "-";
constexpr std::string_view kJoin = " / ";

}  // namespace

std::shared_ptr<CommStats> CommStats::global() {
  static const std::shared_ptr<CommStats> table = std::make_shared<CommStats>();
  return table;
}

void CommStats::record(std::string_view comm, std::string_view op, std::int64_t bytes_sent, std::int64_t bytes_received,
                       double seconds) {
  record(t_label.empty() ? kNoLabel : std::string_view(t_label), comm, op, bytes_sent, bytes_received, seconds);
}

void CommStats::record(std::string_view label, std::string_view comm, std::string_view op, std::int64_t bytes_sent,
                       std::int64_t bytes_received, double seconds) {
  std::lock_guard lock(mutex_);
  auto it = table_.find(std::tuple(label, comm, op));
  if (it == table_.end()) {
    it = table_.emplace(Key(std::string(label), std::string(comm), std::string(op)), Cell{}).first;
  }
  Cell& cell = it->second;
  cell.calls += 1;
  cell.sent += bytes_sent;
  cell.received += bytes_received;
  cell.seconds += seconds;
}

std::vector<CommRecord> CommStats::records() const {
  std::lock_guard lock(mutex_);
  std::vector<CommRecord> out;
  out.reserve(table_.size());
  for (const auto& [key, cell] : table_) {
    out.push_back(
        {std::get<0>(key), std::get<1>(key), std::get<2>(key), cell.calls, cell.sent, cell.received, cell.seconds});
  }
  return out;
}

CommRecord CommStats::total(std::string_view label, std::string_view comm, std::string_view op) const {
  CommRecord sum{std::string(label), std::string(comm), std::string(op)};
  for (const CommRecord& r : records()) {
    if ((!label.empty() && r.label != label) || (!comm.empty() && r.comm != comm) || (!op.empty() && r.op != op)) {
      continue;
    }
    sum.calls += r.calls;
    sum.bytes_sent += r.bytes_sent;
    sum.bytes_received += r.bytes_received;
    sum.seconds += r.seconds;
  }
  return sum;
}

void CommStats::reset() {
  std::lock_guard lock(mutex_);
  table_.clear();
}

void CommStats::print_summary(std::ostream& out, std::string_view title) const {
  const std::vector<CommRecord> rows = records();
  std::size_t label_width = 5;
  for (const CommRecord& r : rows) label_width = std::max(label_width, r.label.size());

  auto line = [&](std::string_view label, std::string_view comm, std::string_view op, std::int64_t calls,
                  std::int64_t sent, std::int64_t received, double seconds) {
    const double gbps = seconds > 0 ? static_cast<double>(sent + received) / seconds / 1e9 : 0.0;
    char buf[160];
    std::snprintf(buf, sizeof buf, "  %-6s %-14s %10lld %12.3f %12.3f %10.4f %8.2f\n", std::string(comm).c_str(),
                  std::string(op).c_str(), static_cast<long long>(calls), static_cast<double>(sent) / (1 << 20),
                  static_cast<double>(received) / (1 << 20), seconds, gbps);
    out << "  " << label << std::string(label_width - label.size(), ' ') << buf;
  };
  auto header = [&](std::string_view first) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "  %-6s %-14s %10s %12s %12s %10s %8s\n", "comm", "op", "calls", "MiB sent",
                  "MiB recv", "seconds", "GB/s");
    out << "  " << first << std::string(label_width - first.size(), ' ') << buf;
  };

  out << title << " (payload bytes; seconds = time blocked in the call; GB/s = (sent + recv) / seconds)\n";
  if (rows.empty()) {
    out << "  (no calls)\n";
    return;
  }
  header("label");
  for (const CommRecord& r : rows) line(r.label, r.comm, r.op, r.calls, r.bytes_sent, r.bytes_received, r.seconds);

  // Per (comm, op) over all labels, then the grand total.
  std::map<std::pair<std::string, std::string>, CommRecord> per_op;
  CommRecord all;
  for (const CommRecord& r : rows) {
    for (CommRecord* acc : {&per_op[{r.comm, r.op}], &all}) {
      acc->calls += r.calls;
      acc->bytes_sent += r.bytes_sent;
      acc->bytes_received += r.bytes_received;
      acc->seconds += r.seconds;
    }
  }
  for (const auto& [key, r] : per_op) {
    line("(all)", key.first, key.second, r.calls, r.bytes_sent, r.bytes_received, r.seconds);
  }
  line("(all)", "*", "*", all.calls, all.bytes_sent, all.bytes_received, all.seconds);
}

CommLabel::CommLabel(std::string_view label) : previous_length_(t_label.size()) {
  if (!t_label.empty()) t_label += kJoin;
  t_label += label;
}

CommLabel::~CommLabel() { t_label.resize(previous_length_); }

std::string current_comm_label() { return t_label.empty() ? std::string(kNoLabel) : t_label; }

}  // namespace hylo::comm
