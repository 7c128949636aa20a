#!/usr/bin/env bash
# `hylo generate --device cuda --tp 2` under mpirun (one GPU per rank) against the single-GPU run: the same 24
# greedy token ids on the golden "mixed" checkpoint. usage: test_generate_cuda_tp.sh MPIEXEC HYLO SOURCE_DIR
# Exit 77 (skipped) with fewer than 2 GPUs.
set -uo pipefail
mpiexec="$1" hylo="$2" src="$3"
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
if (( gpus < 2 )); then echo "skip: needs 2 GPUs (found $gpus)"; exit 77; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# 300 token ids below the golden layout's vocabulary (256), fixed.
awk 'BEGIN { x = 12345; for (i = 0; i < 300; ++i) { x = (x * 1103515245 + 12345) % 2147483648; printf "%d ", x % 256 } }' >"$work/ids.txt"
args=(generate --device cuda --model "$src/tests/golden/mixed" --token-ids "$work/ids.txt" --max-new-tokens 24 --ignore-eos)
"$hylo" "${args[@]}" >"$work/one.txt" 2>"$work/one.err" || { cat "$work/one.err"; echo "FAIL: single-GPU run"; exit 1; }
NCCL_NVLS_ENABLE=0 "$mpiexec" --allow-run-as-root -np 2 -x NCCL_NVLS_ENABLE=0 "$hylo" "${args[@]}" --tp 2 \
  >"$work/tp.txt" 2>"$work/tp.err" || { cat "$work/tp.err"; echo "FAIL: TP 2 run"; exit 1; }
one=$(grep '^ids:' "$work/one.txt"); tp=$(grep '^ids:' "$work/tp.txt")
grep -q 'TP 2 over NCCL' "$work/tp.txt" || { cat "$work/tp.txt"; echo "FAIL: the TP run does not report TP 2 over NCCL"; exit 1; }
[[ -n "$one" && "$one" == "$tp" ]] || { echo "one GPU: $one"; echo "TP 2:    $tp"; echo "FAIL: tokens differ"; exit 1; }
echo "PASS: TP 2 = one GPU: $one"
