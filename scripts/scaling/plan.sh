#!/usr/bin/env bash
# The scaling runs of issues 7 / 8 as device calls of at most ~8 minutes each (the device tool stops a command at
# 10), so that a session with a 4- or 8-GPU machine spends its time measuring, not composing commands. Run on the
# GPU machine from the repository root after `scripts/gpu.sh unpack`; each call writes under $OUT/<call>/ and one
# tarball $OUT/<call>.tgz (the device tool brings back a limited number of files). Estimates: docs/DISTRIBUTED.md.
#   scripts/scaling/plan.sh list                 the calls and what they run
#   scripts/scaling/plan.sh CALL [--dry-run]     one call (--dry-run: print its commands only)
# Afterwards, here: scripts/scaling/report.py A/sweep.json B/sweep.json --merge --out docs/scaling/<dir> per series
# (1gpu-2m's point with docs/scaling/4xh200-2026-11-28-2M/sweep.json: the 2M series from CP 1).
set -uo pipefail
cd "$(dirname "$0")/../.."
preset=HyLo-Llama-6MLA22M2
sweep="python3 scripts/scaling/sweep.py --hylo-launch .carry/bin/hylo-launch --hylo .carry/bin/hylo --preset $preset"
declare -A what cmds
what[4gpu-2m]="4 GPUs: strong scaling at 2M, CP 2 and 4 (CP 1 would take ~330 s alone)"
cmds[4gpu-2m]="$sweep --mode strong --length 2M --cp 2,4 --repeats 1 --verify-tokens 8 --out \$dir/strong-2M"
what[1gpu-2m]="1 GPU: the CP 1 point of the 2M series (~330 s of prefill; merge with 4gpu-2m's sweep.json)"
cmds[1gpu-2m]="$sweep --mode strong --length 2M --cp 1 --repeats 1 --verify-tokens 8 --out \$dir/strong-2M-cp1"
what[8gpu-1]="8 GPUs: strong scaling at 1M, CP 1 and 2"
cmds[8gpu-1]="$sweep --mode strong --length 1M --cp 1,2 --repeats 1 --verify-tokens 8 --out \$dir/strong-1M-a"
what[8gpu-2]="8 GPUs: strong scaling at 1M, CP 4 and 8"
cmds[8gpu-2]="$sweep --mode strong --length 1M --cp 4,8 --repeats 2 --verify-tokens 8 --out \$dir/strong-1M-b"
what[8gpu-3]="8 GPUs: strong scaling at 2M, CP 2 and 4"
cmds[8gpu-3]="$sweep --mode strong --length 2M --cp 2,4 --repeats 1 --verify-tokens 8 --out \$dir/strong-2M-a"
what[8gpu-4]="8 GPUs: strong scaling at 2M, CP 8; then TP 2 x CP 4 at 2M"
cmds[8gpu-4]="$sweep --mode strong --length 2M --cp 8 --repeats 1 --verify-tokens 8 --out \$dir/strong-2M-b && $sweep --mode strong --length 2M --cp 4 --tp 2 --repeats 1 --verify-tokens 8 --out \$dir/tp2-2M"
what[8gpu-5]="8 GPUs: a 4M-token prefill + 128 decode tokens on CP 8"
cmds[8gpu-5]=".carry/bin/hylo-launch --cp 8 --env NCCL_NVLS_ENABLE=0 -- bench --device cuda --preset $preset --prefill 4M --decode-steps 128 --verify-tokens 8 --json \$dir/bench-cp8-4M.json"
order=(4gpu-2m 1gpu-2m 8gpu-1 8gpu-2 8gpu-3 8gpu-4 8gpu-5)
case "${1:-}" in
  list | "")
    for c in "${order[@]}"; do printf '%-8s %s\n' "$c" "${what[$c]}"; done
    [[ -n "${1:-}" ]] || { echo "usage: scripts/scaling/plan.sh list | CALL [--dry-run]" >&2; exit 2; }
    ;;
  *)
    call=$1
    [[ -n "${cmds[$call]:-}" ]] || { echo "plan.sh: no call '$call' (scripts/scaling/plan.sh list)" >&2; exit 2; }
    dir="${OUT:-scaling-out}/$call"
    cmd="${cmds[$call]//\$dir/$dir}"
    if [[ "${2:-}" == --dry-run ]]; then
      echo "$cmd"
      exit 0
    fi
    need=${call%%gpu-*}
    have=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
    (( have >= need )) || { echo "plan.sh: $call needs $need GPUs, this machine has $have" >&2; exit 2; }
    mkdir -p "$dir"
    export NCCL_NVLS_ENABLE=0 HYLO_SOURCE_DIR="$PWD"
    echo "$cmd" >"$dir/command.txt"
    start=$(date +%s)
    timeout 570 bash -c "$cmd" >"$dir/run.log" 2>&1
    rc=$?
    echo "plan.sh: $call rc=$rc after $(( $(date +%s) - start )) s" | tee -a "$dir/run.log"
    grep -h "^sweep: cp\|TTFT\|^[0-9]\+ " "$dir/run.log" | tail -8
    tar -czf "$dir.tgz" -C "$(dirname "$dir")" "$(basename "$dir")"
    exit $rc
    ;;
esac
