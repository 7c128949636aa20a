#!/usr/bin/env bash
# Fail-fast checks under mpirun (RELIABILITY.md "Faults to test"). usage:
#   test_faults.sh kill MPIEXEC MPI_FAULT_BINARY allreduce|ring|throw NP
#       the victim (rank NP-1) fails mid-collective (SIGKILL; for `throw` an exception that unwinds through
#       MpiSession): mpirun must exit non-zero within 30 s, name the rank (and signal 9, or MPI_ABORT), and
#       leave no process of the binary behind.
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
