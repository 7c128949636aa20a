#!/usr/bin/env python3
"""Golden fixtures for the CPU reference engine, built from INDEPENDENT implementations.

Runs on the GPU machine (HF transformers 5.17 + torch there; no network). Each fixture is a complete, small
hylo checkpoint directory (config.json, hybrid_config.json, model.safetensors with hylo's canonical names) plus
golden.safetensors holding the prompt `tokens` [T] (I32) and the reference `logits` [T, V] (F32, computed in
float64). The model is assembled from HF modules as ../shared/docs/MODEL.md section 7 prescribes:

  MLA     transformers' DeepseekV3Attention (num_key_value_heads = nH, kv_b_proj expanded from nKV to nH heads
          by repeating each group, rope_interleave=True, YaRN rope_parameters; q_a/kv_a layernorms kept when
          the layer has them, else identity; out_proj -> o_proj).
  Mamba2  transformers' Mamba2Mixer on its pure-torch path (n_groups = nh: the x and B rows of in_proj and
          their conv channels duplicated per head; its gated norm replaced by the per-head grouped one).
  GDN     transformers' Qwen3-Next torch_chunk_gated_delta_rule (use_qk_l2norm_in_kernel=True) inside
          projections / short convs / norm-then-gate written here from MODEL.md section 5.
  RMSNorm, MLP: LlamaRMSNorm, LlamaMLP.

usage: make_golden.py OUT_DIR
"""
import json
import math
import os
import sys
import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm
from transformers.models.mamba2.configuration_mamba2 import Mamba2Config
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule

DT = torch.float64
torch.set_default_dtype(DT)


def rnd(g, *shape, std=1.0):
    return torch.randn(*shape, generator=g, dtype=DT) * std


# ---------------------------------------------------------------------------------------------------------
# Random hylo weights (canonical names), scaled like hylo's initialiser so activations stay O(1).
def make_weights(cfg, hyb, plan, g):
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    w = {"model.embed_tokens.weight": rnd(g, V, H, std=1.0), "model.norm.weight": 1 + 0.1 * rnd(g, H)}
    if not cfg.get("tie_word_embeddings", False):
        w["lm_head.weight"] = rnd(g, V, H, std=H ** -0.5)
    nH, nKV = hyb["num_attention_heads"], hyb["num_key_value_heads"]
    for i, kind in enumerate(plan):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1 + 0.1 * rnd(g, H)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rnd(g, H)
        w[p + "mlp.gate_proj.weight"] = rnd(g, I, H, std=H ** -0.5)
        w[p + "mlp.up_proj.weight"] = rnd(g, I, H, std=H ** -0.5)
        w[p + "mlp.down_proj.weight"] = rnd(g, H, I, std=I ** -0.5)
        if kind == "A":
            ql, r = hyb["q_lora_rank"], hyb["kv_lora_rank"]
            dn, dr, dv = hyb["qk_nope_head_dim"], hyb["qk_rope_head_dim"], hyb["v_head_dim"]
            w[p + "mla.q_a_proj.weight"] = rnd(g, ql, H, std=H ** -0.5)
            w[p + "mla.q_b_proj.weight"] = rnd(g, nH * (dn + dr), ql, std=ql ** -0.5)
            w[p + "mla.kv_a_proj_with_mqa.weight"] = rnd(g, r + dr, H, std=H ** -0.5)
            w[p + "mla.kv_b_proj.weight"] = rnd(g, nKV * (dn + dv), r, std=r ** -0.5)
            w[p + "mla.out_proj.weight"] = rnd(g, H, nH * dv, std=(nH * dv) ** -0.5)
            if hyb.get("use_lora_layer_norm"):
                w[p + "mla.q_a_layernorm.weight"] = 1 + 0.1 * rnd(g, ql)
            if hyb.get("use_lora_layer_norm") or hyb.get("mla_kv_a_norm"):
                w[p + "mla.kv_a_layernorm.weight"] = 1 + 0.1 * rnd(g, r)
        elif kind == "M":
            N = hyb["ssm_cfg"]["d_state"]
            di, dxb = hyb["d_inner"], hyb["d_xb"]
            nh = di // N
            C = di + 2 * dxb
            w[p + "mamba.in_proj.weight"] = rnd(g, 2 * di + 2 * dxb + nh, H, std=H ** -0.5)
            w[p + "mamba.conv1d.weight"] = rnd(g, C, 1, 4, std=0.5)
            w[p + "mamba.conv1d.bias"] = rnd(g, C, std=0.2)
            dt = torch.exp(torch.rand(nh, generator=g, dtype=DT) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            w[p + "mamba.dt_bias"] = dt + torch.log(-torch.expm1(-dt))
            w[p + "mamba.A_log"] = torch.log(1 + 15 * torch.rand(nh, generator=g, dtype=DT))
            w[p + "mamba.D"] = 1 + 0.1 * rnd(g, nh)
            w[p + "mamba.norm.weight"] = 1 + 0.1 * rnd(g, di)
            w[p + "mamba.out_proj.weight"] = rnd(g, H, di, std=di ** -0.5)
        else:
            Hk, dk = hyb["gdn_num_heads"], hyb["gdn_head_dim"]
            Hv, dvv = Hk, 2 * dk
            w[p + "gdn.q_proj.weight"] = rnd(g, Hk * dk, H, std=H ** -0.5)
            w[p + "gdn.k_proj.weight"] = rnd(g, Hk * dk, H, std=H ** -0.5)
            w[p + "gdn.v_proj.weight"] = rnd(g, Hv * dvv, H, std=H ** -0.5)
            w[p + "gdn.g_proj.weight"] = rnd(g, Hv * dvv, H, std=H ** -0.5)
            w[p + "gdn.a_proj.weight"] = rnd(g, Hv, H, std=H ** -0.5)
            w[p + "gdn.b_proj.weight"] = rnd(g, Hv, H, std=H ** -0.5)
            w[p + "gdn.q_conv1d.weight"] = rnd(g, Hk * dk, 1, 4, std=0.5)
            w[p + "gdn.k_conv1d.weight"] = rnd(g, Hk * dk, 1, 4, std=0.5)
            w[p + "gdn.v_conv1d.weight"] = rnd(g, Hv * dvv, 1, 4, std=0.5)
            w[p + "gdn.A_log"] = torch.log(1 + 15 * torch.rand(Hv, generator=g, dtype=DT))
            dt = torch.exp(torch.rand(Hv, generator=g, dtype=DT) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            w[p + "gdn.dt_bias"] = dt + torch.log(-torch.expm1(-dt))
            w[p + "gdn.o_norm.weight"] = 1 + 0.1 * rnd(g, dvv)
            w[p + "gdn.o_proj.weight"] = rnd(g, H, Hv * dvv, std=(Hv * dvv) ** -0.5)
    return w


# ---------------------------------------------------------------------------------------------------------
# Reference layers from HF modules.
def causal_mask(T):
    m = torch.full((T, T), float("-inf"), dtype=DT).triu(1)
    return m[None, None]


class MlaRef(nn.Module):
    def __init__(self, cfg, hyb, w, p):
        super().__init__()
        nH, nKV = hyb["num_attention_heads"], hyb["num_key_value_heads"]
        dn, dr, dv, r = hyb["qk_nope_head_dim"], hyb["qk_rope_head_dim"], hyb["v_head_dim"], hyb["kv_lora_rank"]
        rs = hyb["rope_scaling"]
        dcfg = DeepseekV3Config(
            hidden_size=cfg["hidden_size"], num_attention_heads=nH, num_key_value_heads=nH,
            q_lora_rank=hyb["q_lora_rank"], kv_lora_rank=r, qk_nope_head_dim=dn, qk_rope_head_dim=dr,
            v_head_dim=dv, attention_bias=False, rms_norm_eps=cfg["rms_norm_eps"], rope_interleave=True,
            rope_parameters={"rope_type": "yarn", "factor": rs["factor"], "rope_theta": hyb["rope_theta"],
                             "original_max_position_embeddings": rs["original_max_position_embeddings"]},
            max_position_embeddings=rs["original_max_position_embeddings"] * int(rs["factor"]))
        dcfg._attn_implementation = "eager"
        self.attn = DeepseekV3Attention(dcfg, layer_idx=0).to(DT)
        self.rope = DeepseekV3RotaryEmbedding(dcfg).to(DT)
        a = self.attn
        a.q_a_proj.weight.data = w[p + "mla.q_a_proj.weight"]
        a.q_b_proj.weight.data = w[p + "mla.q_b_proj.weight"]
        a.kv_a_proj_with_mqa.weight.data = w[p + "mla.kv_a_proj_with_mqa.weight"]
        # kv_b: nKV groups -> nH heads, each group repeated for its g = nH / nKV query heads.
        kvb = w[p + "mla.kv_b_proj.weight"].view(nKV, dn + dv, r)
        a.kv_b_proj.weight.data = kvb.repeat_interleave(nH // nKV, dim=0).reshape(nH * (dn + dv), r).clone()
        a.o_proj.weight.data = w[p + "mla.out_proj.weight"]
        if p + "mla.q_a_layernorm.weight" in w:
            a.q_a_layernorm.weight.data = w[p + "mla.q_a_layernorm.weight"]
        else:
            a.q_a_layernorm = nn.Identity()
        if p + "mla.kv_a_layernorm.weight" in w:
            a.kv_a_layernorm.weight.data = w[p + "mla.kv_a_layernorm.weight"]
        else:
            a.kv_a_layernorm = nn.Identity()

    def forward(self, x):
        T = x.shape[1]
        pos = torch.arange(T)[None]
        cos, sin = self.rope(x, pos)
        out, _ = self.attn(x, position_embeddings=(cos.to(DT), sin.to(DT)), attention_mask=causal_mask(T))
        return out


class GroupedGatedNorm(nn.Module):
    """Mamba2 gate-then-norm per head group (MODEL.md 4.6)."""

    def __init__(self, weight, group, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.group, self.eps = group, eps

    def forward(self, hidden_states, gate=None):
        y = hidden_states * F.silu(gate)
        shp = y.shape
        yg = y.view(*shp[:-1], shp[-1] // self.group, self.group)
        yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + self.eps)
        return yg.view(shp) * self.weight


class Mamba2Ref(nn.Module):
    def __init__(self, cfg, hyb, w, p):
        super().__init__()
        H = cfg["hidden_size"]
        N = hyb["ssm_cfg"]["d_state"]
        di, dxb = hyb["d_inner"], hyb["d_xb"]
        nh, G = di // N, dxb // N
        rep = nh // G
        mcfg = Mamba2Config(hidden_size=H, num_heads=nh, head_dim=N, state_size=N, n_groups=nh, expand=di // H,
                            conv_kernel=4, use_conv_bias=True, use_bias=False, chunk_size=16,
                            layer_norm_epsilon=1e-5, time_step_limit=(0.0, float("inf")))
        self.m = Mamba2Mixer(mcfg, layer_idx=0).to(DT).eval()
        Win = w[p + "mamba.in_proj.weight"]
        z, xr, Br, Cr, dt = torch.split(Win, [di, dxb, dxb, di, nh])
        dup = lambda t: t.view(G, N, -1).repeat_interleave(rep, dim=0).reshape(nh * N, -1)
        self.m.in_proj.weight.data = torch.cat([z, dup(xr), dup(Br), Cr, dt]).clone()
        cw, cb = w[p + "mamba.conv1d.weight"], w[p + "mamba.conv1d.bias"]
        cwx, cwB, cwC = torch.split(cw, [dxb, dxb, di])
        cbx, cbB, cbC = torch.split(cb, [dxb, dxb, di])
        dupc = lambda t: t.view(G, N, *t.shape[1:]).repeat_interleave(rep, dim=0).reshape(nh * N, *t.shape[1:])
        self.m.conv1d.weight.data = torch.cat([dupc(cwx), dupc(cwB), cwC]).clone()
        self.m.conv1d.bias.data = torch.cat([dupc(cbx), dupc(cbB), cbC]).clone()
        self.m.dt_bias.data = w[p + "mamba.dt_bias"].clone()
        self.m.A_log.data = w[p + "mamba.A_log"].clone()
        self.m.D.data = w[p + "mamba.D"].clone()
        self.m.norm = GroupedGatedNorm(w[p + "mamba.norm.weight"], N)
        self.m.out_proj.weight.data = w[p + "mamba.out_proj.weight"].clone()

    def forward(self, x):
        return self.m(x)


class GdnRef(nn.Module):
    def __init__(self, cfg, hyb, w, p):
        super().__init__()
        self.w, self.p = w, p
        self.Hk, self.dk = hyb["gdn_num_heads"], hyb["gdn_head_dim"]
        self.dv = 2 * self.dk

    def conv(self, x, weight):
        C = x.shape[-1]
        y = F.conv1d(x.transpose(1, 2), weight, padding=weight.shape[-1] - 1, groups=C)[..., : x.shape[1]]
        return F.silu(y.transpose(1, 2))

    def forward(self, x):
        w, p = self.w, self.p
        B, T, _ = x.shape
        Hk, dk, dv = self.Hk, self.dk, self.dv
        q = self.conv(x @ w[p + "gdn.q_proj.weight"].T, w[p + "gdn.q_conv1d.weight"]).view(B, T, Hk, dk)
        k = self.conv(x @ w[p + "gdn.k_proj.weight"].T, w[p + "gdn.k_conv1d.weight"]).view(B, T, Hk, dk)
        v = self.conv(x @ w[p + "gdn.v_proj.weight"].T, w[p + "gdn.v_conv1d.weight"]).view(B, T, Hk, dv)
        beta = torch.sigmoid(x @ w[p + "gdn.b_proj.weight"].T)
        g = -w[p + "gdn.A_log"].exp() * F.softplus(x @ w[p + "gdn.a_proj.weight"].T + w[p + "gdn.dt_bias"])
        o, _ = torch_chunk_gated_delta_rule(q, k, v, g=g, beta=beta, chunk_size=64, initial_state=None,
                                            output_final_state=False, use_qk_l2norm_in_kernel=True)
        o = o.to(DT)  # [B, T, Hv, dv]
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * w[p + "gdn.o_norm.weight"]
        gate = (x @ w[p + "gdn.g_proj.weight"].T).view(B, T, Hk, dv)
        o = o * F.silu(gate)
        return o.reshape(B, T, Hk * dv) @ w[p + "gdn.o_proj.weight"].T


class ModelRef(nn.Module):
    def __init__(self, cfg, hyb, plan, w):
        super().__init__()
        H, I = cfg["hidden_size"], cfg["intermediate_size"]
        lcfg = LlamaConfig(hidden_size=H, intermediate_size=I, rms_norm_eps=cfg["rms_norm_eps"], hidden_act="silu")
        self.w, self.plan = w, plan
        self.layers = nn.ModuleList()
        for i, kind in enumerate(plan):
            p = f"model.layers.{i}."
            n1, n2 = LlamaRMSNorm(H, eps=cfg["rms_norm_eps"]), LlamaRMSNorm(H, eps=cfg["rms_norm_eps"])
            n1.weight.data = w[p + "input_layernorm.weight"]
            n2.weight.data = w[p + "post_attention_layernorm.weight"]
            mlp = LlamaMLP(lcfg).to(DT)
            mlp.gate_proj.weight.data = w[p + "mlp.gate_proj.weight"]
            mlp.up_proj.weight.data = w[p + "mlp.up_proj.weight"]
            mlp.down_proj.weight.data = w[p + "mlp.down_proj.weight"]
            mixer = {"A": MlaRef, "M": Mamba2Ref, "G": GdnRef}[kind](cfg, hyb, w, p)
            self.layers.append(nn.ModuleList([n1, mixer, n2, mlp]))
        self.norm = LlamaRMSNorm(H, eps=cfg["rms_norm_eps"])
        self.norm.weight.data = w["model.norm.weight"]

    def forward(self, tokens):
        w = self.w
        x = w["model.embed_tokens.weight"][tokens][None]
        for n1, mixer, n2, mlp in self.layers:
            x = x + mixer(n1(x))
            x = x + mlp(n2(x))
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        return (self.norm(x) @ head.T)[0]


# ---------------------------------------------------------------------------------------------------------
def fixture(out_dir, name, cfg, hyb, plan, T, seed):
    g = torch.Generator().manual_seed(seed)
    w = make_weights(cfg, hyb, plan, g)
    tokens = torch.randint(0, cfg["vocab_size"], (T,), generator=g)
    with torch.no_grad():
        logits = ModelRef(cfg, hyb, plan, w)(tokens)
    assert torch.isfinite(logits).all(), name
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    json.dump(hyb, open(os.path.join(d, "hybrid_config.json"), "w"), indent=2)
    save_file({k: v.float().contiguous() for k, v in w.items()}, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt", "producer": "scripts/golden/make_golden.py"})
    save_file({"tokens": tokens.to(torch.int32), "logits": logits.float().contiguous()},
              os.path.join(d, "golden.safetensors"), metadata={"reference": "HF transformers modules, float64"})
    print(f"{name:28s} plan {''.join(plan):4s} T {T:4d} logits rms {logits.pow(2).mean().sqrt():.3f}")


def scaled(preset_dir, plan, vocab=128):
    """A 2-layer slice of a released layout: its mixer kinds, head counts, eps, RoPE and norm options, with
    small head dims so the fixture stays small."""
    cfg = json.load(open(os.path.join(preset_dir, "config.json")))
    hyb = json.load(open(os.path.join(preset_dir, "hybrid_config.json")))
    nH, nKV = hyb["num_attention_heads"], hyb["num_key_value_heads"]
    hd = 4
    H = nH * hd
    L = len(plan)
    cfg.update(vocab_size=vocab, hidden_size=H, intermediate_size=H, num_hidden_layers=L, head_dim=hd,
               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    hyb.update(hidden_size=H, intermediate_size=H, n_layer=L, d_model=H, d_inner=nH * hd, d_xb=nKV * hd,
               q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
               mla_layers=[i for i, k in enumerate(plan) if k == "A"])
    hyb["ssm_cfg"]["d_state"] = hd
    hyb["ssm_cfg"]["ngroups"] = nH
    if "gdn_num_heads" in hyb:
        hyb["gdn_head_dim"] = 16
    return cfg, hyb


def main():
    out = sys.argv[1]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    configs = os.path.join(root, "configs")
    tiny_dir = os.path.join(configs, "hylo-tiny")

    # Single-mixer fixtures and a mixed one, on a small tiny-like model (YaRN factor 4 over 32 positions, so
    # the prompt runs well past the original context).
    base_cfg = json.load(open(os.path.join(tiny_dir, "config.json")))
    base_hyb = json.load(open(os.path.join(tiny_dir, "hybrid_config.json")))
    base_cfg.update(vocab_size=256, bos_token_id=1, eos_token_id=2, hidden_size=64, intermediate_size=128, head_dim=16)
    base_hyb.update(hidden_size=64, intermediate_size=128, d_model=64, d_inner=64, d_xb=32)
    base_hyb["ssm_cfg"]["d_state"] = 16
    base_hyb["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    for name, plan, T in [("mla", "A", 150), ("mamba2", "M", 150), ("gdn", "G", 150), ("mixed", "AMGAGM", 203)]:
        cfg, hyb = json.loads(json.dumps(base_cfg)), json.loads(json.dumps(base_hyb))
        cfg["num_hidden_layers"] = hyb["n_layer"] = len(plan)
        hyb["mla_layers"] = [i for i, k in enumerate(plan) if k == "A"]
        hyb["mamba2_layers"] = [i for i, k in enumerate(plan) if k == "M"]
        hyb["gdn_layers"] = [i for i, k in enumerate(plan) if k == "G"]
        cfg["tie_word_embeddings"] = name == "mixed"
        fixture(out, name, cfg, hyb, list(plan), T, seed=len(name) * 7 + T)

    # 2-layer slices of every released layout (the first MLA layer and a linear layer).
    for preset in sorted(os.listdir(configs)):
        if not preset.startswith("HyLo-"):
            continue
        lin = "M" if preset.endswith("M2") else "G"
        plan = ["A", lin]
        cfg, hyb = scaled(os.path.join(configs, preset), plan)
        fixture(out, "slice-" + preset, cfg, hyb, plan, 100, seed=zlib.crc32(preset.encode()) % 100000)


if __name__ == "__main__":
    main()
