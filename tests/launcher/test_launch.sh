#!/usr/bin/env bash
# hylo-launch end to end: exact dry-run command lines, refusals (layout, hosts, placement, model divisibility),
# a real mpirun of hylo, exit-status propagation and signal forwarding (through a stand-in mpirun).
# usage: test_launch.sh HYLO_LAUNCH HYLO MPIRUN WORK_DIR
set -euo pipefail
launch="$1"
mpirun="$3"
work="$4"
rm -rf "$work"
mkdir -p "$work"
work="$(cd "$work" && pwd -P)"
hylo="$(cd "$(dirname "$2")" && pwd -P)/$(basename "$2")"  # the launcher prints hylo's absolute path
unset SLURM_JOB_ID  # else the launcher picks srun
fail() { echo "FAIL: $*" >&2; exit 1; }

# Every dry run passes --allow-run-as-root so the expected lines hold whether or not the test runs as root.
L=("$launch" --allow-run-as-root --hylo "$hylo" --dry-run)
X="-x NCCL_NVLS_ENABLE=0"

# expect_line "EXPECTED" launcher-args...: the dry run prints exactly EXPECTED and exits 0.
expect_line() {
  local want="$1" got status=0
  shift
  got="$("${L[@]}" "$@" 2>"$work/err.txt")" || status=$?
  [[ $status -eq 0 ]] || fail "$* exited $status: $(cat "$work/err.txt")"
  [[ "$got" == "$want" ]] || fail "$*
   got: $got
  want: $want"
}

# expect_fail STATUS NEEDLE -- command...: the command exits STATUS and its one-line stderr contains NEEDLE.
expect_fail() {
  local want="$1" needle="$2" status=0
  shift 3
  "$@" >"$work/out.txt" 2>"$work/err.txt" || status=$?
  [[ $status -eq $want ]] || fail "$* exited $status, expected $want: $(cat "$work/err.txt")"
  grep -qF -- "$needle" "$work/err.txt" || fail "$* stderr lacks '$needle': $(cat "$work/err.txt")"
  [[ $(wc -l <"$work/err.txt") -eq 1 ]] || fail "$* printed more than one line: $(cat "$work/err.txt")"
  [[ $(head -c 13 "$work/err.txt") == "hylo-launch: " ]] || fail "$* error not prefixed: $(cat "$work/err.txt")"
}

ck="$work/tiny"
"$hylo" --log-level warn make-checkpoint --preset hylo-tiny --out "$ck" >/dev/null

# ---- dry runs --------------------------------------------------------------------------------------------
expect_line "mpirun --allow-run-as-root -np 1 --map-by slot $X -x HYLO_TP=1 -x HYLO_CP=1 -x HYLO_DP=1 $hylo generate --model $ck --prompt 'hello world'" \
  -- generate --model "$ck" --prompt "hello world"
expect_line "mpirun --allow-run-as-root -np 2 --map-by slot $X -x HYLO_TP=2 -x HYLO_CP=1 -x HYLO_DP=1 $hylo generate --model $ck --prompt-file book.txt --tp 2 --cp 1 --dp 1" \
  --tp 2 -- generate --model "$ck" --prompt-file book.txt
expect_line "mpirun --allow-run-as-root -np 4 --map-by slot $X -x HYLO_TP=1 -x HYLO_CP=4 -x HYLO_DP=1 $hylo --log-level warn generate --model=$ck --prompt 'it'\\''s' --tp 1 --cp 4 --dp 1" \
  --cp 4 -- --log-level warn generate --model="$ck" --prompt "it's"
expect_line "mpirun --allow-run-as-root -np 8 --map-by slot --host h1:4,h2:4 --bind-to core $X -x HYLO_TP=2 -x HYLO_CP=2 -x HYLO_DP=2 $hylo bench --tp 2 --cp 2 --dp 2" \
  --dp 2 --cp 2 --tp 2 --np 8 --hosts h1:4,h2:4 --gpus-per-node 4 --bind core -- bench
printf '# two nodes\nnodeA slots=4\nnodeB slots=4 max_slots=4\n' >"$work/hosts"
expect_line "mpirun --allow-run-as-root -np 8 --map-by slot --hostfile $work/hosts --bind-to none $X -x HYLO_TP=2 -x HYLO_CP=4 -x HYLO_DP=1 $hylo generate --model $ck --tp 2 --cp 4 --dp 1" \
  --tp 2 --cp 4 --hostfile "$work/hosts" --bind none --model "$ck" -- generate --model "$ck"
# Other subcommands get no layout flags; --np without --dp makes DP replicas.
expect_line "mpirun --allow-run-as-root -np 2 --map-by slot $X -x HYLO_TP=1 -x HYLO_CP=1 -x HYLO_DP=2 $hylo presets" \
  --np 2 -- presets
expect_line "mpirun --allow-run-as-root -np 2 --map-by slot $X -x HYLO_TP=2 -x HYLO_CP=1 -x HYLO_DP=1 $hylo inspect $ck --tp 2" \
  --tp 2 -- inspect "$ck" --tp 2
expect_line "/opt/ompi/bin/mpirun --allow-run-as-root --oversubscribe -np 2 --map-by slot --bind-to socket -x HYLO_TP=1 -x HYLO_CP=2 -x HYLO_DP=1 -x NCCL_NVLS_ENABLE=1 -x OMP_NUM_THREADS=3 -x 'MSG=a b' -x PATH $hylo presets" \
  --cp 2 --mpirun /opt/ompi/bin/mpirun --oversubscribe --bind socket --env NCCL_NVLS_ENABLE=1 \
  --env OMP_NUM_THREADS=3 --env "MSG=a b" --env PATH -- presets
# srun: asked for, or found inside a Slurm job.
expect_line "srun --ntasks=8 --ntasks-per-node=4 --distribution=block --cpu-bind=cores --export=ALL,NCCL_NVLS_ENABLE=0,HYLO_TP=2,HYLO_CP=4,HYLO_DP=1,OMP_NUM_THREADS=2 $hylo generate --model $ck --tp 2 --cp 4 --dp 1" \
  --launcher srun --tp 2 --cp 4 --gpus-per-node 4 --bind core --env OMP_NUM_THREADS=2 -- generate --model "$ck"
got="$(SLURM_JOB_ID=42 "${L[@]}" --tp 2 --hosts n1:2,n2:2 --np 4 --dp 2 -- presets)"
[[ "$got" == "srun --ntasks=4 --nodes=2 --nodelist=n1,n2 --ntasks-per-node=2 --distribution=block --export=ALL,NCCL_NVLS_ENABLE=0,HYLO_TP=2,HYLO_CP=1,HYLO_DP=2 $hylo presets" ]] ||
  fail "Slurm auto-detect: $got"
got="$(SLURM_JOB_ID=42 "${L[@]}" --launcher mpirun -- presets)"
[[ "$got" == mpirun* ]] || fail "--launcher mpirun inside Slurm: $got"

# ---- refusals --------------------------------------------------------------------------------------------
expect_fail 2 "world 6 != dp 1 x cp 4 x tp 2" -- "${L[@]}" --np 6 --cp 4 --tp 2 -- presets
expect_fail 2 "world 6 != dp 2 x cp 1 x tp 2" -- "${L[@]}" --np 6 --dp 2 --tp 2 -- presets
expect_fail 2 "--tp must be >= 1, got 0" -- "${L[@]}" --tp 0 -- presets
expect_fail 2 "--cp must be >= 1, got -2" -- "${L[@]}" --cp -2 -- presets
expect_fail 2 "--dp must be >= 1, got 0" -- "${L[@]}" --dp 0 -- presets
expect_fail 2 "--np must be >= 1, got 0" -- "${L[@]}" --np 0 -- presets
expect_fail 1 "too few host slots: 6 on h1:4,h2:2 for world 8" -- "${L[@]}" --tp 2 --cp 4 --hosts h1:4,h2:2 -- presets
expect_fail 1 "TP group of ranks 2-3 straddles hosts h1 and h2" -- "${L[@]}" --tp 2 --cp 3 --hosts h1:3,h2:3 -- presets
expect_fail 2 "TP groups would straddle nodes: ranks fill nodes of --gpus-per-node 6, not a multiple of TP 4" \
  -- "${L[@]}" --tp 4 --cp 3 --gpus-per-node 6 -- presets
expect_fail 2 "TP 8 > --gpus-per-node 4" -- "${L[@]}" --tp 8 --gpus-per-node 4 -- presets
expect_fail 2 "has no slots=N" -- "${L[@]}" --hostfile <(printf 'nodeA\n') -- presets
expect_fail 2 "no hylo command" -- "${L[@]}" --tp 2
expect_fail 2 "no hylo command" -- "${L[@]}" --tp 2 generate --model "$ck"
expect_fail 2 "--bind" -- "${L[@]}" --bind cores -- presets
expect_fail 2 "--launcher" -- "${L[@]}" --launcher slurm -- presets
expect_fail 2 "--env HYLO_TP: the launcher sets HYLO_TP from --tp" -- "${L[@]}" --env HYLO_TP=4 -- presets
expect_fail 2 "--env NO_SUCH_VAR_HERE: not set here" -- "${L[@]}" --env NO_SUCH_VAR_HERE -- presets
expect_fail 2 "give the layout to hylo-launch" -- "${L[@]}" -- generate --model "$ck" --tp 2
# The model: hylo-tiny's 4 MLA heads (and its vocabulary) do not split 3 ways; TP 2 does.
expect_fail 1 "model $ck cannot be split with TP 3: " -- "${L[@]}" --tp 3 -- generate --model "$ck"
grep -qF "MLA heads = 4 is not divisible by TP 3" "$work/err.txt" || fail "heads not named: $(cat "$work/err.txt")"
grep -qF "use CP instead of TP: --tp 1 --cp 3" "$work/err.txt" || fail "no suggestion: $(cat "$work/err.txt")"
expect_fail 1 "use CP instead of TP: --tp 2 --cp 4" -- "${L[@]}" --tp 4 --cp 2 --model "$ck" -- presets
"${L[@]}" --tp 2 -- generate --model "$ck" >/dev/null || fail "TP 2 of hylo-tiny refused"
expect_fail 1 "cannot check model $work/none (hylo inspect exited with 1" -- "${L[@]}" -- generate --model "$work/none"

# ---- real launches ---------------------------------------------------------------------------------------
run=("$launch" --mpirun "$mpirun" --hylo "$hylo" --oversubscribe)
"${run[@]}" --np 2 -- presets >"$work/presets.txt" 2>"$work/err.txt" || fail "presets under mpirun: $(cat "$work/err.txt")"
[[ $(grep -cx hylo-tiny "$work/presets.txt") -eq 2 ]] || fail "expected 2 ranks' presets: $(cat "$work/presets.txt")"
status=0
"${run[@]}" --np 2 -- inspect "$work/none" >/dev/null 2>&1 || status=$?
[[ $status -eq 1 ]] || fail "a failing rank: launcher exited $status, expected 1"

# A stand-in mpirun shows what the launcher does with the child: its exit status, a signal death, and SIGTERM
# sent to the launcher (forwarded, so the stand-in's trap decides the status).
cat >"$work/fake-mpirun" <<'EOF'
#!/usr/bin/env bash
case "$FAKE_MODE" in
  exit) exit 7 ;;
  kill) kill -KILL $$ ;;
  trap)
    trap 'kill $sleeper; exit 42' TERM
    sleep 30 & sleeper=$!
    touch "$FAKE_READY"
    wait ;;
esac
EOF
chmod +x "$work/fake-mpirun"
fake=("$launch" --mpirun "$work/fake-mpirun" --hylo "$hylo" -- presets)
status=0; FAKE_MODE=exit "${fake[@]}" || status=$?
[[ $status -eq 7 ]] || fail "exit status: $status, expected 7"
status=0; FAKE_MODE=kill "${fake[@]}" || status=$?
[[ $status -eq 137 ]] || fail "signal death: $status, expected 128 + 9"
FAKE_MODE=trap FAKE_READY="$work/ready" "${fake[@]}" &
pid=$!
for _ in $(seq 100); do [[ -f "$work/ready" ]] && break; sleep 0.1; done
[[ -f "$work/ready" ]] || fail "stand-in mpirun did not start"
kill -TERM "$pid"
status=0; wait "$pid" || status=$?
[[ $status -eq 42 ]] || fail "SIGTERM forwarding: $status, expected the child's 42"
expect_fail 1 "cannot start $work/no-mpirun" -- "$launch" --mpirun "$work/no-mpirun" --hylo "$hylo" -- presets
# A real distributed generate through the launcher: TP 2 x CP 2 over 4 ranks gives the single process's tokens.
for i in $(seq 1 700); do echo $(( (i * 104729) % 128000 )); done >"$work/ids.txt"
gen=(generate --model "$work/tiny" --token-ids "$work/ids.txt" --max-new-tokens 8 --ignore-eos)
want="$(OMP_NUM_THREADS=1 "$hylo" "${gen[@]}" 2>/dev/null | grep '^ids:')"
got="$("$launch" --hylo "$hylo" --tp 2 --cp 2 --oversubscribe --env OMP_NUM_THREADS=1 -- "${gen[@]}" 2>"$work/err.txt" | grep '^ids:')" ||
  fail "distributed generate failed: $(cat "$work/err.txt")"
[[ -n "$want" && "$got" == "$want" ]] || fail "TP 2 x CP 2 tokens differ
   got: $got
  want: $want"
echo "launcher tests passed"
