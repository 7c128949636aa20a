#!/usr/bin/env python3
"""Scaling sweeps through hylo-launch + `hylo bench` (issue 7; docs/PERFORMANCE.md says how numbers are taken).

  strong scaling: a fixed total prompt length, CP = 1, 2, 4, ... (each rank holds length / CP tokens)
  weak scaling:   a fixed length per rank, CP = 1, 2, 4, ... (total = per-rank length x CP)

Each point is one `hylo bench` job (verified first by bench itself) timing the prompt `repeats` times in a row (bench
--prefill L,L,L: the model, NCCL and the cuDNN graphs are set up once); the point keeps the median TTFT and decode
ms/token and the last run's communication totals and per-op split. Results go to OUT/sweep.json, rewritten after
every point ("complete": false until the last one), so a sweep cut short by a time limit keeps its finished
points; draw them with scripts/scaling/report.py (table + plots; needs matplotlib, so it can run on another
machine), which also merges sweeps of the same series run in several jobs (--merge: e.g. CP 1, 2 in one device
call and CP 4, 8 in the next).

Example (4 GPUs):  scripts/scaling/sweep.py --mode strong --preset HyLo-Llama-6MLA22M2 --length 512K --cp 1,2,4
CPU check (CI):    scripts/scaling/sweep.py --mode strong --preset hylo-tiny --device cpu --length 512 --cp 1,2 \
                       --repeats 1 --oversubscribe --out /tmp/sweep
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def tokens(text):
    t = text.strip().upper()
    mult = 1
    if t.endswith("K"):
        mult, t = 1024, t[:-1]
    elif t.endswith("M"):
        mult, t = 1024 * 1024, t[:-1]
    if not t.isdigit() or int(t) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token count (8K, 1M, 1500)")
    return int(t) * mult


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["strong", "weak"], required=True)
    ap.add_argument("--preset", default="HyLo-Llama-6MLA22M2")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--length", type=tokens, required=True, help="strong: total tokens; weak: tokens per rank")
    ap.add_argument("--cp", default="1,2,4", help="CP degrees, comma-separated")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--cp-split", choices=["zigzag", "contiguous"], default="zigzag")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--verify-tokens", type=int, default=16,
                    help="bench verifies the largest-CP point against the CPU reference first (0: off)")
    ap.add_argument("--hylo-launch", default=os.path.join(root, "build", "launcher", "hylo-launch"))
    ap.add_argument("--hylo", default="", help="hylo binary (default: next to hylo-launch)")
    ap.add_argument("--oversubscribe", action="store_true", help="more ranks than cores (CPU checks)")
    ap.add_argument("--out", default="scaling-out")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    a = ap.parse_args()
    cps = [int(c) for c in a.cp.split(",")]
    if any(c < 1 for c in cps) or a.repeats < 1:
        sys.exit("sweep: CP degrees and --repeats must be >= 1")
    os.makedirs(a.out, exist_ok=True)
    points = []

    def write(complete):
        result = {"mode": a.mode, "preset": a.preset, "device": a.device, "length": a.length, "tp": a.tp,
                  "cp_split": a.cp_split, "repeats": a.repeats, "points": points, "complete": complete,
                  "date": time.strftime("%Y-%m-%d"), "host": os.uname().nodename}
        tmp = os.path.join(a.out, "sweep.json.tmp")
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, os.path.join(a.out, "sweep.json"))

    for cp in cps:
        total = a.length if a.mode == "strong" else a.length * cp
        js = os.path.join(a.out, f"{a.mode}-cp{cp}-tp{a.tp}.json")
        cmd = [a.hylo_launch, "--cp", str(cp), "--tp", str(a.tp)]
        if a.hylo:
            cmd += ["--hylo", a.hylo]
        if a.oversubscribe:
            cmd += ["--oversubscribe", "--env", "OMP_NUM_THREADS=1"]
        if a.device == "cuda":
            cmd += ["--env", "NCCL_NVLS_ENABLE=0"]
        cmd += ["--", "--log-level", "warn", "bench", "--preset", a.preset, "--device", a.device,
                "--prefill", ",".join([str(total)] * a.repeats), "--decode-steps", str(a.decode_steps),
                "--verify-tokens", str(a.verify_tokens if cp == max(cps) else 0), "--cp-split", a.cp_split,
                "--json", js]
        print("sweep:", " ".join(cmd), flush=True)
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
        if p.returncode != 0:
            sys.exit(f"sweep: run failed (exit {p.returncode}) after {time.time() - t0:.0f} s:\n{p.stdout}\n{p.stderr}")
        with open(js) as f:
            bench = json.load(f)
        runs = bench["runs"]
        ttft = [r["ttft_s"] for r in runs]
        dec = [r["decode_ms_per_token"] for r in runs]
        last = runs[-1]
        points.append({
            "cp": cp, "tp": a.tp, "ranks": cp * a.tp, "prompt_tokens": total,
            "ttft_s": statistics.median(ttft), "ttft_all": ttft,
            "decode_ms_per_token": statistics.median(dec), "decode_all": dec,
            "prefill_tokens_per_s": total / statistics.median(ttft),
            "comm_seconds": last.get("comm_seconds", 0.0), "comm_bytes": last.get("comm_bytes", 0),
            "prefill_op_seconds": last.get("prefill_op_seconds") or {},
            "device": bench.get("gpu", bench.get("device")),
        })
        print(f"sweep: cp {cp}: {total} tokens, TTFT {points[-1]['ttft_s']:.3f} s (median of {a.repeats}), "
              f"decode {points[-1]['decode_ms_per_token']:.2f} ms/token", flush=True)
        write(complete=cp == cps[-1])
    print(f"sweep: wrote {os.path.join(a.out, 'sweep.json')}")


if __name__ == "__main__":
    main()
