#!/usr/bin/env bash
# scripts/gpu.sh ab (the A/B of bench options on the GPU machine) without a GPU: a stub `hylo` and `nvidia-smi`
# stand in, so the test checks the plumbing: each flag set verified first (side by side over the GPUs), nothing
# timed when a verification fails, then every side timed in turn on GPU 0 without verification, and the table's
# means and ratios. usage: test_gpu_ab.sh WORK_DIR
set -euo pipefail
work="$1"
root="$(cd "$(dirname "$0")/../.." && pwd)"
rm -rf "$work" && mkdir -p "$work/bin" "$work/repo/scripts" "$work/repo/.carry/bin"
fail() { echo "FAIL: $*" >&2; exit 1; }
cp "$root/scripts/gpu.sh" "$work/repo/scripts/gpu.sh"
cat >"$work/bin/nvidia-smi" <<'STUB'
#!/usr/bin/env bash
printf 'Stub GPU, 1 MiB\nStub GPU, 1 MiB\n'
STUB
# The stub bench: logs its call, verifies unless --verify-tokens 0 (or refuses with --broken), prints a result row
# whose decode ms/token depends on the flags (2.0 default, 3.0 with --slow, 1.0 with --fast).
cat >"$work/repo/.carry/bin/hylo" <<STUB
#!/usr/bin/env bash
echo "\$CUDA_VISIBLE_DEVICES \$*" >>"$work/calls.txt"
args=" \$* "
if [[ \$args != *" --verify-tokens 0 "* ]]; then
  [[ \$args == *" --broken "* ]] && { echo "verify ... limit 4.6e-02"; echo "error: the CUDA engine disagrees" >&2; exit 1; }
  echo "verify          32-token prefill + 2 decode steps vs the CPU reference: limit 4.60e-02 (1.0 s)"
fi
d=2.0; [[ \$args == *" --slow "* ]] && d=3.0; [[ \$args == *" --fast "* ]] && d=1.0
echo "prompt        TTFT s  prefill t/s    TFLOP/s      MFU  decode ms/t  decode GB/s   vs floor"
echo "131072         2.500        43994      476.1    60.3%        \$d         1992      2.41x"
STUB
chmod +x "$work/bin/nvidia-smi" "$work/repo/.carry/bin/hylo"
cd "$work/repo"
export PATH="$work/bin:$PATH"

# Two flag sets, two presets, two repeats.
OUT="$work/out1" bash scripts/gpu.sh ab "--slow" "--fast --x" >"$work/ab1.log" 2>&1 || fail "ab: $(cat "$work/ab1.log")"
verifies=$(grep -c -- "--prefill 4K" "$work/calls.txt")
timed=$(grep -c -- "--verify-tokens 0" "$work/calls.txt")
[[ $verifies == 4 && $timed == 12 ]] || fail "expected 4 verifications and 12 timed runs, got $verifies and $timed"
! grep -- "--verify-tokens 0" "$work/calls.txt" | grep -qv "^0 " || fail "a timed run was not on GPU 0"
grep -- "--prefill 4K" "$work/calls.txt" | grep -q "^1 " || fail "the verifications did not use the second GPU"
grep -q "HyLo-Llama-6MLA22M2 *A 2.0,2.0 (1.000)  B 3.0,3.0 (1.500)  C 1.0,1.0 (0.500)" "$work/ab1.log" ||
  fail "table: $(cat "$work/ab1.log")"
[[ -f "$work/out1/ab.tgz" ]] || fail "no ab.tgz"
# The timed runs alternate the sides (A B C A B C per preset), not A A B B.
order=$(grep -- "--verify-tokens 0" "$work/calls.txt" | grep Llama | awk '{print ($0 ~ /--slow/) ? "B" : ($0 ~ /--fast/) ? "C" : "A"}' | tr -d '\n')
[[ $order == ABCABC ]] || fail "timed order $order"

# A flag set that does not verify: non-zero exit, the reason, no timed run.
rm -f "$work/calls.txt"
if OUT="$work/out2" HYLO_AB_PRESETS=HyLo-Qwen-7MLA21GDN bash scripts/gpu.sh ab "--broken" >"$work/ab2.log" 2>&1; then
  fail "a failed verification passed"
fi
grep -q "did not verify" "$work/ab2.log" || fail "no reason: $(cat "$work/ab2.log")"
! grep -q -- "--verify-tokens 0" "$work/calls.txt" || fail "timed a side that did not verify"
# No flag set: usage.
if bash scripts/gpu.sh ab >/dev/null 2>&1; then fail "ab without flags was accepted"; fi
echo "gpu.sh ab ok"
