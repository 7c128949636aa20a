#!/usr/bin/env bash
# The main job on the built-in default: sets up, builds, writes a random-init hylo-tiny checkpoint (with
# the Llama 3 tokenizer files when ../shared/tokenizers is there) and describes it with `hylo inspect`.
# Later issues turn this into a real long-document run.
#   HYLO_SKIP_SETUP=1   do not run scripts/setup.sh
#   HYLO_PRESET=NAME    another preset (hylo presets lists them)
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
