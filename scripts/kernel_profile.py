#!/usr/bin/env python3
"""Per-kernel time of hylo's timed decode steps (or timed prefill) on the GPU machine, from Nsight Compute.

Runs `hylo bench` under ncu with one metric (gpu__time_duration.sum), keeping only the kernels launched inside
bench's NVTX range of the timed decode steps ("hylo timed decode") or of the timed prefill ("hylo timed prefill",
src/cli/bench.cpp; the warm-up and the profiled extra steps are outside both), and prints a table grouped by
kernel name (launches and time per step, share), most expensive first; --json writes the same rows.

    scripts/kernel_profile.py --hylo .carry/bin/hylo --preset HyLo-Llama-6MLA22M2 --prefill 128K --steps 3
    scripts/kernel_profile.py --parse ncu.csv --steps 3          # an existing ncu --csv log

ncu serializes kernels and times each alone, so the per-step sum is larger than the step's wall time (no overlap
between a kernel's tail and the next kernel's programmatic launch): use the shares and per-kernel numbers to see
where the time goes, and `hylo bench` for the step's wall time. Captured decode graphs are profiled node by node.
Not GPU-run yet (written 2026-11-28 without device time; the parser was checked on a synthetic ncu CSV).
"""
import argparse
import csv
import io
import json
import re
import subprocess
import sys
from collections import defaultdict

RANGES = {"decode": "hylo timed decode", "prefill": "hylo timed prefill"}


def base_name(kernel: str) -> str:
    """'void ns::(anonymous)::gemv_kernel<2, float>(Args)' -> 'gemv_kernel<2, float>' (templates kept: they tell
    instantiations apart, e.g. the fused GEMV's prologue)."""
    k = kernel.strip()
    k = re.sub(r"^void\s+", "", k)
    depth, cut = 0, len(k)
    for i, ch in enumerate(k):  # the argument list: the first '(' at template depth 0
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not k.startswith("(anonymous", i):
            cut = i
            break
    k = k[:cut]
    depth, last = 0, 0
    for i, ch in enumerate(k):  # drop namespaces: the last '::' at template depth 0
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == ":" and depth == 0 and i + 1 < len(k) and k[i + 1] == ":":
            last = i + 2
    return k[last:] or kernel


def parse(text: str):
    """ncu --csv output -> [(kernel name, duration in us)], in launch order."""
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]  # ncu's own messages start with ==PROF== etc.
    if not lines:
        raise SystemExit("kernel_profile: no CSV rows in the ncu output (did ncu profile any kernel?)")
    rows = []
    for r in csv.DictReader(io.StringIO("\n".join(lines))):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "")
        scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}.get(unit)
        if scale is None:
            raise SystemExit(f"kernel_profile: unknown duration unit {unit!r}")
        rows.append((r["Kernel Name"], value * scale))
    return rows


def table(rows, steps: int):
    groups = defaultdict(lambda: [0, 0.0])
    for name, us in rows:
        g = groups[base_name(name)]
        g[0] += 1
        g[1] += us
    total = sum(us for _, us in rows)
    out = []
    for name, (count, us) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        out.append({"kernel": name, "launches": count, "launches_per_step": count / steps, "total_us": us,
                    "us_per_step": us / steps, "share": us / total if total > 0 else 0.0})
    return out, total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hylo", default=".carry/bin/hylo", help="hylo binary (default .carry/bin/hylo)")
    ap.add_argument("--preset", default="HyLo-Llama-6MLA22M2")
    ap.add_argument("--prefill", default="8K", help="prompt length before the decode steps (default 8K)")
    ap.add_argument("--steps", type=int, default=3, help="decode steps profiled (default 3)")
    ap.add_argument("--phase", choices=sorted(RANGES), default="decode", help="which NVTX range (default decode)")
    ap.add_argument("--ncu", default="ncu")
    ap.add_argument("--parse", help="parse this ncu --csv log instead of running ncu")
    ap.add_argument("--log", help="keep ncu's CSV here")
    ap.add_argument("--json", help="write the rows as JSON")
    ap.add_argument("--top", type=int, default=30, help="rows printed (default 30)")
    a = ap.parse_args()
    if a.steps < 1:
        raise SystemExit("kernel_profile: --steps must be >= 1")
    if a.parse:
        with open(a.parse) as f:
            text = f.read()
    else:
        cmd = [a.ncu, "--nvtx", "--nvtx-include", RANGES[a.phase] + "/", "--metrics", "gpu__time_duration.sum",
               "--clock-control", "none", "--csv", a.hylo, "bench", "--preset", a.preset, "--prefill", a.prefill,
               "--decode-steps", str(a.steps), "--verify-tokens", "0", "--no-profile"]
        print("running:", " ".join(cmd), file=sys.stderr)
        done = subprocess.run(cmd, capture_output=True, text=True)
        text = done.stdout
        if a.log:
            with open(a.log, "w") as f:
                f.write(text)
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-4000:])
            raise SystemExit(f"kernel_profile: ncu / hylo exited with {done.returncode}")
    rows = parse(text)
    per = a.steps if a.phase == "decode" else 1
    out, total = table(rows, per)
    unit = "step" if a.phase == "decode" else "run"
    print(f"{len(rows)} kernels in {per} {unit}(s): {total / per:.1f} us per {unit} summed over serialized kernels "
          f"({len(rows) / per:.0f} launches per {unit})")
    print(f"{'kernel':60s} {'per ' + unit:>9s} {'us/' + unit:>10s} {'share':>7s}")
    for r in out[: a.top]:
        print(f"{r['kernel'][:60]:60s} {r['launches_per_step']:9.1f} {r['us_per_step']:10.1f} {100 * r['share']:6.1f}%")
    if len(out) > a.top:
        rest = sum(r["us_per_step"] for r in out[a.top:])
        print(f"{'(' + str(len(out) - a.top) + ' more kernels)':60s} {'':9s} {rest:10.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"phase": a.phase, "steps": per, "kernels": len(rows), "us_per_step": total / per, "rows": out},
                      f, indent=1)


if __name__ == "__main__":
    main()
