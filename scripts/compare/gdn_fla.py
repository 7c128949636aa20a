#!/usr/bin/env python3
"""hylo's Gated DeltaNet chunked scan against FLA's (flash-linear-attention), the anchor for that kernel.

Runs on the GPU machine (torch + triton are there; FLA is carried as wheels: `scripts/gpu.sh pack` downloads
fla-core and einops into .carry/wheels, `scripts/gpu.sh bench` installs them into .carry/pylib). Steps:

  verify  FLA's chunk_gated_delta_rule (bf16 q / k / v, fp32 log-decay g and beta, q / k L2-normalized in the
          kernel) against transformers' torch_chunk_gated_delta_rule (Qwen3-Next's torch fallback, fp32) on the
          same inputs at --verify-tokens: relative L2 of o and of the final state (bf16 inputs: ~1e-2 expected).
  time    FLA's forward (final state kept, as a prefill chunk needs) per --lengths, CUDA events after a warm-up,
          median of --repeats; us per token of one GDN layer (all heads).
  compare with --hylo-log: the `[bench]` lines of tests/gpu/test_gdn_chunk_cuda (hylo's chunked scan on the same
          head shape, fp32 inputs, T = 8192 and 131072) side by side.

The workloads are not byte-identical: hylo's scan takes fp32 q / k / v (the engine's projections write fp32) and
normalizes q / k before it (the engine's conv + norm kernel), FLA takes bf16 and normalizes inside. The scan's
arithmetic (WY / UT chunks of 64, the state recurrence) is the same problem.

usage: gdn_fla.py [--heads 6] [--k-heads 6] [--dk 256] [--dv 512] [--lengths 8K,32K,128K] [--repeats 5]
                  [--verify-tokens 2048] [--hylo-log test_gdn_chunk_cuda.log] [--json OUT]
"""
import argparse
import json
import re
import statistics
import sys


def tokens(text):
    t = text.strip().upper()
    mult = 1
    if t.endswith("K"):
        mult, t = 1024, t[:-1]
    elif t.endswith("M"):
        mult, t = 1024 * 1024, t[:-1]
    if not t.isdigit() or int(t) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token count (8K, 128K, 2048)")
    return int(t) * mult


def parse_hylo_log(path):
    """{T: us_per_token} from test_gdn_chunk_cuda's '[bench] Qwen head ... T=N...: chunked X ms (Y us/token)'."""
    out = {}
    pat = re.compile(r"\[bench\] Qwen head.*?T=(\d+).*?chunked ([0-9.]+) ms \(([0-9.]+) us/token\)")
    with open(path) as f:
        for line in f:
            m = pat.search(line)
            if m:
                out[int(m.group(1))] = float(m.group(3))
    return out


def rel_l2(a, b):
    import torch
    a, b = a.double(), b.double()
    return (torch.linalg.vector_norm(a - b) / torch.clamp(torch.linalg.vector_norm(b), min=1e-30)).item()


def inputs(T, hk, hv, dk, dv, seed, dev):
    import torch
    g0 = torch.Generator(device=dev).manual_seed(seed)
    q = torch.randn(1, T, hk, dk, device=dev, generator=g0).bfloat16()
    k = torch.randn(1, T, hk, dk, device=dev, generator=g0).bfloat16()
    v = torch.randn(1, T, hv, dv, device=dev, generator=g0).bfloat16()
    # Log-decays as Qwen3-Next makes them (-A * softplus(a + dt_bias)), here a spread of -0.005 .. -0.7 per token.
    g = -torch.nn.functional.softplus(torch.randn(1, T, hv, device=dev, generator=g0) - 2.0).float()
    beta = torch.sigmoid(torch.randn(1, T, hv, device=dev, generator=g0)).float()
    return q, k, v, g, beta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=int, default=6, help="value heads HV (HyLo-Qwen-7MLA21GDN: 6)")
    ap.add_argument("--k-heads", type=int, default=6, help="key heads H (HV must be a multiple)")
    ap.add_argument("--dk", type=int, default=256)
    ap.add_argument("--dv", type=int, default=512)
    ap.add_argument("--lengths", default="8K,32K,128K")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--verify-tokens", type=tokens, default=2048)
    ap.add_argument("--hylo-log", default="", help="a test_gdn_chunk_cuda log for the side-by-side column")
    ap.add_argument("--json", default="")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    lengths = [tokens(x) for x in a.lengths.split(",")]
    if a.heads % a.k_heads != 0:
        sys.exit("gdn_fla: --heads must be a multiple of --k-heads")
    hylo = parse_hylo_log(a.hylo_log) if a.hylo_log else {}

    try:
        import torch
    except ImportError:
        sys.exit("gdn_fla: needs PyTorch with CUDA (the GPU machine has it)")
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as e:  # noqa: BLE001 - report what is missing and stop
        sys.exit(f"gdn_fla: FLA is not importable ({e}); on the GPU machine run it through scripts/gpu.sh bench, "
                 "which installs the carried wheels")
    from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule
    dev = torch.device(a.device)
    res = {"shape": {"heads": a.heads, "k_heads": a.k_heads, "dk": a.dk, "dv": a.dv},
           "gpu": torch.cuda.get_device_name(dev), "fla": __import__("fla").__version__, "runs": []}
    print(f"GDN scan, HV {a.heads} H {a.k_heads} dk {a.dk} dv {a.dv} on {res['gpu']}; FLA {res['fla']}")

    def fla(q, k, v, g, beta):
        return chunk_gated_delta_rule(q, k, v, g, beta, scale=a.dk ** -0.5, output_final_state=True,
                                      use_qk_l2norm_in_kernel=True)

    # verify: FLA vs the torch reference on the same (bf16) inputs, the reference in fp32.
    q, k, v, g, beta = inputs(a.verify_tokens, a.k_heads, a.heads, a.dk, a.dv, 1, dev)
    o, s = fla(q, k, v, g, beta)
    rep = a.heads // a.k_heads
    qr, kr = (x.float().repeat_interleave(rep, dim=2) for x in (q, k))
    o_ref, s_ref = torch_chunk_gated_delta_rule(qr, kr, v.float(), g, beta, chunk_size=64, initial_state=None,
                                                output_final_state=True, use_qk_l2norm_in_kernel=True)
    e_o, e_s = rel_l2(o.float(), o_ref.float()), rel_l2(s.float(), s_ref.float())
    res["verify"] = {"tokens": a.verify_tokens, "rel_l2_o": e_o, "rel_l2_state": e_s}
    print(f"verify  T={a.verify_tokens}: FLA vs torch_chunk_gated_delta_rule rel L2 o {e_o:.2e} state {e_s:.2e}")
    if not (e_o < 5e-2 and e_s < 5e-2):
        sys.exit("gdn_fla: FLA and the torch reference disagree (> 5e-2): check the input conventions first")

    print(f"{'tokens':>8} {'FLA ms':>9} {'FLA us/tok':>11} {'hylo us/tok':>12} {'hylo / FLA':>11}")
    for T in lengths:
        q, k, v, g, beta = inputs(T, a.k_heads, a.heads, a.dk, a.dv, 2, dev)
        fla(q, k, v, g, beta)
        torch.cuda.synchronize()
        times = []
        for _ in range(a.repeats):
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            fla(q, k, v, g, beta)
            t1.record()
            t1.synchronize()
            times.append(t0.elapsed_time(t1))
        ms = statistics.median(times)
        us = 1e3 * ms / T
        h = hylo.get(T)
        res["runs"].append({"tokens": T, "fla_ms": ms, "fla_us_per_token": us, "hylo_us_per_token": h})
        print(f"{T:>8} {ms:>9.3f} {us:>11.4f} {h if h is not None else float('nan'):>12.4f} "
              f"{(h / us) if h else float('nan'):>11.2f}")
        del q, k, v, g, beta
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
