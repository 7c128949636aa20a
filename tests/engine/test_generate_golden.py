#!/usr/bin/env python3
"""End to end: `hylo generate --dump-logits` on a golden fixture equals the HF-transformers reference.

usage: test_generate_golden.py HYLO_BINARY FIXTURE_DIR WORK_DIR
The dump is read with the pip `safetensors` package (an independent reader), so this also checks the
writer's output format. Exits 77 (skip) when numpy/safetensors are missing.
"""
import os
import subprocess
import sys

try:
    import numpy as np
    from safetensors.numpy import load_file
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)

hylo, fixture, work = sys.argv[1:4]
os.makedirs(work, exist_ok=True)
golden = load_file(os.path.join(fixture, "golden.safetensors"))
tokens, ref = golden["tokens"], golden["logits"]
ids_path = os.path.join(work, "prompt.ids")
with open(ids_path, "w") as f:
    f.write(" ".join(str(int(t)) for t in tokens) + "\n")
dump = os.path.join(work, "logits.safetensors")
cmd = [hylo, "--log-level", "warn", "generate", "--model", fixture, "--token-ids", ids_path, "--max-new-tokens", "4",
       "--chunk-size", "64", "--dump-logits", dump, "--ignore-eos"]
out = subprocess.run(cmd, capture_output=True, text=True)
if out.returncode != 0:
    print(out.stdout, out.stderr)
    sys.exit(1)
got = load_file(dump)
assert (got["tokens"] == tokens).all(), "tokens differ"
err = np.linalg.norm(got["logits"].astype(np.float64) - ref) / np.linalg.norm(ref.astype(np.float64))
print(f"rel L2 vs HF reference: {err:.3e}")
assert err <= 1e-4, err
ids_line = [l for l in out.stdout.splitlines() if l.startswith("ids:")]
assert ids_line and len(ids_line[0].split()) == 5, out.stdout
# The first generated token is the greedy choice on the prompt's last logits.
assert int(ids_line[0].split()[1]) == int(np.argmax(ref[-1])), (ids_line, int(np.argmax(ref[-1])))
# Bad input: out-of-range id and empty prompt are refused with a message.
with open(ids_path, "w") as f:
    f.write("1 2 99999\n")
bad = subprocess.run(cmd[:-3], capture_output=True, text=True)
assert bad.returncode == 2 and "99999" in bad.stderr, bad.stderr
with open(ids_path, "w") as f:
    f.write("\n")
bad = subprocess.run(cmd[:-3], capture_output=True, text=True)
assert bad.returncode == 2 and "empty" in bad.stderr, bad.stderr
print("ok")
