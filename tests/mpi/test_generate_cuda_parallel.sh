#!/usr/bin/env bash
# `hylo generate --device cuda --tp TP --cp CP --transport T` under mpirun (one GPU per rank) against the single-GPU
# run: the same 24 greedy token ids on the golden "mixed" checkpoint, and the transport reported in the output.
# usage: test_generate_cuda_parallel.sh MPIEXEC HYLO SOURCE_DIR TP CP [nccl|mpi (default nccl)]
# Exit 77 (skipped) with fewer than TP x CP GPUs.
set -uo pipefail
mpiexec="$1" hylo="$2" src="$3" tp="$4" cp="$5" transport="${6:-nccl}"
n=$((tp * cp))
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
if (( gpus < n )); then echo "skip: needs $n GPUs (found $gpus)"; exit 77; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# 300 token ids below the golden layout's vocabulary (256), fixed.
awk 'BEGIN { x = 12345; for (i = 0; i < 300; ++i) { x = (x * 1103515245 + 12345) % 2147483648; printf "%d ", x % 256 } }' >"$work/ids.txt"
args=(generate --device cuda --model "$src/tests/golden/mixed" --token-ids "$work/ids.txt" --max-new-tokens 24 --ignore-eos)
"$hylo" "${args[@]}" >"$work/one.txt" 2>"$work/one.err" || { cat "$work/one.err"; echo "FAIL: single-GPU run"; exit 1; }
NCCL_NVLS_ENABLE=0 "$mpiexec" --allow-run-as-root -np "$n" -x NCCL_NVLS_ENABLE=0 "$hylo" "${args[@]}" --tp "$tp" --cp "$cp" \
  --transport "$transport" >"$work/par.txt" 2>"$work/par.err" ||
  { cat "$work/par.err"; echo "FAIL: TP $tp x CP $cp over $transport run"; exit 1; }
one=$(grep '^ids:' "$work/one.txt"); par=$(grep '^ids:' "$work/par.txt")
# The device line names the transport DeviceCollectives::transport() reports ("nccl 2.28.3", "mpi host-staged").
grep -q "TP $tp x CP $cp over $transport " "$work/par.txt" ||
  { cat "$work/par.txt"; echo "FAIL: the run does not report TP $tp x CP $cp over $transport"; exit 1; }
[[ -n "$one" && "$one" == "$par" ]] ||
  { echo "one GPU: $one"; echo "TP $tp x CP $cp over $transport: $par"; echo "FAIL: tokens differ"; exit 1; }
echo "PASS: TP $tp x CP $cp over $(grep -o "over $transport [^,)]*" "$work/par.txt" | head -1 | sed 's/^over //') = one GPU: $one"
