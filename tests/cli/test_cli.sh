#!/usr/bin/env bash
# End-to-end through the hylo binary: presets, make-checkpoint, inspect, and the error paths a user hits.
# usage: test_cli.sh HYLO_BINARY WORK_DIR
set -euo pipefail
hylo="$1"
work="$2"
rm -rf "$work"
mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

# expect_fail STATUS NEEDLE -- command...: the command exits STATUS and its stderr contains NEEDLE.
expect_fail() {
  local want="$1" needle="$2"
  shift 3
  local status=0
  "$@" >"$work/out.txt" 2>"$work/err.txt" || status=$?
  [[ $status -eq $want ]] || fail "$* exited $status, expected $want: $(cat "$work/err.txt")"
  grep -qF -- "$needle" "$work/err.txt" || fail "$* stderr lacks '$needle': $(cat "$work/err.txt")"
}

[[ $("$hylo" presets | wc -l) -eq 10 ]] || fail "expected 10 presets"

# A tiny checkpoint with the real Llama 3 tokenizer files, verified on write, described by inspect.
tok="$(cd "$(dirname "$0")/../../.." && pwd)/shared/tokenizers/llama3"
tok_args=()
[[ -f "$tok/tokenizer.json" ]] && tok_args=(--tokenizer "$tok")
"$hylo" --log-level warn make-checkpoint --preset hylo-tiny --out "$work/tiny" --seed 1 "${tok_args[@]}" >/dev/null
for f in config.json hybrid_config.json model.safetensors; do [[ -f "$work/tiny/$f" ]] || fail "missing $f"; done
if ((${#tok_args[@]})); then [[ -f "$work/tiny/tokenizer.json" ]] || fail "tokenizer not copied"; fi
"$hylo" --log-level warn inspect "$work/tiny" >"$work/inspect.txt"
grep -q "layer plan   AMGAGM" "$work/inspect.txt" || fail "plan: $(cat "$work/inspect.txt")"
grep -q "KV cache     192 B/token" "$work/inspect.txt" || fail "kv: $(cat "$work/inspect.txt")"
grep -q "all present with exact shapes" "$work/inspect.txt" || fail "weights: $(cat "$work/inspect.txt")"

# Same seed, same bytes; bf16 output sharded.
"$hylo" --log-level warn make-checkpoint --preset hylo-tiny --out "$work/tiny2" --seed 1 >/dev/null
cmp -s "$work/tiny/model.safetensors" "$work/tiny2/model.safetensors" || fail "make-checkpoint is not deterministic"
"$hylo" --log-level warn make-checkpoint --preset hylo-tiny --out "$work/tiny_bf16" --dtype bf16 --max-shard-size 10MiB >/dev/null
[[ -f "$work/tiny_bf16/model.safetensors.index.json" ]] || fail "expected a sharded checkpoint"
"$hylo" --log-level warn inspect "$work/tiny_bf16" | grep -q "BF16" || fail "bf16 inspect"

# Published parameter count through the JSON interface.
"$hylo" inspect --preset HyLo-Llama-4MLA12GDN --json | grep -q '"parameters": 1673797776' || fail "param count"
"$hylo" inspect --preset HyLo-Llama-6MLA22M2 --gpu-mem 141GiB --cp 1,4 >/dev/null

# Errors: clear message, non-zero status, nothing overwritten.
expect_fail 2 'unknown preset "nope"' -- "$hylo" make-checkpoint --preset nope --out "$work/x"
expect_fail 2 "not empty" -- "$hylo" make-checkpoint --preset hylo-tiny --out "$work/tiny"
cmp -s "$work/tiny/model.safetensors" "$work/tiny2/model.safetensors" || fail "refused write still changed the file"
expect_fail 2 "must be f32, bf16 or f16" -- "$hylo" make-checkpoint --preset hylo-tiny --out "$work/y" --dtype int4
expect_fail 2 "cannot read" -- "$hylo" inspect --preset hylo-tiny --gpu-mem lots
expect_fail 1 "config.json" -- "$hylo" inspect "$work/does-not-exist"
cp -r "$work/tiny" "$work/broken"
truncate -s -1 "$work/broken/model.safetensors"
expect_fail 1 "model.safetensors" -- "$hylo" inspect "$work/broken"
echo '{"vocab_size": 5, "vocab_size": 6}' >"$work/broken/config.json"
expect_fail 1 "duplicate key" -- "$hylo" inspect "$work/broken"

# generate: text prompts through the checkpoint's tokenizer; bad requests refused with the flag named.
if ((${#tok_args[@]})); then
  "$hylo" --log-level warn generate --model "$work/tiny" --prompt "In the beginning" --max-new-tokens 3 >"$work/gen.txt"
  grep -q "^text: " "$work/gen.txt" || fail "generate text: $(cat "$work/gen.txt")"
  [[ $(grep "^ids: " "$work/gen.txt" | wc -w) -eq 4 ]] || fail "generate ids: $(cat "$work/gen.txt")"
  "$hylo" --log-level warn generate --model "$work/tiny" --prompt "Hi" --chat --max-new-tokens 1 >/dev/null
  expect_fail 2 "--temperature" -- "$hylo" generate --model "$work/tiny" --prompt "x" --temperature nan
  expect_fail 2 "--top-p" -- "$hylo" generate --model "$work/tiny" --prompt "x" --temperature 1 --top-p 0
  printf '\xff\xfe bad' >"$work/bad.txt"
  expect_fail 2 "UTF-8" -- "$hylo" generate --model "$work/tiny" --prompt-file "$work/bad.txt"
  : >"$work/empty.txt"
  expect_fail 2 "empty" -- "$hylo" generate --model "$work/tiny" --prompt-file "$work/empty.txt"
  expect_fail 2 "max-context" -- "$hylo" generate --model "$work/tiny" --prompt "a b c d" --max-new-tokens 10 --max-context 8
fi
expect_fail 2 "needs a tokenizer" -- "$hylo" generate --model "$work/tiny2" --prompt "x"
# --device cuda where no GPU is visible (or CUDA was not built): a usage error naming the flag, not a crash.
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "1 2 3" >"$work/ids.txt"
  expect_fail 2 "[--device]" -- "$hylo" generate --model "$work/tiny2" --token-ids "$work/ids.txt" --device cuda
  expect_fail 2 "[--device]" -- "$hylo" bench --preset hylo-tiny --device cuda --prefill 16
fi
expect_fail 2 "exactly one of" -- "$hylo" generate --model "$work/tiny2"
# --transport nccl|mpi and --comm-timeout (GPU ranks with TP / CP): documented in the help, bad values refused with the
# flag named (status 2) on any device; the CPU engine ignores the transport.
echo "1 2 3" >"$work/ids3.txt"
for cmd in generate bench; do
  "$hylo" $cmd --help >"$work/help.txt" 2>&1 || true
  grep -q -- "--transport" "$work/help.txt" || fail "$cmd --help lacks --transport"
  grep -q -- "--comm-timeout" "$work/help.txt" || fail "$cmd --help lacks --comm-timeout"
done
expect_fail 2 '[--transport]: "tcp" is not a transport: nccl or mpi' -- \
  "$hylo" generate --model "$work/tiny2" --token-ids "$work/ids3.txt" --transport tcp
expect_fail 2 "[--transport]" -- "$hylo" bench --preset hylo-tiny --device cpu --prefill 16 --transport NCCL
expect_fail 2 "[--comm-timeout]" -- "$hylo" generate --model "$work/tiny2" --token-ids "$work/ids3.txt" --comm-timeout 0
expect_fail 2 "[--comm-timeout]" -- "$hylo" bench --preset hylo-tiny --device cpu --prefill 16 --comm-timeout -5
if grep -q "built without NCCL" "$work/help.txt"; then
  expect_fail 2 "built without NCCL" -- "$hylo" generate --model "$work/tiny2" --token-ids "$work/ids3.txt" --transport nccl
else
  grep -q "Default here: nccl" "$work/help.txt" || fail "bench --help does not name the default transport"
fi
"$hylo" --log-level warn generate --model "$work/tiny2" --token-ids "$work/ids3.txt" --max-new-tokens 1 --transport mpi \
  >"$work/gen_mpi.txt" || fail "generate --transport mpi on the CPU"
grep -q "^ids: " "$work/gen_mpi.txt" || fail "generate --transport mpi: $(cat "$work/gen_mpi.txt")"
# bench on the CPU engine (the CUDA path runs on the GPU machine: docs/PERFORMANCE.md): a table and a JSON file
# with one run per prompt length; bad lengths refused.
OMP_NUM_THREADS=2 "$hylo" --log-level warn bench --preset hylo-tiny --device cpu --prefill 96,1K --decode-steps 2 \
  --json "$work/bench.json" >"$work/bench.txt" || fail "bench: $(cat "$work/bench.txt")"
grep -q "^1024 " "$work/bench.txt" || fail "bench table: $(cat "$work/bench.txt")"
python3 - "$work/bench.json" <<'PY' || fail "bench JSON"
import json, sys
d = json.load(open(sys.argv[1]))
assert [r["prompt_tokens"] for r in d["runs"]] == [96, 1024], d
assert all(r["ttft_s"] > 0 and r["decode_ms_per_token"] > 0 for r in d["runs"]), d
assert d["transport"] == "none (one process)", d["transport"]
PY
expect_fail 2 "is not a token count" -- "$hylo" bench --preset hylo-tiny --device cpu --prefill 8Q
expect_fail 2 "the job has 1 ranks" -- "$hylo" bench --preset hylo-tiny --device cpu --cp 2
echo "cli tests passed"
