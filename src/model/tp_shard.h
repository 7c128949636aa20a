// Tensor-parallel sharding of the host weights (PARALLEL.md section 1): which rows or columns of each tensor
// TP rank j of TP keeps, and the per-rank ("local") sizes the engine then runs with.
//
// Megatron layout: projections into a mixer / the MLP are split by output rows (column-parallel), the
// projections out of them by input columns (row-parallel, followed by an all-reduce). Heads stay whole:
//   MLA     q_b rows by query head, kv_b rows by kv group (a query head keeps its group), out_proj columns by
//           head; q_a / kv_a and their norms replicated (every rank needs the whole latent).
//   Mamba2  in_proj rows z | x | B | C | dt each by head (x and B by group), conv channels x | B | C likewise,
//           dt_bias / A_log / D / norm by head, out_proj columns by head.
//   GDN     q, k (and their convs) by key head, v, g, a, b (and v's conv, A_log, dt_bias) by value head,
//           o_proj columns by value head; the shared per-head o_norm replicated.
//   MLP     gate / up rows, down columns.
//   Vocab   embedding rows and LM head rows by contiguous vocab range [j V/TP, (j+1) V/TP).
// Residual norms and the final norm are replicated.
#pragma once

#include "model/config.h"
#include "model/model_weights.h"

namespace hylo {

// The config whose head counts, inner sizes and intermediate size are this rank's share; hidden size,
// vocab_size (the full vocabulary: token ids stay global) and everything else unchanged. Throws
// Error(kUsage) listing every divisibility problem (tp_problems) and, for GDN, suggesting CP instead.
ModelConfig tp_local_config(const ModelConfig& config, int tp);

// Rank tp_rank's shard of full weights (config = the full model). TP 1 returns the weights unchanged.
ModelWeights shard_model_weights(ModelWeights full, const ModelConfig& config, int tp_rank, int tp);

}  // namespace hylo
