#!/usr/bin/env bash
# The scaling pipeline end to end on the CPU runtime: scripts/scaling/sweep.py drives hylo-launch + `hylo bench`
# (strong scaling, CP 1 and 2, hylo-tiny), then report.py writes the table (and the plots when matplotlib is
# there). Timings on this oversubscribed machine mean nothing; the test checks the plumbing and the numbers'
# consistency. usage: test_scaling.sh PYTHON HYLO_LAUNCH WORK_DIR
set -euo pipefail
py="$1" launch="$2" work="$3"
root="$(cd "$(dirname "$0")/../.." && pwd)"
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
"$py" "$root/scripts/scaling/sweep.py" --mode strong --preset hylo-tiny --device cpu --length 300 --cp 1,2 \
  --repeats 2 --decode-steps 1 --oversubscribe --hylo-launch "$launch" --out "$work/sweep" >"$work/sweep.log" 2>&1 ||
  fail "sweep: $(tail -20 "$work/sweep.log")"
"$py" "$root/scripts/scaling/report.py" "$work/sweep/sweep.json" --out "$work/report" >"$work/report.log" 2>&1 ||
  fail "report: $(cat "$work/report.log")"
"$py" - "$work" <<'PY' || fail "outputs"
import json, os, sys
w = sys.argv[1]
s = json.load(open(os.path.join(w, "sweep", "sweep.json")))
pts = s["points"]
assert [p["cp"] for p in pts] == [1, 2] and all(p["prompt_tokens"] == 300 for p in pts), pts
for p in pts:
    assert len(p["ttft_all"]) == 2 and min(p["ttft_all"]) <= p["ttft_s"] <= max(p["ttft_all"]), p
    assert p["decode_ms_per_token"] > 0, p
assert pts[0]["comm_bytes"] == 0 and pts[1]["comm_bytes"] > 0, "CP 2 must communicate, CP 1 must not"
md = open(os.path.join(w, "report", "scaling.md")).read()
assert "| 2 (2 x 1) | 300 |" in md, md
try:
    import matplotlib  # noqa: F401
    assert os.path.getsize(os.path.join(w, "report", "strong-hylo-tiny.png")) > 1000
except ImportError:
    pass
PY
# A series run in two jobs (CP 1, then CP 2; the first cut short): report --merge gives the same table rows.
"$py" - "$work" <<'PY' || fail "split"
import json, os, sys
w = sys.argv[1]
s = json.load(open(os.path.join(w, "sweep", "sweep.json")))
assert s["complete"] is True, "a finished sweep says so"
for i, name in enumerate(["a", "b"]):
    os.makedirs(os.path.join(w, name), exist_ok=True)
    part = dict(s, points=[s["points"][i]], complete=i == 1)
    json.dump(part, open(os.path.join(w, name, "sweep.json"), "w"))
PY
"$py" "$root/scripts/scaling/report.py" "$work/b/sweep.json" "$work/a/sweep.json" --merge --out "$work/merged" \
  >"$work/merged.log" 2>&1 || fail "report --merge: $(cat "$work/merged.log")"
"$py" - "$work" <<'PY' || fail "merged outputs"
import os, sys
w = sys.argv[1]
rows = lambda d: [l for l in open(os.path.join(w, d, "scaling.md")) if l.startswith("| 1 (") or l.startswith("| 2 (")]
one, merged = rows("report"), rows("merged")
assert len(one) == 2 and merged == one, (one, merged)
log = open(os.path.join(w, "merged.log")).read()
assert "cut short" in log, log
PY
# Two series of the same mode and model, not merged: two tables, and (with matplotlib) two plots, neither
# overwriting the other.
"$py" "$root/scripts/scaling/report.py" "$work/a/sweep.json" "$work/b/sweep.json" --out "$work/two" \
  >"$work/two.log" 2>&1 || fail "report of two series: $(cat "$work/two.log")"
"$py" - "$work" <<'PY' || fail "two series"
import os, sys
w = sys.argv[1]
md = open(os.path.join(w, "two", "scaling.md")).read()
assert md.count("### strong scaling") == 2, md
try:
    import matplotlib  # noqa: F401
    for f in ("strong-hylo-tiny.png", "strong-hylo-tiny-2.png"):
        assert os.path.getsize(os.path.join(w, "two", f)) > 1000, f
except ImportError:
    pass
print("scaling pipeline ok")
PY
# The device-call plan of the 4- / 8-GPU runs (scripts/scaling/plan.sh): every call prints a command line that
# drives sweep.py or hylo-launch and writes under OUT/<call>; an unknown call is refused.
calls=$("$root/scripts/scaling/plan.sh" list | awk '{print $1}')
[[ $(wc -w <<<"$calls") -ge 6 ]] || fail "plan.sh list: $calls"
for c in $calls; do
  line=$(OUT="$work/plan" "$root/scripts/scaling/plan.sh" "$c" --dry-run) || fail "plan.sh $c --dry-run"
  [[ $line == *"$work/plan/$c"* && ( $line == *sweep.py* || $line == *hylo-launch* ) ]] || fail "plan.sh $c: $line"
done
if "$root/scripts/scaling/plan.sh" no-such-call >/dev/null 2>&1; then fail "plan.sh accepted an unknown call"; fi
echo "scaling plan ok"
