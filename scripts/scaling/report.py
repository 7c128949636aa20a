#!/usr/bin/env python3
"""Table and plots of scaling sweeps (scripts/scaling/sweep.py output).

  scripts/scaling/report.py OUT/sweep.json [MORE.json ...] --out docs/scaling
  scripts/scaling/report.py A/sweep.json B/sweep.json --merge --out docs/scaling   (one series run in two jobs)

Writes OUT/scaling.md (markdown table per sweep) and, when matplotlib is importable, PNG plots: prefill
throughput and parallel efficiency against ranks, and prefill time split into compute / exposed communication /
idle per point. Efficiency: strong scaling T_1 / (N T_N); weak scaling T_1 / T_N (T = time to first token).
Compute is the timed GPU ops (bench's per-op split) or, without it, TTFT minus exposed communication; exposed
communication is the time rank 0 spent blocked in communication calls; idle is the rest of TTFT.
--merge joins sweeps of the same series (mode, preset, length per point: total for strong, per rank for weak)
into one, points ordered by ranks (a point measured twice keeps the later file's); efficiency is then relative
to the smallest point present (N = ranks / its ranks), so a series may start at 2 ranks where 1 is too slow.
"""
import argparse
import json
import os

COMM_OPS = ("tp allreduce", "cp exchange", "cp merge")


def split(p):
    comm = float(p.get("comm_seconds") or 0.0)
    ops = p.get("prefill_op_seconds") or {}
    # GPU runs time their NCCL calls as op categories too (they are the exposed communication, comm_seconds).
    ops = {k: v for k, v in ops.items() if k not in COMM_OPS}
    compute = sum(ops.values()) if ops else max(p["ttft_s"] - comm, 0.0)
    idle = max(p["ttft_s"] - compute - comm, 0.0)
    return compute, comm, idle


def efficiency(sweep, p):
    base = sweep["points"][0]
    n = p["ranks"] / base["ranks"]
    if sweep["mode"] == "strong":
        return base["ttft_s"] / (n * p["ttft_s"])
    return base["ttft_s"] / p["ttft_s"]


def table(sweep):
    lines = [f"### {sweep['mode']} scaling, {sweep['preset']} on {sweep['points'][0].get('device')}, "
             f"{sweep['date']} (median of {sweep['repeats']})", "",
             "| ranks (CP x TP) | prompt | TTFT s | prefill tok/s | efficiency | decode ms/token | compute / comm / idle |",
             "|---|---|---|---|---|---|---|"]
    for p in sweep["points"]:
        c, m, i = split(p)
        t = max(p["ttft_s"], 1e-12)
        lines.append(f"| {p['ranks']} ({p['cp']} x {p['tp']}) | {p['prompt_tokens']} | {p['ttft_s']:.3f} | "
                     f"{p['prefill_tokens_per_s']:.0f} | {100 * efficiency(sweep, p):.0f}% | "
                     f"{p['decode_ms_per_token']:.2f} | {100 * c / t:.0f}% / {100 * m / t:.0f}% / {100 * i / t:.0f}% |")
    lines.append("")
    if sweep["mode"] == "weak":
        lines.append("Weak-scaling efficiency is T_1 / T_N; with causal attention the work per GPU grows with the total "
                     "length (N x the tokens is ~N x the attention per GPU), so compare prefill tok/s too.")
    else:
        b = sweep["points"][0]["ranks"]
        lines.append("Strong-scaling efficiency is T_1 / (N T_N)." if b == 1 else
                     f"Strong-scaling efficiency is relative to the {b}-rank point: {b} T_{b} / (N T_N).")
    lines.append("comm: exposed communication (GPU runs: the NCCL calls' event-timed spans on the engine stream, "
                 "which include waiting for the slowest rank); idle: TTFT not covered by timed ops.")
    return "\n".join(lines) + "\n"


def plots(sweeps, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: table only (pip install matplotlib, or run this elsewhere)"
    made = []
    for s in sweeps:
        # One file per series: TP in the name where it is not 1, and a number where two series would still share
        # a name (e.g. the same model at two lengths), so no plot overwrites another.
        name = f"{s['mode']}-{s['preset']}" + (f"-tp{s['tp']}" if int(s.get("tp", 1)) != 1 else "")
        if os.path.join(out, f"{name}.png") in made:
            k = 2
            while os.path.join(out, f"{name}-{k}.png") in made:
                k += 1
            name = f"{name}-{k}"
        ranks = [p["ranks"] for p in s["points"]]
        fig, ax = plt.subplots(1, 3, figsize=(15, 4))
        ax[0].plot(ranks, [p["prefill_tokens_per_s"] for p in s["points"]], "o-")
        ax[0].set(xlabel="ranks", ylabel="prefill tokens/s", title="throughput")
        ax[0].set_ylim(bottom=0)
        for x in ax[:2]:
            x.set_xticks(ranks)
        ax[1].plot(ranks, [100 * efficiency(s, p) for p in s["points"]], "o-")
        ax[1].axhline(85, ls="--", c="gray")
        ax[1].set(xlabel="ranks", ylabel="%", title=f"{s['mode']} scaling efficiency", ylim=(0, 110))
        parts = [split(p) for p in s["points"]]
        xs = [str(r) for r in ranks]
        bottom = [0.0] * len(xs)
        for k, label in enumerate(["compute", "exposed comm", "idle"]):
            vals = [pt[k] for pt in parts]
            ax[2].bar(xs, vals, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax[2].set(xlabel="ranks", ylabel="seconds", title="prefill time")
        ax[2].legend()
        fig.suptitle(f"{s['preset']} {s['mode']} scaling, {s['points'][0]['prompt_tokens']} tokens at 1 rank, "
                     f"{s['date']}")
        fig.tight_layout()
        path = os.path.join(out, f"{name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return "plots: " + ", ".join(made)


def merge(sweeps):
    """Sweeps of one series (same mode, preset, length) -> one sweep; anything else is an error."""
    out, order = {}, []
    for s in sweeps:
        key = (s["mode"], s["preset"], s["length"])
        if key not in out:
            out[key] = dict(s, points=[])
            order.append(key)
        m = out[key]
        if m.get("device") != s.get("device") or m.get("cp_split") != s.get("cp_split"):
            raise SystemExit(f"report: --merge: {key} mixes devices or CP splits")
        by_layout = {(p["cp"], p["tp"]): p for p in m["points"]}
        for p in s["points"]:
            by_layout[(p["cp"], p["tp"])] = p
        m["points"] = sorted(by_layout.values(), key=lambda p: (p["ranks"], p["tp"]))
        m["repeats"] = min(m["repeats"], s["repeats"])
        m["date"] = max(m["date"], s["date"])
        m["complete"] = all(x.get("complete", True) for x in (m, s))
    return [out[k] for k in order]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweeps", nargs="+")
    ap.add_argument("--out", default="scaling-report")
    ap.add_argument("--merge", action="store_true", help="join sweeps of the same series (see above)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    sweeps = []
    for path in a.sweeps:
        with open(path) as f:
            sweeps.append(json.load(f))
    if a.merge:
        sweeps = merge(sweeps)
    for s in sweeps:
        if not s["points"]:
            raise SystemExit(f"report: {s['mode']} sweep of {s['preset']} has no points")
        if not s.get("complete", True):
            print(f"report: note: the {s['mode']} sweep of {s['preset']} was cut short "
                  f"({len(s['points'])} points)")
    md = "\n".join(table(s) for s in sweeps)
    with open(os.path.join(a.out, "scaling.md"), "w") as f:
        f.write(md)
    print(md)
    print(plots(sweeps, a.out))


if __name__ == "__main__":
    main()
