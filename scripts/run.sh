#!/usr/bin/env bash
# The main job on the built-in default: sets up, builds, writes a random-init hylo-tiny checkpoint (with the
# Llama 3 tokenizer from ../shared/tokenizers), describes it with `hylo inspect`, tokenizes the whole King James
# Bible with `hylo tokenize`, and runs its beginning through the CPU reference engine with `hylo generate`
# (chunked prefill + greedy decode).
#   HYLO_SKIP_SETUP=1     do not run scripts/setup.sh
#   HYLO_PRESET=NAME      another preset (hylo presets lists them)
#   HYLO_PROMPT_BYTES=N   prompt: the first N bytes of the King James Bible (default 65536, ~17K tokens)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[[ "${HYLO_SKIP_SETUP:-0}" == 1 ]] || scripts/setup.sh
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B build "${gen[@]}" >/dev/null
cmake --build build -j "$(nproc)" --target hylo
preset="${HYLO_PRESET:-hylo-tiny}"
out="out/$preset"
tok=()
family=llama3
[[ "$preset" == *Qwen* ]] && family=qwen3
[[ -f ../shared/tokenizers/$family/tokenizer.json ]] && tok=(--tokenizer ../shared/tokenizers/$family)
build/src/hylo make-checkpoint --preset "$preset" --out "$out" --force "${tok[@]}"
build/src/hylo inspect "$out"

# The prompt: the King James Bible (Debian's bible-kjv prints it; ~4.4 MB, 1.14M Llama 3 tokens), cut to
# HYLO_PROMPT_BYTES for the CPU engine (the whole book is a GPU job: prefill attention is O(L^2)).
bytes="${HYLO_PROMPT_BYTES:-65536}"
bible=out/kjv-bible.txt
mkdir -p out
if [[ ! -s $bible ]]; then
  command -v bible >/dev/null || { echo "run.sh: the 'bible' program (package bible-kjv) is missing; run scripts/setup.sh" >&2; exit 1; }
  bible -f Gen1:1-Rev22:21 >"$bible"
fi
if [[ -f "$out/tokenizer.json" ]]; then
  head -c "$bytes" "$bible" >"out/prompt.txt"
  build/src/hylo tokenize --tokenizer "$out" "$bible" --threads 0
  build/src/hylo generate --model "$out" --prompt-file out/prompt.txt --max-new-tokens 32 --chunk-size 2048
else
  # No tokenizer files (../shared/tokenizers absent): a deterministic prompt of token ids of the same length.
  echo "run.sh: no tokenizer in $out (../shared/tokenizers missing); using $((bytes / 4)) synthetic token ids" >&2
  awk -v n=$((bytes / 4)) 'BEGIN { x = 12345; for (i = 0; i < n; i++) { x = (x * 1103515245 + 12345) % 2147483648; printf "%d ", x % 32000 } print "" }' >out/prompt.ids
  build/src/hylo generate --model "$out" --token-ids out/prompt.ids --max-new-tokens 32 --chunk-size 2048
fi
