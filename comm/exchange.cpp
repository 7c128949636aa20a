#include "comm/exchange.h"

#include <stdexcept>
#include <string>

namespace hylo::comm {

void exchange_summaries(Communicator& comm, std::span<const float> local, std::span<float> all) {
  const std::size_t n = local.size();
  if (all.size() != n * static_cast<std::size_t>(comm.size())) {
    throw std::invalid_argument("exchange_summaries on " + comm.name() + ": output holds " +
                                std::to_string(all.size()) + " floats, need " + std::to_string(comm.size()) + " x " +
                                std::to_string(n));
  }
  comm.allgather(local.data(), all.data(), static_cast<std::int64_t>(n * sizeof(float)));
}

std::vector<float> exchange_summaries(Communicator& comm, std::span<const float> local) {
  std::vector<float> all(local.size() * static_cast<std::size_t>(comm.size()));
  exchange_summaries(comm, local, all);
  return all;
}

}  // namespace hylo::comm
