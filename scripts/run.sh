#!/usr/bin/env bash
# The main job on the built-in default: sets up, builds, writes a random-init hylo-tiny checkpoint (with the
# Llama 3 tokenizer files when ../shared/tokenizers is there), describes it with `hylo inspect`, then runs a
# long prompt through the CPU reference engine with `hylo generate` (chunked prefill + greedy decode).
#   HYLO_SKIP_SETUP=1     do not run scripts/setup.sh
#   HYLO_PRESET=NAME      another preset (hylo presets lists them)
#   HYLO_PROMPT_TOKENS=N  prompt length in tokens (default 16384)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[[ "${HYLO_SKIP_SETUP:-0}" == 1 ]] || scripts/setup.sh
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B build "${gen[@]}" >/dev/null
cmake --build build -j "$(nproc)" --target hylo
preset="${HYLO_PRESET:-hylo-tiny}"
n="${HYLO_PROMPT_TOKENS:-16384}"
out="out/$preset"
tok=()
family=llama3
[[ "$preset" == *Qwen* ]] && family=qwen3
[[ -f ../shared/tokenizers/$family/tokenizer.json ]] && tok=(--tokenizer ../shared/tokenizers/$family)
build/src/hylo make-checkpoint --preset "$preset" --out "$out" --force "${tok[@]}"
build/src/hylo inspect "$out"

# The prompt: the first N tokens of the King James Bible (Debian's bible-kjv-text), tokenized by the
# checkpoint's tokenizer; a deterministic id sequence where the text or a tokenizer is missing.
ids="out/prompt-$n.ids"
bible=out/kjv-bible.txt
command -v bible >/dev/null && [[ -s $bible ]] || { command -v bible >/dev/null && bible -f Gen1:1-Rev22:21 >"$bible"; } || true
py=.venv/bin/python
if [[ -s "$bible" && -f "$out/tokenizer.json" && -x $py ]] && $py -c "import tokenizers" 2>/dev/null; then
  # Interim (until hylo's own tokenizer lands): the HF tokenizers oracle turns the text into ids.
  $py - "$bible" "$out/tokenizer.json" "$n" "$ids" <<'PY'
import sys
from tokenizers import Tokenizer
path, tok, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
text = open(path, encoding="utf-8").read()
ids = Tokenizer.from_file(tok).encode(text[: n * 8]).ids[:n]
open(out, "w").write(" ".join(map(str, ids)) + "\n")
print(f"prompt: first {len(ids)} tokens of {path}")
PY
else
  awk -v n="$n" 'BEGIN { x = 12345; for (i = 0; i < n; i++) { x = (x * 1103515245 + 12345) % 2147483648; printf "%d ", x % 32000 } print "" }' >"$ids"
  echo "prompt: $n deterministic token ids (no Bible text or tokenizer found)"
fi
build/src/hylo generate --model "$out" --token-ids "$ids" --max-new-tokens 32 --chunk-size 2048
