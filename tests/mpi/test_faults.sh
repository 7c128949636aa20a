#!/usr/bin/env bash
# Fail-fast checks under mpirun (RELIABILITY.md "Faults to test"). usage:
#   test_faults.sh kill MPIEXEC MPI_FAULT_BINARY allreduce|ring|throw NP
#       the victim (rank NP-1) fails mid-collective (SIGKILL; for `throw` an exception that unwinds through
#       MpiSession): mpirun must exit non-zero within 30 s, name the rank (and signal 9, or MPI_ABORT), and
#       leave no process of the binary behind.
#   test_faults.sh generate-kill MPIEXEC HYLO NP
#       `hylo generate` with CP = NP decoding without end; rank NP-1 gets SIGKILL from outside: mpirun must exit
#       non-zero within 30 s, name the rank, and leave no hylo process behind.
#   test_faults.sh generate-stop MPIEXEC HYLO NP
#       the same job with --comm-timeout 4; rank NP-1 gets SIGSTOP (alive, stuck: mpirun does not notice): the MPI
#       watchdog of the other ranks must end the job non-zero within 30 s, naming the stuck collective and the
#       deadline, and leave no hylo process behind.
#   test_faults.sh generate-error MPIEXEC HYLO NP
#       rank 0 cannot read the prompt while the other ranks wait for it in a broadcast: the job must end
#       non-zero within 30 s with rank 0's message naming itself and the file.
#   test_faults.sh gtest-failure MPIEXEC TEST_COMM_MPI_BINARY NP
#       a test failing on the last (silent) rank only must fail the whole job, and rank 0 must name that rank.
set -uo pipefail
mode="$1" mpiexec="$2" binary="$3"
fail() { echo "FAIL: $*" >&2; echo "---- output ----" >&2; cat "$out" >&2; exit 1; }
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
launch=("$mpiexec" --allow-run-as-root --oversubscribe)

# Processes still running our binary (matched by executable, not by name: other jobs may run other builds).
leftovers() {
  local pids=() p
  for p in /proc/[0-9]*; do
    [[ "$(readlink "$p/exe" 2>/dev/null)" == "$(readlink -f "$binary")" ]] && pids+=("${p#/proc/}")
  done
  echo "${pids[*]:-}"
}

case "$mode" in
  kill)
    op="$4" np="$5" victim=$(( $5 - 1 ))
    start=$(date +%s%N)
    timeout 30 "${launch[@]}" -np "$np" "$binary" "$op" "$victim" >"$out" 2>&1
    rc=$?
    elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
    # timeout exits 124 when it had to stop mpirun (mpirun itself exits 137 = 128 + SIGKILL of the victim).
    [[ $rc -ne 124 && $elapsed_ms -lt 30000 ]] || fail "mpirun still running after 30 s (rank $victim killed during $op)"
    [[ $rc -ne 0 ]] || fail "mpirun exited 0 although rank $victim was killed"
    if [[ "$op" == throw ]]; then
      # Our own line, written before MPI_Abort. OpenMPI's "MPI_ABORT was invoked on rank N" is not checked:
      # it travels to mpirun as a show_help message that is sometimes lost when the rank exits right after
      # ("ORTE_ERROR_LOG: Data unpack would read past end of buffer in file .../show_help.c").
      grep -q "rank $victim (host .*): fatal: exception unwinding" "$out" || fail "no fatal message from rank $victim"
    else
      grep -Eq "process rank $victim .*(signal 9|Killed)" "$out" || fail "output does not name rank $victim and signal 9"
    fi
    sleep 1
    left="$(leftovers)"
    [[ -z "$left" ]] || fail "processes of $binary left behind: $left"
    echo "ok: rank $victim failed during $op with $np ranks: mpirun exited $rc after ${elapsed_ms} ms"
    grep -E "process rank $victim|MPI_ABORT was invoked|fatal:" "$out"
    ;;
  generate-kill|generate-stop|generate-error)
    np="$4" victim=$(( $4 - 1 ))
    work="$(mktemp -d)"
    trap 'rm -f "$out"; rm -rf "$work"' EXIT
    "$binary" make-checkpoint --preset hylo-tiny --out "$work/ck" >/dev/null 2>&1 || fail "make-checkpoint failed"
    for i in $(seq 1 3000); do echo $(( (i * 7919) % 128000 )); done >"$work/ids.txt"
    export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
    if [[ "$mode" == generate-error ]]; then
      start=$(date +%s%N)
      timeout 30 "${launch[@]}" -np "$np" "$binary" generate --model "$work/ck" --token-ids "$work/missing.txt" >"$out" 2>&1
      rc=$?
      elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
      [[ $rc -ne 124 ]] || fail "mpirun still running after 30 s (rank 0 could not read the prompt)"
      [[ $rc -ne 0 ]] || fail "mpirun exited 0 although rank 0 failed"
      grep -q "rank 0 (host .*): fatal: .*missing.txt.*cannot open the token-id file" "$out" || fail "no fatal message naming rank 0 and the file"
      echo "ok: rank 0's input error ended the $np-rank job: mpirun exited $rc after ${elapsed_ms} ms"
      grep "fatal:" "$out"
      exit 0
    fi
    extra=()
    [[ "$mode" == generate-stop ]] && extra=(--comm-timeout 4)
    "${launch[@]}" -np "$np" "$binary" generate --model "$work/ck" --token-ids "$work/ids.txt" --max-new-tokens 100000000 \
      --ignore-eos "${extra[@]}" >"$out" 2>&1 &
    job=$!
    # Wait until decoding runs (rank 0 logs the load; prefill of 3,000 tokens follows), then kill the victim.
    for _ in $(seq 1 300); do grep -q "loaded" "$out" && break; sleep 0.1; done
    grep -q "loaded" "$out" || { kill -9 "$job"; fail "the job did not start within 30 s"; }
    sleep 2
    pid=""
    for p in /proc/[0-9]*; do
      [[ "$(readlink "$p/exe" 2>/dev/null)" == "$(readlink -f "$binary")" ]] || continue
      tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$victim" && pid="${p#/proc/}"
    done
    [[ -n "$pid" ]] || { kill -9 "$job"; fail "rank $victim not found"; }
    kill -0 "$job" 2>/dev/null || fail "the job ended before the kill"
    start=$(date +%s%N)
    if [[ "$mode" == generate-stop ]]; then
      kill -STOP "$pid"
      for _ in $(seq 1 300); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done
      elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
      if kill -0 "$job" 2>/dev/null; then kill -9 "$pid" "$job"; fail "mpirun still running 30 s after rank $victim was stopped"; fi
      wait "$job"
      rc=$?
      kill -9 "$pid" 2>/dev/null  # a stopped rank mpirun could not end
      [[ $rc -ne 0 ]] || fail "mpirun exited 0 although rank $victim was stopped"
      grep -Eq "fatal: MPI [a-z]+.* on communicator '(cp|tp)' .*not complete after 4.0 s" "$out" ||
        fail "no fatal message naming the stuck MPI operation and the 4 s deadline"
      sleep 1
      left="$(leftovers)"
      [[ -z "$left" ]] || fail "processes of $binary left behind: $left"
      echo "ok: rank $victim of a $np-rank generate stopped: the watchdog ended the job, mpirun exited $rc after ${elapsed_ms} ms"
      grep -E "fatal:" "$out" | head -2
      exit 0
    fi
    kill -9 "$pid"
    for _ in $(seq 1 300); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done
    elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
    if kill -0 "$job" 2>/dev/null; then kill -9 "$job"; fail "mpirun still running 30 s after rank $victim was killed"; fi
    wait "$job"
    rc=$?
    [[ $rc -ne 0 ]] || fail "mpirun exited 0 although rank $victim was killed"
    grep -Eq "process rank $victim .*(signal 9|Killed)" "$out" || fail "output does not name rank $victim and signal 9"
    sleep 1
    left="$(leftovers)"
    [[ -z "$left" ]] || fail "processes of $binary left behind: $left"
    echo "ok: rank $victim of a $np-rank generate killed: mpirun exited $rc after ${elapsed_ms} ms"
    grep -E "process rank $victim" "$out"
    ;;
  gtest-failure)
    np="$4"
    HYLO_COMM_INJECT_FAILURE=1 timeout 60 "${launch[@]}" -np "$np" "$binary" --gtest_filter='Harness.*' --gtest_color=no >"$out" 2>&1
    rc=$?
    [[ $rc -ne 124 ]] || fail "timed out"
    [[ $rc -ne 0 ]] || fail "a failure on rank $((np - 1)) did not fail the job"
    grep -q "tests FAILED on ranks $((np - 1))\$" "$out" || fail "rank 0 does not name failing rank $((np - 1))"
    grep -q "\[rank $((np - 1))\] FAILED Harness.InjectedFailureOnLastRank" "$out" || fail "rank $((np - 1)) did not print its failure"
    echo "ok: failure on rank $((np - 1)) failed the job (mpirun exit $rc)"
    ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
