// State-summary exchange: one all-gather of fixed-size float summaries over a communicator, for passing
// linear-mixer states between sequence-chunk owners (PARALLEL.md 2.2, LASP-2 style). Model-free: a summary is
// `n` floats (e.g. a chunk's transition M and local final state S_loc, concatenated by the caller; two
// summaries for a zigzag rank owning two chunks). The caller composes them in sequence order.
//
// Every rank passes the same n (it follows from the model config). Its size is independent of the sequence
// length, so this is one small collective per linear layer.
#pragma once

#include <span>
#include <vector>

#include "comm/communicator.h"

namespace hylo::comm {

// all.size() == comm.size() * local.size(); on return rank r's summary is all[r * n, (r + 1) * n).
void exchange_summaries(Communicator& comm, std::span<const float> local, std::span<float> all);
std::vector<float> exchange_summaries(Communicator& comm, std::span<const float> local);

}  // namespace hylo::comm
