#!/usr/bin/env python3
"""What users run today, side by side with hylo: the same HyLo layout in PyTorch + HF transformers, on the GPU.

Runs on the GPU machine (torch + transformers are there; no network). Two parts:

  model      The preset's layer plan assembled from HF transformers modules in bf16 on one GPU, random weights:
               MLA     DeepseekV3Attention with attn_implementation="sdpa" (PyTorch SDPA; K/V expanded to all
                       query heads, as HF's MLA does), YaRN rope from DeepseekV3RotaryEmbedding
               Mamba2  Mamba2Mixer, torch path (n_groups = heads: x/B duplicated per head, as the golden
                       fixtures do), its default chunked SSD in torch (chunk_size from --mamba-chunk)
               GDN     Qwen3NextGatedDeltaNet, torch fallbacks (torch_chunk_gated_delta_rule, torch conv) unless
                       FLA / causal-conv1d are importable (printed)
               norms / MLP: LlamaRMSNorm, LlamaMLP; the LM head for the last token only (as hylo's prefill).
             The whole prompt goes through one forward (HF has no chunked prefill). Prefill time (CUDA events,
             after a warm-up, median of --repeats) and tokens/s per length; then, with --longest, the longest
             prompt that runs (doubling until out of memory or --longest-budget-s is spent).
  attention  The attention op alone at the shapes hylo's tests/gpu/test_attention_cudnn benchmark uses:
             causal T = S, GQA (enable_gqa), bf16, d 128, through SDPA's cuDNN backend and its flash backend.
             TFLOP/s with FLOPs = 4 T S H d / 2 (causal).

Writes JSON (--json) and prints a table; with --hylo-json (a `hylo bench --json` file of the same preset and
card) it prints the side-by-side ratio per prompt length.

usage: torch_prefill.py [--preset DIR] [--lengths 8K,32K] [--repeats 3] [--longest] [--attention]
                        [--hylo-json FILE] [--json OUT] [--device cuda]
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def parse_len(s):
    s = s.strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def load_preset(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    hyb = json.load(open(os.path.join(d, "hybrid_config.json")))
    n = hyb.get("n_layer", cfg["num_hidden_layers"])
    mla = set(hyb.get("mla_layers", []))
    lin = {"mamba2": "M", "gdn": "G"}[hyb.get("linear_mixer", "mamba2")]
    m2, gd = set(hyb.get("mamba2_layers", [])), set(hyb.get("gdn_layers", []))
    plan = "".join("A" if i in mla else "M" if i in m2 else "G" if i in gd else lin for i in range(n))
    return cfg, hyb, plan


# ---------------------------------------------------------------------------------------------------------
class Mla(nn.Module):
    def __init__(self, cfg, hyb):
        super().__init__()
        nH = hyb["num_attention_heads"]
        rs = hyb["rope_scaling"]
        c = DeepseekV3Config(
            hidden_size=cfg["hidden_size"], num_attention_heads=nH, num_key_value_heads=nH,
            q_lora_rank=hyb["q_lora_rank"], kv_lora_rank=hyb["kv_lora_rank"],
            qk_nope_head_dim=hyb["qk_nope_head_dim"], qk_rope_head_dim=hyb["qk_rope_head_dim"],
            v_head_dim=hyb["v_head_dim"], attention_bias=False, rms_norm_eps=cfg["rms_norm_eps"],
            rope_interleave=True,
            rope_parameters={"rope_type": "yarn", "factor": rs["factor"], "rope_theta": hyb["rope_theta"],
                             "original_max_position_embeddings": rs["original_max_position_embeddings"]},
            max_position_embeddings=rs["original_max_position_embeddings"] * int(rs["factor"]))
        c._attn_implementation = "sdpa"
        self.attn = DeepseekV3Attention(c, layer_idx=0)
        self.rope = DeepseekV3RotaryEmbedding(c)

    def forward(self, x):
        pos = torch.arange(x.shape[1], device=x.device)[None]
        cos, sin = self.rope(x, pos)
        out, _ = self.attn(x, position_embeddings=(cos.to(x.dtype), sin.to(x.dtype)), attention_mask=None)
        return out


def make_mamba2(cfg, hyb, chunk):
    from transformers.models.mamba2.configuration_mamba2 import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
    H = cfg["hidden_size"]
    N = hyb["ssm_cfg"]["d_state"]
    di = hyb["d_inner"]
    nh = di // N
    c = Mamba2Config(hidden_size=H, num_heads=nh, head_dim=N, state_size=N, n_groups=nh, expand=di // H,
                     conv_kernel=4, use_conv_bias=True, use_bias=False, chunk_size=chunk, layer_norm_epsilon=1e-5,
                     time_step_limit=(0.0, float("inf")))
    return Mamba2Mixer(c, layer_idx=0)


def make_gdn(cfg, hyb):
    from transformers.models.qwen3_next.configuration_qwen3_next import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet
    Hk, dk = hyb["gdn_num_heads"], hyb["gdn_head_dim"]
    Hv = hyb.get("gdn_num_v_heads", Hk)
    dv = hyb.get("gdn_head_v_dim", 2 * dk)
    c = Qwen3NextConfig(hidden_size=cfg["hidden_size"], linear_num_key_heads=Hk, linear_num_value_heads=Hv,
                        linear_key_head_dim=dk, linear_value_head_dim=dv, linear_conv_kernel_dim=4,
                        rms_norm_eps=cfg["rms_norm_eps"], hidden_act="silu")
    return Qwen3NextGatedDeltaNet(c, layer_idx=0)


class Mixer(nn.Module):
    """Wraps the HF mixers to one call signature: hidden states in, hidden states out."""

    def __init__(self, kind, cfg, hyb, mamba_chunk):
        super().__init__()
        self.kind = kind
        self.m = Mla(cfg, hyb) if kind == "A" else make_mamba2(cfg, hyb, mamba_chunk) if kind == "M" else make_gdn(cfg, hyb)

    def forward(self, x):
        out = self.m(x)
        return out[0] if isinstance(out, tuple) else out


class Model(nn.Module):
    def __init__(self, cfg, hyb, plan, mamba_chunk):
        super().__init__()
        H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
        lc = LlamaConfig(hidden_size=H, intermediate_size=I, rms_norm_eps=cfg["rms_norm_eps"], hidden_act="silu")
        self.embed = nn.Embedding(V, H)
        self.layers = nn.ModuleList()
        for kind in plan:
            self.layers.append(nn.ModuleList([LlamaRMSNorm(H, eps=cfg["rms_norm_eps"]), Mixer(kind, cfg, hyb, mamba_chunk),
                                              LlamaRMSNorm(H, eps=cfg["rms_norm_eps"]), LlamaMLP(lc)]))
        self.norm = LlamaRMSNorm(H, eps=cfg["rms_norm_eps"])
        self.head = nn.Linear(H, V, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens)[None]
        for n1, mixer, n2, mlp in self.layers:
            x = x + mixer(n1(x))
            x = x + mlp(n2(x))
        return self.head(self.norm(x[:, -1]))  # last-token logits, as hylo's prefill


def scale_weights(model, seed):
    """Random weights with O(1) activations (std 1/sqrt(fan_in)), like hylo's initialiser; the mixers' own
    parameters (A_log, dt_bias, D, norms, convs) keep HF's initialisation."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "conv" not in name:
                w = torch.randn(p.shape, generator=g, dtype=torch.float32) * (1.0 if "embed" in name else p.shape[1] ** -0.5)
                p.copy_(w.to(p.dtype))


def cuda_time(fn, repeats):
    times = []
    if not torch.cuda.is_available():  # CPU dry run (checks the assembly, not a benchmark)
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), out
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        a.record()
        out = fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times), out


# ---------------------------------------------------------------------------------------------------------
def bench_model(args, res):
    cfg, hyb, plan = load_preset(args.preset)
    dev = torch.device(args.device)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(dev):
        model = Model(cfg, hyb, plan, args.mamba_chunk).eval()
    scale_weights(model, args.seed)
    torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    fast = {}
    for mod in ("fla", "causal_conv1d", "mamba_ssm"):
        try:
            __import__(mod)
            fast[mod] = True
        except Exception:
            fast[mod] = False
    res["model"] = os.path.basename(os.path.normpath(args.preset))
    res["plan"] = plan
    res["parameters"] = params
    res["fast_kernels_importable"] = fast
    print(f"model {res['model']} plan {plan} params {params / 1e9:.2f}B; optional kernels importable: {fast}")
    V = cfg["vocab_size"]
    gen = torch.Generator(device="cpu").manual_seed(args.seed + 1)

    def run(L):
        tokens = torch.randint(0, V, (L,), generator=gen).to(dev)
        with torch.inference_mode():
            return model(tokens)

    with torch.inference_mode():
        run(min(2048, min(args.lengths)))  # warm-up: cuDNN plans, allocator
    rows = []
    for L in args.lengths:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            t, logits = cuda_time(lambda: run(L), args.repeats if L <= 32768 else 1)
        except torch.OutOfMemoryError:
            print(f"{L:>9d}  out of memory")
            rows.append({"prompt_tokens": L, "oom": True})
            torch.cuda.empty_cache()
            continue
        ok = bool(torch.isfinite(logits.float()).all())
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
        rows.append({"prompt_tokens": L, "ttft_s": t, "prefill_tokens_per_s": L / t, "peak_memory_bytes": peak,
                     "finite_logits": ok})
        print(f"{L:>9d}  TTFT {t:9.3f} s  {L / t:10.0f} tok/s  peak {peak / 2**30:6.1f} GiB  logits finite {ok}")
    res["runs"] = rows
    if args.longest:
        longest, L, spent = None, max(args.lengths) * 2, 0.0
        start = time.monotonic()
        while L <= args.longest_max:
            if time.monotonic() - start > args.longest_budget_s:
                print(f"longest: stopped by the {args.longest_budget_s:.0f} s budget before {L} tokens")
                res["longest_stopped_by_budget_before"] = L
                break
            try:
                t, _ = cuda_time(lambda: run(L), 1)
                longest = (L, t)
                print(f"longest: {L} tokens ran in {t:.2f} s (peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)")
            except torch.OutOfMemoryError:
                print(f"longest: {L} tokens: out of memory")
                res["longest_oom_at"] = L
                torch.cuda.empty_cache()
                break
            L *= 2
        res["longest_prompt_ran"] = longest[0] if longest else max(r["prompt_tokens"] for r in rows if not r.get("oom"))
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_attention(args, res):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    shapes = [(16384, 24, 8, 128), (16384, 16, 8, 128), (65536, 24, 8, 128)]
    rows = []
    for L, H, Hkv, d in shapes:
        q = torch.randn(1, H, L, d, device=args.device, dtype=torch.bfloat16)
        k = torch.randn(1, Hkv, L, d, device=args.device, dtype=torch.bfloat16)
        v = torch.randn(1, Hkv, L, d, device=args.device, dtype=torch.bfloat16)
        flops = 4 * L * L * H * d / 2
        row = {"T": L, "S": L, "heads": H, "kv_heads": Hkv, "d": d, "causal": True}
        outs = {}
        for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel([be]):
                    f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                    f()
                    t, o = cuda_time(f, 5)
                outs[name] = o
                row[name + "_ms"] = t * 1e3
                row[name + "_tflops"] = flops / t / 1e12
            except Exception as e:  # a backend that refuses the shape
                row[name + "_error"] = str(e).splitlines()[0][:200]
        if len(outs) == 2:
            a, b = outs["cudnn"].float(), outs["flash"].float()
            row["cudnn_vs_flash_rel_l2"] = float((a - b).norm() / b.norm())
        rows.append(row)
        print("attention " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    res["attention"] = rows


def side_by_side(args, res):
    if not os.path.exists(args.hylo_json):
        print(f"side by side: {args.hylo_json} does not exist (did the hylo bench run?)", file=sys.stderr)
        return
    hy = json.load(open(args.hylo_json))
    by_len = {r["prompt_tokens"]: r for r in hy.get("runs", [])}
    print(f"\nside by side ({res.get('gpu')}): hylo {hy.get('model')} vs PyTorch/HF, prefill")
    print(f"{'prompt':>9} {'hylo TTFT s':>12} {'torch TTFT s':>13} {'speed-up':>9}")
    table = []
    for r in res.get("runs", []):
        h = by_len.get(r["prompt_tokens"])
        if not h or r.get("oom"):
            continue
        sp = r["ttft_s"] / h["ttft_s"]
        table.append({"prompt_tokens": r["prompt_tokens"], "hylo_ttft_s": h["ttft_s"], "torch_ttft_s": r["ttft_s"],
                      "speedup": sp})
        print(f"{r['prompt_tokens']:>9d} {h['ttft_s']:>12.3f} {r['ttft_s']:>13.3f} {sp:>8.2f}x")
    res["side_by_side"] = table


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=os.path.join(ROOT, "configs", "HyLo-Llama-6MLA22M2"))
    ap.add_argument("--lengths", default="8K,32K")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mamba-chunk", type=int, default=256, help="Mamba2Config.chunk_size (HF default 256)")
    ap.add_argument("--longest", action="store_true", help="double the prompt until out of memory or the budget")
    ap.add_argument("--longest-budget-s", type=float, default=180.0)
    ap.add_argument("--longest-max", default="4M")
    ap.add_argument("--attention", action="store_true", help="also time the attention op alone (SDPA backends)")
    ap.add_argument("--no-model", action="store_true")
    ap.add_argument("--hylo-json")
    ap.add_argument("--json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    args.lengths = [parse_len(s) for s in args.lengths.split(",")]
    args.longest_max = parse_len(args.longest_max)
    res = {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    import transformers
    res["transformers"] = transformers.__version__
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("torch_prefill: no CUDA device (this script runs on the GPU machine)", file=sys.stderr)
            return 77
        res["gpu"] = torch.cuda.get_device_name()
        torch.backends.cuda.matmul.allow_tf32 = False
    if not args.no_model:
        bench_model(args, res)
    if args.attention and args.device.startswith("cuda"):
        bench_attention(args, res)
    if args.hylo_json:
        side_by_side(args, res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
