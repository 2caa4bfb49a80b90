"""Compact PyTorch Infinity (bitwise next-scale text-to-image) and its BSQ-VAE decoder.

Written from the project's spec (shared/spec/infinity.md, sections 2-12) and the C++ engine
(src/models/infinity/, src/pipeline/infinity_pipeline.cpp); no code of the official repositories.
Parameter names are those of the official checkpoints (`block_chunks.{c}.module.{j}.sa.mat_qkv.weight`,
`text_proj_for_sos.ca.mat_q`, `decoder.up.{L}.block.{k}.conv1.conv.weight`, ...), so
`Infinity.load_state_dict` / `BSQVAE.load_state_dict` take an official state dict (or the golden
safetensors) with strict=True. Used by tools/bench/torch_infinity.py (GPU/CPU timing baseline) and
tools/infinity/check_torch_infinity.py (golden check).

Runs on torch 1.13 (explicit softmax attention) and torch 2.x (optionally
F.scaled_dot_product_attention). Inference only: call under torch.no_grad()/inference_mode().
"""
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_common import HAS_SDPA, KVCache, _Holder, attention, load_safetensors  # noqa: E402,F401 (callers use HAS_SDPA, load_safetensors from here)


# 1:1 template of `dynamic_resolution_h_w` (spec 5); the pn keys take a prefix.
SQUARE_SIDES = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)
PN_NUM_SCALES = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}


def square_schedule(pn):
    """(h, w) per scale of the 1:1 template at resolution key pn ('1M': 13 scales to 64x64)."""
    return [(s, s) for s in SQUARE_SIDES[:PN_NUM_SCALES[pn]]]


# ------------------------------------------------------------------------------------------------
# helpers


def varlen_attention(q, k, v, lens, scale, use_sdpa=False):
    """Row r of q [R, H, Lq, hd] attends to its own rows of the compact k/v [N, H, hd]
    (sequence r = rows sum(lens[:r]) .. sum(lens[:r+1])-1)."""
    R, H = q.shape[0], q.shape[1]
    if len(set(lens)) == 1:  # equal lengths: one batched call
        n = lens[0]
        kk = k.view(R, n, H, -1).transpose(1, 2)
        vv = v.view(R, n, H, -1).transpose(1, 2)
        return attention(q, kk, vv, scale, use_sdpa)
    outs, off = [], 0
    for r, n in enumerate(lens):
        kk = k[off:off + n].transpose(0, 1).unsqueeze(0)
        vv = v[off:off + n].transpose(0, 1).unsqueeze(0)
        outs.append(attention(q[r:r + 1], kk, vv, scale, use_sdpa))
        off += n
    return torch.cat(outs, 0)


def ln(x, eps=1e-6):
    """LayerNorm over the last dim, no affine."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def round_half_even_div(num, den):
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q % 2 == 1):
        q += 1
    return q


_ROPE_CACHE = {}


def rope_table(head_dim, h, w, rope_hw, device=None):
    """Spec 7.3: cos/sin [h*w, head_dim/2] for the adjacent-pair 2-D rope, positions normalised to
    rope_hw = the last scale of the template's '1M' list (64x64 for 1:1). Cached per device (the
    official model precomputes its table once)."""
    key = (head_dim, h, w, tuple(rope_hw), str(device))
    if key not in _ROPE_CACHE:
        _ROPE_CACHE[key] = _rope_table(head_dim, h, w, rope_hw, device)
    return _ROPE_CACHE[key]


def _rope_table(head_dim, h, w, rope_hw, device):
    Hf, Wf = rope_hw
    half, quarter = head_dim // 2, head_dim // 4
    inv = 1.0 / (10000.0 ** (torch.arange(0, half, 2, dtype=torch.float32) / half))  # [quarter]
    py = torch.tensor([round_half_even_div(y * Hf, h) for y in range(h)], dtype=torch.float32)
    px = torch.tensor([round_half_even_div(x * Wf, w) for x in range(w)], dtype=torch.float32)
    ty = (py[:, None] * inv[None, :])[:, None, :].expand(h, w, quarter)
    tx = (px[:, None] * inv[None, :])[None, :, :].expand(h, w, quarter)
    theta = torch.cat((ty, tx), dim=-1).reshape(h * w, half)
    return theta.cos().to(device), theta.sin().to(device)


def apply_rope(t, cos, sin):
    """t [..., L, hd]; pairs (2m, 2m+1) rotated by theta[l, m]."""
    shp = t.shape
    t2 = t.reshape(*shp[:-1], shp[-1] // 2, 2)
    a, b = t2[..., 0], t2[..., 1]
    return torch.stack((cos * a - sin * b, sin * a + cos * b), dim=-1).reshape(shp)


# ------------------------------------------------------------------------------------------------
# transformer


class TextAttnPool(nn.Module):
    """`text_proj_for_sos.ca`: one learned query per head attends over each prompt's text rows."""

    def __init__(self, Ct5, C, heads, device=None):
        super().__init__()
        self.C, self.heads, self.hd = C, heads, C // heads
        self.mat_q = nn.Parameter(torch.empty(1, heads, C // heads, device=device))
        self.mat_kv = nn.Linear(Ct5, 2 * C, bias=False, device=device)
        self.v_bias = nn.Parameter(torch.empty(C, device=device))
        self.register_buffer("zero_k_bias", torch.zeros(C, device=device))
        self.proj = nn.Linear(C, C, device=device)

    def forward(self, tn, lens):
        kv = F.linear(tn, self.mat_kv.weight, torch.cat((self.zero_k_bias, self.v_bias)))
        N = tn.shape[0]
        k, v = kv.view(N, 2, self.heads, self.hd).unbind(1)
        q = self.mat_q.view(1, self.heads, 1, self.hd).expand(len(lens), -1, -1, -1).to(k.dtype)
        o = varlen_attention(q, k, v, lens, 1.0 / math.sqrt(self.hd))  # [R, H, 1, hd]
        return self.proj(o.reshape(len(lens), self.C))


class SelfAttention(nn.Module):
    def __init__(self, C, heads, device=None):
        super().__init__()
        self.C, self.heads, self.hd = C, heads, C // heads
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False, device=device)
        self.q_bias = nn.Parameter(torch.empty(C, device=device))
        self.v_bias = nn.Parameter(torch.empty(C, device=device))
        self.register_buffer("zero_k_bias", torch.zeros(C, device=device))
        self.scale_mul_1H11 = nn.Parameter(torch.empty(1, heads, 1, 1, device=device))
        self.proj = nn.Linear(C, C, device=device)
        self.max_log = math.log(100.0)

    def forward(self, x, cos, sin, cache, use_sdpa):
        R, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(R, L, 3, self.heads, self.hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [R, H, L, hd]
        sm = self.scale_mul_1H11.clamp_max(self.max_log).exp()
        q = F.normalize(q, dim=-1, eps=1e-12) * sm
        k = F.normalize(k, dim=-1, eps=1e-12)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        kc, vc = cache.append(k.to(v.dtype), v)
        o = attention(q.to(v.dtype), kc, vc, 1.0, use_sdpa)
        return self.proj(o.transpose(1, 2).reshape(R, L, C))


class CrossAttention(nn.Module):
    def __init__(self, C, heads, device=None):
        super().__init__()
        self.C, self.heads, self.hd = C, heads, C // heads
        self.mat_q = nn.Linear(C, C, device=device)
        self.mat_kv = nn.Linear(C, 2 * C, bias=False, device=device)
        self.v_bias = nn.Parameter(torch.empty(C, device=device))
        self.register_buffer("zero_k_bias", torch.zeros(C, device=device))
        self.proj = nn.Linear(C, C, device=device)

    def forward(self, x, ca_kv, lens, use_sdpa):
        R, L, C = x.shape
        q = self.mat_q(x).view(R, L, self.heads, self.hd).transpose(1, 2)
        kv = F.linear(ca_kv, self.mat_kv.weight, torch.cat((self.zero_k_bias, self.v_bias)))
        k, v = kv.view(-1, 2, self.heads, self.hd).unbind(1)
        o = varlen_attention(q, k.to(q.dtype), v.to(q.dtype), lens, 1.0 / math.sqrt(self.hd), use_sdpa)
        return self.proj(o.transpose(1, 2).reshape(R, L, C))


class FFN(nn.Module):
    def __init__(self, C, hidden, device=None):
        super().__init__()
        self.fc1 = nn.Linear(C, hidden, device=device)
        self.fc2 = nn.Linear(hidden, C, device=device)

    def forward(self, x):
        return self.fc2(gelu_tanh(self.fc1(x)))


class CrossAttnBlock(nn.Module):
    def __init__(self, C, heads, ffn, device=None):
        super().__init__()
        self.ada_gss = nn.Parameter(torch.empty(1, 1, 6, C, device=device))
        self.sa = SelfAttention(C, heads, device)
        self.ca_norm = nn.LayerNorm(C, eps=1e-6, device=device)  # affine
        self.ca = CrossAttention(C, heads, device)
        self.ffn = FFN(C, ffn, device)

    def forward(self, x, gss, text, cos, sin, cache, use_sdpa):
        g1, g2, s1, s2, b1, b2 = (self.ada_gss + gss).unbind(2)  # each [R, 1, C]
        x = x + self.sa(ln(x) * (1 + s1) + b1, cos, sin, cache, use_sdpa) * g1
        x = x + self.ca(self.ca_norm(x), text["ca_kv"], text["lens"], use_sdpa)
        x = x + self.ffn(ln(x) * (1 + s2) + b2) * g2
        return x


class Infinity(nn.Module):
    """The transformer. Keys as in the official state dict (spec 3.1)."""

    def __init__(self, depth=32, C=2048, heads=16, ffn=8192, Ct5=2048, text_maxlen=512, bits=32,
                 pool_heads=None, chunks=8, levels=15, device=None):
        super().__init__()
        if depth % chunks:
            raise ValueError(f"depth {depth} is not a multiple of {chunks} block chunks")
        pool_heads = pool_heads or Ct5 // 128
        self.depth, self.C, self.heads, self.bits, self.chunks = depth, C, heads, bits, chunks
        self.head_dim = C // heads
        self.cfg_uncond = nn.Parameter(torch.empty(text_maxlen, Ct5, device=device))
        self.text_norm = _Holder()
        self.text_norm.weight = nn.Parameter(torch.empty(Ct5, device=device))
        self.text_proj_for_sos = _Holder(ca=TextAttnPool(Ct5, C, pool_heads, device))
        self.text_proj_for_ca = nn.Sequential(nn.Linear(Ct5, C, device=device), nn.GELU(approximate="tanh"),
                                              nn.Linear(C, C, device=device))
        self.pos_start = nn.Parameter(torch.empty(1, 1, C, device=device))
        self.lvl_embed = nn.Embedding(levels, C, device=device)
        self.word_embed = nn.Linear(bits, C, device=device)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C, device=device))
        self.head_nm = _Holder(ada_lin=nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C, device=device)))
        self.head = nn.Linear(C, 2 * bits, device=device)
        per = depth // chunks
        self.block_chunks = nn.ModuleList(
            _Holder(module=nn.ModuleList(CrossAttnBlock(C, heads, ffn, device) for _ in range(per)))
            for _ in range(chunks))

    @classmethod
    def from_state_dict_shapes(cls, sd, device=None):
        """Builds the module whose shapes match state dict sd (official key layout)."""
        chunks = 0
        while f"block_chunks.{chunks}.module.0.sa.mat_qkv.weight" in sd:
            chunks += 1
        per = 0
        while f"block_chunks.0.module.{per}.sa.mat_qkv.weight" in sd:
            per += 1
        b0 = "block_chunks.0.module.0."
        return cls(depth=chunks * per, C=sd["pos_start"].shape[2], heads=sd[b0 + "sa.scale_mul_1H11"].shape[1],
                   ffn=sd[b0 + "ffn.fc1.weight"].shape[0], Ct5=sd["text_norm.weight"].shape[0],
                   text_maxlen=sd["cfg_uncond"].shape[0], bits=sd["word_embed.weight"].shape[1],
                   pool_heads=sd["text_proj_for_sos.ca.mat_q"].shape[1], chunks=chunks,
                   levels=sd["lvl_embed.weight"].shape[0], device=device)

    def blocks(self):
        for ch in self.block_chunks:
            yield from ch.module

    def encode_text(self, feats):
        """Spec 4: feats = list of per-prompt T5 features [n_b, Ct5]. CFG batch: prompts, then
        their unconditional copies (cfg_uncond[:n_b])."""
        B = len(feats)
        lens = [int(f.shape[0]) for f in feats] * 2
        dt = self.cfg_uncond.dtype
        T = torch.cat([f.to(dt) for f in feats] + [self.cfg_uncond[:f.shape[0]] for f in feats], 0)
        tn = T * torch.rsqrt(T.pow(2).mean(-1, keepdim=True) + 1e-6) * self.text_norm.weight
        cond = self.text_proj_for_sos.ca(tn, lens)  # [2B, C]
        ca_kv = self.text_proj_for_ca(tn)
        gss = self.shared_ada_lin(cond).view(2 * B, 1, 6, self.C)
        head_ss = self.head_nm.ada_lin(cond).view(2 * B, 1, 2, self.C)
        return {"B": B, "lens": lens, "normed": tn, "cond": cond, "ca_kv": ca_kv, "gss": gss, "head_ss": head_ss}

    def scale_input(self, si, text, next_tokens=None):
        """Spec 6: [2B, L, C] input of block 0 at scale si (next_tokens [B, L, d] for si > 0)."""
        if si == 0:
            x = (text["cond"] + self.pos_start.view(1, -1)).unsqueeze(1)
        else:
            x = self.word_embed(next_tokens.to(self.word_embed.weight.dtype))
            x = torch.cat((x, x), 0)
        return x + self.lvl_embed.weight[si]

    def run_blocks(self, x, text, cos, sin, caches, use_sdpa=False, tap=None, prefix=""):
        gss = text["gss"]
        for i, blk in enumerate(self.blocks()):
            x = blk(x, gss, text, cos, sin, caches[i], use_sdpa)
            if tap is not None:
                tap(f"{prefix}block{i}.out", x)
        return x

    def logits(self, x, text):
        scale, shift = text["head_ss"].unbind(2)
        return self.head(ln(x) * (1 + scale) + shift)


def sample_bits(guided, bits, top_k, top_p, generator):
    """Spec 9: guided logits [B, L, 2d] -> bits [B, L, d] (bool). Per bit a 2-way softmax; top-k
    with k = 1 keeps the larger; top-p drops the smaller class when its probability <= 1 - top_p;
    then one seeded uniform draw per bit."""
    lg = guided.float().view(*guided.shape[:-1], bits, 2)
    p = lg.softmax(-1)
    p0, p1 = p[..., 0], p[..., 1]
    hard = (lg[..., 1] > lg[..., 0]).float()
    if top_k == 1:
        p1 = hard
    elif top_p > 0:
        p1 = torch.where(torch.minimum(p0, p1) <= 1.0 - top_p, hard, p1)
    u = torch.rand(p1.shape, generator=generator, device=p1.device)
    return u < p1


def generate(model, text_feats, schedule, cfg, tau, top_k=900, top_p=0.97, generator=None, rope_hw=(64, 64),
             teacher=None, tap=None, use_sdpa=False):
    """Spec 1-10: the scale loop with CFG on logits. Returns summed codes [B, d, Hf, Wf] (fp32).

    schedule: list of (h, w); cfg, tau: per-scale lists (or scalars); teacher(si, h, w) -> bits
    [B, h, w, d] replaces sampling (teacher forcing); tap(name, tensor) receives intermediates
    named as in the golden reference files."""
    S = len(schedule)
    cfg = list(cfg) if isinstance(cfg, (list, tuple)) else [cfg] * S
    tau = list(tau) if isinstance(tau, (list, tuple)) else [tau] * S
    text = model.encode_text(text_feats)
    B, d = text["B"], model.bits
    dev = text["cond"].device
    if tap is not None:
        tap("text.normed", text["normed"])
        tap("text.cond_BD", text["cond"])
        tap("text.ca_kv", text["ca_kv"])
        tap("text.cond_gss", text["gss"])
    cap = sum(h * w for h, w in schedule)
    caches = [KVCache(cap) for _ in range(model.depth)]
    Hf, Wf = schedule[-1]
    summed = torch.zeros(B, d, Hf, Wf, device=dev, dtype=torch.float32)
    nxt = None
    ropes = []
    for si, (h, w) in enumerate(schedule):
        pre = f"s{si:02d}."
        cos, sin = rope_table(model.head_dim, h, w, rope_hw, dev)
        ropes.append((cos, sin))
        x = model.scale_input(si, text, nxt)
        if tap is not None:
            tap(pre + "x_in", x)
        x = model.run_blocks(x, text, cos, sin, caches, use_sdpa, tap, pre)
        raw = model.logits(x, text).float()
        if tap is not None:
            tap(pre + "logits_raw", raw)
        g, t = cfg[si], tau[si]
        guided = g * (raw[:B] / t) + (1 - g) * (raw[B:] / t)
        if tap is not None:
            tap(pre + "logits_guided", guided)
        if teacher is not None:
            bits = teacher(si, h, w).to(dev).bool().reshape(B, h * w, d)
        else:
            bits = sample_bits(guided, d, top_k, top_p, generator)
        codes = (bits.float() * 2 - 1).mul_(1.0 / math.sqrt(d)).view(B, h, w, d).permute(0, 3, 1, 2)
        if tap is not None:
            tap(pre + "codes", codes.unsqueeze(2))
        if (h, w) == (Hf, Wf):
            summed = summed + codes
        else:
            summed = summed + F.interpolate(codes, size=(Hf, Wf), mode="bilinear", align_corners=False)
        if tap is not None:
            tap(pre + "summed_codes", summed.unsqueeze(2))
        if si + 1 < S:
            h2, w2 = schedule[si + 1]
            nx = F.interpolate(summed, size=(h2, w2), mode="bilinear", align_corners=False)
            nxt = nx.permute(0, 2, 3, 1).reshape(B, h2 * w2, d)
            if tap is not None:
                tap(pre + "next_in_codes", nxt)
    if tap is not None:
        tap("rope.cos", torch.cat([c for c, _ in ropes], 0))
        tap("rope.sin", torch.cat([s for _, s in ropes], 0))
        tap("final.summed_codes", summed)
    return summed


# ------------------------------------------------------------------------------------------------
# BSQ-VAE decoder (spec 11)


def gn_groups(c):
    if c % 32 == 0:
        return 32
    if c % 24 == 0:
        return 24
    raise ValueError(f"GroupNorm over {c} channels: not a multiple of 32 or 24")


class _Conv(nn.Module):  # official wrapper: X.conv.{weight,bias}
    def __init__(self, cin, cout, k, device=None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, k // 2, device=device)

    def forward(self, x):
        return self.conv(x)


class _Norm(nn.Module):  # official wrapper: X.norm.{weight,bias}
    def __init__(self, c, device=None):
        super().__init__()
        self.norm = nn.GroupNorm(gn_groups(c), c, eps=1e-6, device=device)

    def forward(self, x):
        return self.norm(x)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, device=None):
        super().__init__()
        self.norm1 = _Norm(cin, device)
        self.conv1 = _Conv(cin, cout, 3, device)
        self.norm2 = _Norm(cout, device)
        self.conv2 = _Conv(cout, cout, 3, device)
        self.nin_shortcut = _Conv(cin, cout, 1, device) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class Upsample(nn.Module):
    def __init__(self, c, device=None):
        super().__init__()
        self.conv = _Conv(c, c, 3, device)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class BSQDecoder(nn.Module):
    def __init__(self, ch=128, ch_mult=(1, 2, 4, 4, 4), res_blocks=3, code_dim=32, upsample_levels=None,
                 device=None):
        super().__init__()
        n = len(ch_mult)
        ups = set(range(1, n)) if upsample_levels is None else set(upsample_levels)
        top = ch * ch_mult[-1]
        self.conv_in = _Conv(code_dim, top, 3, device)
        self.mid = _Holder(block_1=ResBlock(top, top, device), block_2=ResBlock(top, top, device))
        levels = [None] * n
        cin = top
        for L in reversed(range(n)):
            cout = ch * ch_mult[L]
            blocks = nn.ModuleList()
            for _ in range(res_blocks):
                blocks.append(ResBlock(cin, cout, device))
                cin = cout
            lvl = _Holder(block=blocks)
            lvl.upsample = Upsample(cout, device) if L in ups else None
            levels[L] = lvl
        self.up = nn.ModuleList(levels)
        self.norm_out = _Norm(ch, device)
        self.conv_out = _Conv(ch, 3, 3, device)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.block_1(h))
        for L in reversed(range(len(self.up))):
            for blk in self.up[L].block:
                h = blk(h)
            if self.up[L].upsample is not None:
                h = self.up[L].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class BSQVAE(nn.Module):
    """Decoder only (keys decoder.*); forward(z) = image clamped to [-1, 1]."""

    def __init__(self, **kw):
        super().__init__()
        self.decoder = BSQDecoder(**kw)

    def forward(self, z):
        return self.decoder(z).clamp(-1, 1)

    @staticmethod
    def decoder_state_dict(sd):
        """decoder.* entries of a VAE state dict, the flat form (X.weight) mapped to the wrapped
        one (X.conv.weight / X.norm.weight); quantizer.* / encoder.* dropped."""
        out = {}
        for k, v in sd.items():
            if not k.startswith("decoder."):
                continue
            stem, leaf = k.rsplit(".", 1)
            parts = stem.split(".")
            wrapped = parts[-1] in ("conv", "norm") and not (parts[-1] == "conv" and parts[-2] == "upsample")
            if not wrapped:
                k = f"{stem}.{'norm' if parts[-1].startswith('norm') else 'conv'}.{leaf}"
            out[k] = v
        return out

    @classmethod
    def from_state_dict_shapes(cls, sd, device=None):
        sd = cls.decoder_state_dict(sd)
        ch = sd["decoder.norm_out.norm.weight"].shape[0]
        code_dim = sd["decoder.conv_in.conv.weight"].shape[1]
        n = 0
        while f"decoder.up.{n}.block.0.conv1.conv.weight" in sd:
            n += 1
        ch_mult = [sd[f"decoder.up.{L}.block.0.conv1.conv.weight"].shape[0] // ch for L in range(n)]
        rb = 0
        while f"decoder.up.0.block.{rb}.conv1.conv.weight" in sd:
            rb += 1
        ups = [L for L in range(n) if f"decoder.up.{L}.upsample.conv.conv.weight" in sd]
        return cls(ch=ch, ch_mult=ch_mult, res_blocks=rb, code_dim=code_dim, upsample_levels=ups, device=device)
