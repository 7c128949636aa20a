// Payloads of the comm/ tests (MPI and NCCL transports): bytes that depend on who made a block and where in it, so
// misplaced or stale bytes show up in a bit-exact check.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace hylo::comm_test {

inline std::byte pattern(int origin, std::int64_t i) {
  return static_cast<std::byte>((origin * 131 + i * 7 + (i >> 8) * 13 + 1) & 0xff);
}

inline std::vector<std::byte> make_block(int origin, std::int64_t bytes) {
  std::vector<std::byte> b(static_cast<std::size_t>(bytes));
  for (std::int64_t i = 0; i < bytes; ++i) b[static_cast<std::size_t>(i)] = pattern(origin, i);
  return b;
}

// Bytes of `got` that differ from make_block(origin, got.size()).
inline std::int64_t count_wrong(std::span<const std::byte> got, int origin) {
  std::int64_t wrong = 0;
  for (std::size_t i = 0; i < got.size(); ++i) wrong += got[i] != pattern(origin, static_cast<std::int64_t>(i));
  return wrong;
}

}  // namespace hylo::comm_test
