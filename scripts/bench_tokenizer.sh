#!/usr/bin/env bash
# Tokenizer throughput, hylo beside HF `tokenizers` on the same machine and text (the KJV Bible, 4.4 MB).
#
#   scripts/bench_tokenizer.sh [BUILD_DIR]        (default: build; needs the tests built for tok_driver)
#
# hylo: `hylo tokenize --repeat 5` (best of 5 encode calls of the whole text; load time excluded), through
# tok_driver when the hylo binary has no `tokenize` command. HF: Tokenizer.encode(text) in one call with
# TOKENIZERS_PARALLELISM=false (single thread), and encode_batch over the lines (single thread, then with
# RAYON_NUM_THREADS threads). MB/s = 10^6 bytes of UTF-8 input per second. Ids are checked equal first.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$here/build}"
toks="${HYLO_TOKENIZERS:-$here/../shared/tokenizers}"
py="$here/.venv/bin/python"; [[ -x "$py" ]] || py=python3
threads_list="${THREADS:-1 2}"

if "$build/src/hylo" tokenize --help >/dev/null 2>&1; then
  hylo=("$build/src/hylo" tokenize)
elif [[ -x "$build/tests/tok_driver" ]]; then
  hylo=("$build/tests/tok_driver" tokenize)
else
  echo "bench_tokenizer: build hylo (with tests) first: no tokenize command in $build" >&2; exit 1
fi
command -v bible >/dev/null || { echo "bench_tokenizer: install bible-kjv (scripts/setup.sh)" >&2; exit 1; }
text="$(mktemp --suffix=.txt)"; trap 'rm -f "$text" "$text.ids"' EXIT
bible -f Gen1:1-Rev22:21 </dev/null >"$text"

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "text: KJV Bible, $(wc -c <"$text") bytes"
for name in llama3 qwen3; do
  dir="$toks/$name"
  echo "== $name"
  "${hylo[@]}" --tokenizer "$dir" "$text" --print-ids >"$text.ids" 2>/dev/null
  for t in $threads_list; do
    printf 'hylo  %-2s threads  ' "$t"
    "${hylo[@]}" --tokenizer "$dir" "$text" --threads "$t" --repeat 5
  done
  "$py" - "$dir" "$text" "$text.ids" "$threads_list" <<'PY'
import os, sys, time
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer
d, path, ids_path, threads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
text = open(path, encoding="utf-8").read()
n = len(text.encode())
tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
ids = tok.encode(text).ids
mine = [int(x) for x in open(ids_path).read().split()]
print(f"ids identical to hylo: {ids == mine} ({len(ids)} tokens)")
def best(f, k=3):
    b = 1e9
    for _ in range(k):
        t0 = time.perf_counter(); r = f(); b = min(b, time.perf_counter() - t0)
    return b
s = best(lambda: tok.encode(text))
print(f"HF    1  thread   one call          {s:.3f} s  {n / s / 1e6:.2f} MB/s  {len(ids) / s:.0f} tokens/s")
lines = text.splitlines(keepends=True)
s = best(lambda: tok.encode_batch(lines))
print(f"HF    1  thread   encode_batch      {s:.3f} s  {n / s / 1e6:.2f} MB/s  {len(ids) / s:.0f} tokens/s")
PY
  for t in $threads_list; do
    [[ "$t" == 1 ]] && continue
    TOKENIZERS_PARALLELISM=true RAYON_NUM_THREADS="$t" "$py" - "$dir" "$text" "$t" <<'PY'
import os, sys, time
from tokenizers import Tokenizer
d, path, t = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path, encoding="utf-8").read()
n = len(text.encode())
tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
lines = text.splitlines(keepends=True)
b = 1e9
for _ in range(3):
    t0 = time.perf_counter(); r = tok.encode_batch(lines); b = min(b, time.perf_counter() - t0)
k = sum(len(e.ids) for e in r)
print(f"HF    {t:<2} threads  encode_batch      {b:.3f} s  {n / b / 1e6:.2f} MB/s  {k / b:.0f} tokens/s")
PY
  done
done
