#!/usr/bin/env bash
# GPU checks in two steps, because the GPU machine has no network and no PCRE2 headers (docs/PERFORMANCE.md):
#   scripts/gpu.sh pack        here: build with CUDA, the GPU test binaries and hylo stripped into .carry/hylo-gpu.tar.xz
#   scripts/gpu.sh unpack      there: the binaries into .carry/bin/ (run does it too)
#   scripts/gpu.sh bench [OUT] there: hylo bench of both released layouts + the PyTorch side-by-side
#   scripts/gpu.sh run [OUT]   there (repository root, .carry/ carried along): every GPU test, then a short table;
#                              logs under OUT (default $OUT or ./gpu-logs).
#   scripts/gpu.sh ab FLAGS [FLAGS ...]  there: hylo bench of both layouts with the defaults and with each FLAGS
#                              (e.g. "--cublas-decode"): each flag set verified first, then all timed alone on one
#                              GPU in turn, a table of decode ms/token; logs and JSON in $OUT/ab.tgz. ~6-8 min per set.
# Binaries built on Debian 12 run on Ubuntu 24.04 (CUDA 13.0 on both; PCRE2 static, spdlog header-only, gtest
# static; cuBLASLt, OpenMPI 4.1 and OpenBLAS resolve to that machine's own libraries).
set -uo pipefail
cd "$(dirname "$0")/.."
tests=(test_gpu_smoke test_gemm_cuda test_elementwise_cuda test_scans_cuda test_attention_cuda test_attention_cudnn test_mamba2_chunk_cuda test_gdn_chunk_cuda test_gemv_cuda test_sample_cuda test_cuda_engine)
# The binaries into .carry/bin/ (unpack), or only where they are not there yet (unpacked).
unpack() { mkdir -p .carry/bin && tar -xJf .carry/hylo-gpu.tar.xz -C .carry/bin; }
unpacked() { [[ -x .carry/bin/hylo ]] || unpack; }
# DIR into DIR.tgz beside it (the device tool brings back a limited number of files).
bundle() { tar -czf "$1.tgz" -C "$(dirname "$1")" "$(basename "$1")"; }
case "${1:-}" in
  pack)
    cmake -S . -B build-gpu -G Ninja -DHYLO_WERROR=ON >/dev/null || exit 1
    # Without the cuDNN frontend the engine falls back to its own attention kernel: benchmarks and the attention
    # tests would silently measure something else (a worktree without .venv did, 2026-11-28).
    if grep -q "^HYLO_CUDNN_FRONTEND_INCLUDE:PATH=.*NOTFOUND" build-gpu/CMakeCache.txt; then
      echo "gpu.sh pack: the cuDNN frontend headers were not found (run scripts/setup.sh, or set" \
        "HYLO_CUDNN_FRONTEND_INCLUDE and reconfigure build-gpu)" >&2
      exit 1
    fi
    cmake --build build-gpu -j "$(nproc)" --target hylo "${tests[@]}" test_comm_nccl test_cuda_tp test_cuda_cp test_mpi_device_collectives hylo-launch || exit 1
    # One xz tarball: the device tool carries at most 64 MiB, the stripped binaries are ~65 MB, the tarball ~9 MB.
    rm -rf .carry && mkdir -p .carry/bin
    cp build-gpu/src/hylo .carry/bin/hylo
    cp build-gpu/launcher/hylo-launch .carry/bin/hylo-launch
    for t in "${tests[@]}"; do cp "build-gpu/tests/$t" ".carry/bin/$t"; done
    cp build-gpu/tests/mpi/test_comm_nccl build-gpu/tests/mpi/test_cuda_tp build-gpu/tests/mpi/test_cuda_cp \
      build-gpu/tests/mpi/test_mpi_device_collectives .carry/bin/
    strip .carry/bin/* 2>/dev/null
    tar -cJf .carry/hylo-gpu.tar.xz -C .carry/bin . && rm -rf .carry/bin
    # FLA (pure Python + Triton) for scripts/compare/gdn_fla.py: the GPU machine has torch and triton, no network.
    pip download --quiet --no-deps -d .carry/wheels fla-core==0.6.0 einops >/dev/null 2>&1 ||
      echo "note: FLA wheels not downloaded (no network?): bench skips the GDN comparison"
    du -sh .carry
    ;;
  unpack)
    unpack || exit 1
    ;;
  run)
    unpacked || exit 1
    out="${2:-${OUT:-gpu-logs}}"
    mkdir -p "$out"
    export NCCL_NVLS_ENABLE=0 HYLO_SOURCE_DIR="$PWD"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
    declare -A result
    for t in "${tests[@]}"; do
      start=$(date +%s.%N)
      timeout 300 ".carry/bin/$t" --gtest_color=no >"$out/$t.log" 2>&1
      rc=$?
      secs=$(awk -v a="$start" -v b="$(date +%s.%N)" "BEGIN{print b - a}")
      case $rc in 0) result[$t]="pass" ;; 77) result[$t]="skip" ;; *) result[$t]="FAIL($rc)" ;; esac
      result[$t]="${result[$t]} $(printf '%.1f' "$secs") s"
    done
    # The NCCL transport: one rank per GPU, where there are at least two.
    ngpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
    if (( ngpu >= 2 )); then
      start=$(date +%s.%N)
      timeout 300 mpirun --allow-run-as-root -np "$ngpu" -x NCCL_NVLS_ENABLE=0 .carry/bin/test_comm_nccl --gtest_color=no \
        >"$out/test_comm_nccl.log" 2>&1
      rc=$?
      case $rc in 0) r="pass" ;; 77) r="skip" ;; *) r="FAIL($rc)" ;; esac
      tests+=(test_comm_nccl)
      result[test_comm_nccl]="$r ($ngpu ranks) $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}') s"
      # The MPI transport for GPU engines on device buffers (host-staged; direct where the MPI is CUDA-aware).
      timeout 120 mpirun --allow-run-as-root -np "$ngpu" .carry/bin/test_mpi_device_collectives --gtest_color=no \
        >"$out/test_mpi_device_collectives.log" 2>&1
      rc=$?
      case $rc in 0) r="pass" ;; 77) r="skip" ;; *) r="FAIL($rc)" ;; esac
      tests+=(test_mpi_device_collectives)
      result[test_mpi_device_collectives]="$r ($ngpu ranks; $(grep -o 'mpi device transport here: [^(]*' \
        "$out/test_mpi_device_collectives.log" | head -1 | sed 's/.*here: //'))"
      # TP = 2 of the CUDA engine against one GPU, over NCCL and over MPI (golden "mixed": its 2 kv heads allow TP 2 only).
      start=$(date +%s.%N)
      timeout 300 mpirun --allow-run-as-root -np 2 -x NCCL_NVLS_ENABLE=0 -x HYLO_SOURCE_DIR .carry/bin/test_cuda_tp \
        --gtest_color=no >"$out/test_cuda_tp.log" 2>&1
      rc=$?
      case $rc in 0) r="pass" ;; 77) r="skip" ;; *) r="FAIL($rc)" ;; esac
      tests+=(test_cuda_tp)
      result[test_cuda_tp]="$r (2 ranks) $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}') s"
      # CP = every GPU (zigzag and contiguous; with 4: TP 2 x CP 2 too) against one GPU, over NCCL and over MPI, then
      # the watchdog on the engine's collectives (3 s deadline, ~20 s of it).
      start=$(date +%s.%N)
      timeout 500 mpirun --allow-run-as-root -np "$ngpu" -x NCCL_NVLS_ENABLE=0 -x HYLO_SOURCE_DIR .carry/bin/test_cuda_cp \
        --gtest_color=no >"$out/test_cuda_cp.log" 2>&1
      rc=$?
      case $rc in 0) r="pass" ;; 77) r="skip" ;; *) r="FAIL($rc)" ;; esac
      tests+=(test_cuda_cp)
      result[test_cuda_cp]="$r ($ngpu ranks) $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}') s"
      # The watchdog on a decode step replayed from a CUDA graph, on its own with a bound (it hung once: see the test).
      timeout 90 mpirun --allow-run-as-root -np 2 -x NCCL_NVLS_ENABLE=0 -x HYLO_SOURCE_DIR -x HYLO_TEST_GRAPH_WATCHDOG=1 \
        .carry/bin/test_cuda_cp --gtest_filter=CudaCp.WatchdogEndsADecodeStepThatPeersSkip --gtest_color=no \
        >"$out/test_cuda_cp_graph_watchdog.log" 2>&1
      rc=$?
      case $rc in 0) r="pass" ;; 77) r="skip" ;; 124) r="HUNG (90 s)" ;; *) r="FAIL($rc)" ;; esac
      tests+=(test_cuda_cp_graph_watchdog)
      result[test_cuda_cp_graph_watchdog]="$r (2 ranks)"
      # hylo generate with TP 2, CP 2 (and TP 2 x CP 2 with 4 GPUs) against one GPU: the same greedy tokens, over NCCL
      # and over MPI (--transport; the transport each run reported in the table).
      for layout in "2 1" "1 2" "2 2"; do
        set -- $layout
        (( $1 * $2 <= ngpu )) || continue
        for transport in nccl mpi; do
          t="generate_tp$1_cp$2"
          [[ $transport == nccl ]] || t="${t}_$transport"
          timeout 200 tests/mpi/test_generate_cuda_parallel.sh mpirun .carry/bin/hylo "$PWD" "$1" "$2" "$transport" \
            >"$out/$t.log" 2>&1
          rc=$?
          case $rc in 0) r="pass" ;; 77) r="skip" ;; *) r="FAIL($rc)" ;; esac
          tests+=("$t")
          result[$t]="$r ($(grep -o 'PASS: TP [0-9]* x CP [0-9]* over [^=]*' "$out/$t.log" | sed 's/.* over //;s/ *$//'))"
        done
      done
    fi
    echo "---- GPU tests ----"
    for t in "${tests[@]}"; do printf '%-24s %s\n' "$t" "${result[$t]}"; done
    grep -h -E "^\s+(\[|hylo-tiny|greedy|chunk|linear|CP|TP|watchdog|  )" "$out"/test_*.log | head -80 >"$out/summary.txt"
    grep -h -E "FAILED|Failure|error" "$out"/test_*.log | head -40
    # Everything in one file too: the device tool brings back a limited number of files per call.
    tar -czf /tmp/hylo-gpu-logs.tgz -C "$out" . && mv /tmp/hylo-gpu-logs.tgz "$out/all-logs.tgz"
    ;;
  bench)
    # hylo bench of the two released layouts (random weights; verified against the CPU engine first), then the
    # PyTorch/HF side-by-side (scripts/compare/torch_prefill.py). Lengths: HYLO_BENCH_LENGTHS (default 8K,32K,128K).
    # Then hylo's GDN chunked scan against FLA's (scripts/compare/gdn_fla.py) when the wheels were carried.
    unpacked || exit 1
    out="${2:-${OUT:-gpu-logs}}"
    mkdir -p "$out"
    export NCCL_NVLS_ENABLE=0
    py=/opt/torch/.venv/bin/python; [[ -x $py ]] || py=python3
    for p in HyLo-Llama-6MLA22M2 HyLo-Qwen-7MLA21GDN; do
      timeout 580 .carry/bin/hylo bench --preset "$p" --prefill "${HYLO_BENCH_LENGTHS:-8K,32K,128K}" --decode-steps 32 \
        --json "$out/bench-$p.json" >"$out/bench-$p.log" 2>&1 || echo "bench $p failed: $out/bench-$p.log"
      grep -v "^\[" "$out/bench-$p.log" | tail -16
      [[ "${HYLO_BENCH_TORCH:-1}" == 1 ]] || continue
      timeout 300 "$py" scripts/compare/torch_prefill.py --preset "configs/$p" --lengths 8K,32K --repeats 2 \
        --hylo-json "$out/bench-$p.json" --json "$out/torch-$p.json" >"$out/torch-$p.log" 2>&1
      grep -v "falling back" "$out/torch-$p.log" | tail -8
    done
    if ls .carry/wheels/fla_core-*.whl >/dev/null 2>&1; then
      "$py" -m pip install --quiet --no-deps --no-index --target .carry/pylib .carry/wheels/*.whl >"$out/fla-install.log" 2>&1
      timeout 300 .carry/bin/test_gdn_chunk_cuda --gtest_filter=GdnChunkCuda.QwenLongAndBenchmark --gtest_color=no \
        >"$out/gdn-bench.log" 2>&1
      PYTHONPATH="$PWD/.carry/pylib" timeout 300 "$py" scripts/compare/gdn_fla.py --hylo-log "$out/gdn-bench.log" \
        --lengths 8K,128K --json "$out/gdn-fla.json" >"$out/gdn-fla.log" 2>&1
      tail -6 "$out/gdn-fla.log"
    fi
    ;;
  ab)
    # A/B of bench options: `scripts/gpu.sh ab "--l2-prefetch" ["--fused-mlp" ...]` runs hylo bench of the released
    # layouts (HYLO_AB_PRESETS, default both) with the defaults (side A) and with each FLAGS argument (sides B, C, ...)
    # at HYLO_AB_LENGTH (default 128K). Two phases, because a decode step waits on the host for its token and the CPU
    # reference of a verification loads the host: single-GPU decode timings taken beside a verifying job moved by up
    # to 0.9 ms (2026-11-28). 1. verify: each layout with each FLAGS checked against the CPU reference on a short
    # prompt (~100 s each: the CPU reference), side by side on the GPUs there are (A, the defaults, is what
    # test_cuda_engine and every bench verify). 2. time: nothing else running, one GPU, the sides in turn (A B C A B
    # C ...) HYLO_AB_REPEATS times (default 2) without verification. A table of decode ms/token per side and its
    # ratio to A (means over the repeats); logs and JSON in ${OUT:-gpu-logs}/ab.tgz. One side: ~6-8 min.
    [[ $# -ge 2 ]] || { echo "usage: scripts/gpu.sh ab FLAGS [FLAGS ...]" >&2; exit 2; }
    unpacked || exit 1
    shift
    sides=("" "$@")  # side 0 = A = the defaults
    names=(A B C D E F G H)
    (( ${#sides[@]} <= ${#names[@]} )) || { echo "gpu.sh ab: at most $(( ${#names[@]} - 1 )) flag sets" >&2; exit 2; }
    out="${OUT:-gpu-logs}/ab"
    mkdir -p "$out"
    export NCCL_NVLS_ENABLE=0
    ngpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
    (( ngpu >= 1 )) || { echo "gpu.sh ab: no GPU" >&2; exit 1; }
    len="${HYLO_AB_LENGTH:-128K}"
    repeats="${HYLO_AB_REPEATS:-2}"
    read -r -a presets <<<"${HYLO_AB_PRESETS:-HyLo-Llama-6MLA22M2 HyLo-Qwen-7MLA21GDN}"
    i=0
    failed=0
    for p in "${presets[@]}"; do
      for (( s = 1; s < ${#sides[@]}; ++s )); do
        # shellcheck disable=SC2086  # a flag set is a list of options
        CUDA_VISIBLE_DEVICES=$(( i % ngpu )) timeout 280 .carry/bin/hylo bench --device cuda --preset "$p" --prefill 4K \
          --decode-steps 4 ${sides[s]} >"$out/$p-${names[s]}-verify.log" 2>&1 &
        i=$(( i + 1 ))
        (( i % ngpu == 0 )) && wait
      done
    done
    wait
    for p in "${presets[@]}"; do
      for (( s = 1; s < ${#sides[@]}; ++s )); do
        f="$out/$p-${names[s]}-verify.log"
        grep -q "^verify .*limit" "$f" && awk '$1 ~ /^[0-9]+$/ && NF >= 8 {ok = 1} END {exit !ok}' "$f" ||
          { echo "gpu.sh ab: $p with ${sides[s]} did not verify: $f"; failed=1; }
      done
    done
    # No timings of a side that did not verify.
    (( failed == 0 )) || { bundle "$out"; exit 1; }
    for p in "${presets[@]}"; do
      for (( r = 1; r <= repeats; ++r )); do
        for (( s = 0; s < ${#sides[@]}; ++s )); do
          # shellcheck disable=SC2086
          CUDA_VISIBLE_DEVICES=0 timeout 200 .carry/bin/hylo bench --device cuda --preset "$p" --prefill "$len" \
            --decode-steps 128 --verify-tokens 0 ${sides[s]} --json "$out/$p-${names[s]}$r.json" \
            >"$out/$p-${names[s]}$r.log" 2>&1 || echo "bench $p ${names[s]} (repeat $r) failed: $out/$p-${names[s]}$r.log"
        done
      done
    done
    val() { awk -v c="$2" '$1 ~ /^[0-9]+$/ && NF >= 8 {print $c; exit}' "$out/$1.log" 2>/dev/null; }
    echo "---- at $len, 128 decode steps, one GPU, sides in turn, $repeats repeats; decode ms/token (x A) ----"
    for (( s = 0; s < ${#sides[@]}; ++s )); do echo "  ${names[s]} = ${sides[s]:-the defaults}"; done
    for p in "${presets[@]}"; do
      line=$(printf '%-22s' "$p")
      a_mean=""
      for (( s = 0; s < ${#sides[@]}; ++s )); do
        vals=()
        for (( r = 1; r <= repeats; ++r )); do vals+=("$(val "$p-${names[s]}$r" 6)"); done
        mean=$(printf '%s\n' "${vals[@]}" | awk 'NF {n++; t += $1} END {if (n) printf "%.3f", t / n}')
        [[ $s == 0 ]] && a_mean=$mean
        ratio=$(awk -v m="$mean" -v a="$a_mean" 'BEGIN {if (m != "" && a > 0) printf "%.3f", m / a; else print "-"}')
        line+=$(printf '  %s %s (%s)' "${names[s]}" "$(IFS=,; echo "${vals[*]}")" "$ratio")
      done
      echo "$line"
    done
    bundle "$out"
    ;;
  *) echo "usage: scripts/gpu.sh pack | unpack | run [OUT] | bench [OUT] | ab FLAGS [FLAGS ...]" >&2; exit 2 ;;
esac
