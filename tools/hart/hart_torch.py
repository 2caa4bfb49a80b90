"""Compact PyTorch HART (hybrid next-scale text-to-image with a residual diffusion head), its tokenizer
decoder and FastVAR token pruning.

Written from the project's spec (shared/spec/hart.md, sections 5-14) and the C++ engine
(src/models/hart/, src/pipeline/hart_pipeline.cpp); no code of the official repositories.
Parameter names are those of the official checkpoints (`blocks.{i}.attn.qkv_proj.weight`,
`head_nm.ada_lin.1.weight`, `diffloss.net.res_blocks.{k}.adaLN_modulation.1.weight`,
`decoder.up.{l}.block.{b}.conv1.weight`, `quantize.quant_resi.qresi_ls.{k}.weight`, ...), so
`HART.load_state_dict` / `HartTokenizer.load_state_dict` take an official state dict (the tokenizer's
without its `vae.` prefix, see `HartTokenizer.tokenizer_state_dict`) or the golden safetensors with
strict=True. Used by tools/bench/torch_hart.py (timing peer) and tools/hart/check_torch_hart.py
(golden check).

Both sides of the architecture switches of spec 2.2 that the release could use: llama (SwiGLU) or
gpt2 (GELU-tanh) FFN, sinusoidal or embedded level embedding, context RMSNorm or none, cosine attention
(clamped scale_mul, softmax scale 1) or plain attention (scale 0.25/sqrt(hd)). Not implemented (never
released): the AdaLN / shared-AdaLN blocks, the gpt2 attention type, cross-attention.

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


HART_07B_PATCH_NUMS = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)
VAE_SCALE = 0.6  # the diffusion residual's scale (spec 10.4)


# ------------------------------------------------------------------------------------------------
# configuration


class HartConfig:
    """Everything the transformer needs (spec 2.1/2.2) plus the tokenizer's fields.

    from_json() reads either a golden folder's config.json (its `tiny` section) or an HF
    `llm/config.json` (HARTForT2IConfig; then pass the tokenizer's config.json too)."""

    def __init__(self, depth=24, embed_dim=1536, num_heads=24, mlp_ratio=4.0, norm_eps=1e-6, context_token=300,
                 context_dim=1536, patch_nums=HART_07B_PATCH_NUMS, mlp_type="llama", use_timestep_embed=True,
                 use_context_norm=True, attn_l2_norm=True, diff_width=1024, diff_depth=6, num_sampling_steps="8",
                 vocab_size=4096, z_channels=32, vae_ch=160, vae_ch_mult=(1, 1, 2, 2, 4), vae_num_res_blocks=2,
                 share_quant_resi=4, quant_resi=0.5):
        self.depth, self.C, self.heads = int(depth), int(embed_dim), int(num_heads)
        if self.C % self.heads:
            raise ValueError(f"width {self.C} is not a multiple of {self.heads} heads")
        self.head_dim = self.C // self.heads
        self.mlp_ratio, self.norm_eps = float(mlp_ratio), float(norm_eps)
        self.T, self.context_dim = int(context_token), int(context_dim)
        self.patch_nums = tuple(int(p) for p in patch_nums)
        if mlp_type not in ("llama", "gpt2"):
            raise ValueError(f"mlp_type {mlp_type!r}: expected llama or gpt2")
        self.mlp_type = mlp_type
        self.use_timestep_embed, self.use_context_norm = bool(use_timestep_embed), bool(use_context_norm)
        self.attn_l2_norm = bool(attn_l2_norm)
        self.diff_width, self.diff_depth = int(diff_width), int(diff_depth)
        self.num_sampling_steps = str(num_sampling_steps)
        self.V, self.Cvae = int(vocab_size), int(z_channels)
        self.vae_ch, self.vae_ch_mult = int(vae_ch), tuple(int(m) for m in vae_ch_mult)
        self.vae_num_res_blocks = int(vae_num_res_blocks)
        self.share_quant_resi, self.quant_resi = int(share_quant_resi), float(quant_resi)

    @property
    def S(self):
        return len(self.patch_nums)

    @property
    def P(self):
        return self.patch_nums[-1]

    @property
    def ffn_hidden(self):
        """Spec 6: SwiGLU int((C*r*2)/3 + 255) // 256 * 256 (4096 for C 1536); gpt2 round(C*r)."""
        if self.mlp_type == "llama":
            return int((self.C * self.mlp_ratio * 2) / 3 + 255) // 256 * 256
        return int(round(self.C * self.mlp_ratio))

    def tokens(self):
        """Tokens per scale: the text prefix T at scale 0, then pn^2."""
        return [self.T] + [p * p for p in self.patch_nums[1:]]

    def describe(self):
        return (f"depth {self.depth}, C {self.C}, {self.heads} heads, {self.mlp_type} FFN {self.ffn_hidden}, "
                f"{'cosine' if self.attn_l2_norm else 'plain'} attention, "
                f"{'sinusoidal' if self.use_timestep_embed else 'embedded'} levels, context norm "
                f"{'on' if self.use_context_norm else 'off'}, prefix {self.T} x {self.context_dim}, "
                f"{self.S} scales to {self.P}x{self.P}, V {self.V}, Cvae {self.Cvae}, diffusion "
                f"{self.diff_width} x {self.diff_depth} ({self.num_sampling_steps} steps), decoder ch "
                f"{self.vae_ch} {tuple(self.vae_ch_mult)}")

    @classmethod
    def from_json(cls, d, tokenizer=None):
        """d: a golden config.json (fields under `tiny`) or an HF llm/config.json dict; tokenizer: the
        HF tokenizer/config.json dict (vocab_size, z_channels, ch, ch_mult, ...), if separate."""
        m = dict(d.get("tiny") or d.get("model") or d)
        tk = dict(tokenizer or {})
        for key in ("use_cross_attn", "shared_aln"):
            if m.get(key, False):
                raise NotImplementedError(f"{key} = True (not released; spec 2.2)")
        if not m.get("disable_aln", True):
            raise NotImplementedError("disable_aln = False (AdaLN blocks: not released; spec 2.2)")
        if m.get("attn_type", "llama") != "llama":
            raise NotImplementedError(f"attn_type {m.get('attn_type')!r} (only llama was released; spec 2.2)")

        def pick(*names, default=None, src=None):
            for s in ([src] if src is not None else []) + [tk, m]:
                for n in names:
                    if n in s and s[n] is not None:
                        return s[n]
            return default

        return cls(depth=m["depth"], embed_dim=m["embed_dim"], num_heads=m["num_heads"],
                   mlp_ratio=m.get("mlp_ratio", 4.0), norm_eps=m.get("norm_eps", 1e-6),
                   context_token=m["context_token"], context_dim=m["context_dim"], patch_nums=m["patch_nums"],
                   mlp_type=m.get("mlp_type", "llama"), use_timestep_embed=m.get("use_timestep_embed", True),
                   use_context_norm=m.get("use_context_norm", True), attn_l2_norm=m.get("attn_l2_norm", True),
                   diff_width=m.get("diff_width", 1024), diff_depth=m.get("diff_depth", 6),
                   num_sampling_steps=m.get("num_sampling_steps", "8"),
                   vocab_size=pick("vocab_size", default=4096), z_channels=pick("z_channels", default=32),
                   vae_ch=pick("ch", "vae_ch", default=160), vae_ch_mult=pick("ch_mult", "vae_ch_mult",
                                                                             default=(1, 1, 2, 2, 4)),
                   vae_num_res_blocks=pick("num_res_blocks", "vae_num_res_blocks", default=2),
                   share_quant_resi=pick("share_quant_resi", default=4), quant_resi=pick("quant_resi", default=0.5))

    def check_state_dict(self, sd):
        """Spec 2.2: the switches the checkpoint's keys decide; raises when the config disagrees."""
        got = {
            "mlp_type": "llama" if "blocks.0.ffn.gate_proj.weight" in sd else "gpt2",
            "use_timestep_embed": "lvl_embed.mlp.0.weight" in sd,
            "use_context_norm": "context_norm.weight" in sd,
            "attn_l2_norm": "blocks.0.attn.scale_mul_1H11" in sd,
        }
        bad = [f"{k}: config {getattr(self, k)}, weights {v}" for k, v in got.items() if getattr(self, k) != v]
        for k in ("blocks.0.ada_lin.1.weight", "blocks.0.scale_shift_table", "blocks.0.attn.mat_qkv.weight",
                  "blocks.0.cross_attn.q_linear.weight"):
            if k in sd:
                bad.append(f"unsupported (unreleased) architecture: {k}")
        if "blocks.0.attn.scale_mul_1H11" in sd and sd["blocks.0.attn.scale_mul_1H11"].shape[1] != self.heads:
            bad.append(f"num_heads: config {self.heads}, scale_mul_1H11 {tuple(sd['blocks.0.attn.scale_mul_1H11'].shape)}")
        if bad:
            raise ValueError("config.json and the weights disagree: " + "; ".join(bad))


# ------------------------------------------------------------------------------------------------
# helpers


def rms(x, w, eps):
    """RMS(x; w) over the last dim (spec notation; fp32 statistics)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def sinusoid(t, dim=256):
    """[cos(t f), sin(t f)], f_j = exp(-ln(10000) j / (dim/2)) in fp32, cos half first (spec 5, 10.3)."""
    half = dim // 2
    f = torch.exp(-math.log(10000.0) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half)
    a = t.float()[:, None] * f[None]
    return torch.cat((torch.cos(a), torch.sin(a)), dim=-1)





def rotate(t, cos, sin):
    """Spec 7.1: rotate-half pairing of element e with e + hd/2; t [R, H, L, hd], cos/sin [R, L, hd]."""
    h = t.shape[-1] // 2
    rot = torch.cat((-t[..., h:], t[..., :h]), dim=-1)
    return t * cos[:, None] + rot * sin[:, None]


def rope_prefix(positions, head_dim):
    """Scale 0 (spec 7.1): 1-D table from the per-row position ids [R, T]; cos/sin [R, T, hd]."""
    g = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    a = positions.float()[..., None] * g
    a = torch.cat((a, a), dim=-1)
    return a.cos(), a.sin()


def rope_2d(pn, P, offsets, head_dim):
    """Scales si >= 1 (spec 7.1): p0 = (r/pn)*P + off, p1 = (c/pn)*P + off (fp32, not rounded);
    angles [row freqs x2 | col freqs x2]; offsets [R] = last prefix position id of each row."""
    dev = offsets.device
    f = 1.0 / (10000.0 ** (torch.arange(0, head_dim // 2, 2, dtype=torch.float32, device=dev) / (head_dim // 2)))
    grid = torch.arange(pn, dtype=torch.float32, device=dev) / pn * P  # [pn]
    off = offsets.float()[:, None]
    p0 = (grid[:, None].expand(pn, pn).reshape(-1))[None] + off  # [R, L]
    p1 = (grid[None, :].expand(pn, pn).reshape(-1))[None] + off
    a0, a1 = p0[..., None] * f, p1[..., None] * f
    a = torch.cat((a0, a0, a1, a1), dim=-1)
    return a.cos(), a.sin()


def hart_top_k(si, switch=7):
    """Spec 8: hard-coded top-k, 600 before the switch scale index (official 7), 300 from it."""
    return 600 if si < switch else 300


def filter_top_k_top_p_(logits, top_k, top_p):
    """var.md 5.1 in place on [..., V]: logits below the k-th largest -> -inf (ties kept); then with
    top_p > 0 the longest ascending low-probability prefix with cumulative mass <= 1 - top_p is removed
    (the largest logit always kept). Returns logits."""
    V = logits.shape[-1]
    if top_k > 0:
        k = min(top_k, V)
        thr = logits.topk(k, dim=-1, largest=True, sorted=False).values.amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < thr, float("-inf"))
    if top_p > 0:
        srt, order = logits.sort(dim=-1, descending=False)
        cum = srt.softmax(dim=-1).cumsum(dim=-1)
        remove = cum <= (1 - top_p)
        remove[..., -1] = False
        logits.masked_fill_(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def phi_index(si, S, K):
    """Spec 9: argmin_k |ticks[k] - si/(S-1)| (first minimum), ticks = numpy linspace (start + i*step,
    last = stop) over (1/12, 11/12) for K = 4 (the release), else (1/(2K), 1 - 1/(2K))."""
    lo, hi = (1 / 12, 11 / 12) if K == 4 else (1 / (2 * K), 1 - 1 / (2 * K))
    ticks = [lo + i * ((hi - lo) / (K - 1)) for i in range(K)] if K > 1 else [lo]
    ticks[-1] = hi
    x = si / (S - 1)
    d = [abs(t - x) for t in ticks]
    return d.index(min(d))


def _norm_weight(C, device):
    return _Holder(weight=nn.Parameter(torch.ones(C, device=device)))


# ------------------------------------------------------------------------------------------------
# transformer


class Attention(nn.Module):
    """Spec 7: LlamaAttention with fused QKV (q, v biases), optional cosine attention, RoPE, KV cache."""

    def __init__(self, C, heads, l2_norm, device=None):
        super().__init__()
        self.C, self.heads, self.hd, self.l2_norm = C, heads, C // heads, l2_norm
        if l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.zeros(1, heads, 1, 1, device=device))
        self.q_bias = nn.Parameter(torch.zeros(C, device=device))
        self.v_bias = nn.Parameter(torch.zeros(C, device=device))
        self.register_buffer("zero_k_bias", torch.zeros(C, device=device))
        self.qkv_proj = nn.Linear(C, 3 * C, bias=False, device=device)
        self.proj = nn.Linear(C, C, device=device)
        self.scale = 1.0 if l2_norm else 0.25 / math.sqrt(self.hd)

    def forward(self, h, cos, sin, cache, use_sdpa=False):
        R, L, C = h.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(h, self.qkv_proj.weight, bias).view(R, L, 3, self.heads, self.hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [R, H, L, hd]
        if self.l2_norm:
            sm = self.scale_mul_1H11.clamp_max(math.log(100.0)).exp()
            q = F.normalize(q, dim=-1, eps=1e-12) * sm
            k = F.normalize(k, dim=-1, eps=1e-12)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        kc, vc = cache.append(k.to(v.dtype), v)
        # Score chunks below 2^26 elements: the 64x64 scale of HART-0.7B has 4096 queries x 9750 keys
        # x 24 heads per row.
        o = attention(q.to(v.dtype), kc, vc, self.scale, use_sdpa, q_chunk_elems=1 << 26)
        return self.proj(o.transpose(1, 2).reshape(R, L, C))


class LlamaFFN(nn.Module):
    def __init__(self, C, hidden, device=None):
        super().__init__()
        self.gate_proj = nn.Linear(C, hidden, bias=False, device=device)
        self.up_proj = nn.Linear(C, hidden, bias=False, device=device)
        self.down_proj = nn.Linear(hidden, C, bias=False, device=device)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GPT2FFN(nn.Module):
    def __init__(self, C, hidden, device=None):
        super().__init__()
        self.fc1 = nn.Linear(C, hidden, device=device)
        self.fc2 = nn.Linear(hidden, C, device=device)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def pts_keep(x, ratio):
    """FastVAR PTS (spec 12.2): per row the K = L - int(L*ratio) tokens farthest (squared L2) from the
    row's token mean, in descending-score order. x [R, L, C] -> [R, K] int64."""
    L = x.shape[1]
    K = L - int(L * ratio)
    xf = x.float()
    score = (xf - xf.mean(dim=1, keepdim=True)).pow(2).sum(-1)
    return score.topk(K, dim=1, largest=True, sorted=True).indices


def ctr_restore(cached, side, keep, y):
    """FastVAR CTR (spec 12.2): the cached branch output [R, Lc, C] of a square scale, area-resized to
    side x side (row-major tokens), with the kept rows overwritten by the fresh outputs y [R, K, C]."""
    R, Lc, C = cached.shape
    sc = int(round(math.sqrt(Lc)))
    full = F.interpolate(cached.transpose(1, 2).reshape(R, C, sc, sc).float(), size=(side, side), mode="area")
    full = full.reshape(R, C, side * side).transpose(1, 2).to(y.dtype).contiguous()
    return full.scatter(1, keep[..., None].expand(-1, -1, C), y)


class Block(nn.Module):
    """Spec 6 (released path): x += Attn(RMS(x)); x += FFN(RMS(x)), one RMSNorm weight, no AdaLN.
    With a FastVAR step (spec 12.2) a branch runs on the kept tokens only and is restored from cache."""

    def __init__(self, cfg, device=None):
        super().__init__()
        self.eps = cfg.norm_eps
        self.attn = Attention(cfg.C, cfg.heads, cfg.attn_l2_norm, device)
        self.ffn = (LlamaFFN if cfg.mlp_type == "llama" else GPT2FFN)(cfg.C, cfg.ffn_hidden, device)
        self.ln_wo_grad = _norm_weight(cfg.C, device)

    def forward(self, x, cos, sin, cache, use_sdpa=False, fv=None, tap=None, prefix=""):
        """fv: None, or {"store": dict} at the cache scale, or {"ratio": r, "cached": dict, "side": pn,
        "branches": (...)} at a pruned scale."""
        w = self.ln_wo_grad.weight
        for branch in ("attn", "ffn"):
            prune = fv is not None and "ratio" in fv and branch in fv["branches"]
            if prune:
                keep = pts_keep(x, fv["ratio"])
                if tap is not None:
                    tap(f"{prefix}{branch}.kept_idx", keep.to(torch.int32))
                xs = x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
                h = rms(xs, w, self.eps)
                if branch == "attn":
                    idx = keep[..., None].expand(-1, -1, cos.shape[-1])
                    y = self.attn(h, cos.gather(1, idx), sin.gather(1, idx), cache, use_sdpa)
                else:
                    y = self.ffn(h)
                y = ctr_restore(fv["cached"][branch], fv["side"], keep, y)
            else:
                h = rms(x, w, self.eps)
                y = self.attn(h, cos, sin, cache, use_sdpa) if branch == "attn" else self.ffn(h)
                if fv is not None and "store" in fv:
                    fv["store"][branch] = y
            x = x + y
        return x


class TimestepEmbedder(nn.Module):
    """sinusoid(256) -> Linear -> SiLU -> Linear (keys mlp.0, mlp.2)."""

    def __init__(self, width, device=None):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, width, device=device), nn.SiLU(), nn.Linear(width, width, device=device))

    def forward(self, t):
        return self.mlp(sinusoid(t, 256))


class ResBlockAdaLN(nn.Module):
    def __init__(self, W, device=None):
        super().__init__()
        self.in_ln = nn.LayerNorm(W, eps=1e-6, device=device)
        self.mlp = nn.Sequential(nn.Linear(W, W, device=device), nn.SiLU(), nn.Linear(W, W, device=device))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(W, 3 * W, device=device))

    def forward(self, x, y):
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(self.in_ln(x) * (1 + scale) + shift)


class FinalLayer(nn.Module):
    def __init__(self, W, out, device=None):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W, device=device))
        self.linear = nn.Linear(W, out, device=device)

    def forward(self, x, y):
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + scale) + shift)


class DiffusionMLP(nn.Module):
    """Spec 10.3 (SimpleMLPAdaLN): eps (first Cvae) and variance values (last Cvae) per row."""

    def __init__(self, Cvae, C, W, depth, device=None):
        super().__init__()
        self.time_embed = TimestepEmbedder(W, device)
        self.cond_embed = nn.Linear(C, W, device=device)
        self.input_proj = nn.Linear(Cvae, W, device=device)
        self.res_blocks = nn.ModuleList(ResBlockAdaLN(W, device) for _ in range(depth))
        self.final_layer = FinalLayer(W, 2 * Cvae, device)

    def forward(self, x, t, z):
        y = self.time_embed(t).to(z.dtype) + self.cond_embed(z)
        x = self.input_proj(x)
        for b in self.res_blocks:
            x = b(x, y)
        return self.final_layer(x, y)


class HART(nn.Module):
    """The transformer and its diffusion head (keys of the official llm state dict, spec 3.1).

    train_buffers: register the training-only persistent buffers `lvl_1L` and `attn_bias_for_masking`
    (needed for a strict load of an official/golden file; 380 MB at the real size, unused here)."""

    def __init__(self, cfg, train_buffers=True, device=None):
        super().__init__()
        self.cfg = cfg
        C = cfg.C
        N = cfg.T + sum(p * p for p in cfg.patch_nums[1:])
        if train_buffers:
            self.register_buffer("lvl_1L", torch.zeros(1, N, dtype=torch.int64, device=device))
            self.register_buffer("attn_bias_for_masking", torch.zeros(1, 1, N, N, device=device))
        self.word_embed = nn.Linear(cfg.Cvae, C, device=device)
        self.context_embed = nn.Linear(cfg.context_dim, C, device=device)
        if cfg.use_context_norm:
            self.context_norm = _norm_weight(cfg.context_dim, device)
        if cfg.use_timestep_embed:
            self.lvl_embed = TimestepEmbedder(C, device)
        else:
            self.lvl_embed = nn.Embedding(cfg.S, C, device=device)
        self.blocks = nn.ModuleList(Block(cfg, device) for _ in range(cfg.depth))
        self.head_nm = _Holder(ln_wo_grad=_norm_weight(C, device),
                               ada_lin=nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C, device=device)))
        self.head = nn.Linear(C, cfg.V, device=device)
        self.decoder_norm = _norm_weight(C, device)
        self.diffloss = _Holder(net=DiffusionMLP(cfg.Cvae, C, cfg.diff_width, cfg.diff_depth, device))

    def level_embeddings(self):
        """lvl(s) for s = 0..S-1 (spec 5) -> [S, C]."""
        if self.cfg.use_timestep_embed:
            return self.lvl_embed(torch.arange(self.cfg.S, device=self.word_embed.weight.device))
        return self.lvl_embed.weight

    def encode_text(self, ctx):
        """Spec 5: ctx [B, T, Cd] -> (normed context [2B, T, Cd], sos [2B, T, C]); the unconditional
        rows are the all-zero context."""
        dt = self.context_embed.weight.dtype
        ctx_all = torch.cat((ctx.to(dt), torch.zeros_like(ctx, dtype=dt)), 0)
        if self.cfg.use_context_norm:
            ctx_all = rms(ctx_all, self.context_norm.weight, self.cfg.norm_eps)
        return ctx_all, self.context_embed(ctx_all)

    def head_modulation(self, sos):
        """Spec 8: (scale, shift) [2B, 1, C] from the element-wise max of sos over the prefix."""
        ss = self.head_nm.ada_lin(sos.max(dim=1, keepdim=True).values)
        return ss.chunk(2, dim=-1)

    def logits(self, x, mod):
        scale, shift = mod
        return self.head(rms(x, self.head_nm.ln_wo_grad.weight, self.cfg.norm_eps) * (1 + scale) + shift)

    def diffusion_condition(self, x_last, tokens):
        """Spec 10.2: RMS(x_last + word_embed(codebook rows); decoder_norm) for both CFG halves."""
        e = self.word_embed(tokens.to(self.word_embed.weight.dtype))
        return rms(x_last + torch.cat((e, e), 0), self.decoder_norm.weight, self.cfg.norm_eps)


# ------------------------------------------------------------------------------------------------
# tokenizer (VAR VQVAE decoder + the multi-scale quantizer's inference side), spec 9 and 11


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout, device=None):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, cin, eps=1e-6, device=device)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, device=device)
        self.norm2 = nn.GroupNorm(32, cout, eps=1e-6, device=device)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, device=device)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1, device=device) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    def __init__(self, c, device=None):
        super().__init__()
        self.norm = nn.GroupNorm(32, c, eps=1e-6, device=device)
        self.qkv = nn.Conv2d(c, 3 * c, 1, device=device)
        self.proj_out = nn.Conv2d(c, c, 1, device=device)

    def forward(self, x):
        B, c, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, c, H * W).unbind(1)
        w = torch.bmm(q.transpose(1, 2), k).mul_(c ** -0.5).softmax(-1)  # [B, N(q), N(k)]
        h = torch.bmm(v, w.transpose(1, 2)).reshape(B, c, H, W)
        return x + self.proj_out(h)


class Upsample(nn.Module):
    def __init__(self, c, device=None):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1, device=device)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """var.md 8: conv_in, mid (block, attn, block), levels n-1..0 of num_res_blocks+1 ResnetBlocks (an
    AttnBlock after each block of the lowest-resolution level), nearest x2 + conv after levels n-1..1,
    GroupNorm + SiLU + conv_out."""

    def __init__(self, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=32, device=None):
        super().__init__()
        n = len(ch_mult)
        top = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, top, 3, 1, 1, device=device)
        self.mid = _Holder(block_1=ResnetBlock(top, top, device), attn_1=AttnBlock(top, device),
                           block_2=ResnetBlock(top, top, device))
        levels = [None] * n
        cin = top
        for lv in reversed(range(n)):
            cout = ch * ch_mult[lv]
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(cin, cout, device))
                cin = cout
            m = _Holder(block=blocks)
            m.attn = nn.ModuleList(AttnBlock(cout, device) for _ in blocks) if lv == n - 1 else nn.ModuleList()
            m.upsample = Upsample(cout, device) if lv != 0 else None
            levels[lv] = m
        self.up = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(32, ch, eps=1e-6, device=device)
        self.conv_out = nn.Conv2d(ch, 3, 3, 1, 1, device=device)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for lv in reversed(range(len(self.up))):
            m = self.up[lv]
            for b, blk in enumerate(m.block):
                h = blk(h)
                if len(m.attn):
                    h = m.attn[b](h)
            if m.upsample is not None:
                h = m.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class HartTokenizer(nn.Module):
    """The tokenizer's inference side (keys without `vae.`): decoder.*, post_quant_conv.*,
    quantize.embedding.weight (codebook), quantize.quant_resi.qresi_ls.{k} (phi convs) and the
    statistics buffer quantize.ema_vocab_hit_SV [ema_rows, V] (kept for a strict load)."""

    def __init__(self, cfg, ema_rows=None, device=None):
        super().__init__()
        self.cfg = cfg
        Cv = cfg.Cvae
        if cfg.share_quant_resi < 2:
            raise NotImplementedError("share_quant_resi 0/1 (not released); expected the partially shared phi")
        self.decoder = Decoder(cfg.vae_ch, cfg.vae_ch_mult, cfg.vae_num_res_blocks, Cv, device)
        self.post_quant_conv = nn.Conv2d(Cv, Cv, 3, 1, 1, device=device)
        q = _Holder(embedding=nn.Embedding(cfg.V, Cv, device=device),
                    quant_resi=_Holder(qresi_ls=nn.ModuleList(nn.Conv2d(Cv, Cv, 3, 1, 1, device=device)
                                                              for _ in range(cfg.share_quant_resi))))
        q.register_buffer("ema_vocab_hit_SV", torch.zeros(ema_rows or cfg.S, cfg.V, device=device))
        self.quantize = q

    @staticmethod
    def tokenizer_state_dict(sd):
        """The entries this module holds from a tokenizer state dict: the `vae.` prefix of
        HARTAutoEncoderWithDisc removed; encoder, quant_conv, disc and the second decoder dropped."""
        out = {}
        for k, v in sd.items():
            if k.startswith("vae."):
                k = k[4:]
            if k.startswith(("decoder.", "post_quant_conv.", "quantize.embedding.", "quantize.quant_resi.",
                             "quantize.ema_vocab_hit_SV")):
                out[k] = v
        return out

    @property
    def codebook(self):
        return self.quantize.embedding.weight

    def phi(self, h, si):
        conv = self.quantize.quant_resi.qresi_ls[phi_index(si, self.cfg.S, self.cfg.share_quant_resi)]
        r = self.cfg.quant_resi
        return h * (1 - r) + conv(h) * r

    def accumulate(self, f_hat, h, si):
        """Spec 9 (si < S-1): f_hat + phi_k(bicubic(h, P x P))."""
        P = self.cfg.P
        up = F.interpolate(h, size=(P, P), mode="bicubic", align_corners=False)
        return f_hat + self.phi(up, si)

    def decode(self, f_hat):
        """Spec 11: clamp(decoder(post_quant_conv(f_hat)), -1, 1)."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)


# ------------------------------------------------------------------------------------------------
# diffusion schedule and sampler (spec 10.4)


def diffusion_schedule(steps="8", T=1000):
    """IDDPM cosine schedule respaced to `steps` (a single section count as a string) -> dict of
    float64 tensors indexed by the respaced step k (timestep_map int64: the original timesteps)."""
    steps = str(steps)
    if not steps.isdigit():
        raise NotImplementedError(f"num_sampling_steps {steps!r}: only a single section count is supported")
    n = int(steps)

    def abar(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)]
    acp, p = [], 1.0
    for b in betas:
        p *= 1 - b
        acp.append(p)
    if n == 1:
        tmap = [0]
    else:
        stride, cur, tmap = (T - 1) / (n - 1), 0.0, []
        for _ in range(n):
            tmap.append(round(cur))
            cur += stride
    nb, prev = [], 1.0
    for t in tmap:
        nb.append(1 - acp[t] / prev)
        prev = acp[t]
    d = torch.float64
    beta = torch.tensor(nb, dtype=d)
    ab = torch.cumprod(1 - beta, 0)
    ab_prev = torch.cat((torch.ones(1, dtype=d), ab[:-1]))
    pv = beta * (1 - ab_prev) / (1 - ab)
    logvar_min = torch.log(torch.cat((pv[1:2], pv[1:]))) if n > 1 else torch.log(pv)
    return {"timestep_map": torch.tensor(tmap, dtype=torch.int64), "betas": beta, "alphas_cumprod": ab,
            "alphas_cumprod_prev": ab_prev, "sqrt_recip_alphas_cumprod": torch.sqrt(1 / ab),
            "sqrt_recipm1_alphas_cumprod": torch.sqrt(1 / ab - 1), "posterior_log_variance_clipped": logvar_min,
            "posterior_mean_coef1": beta * torch.sqrt(ab_prev) / (1 - ab),
            "posterior_mean_coef2": (1 - ab_prev) * torch.sqrt(1 - beta) / (1 - ab), "log_betas": torch.log(beta)}


def diffusion_sample(net, z, t_cfg, sched, noise_init, noise_fn, temperature=1.0, tap=None):
    """Spec 10.4: z [N, C] condition rows (conditional half, then unconditional); noise_init
    [N/2, Cvae]; noise_fn(K) -> [N, Cvae] noise of call K. Returns the last state [N, Cvae]; rows
    0..N/2-1 carry the result. As in the official loop the state holds both halves (x = [x_c; x_u],
    x_u starting as a copy of x_c), the network sees [x_c; x_c] with [z_c; z_u], and the update runs on
    the whole state, the second half with its own variance output and noise rows (it never feeds back;
    kept so that every tapped step tensor is comparable). t_cfg == 1.0 exactly: the non-CFG branch
    (the network on the state itself, each half unguided)."""
    N = z.shape[0]
    half = N // 2
    Cv = noise_init.shape[-1]
    n = len(sched["timestep_map"])
    c = {k: v.float() for k, v in sched.items() if k != "timestep_map"}
    x0_ = noise_init.float()
    x = torch.cat((x0_, x0_), 0)
    cfg_branch = t_cfg != 1.0
    for K, k in enumerate(reversed(range(n))):
        pre = f"diff.step{K}."
        x_in = torch.cat((x[:half], x[:half]), 0) if cfg_branch else x
        t_model = torch.full((N,), int(sched["timestep_map"][k]), dtype=torch.int64, device=z.device)
        out = net(x_in.to(z.dtype), t_model, z).float()
        if cfg_branch:
            eps_c, eps_u = out[:half, :Cv], out[half:, :Cv]
            e = (1 + t_cfg) * eps_c - t_cfg * eps_u
            eps = torch.cat((e, e), 0)
        else:
            eps = out[:, :Cv]
        v = out[:, Cv:]
        x0 = (c["sqrt_recip_alphas_cumprod"][k] * x - c["sqrt_recipm1_alphas_cumprod"][k] * eps).clamp(-1, 1)
        mean = c["posterior_mean_coef1"][k] * x0 + c["posterior_mean_coef2"][k] * x
        frac = (v + 1) / 2
        logv = frac * c["log_betas"][k] + (1 - frac) * c["posterior_log_variance_clipped"][k]
        noise = noise_fn(K)
        x = mean + torch.exp(0.5 * logv) * noise * temperature if k != 0 else mean
        if tap is not None:
            tap(pre + "x_in", x_in)
            tap(pre + "t_model", t_model)
            tap(pre + "net_out", out)
            tap(pre + "guided_out", torch.cat((eps, v), 1))
            tap(pre + "pred_xstart", x0)
            tap(pre + "sample", x)
    return x


# ------------------------------------------------------------------------------------------------
# generation (spec 5-12)


def default_fastvar_plan(S, depth):
    """The official HART plan by scale index (spec 12.3): cache S-3, prune S-2 at 0.5 and S-1 at 0.75,
    all layers, both branches."""
    return {"cache_scale": S - 3, "prune": {S - 2: 0.5, S - 1: 0.75}, "layers": list(range(depth)),
            "branches": ("attn", "ffn")}


def kv_capacity(cfg, plan, block):
    cap = cfg.T
    for si in range(1, cfg.S):
        L = cfg.patch_nums[si] ** 2
        if plan and si in plan["prune"] and block in plan["layers"] and "attn" in plan["branches"]:
            L -= int(L * plan["prune"][si])
        cap += L
    return cap


def generate(model, tok, ctx, positions, cfg=4.5, top_k_switch=7, top_p=0.0, smooth=True, temperature=1.0,
             steps=None, plan=None, generator=None, forced=None, tap=None, use_sdpa=False, phase=None):
    """Spec 5-12: text prefix, scale loop with CFG/top-k/top-p sampling (or the more_smooth Gumbel
    mixture), f_hat accumulation, last-scale residual diffusion. Returns f_hat [B, Cvae, P, P] (fp32).

    ctx [B, T, Cd] text features, positions [B, T] int64 context position ids. plan: None (full model)
    or a FastVAR plan {"cache_scale", "prune": {si: ratio}, "layers", "branches"}. forced: teacher
    forcing, a dict with the golden inputs' names (`idx.sNN` [B, n], `gumbel.sNN` Exp(1) samples
    [B, n, V], `diff.noise_init` [B*n, Cvae], `diff.noise_stepK` [2B*n, Cvae] of diffusion call K); what
    it lacks is drawn from `generator` (the diffusion noise too). tap(name, tensor) receives intermediates
    named as in the golden files and may return a replacement tensor (stage-by-stage checks).
    phase(name) is called with "diffusion" when the last scale's diffusion starts (timing)."""
    c = model.cfg
    S, P, V, Cv = c.S, c.P, c.V, c.Cvae
    B = ctx.shape[0]
    dev = ctx.device
    forced = forced or {}
    steps = steps if steps is not None else c.num_sampling_steps

    def emit(name, t):
        if tap is None:
            return t
        r = tap(name, t)
        return t if r is None else r.to(device=t.device, dtype=t.dtype)

    normed, sos = model.encode_text(ctx)
    normed = emit("text.context_normed", normed)
    sos = emit("text.cond_BD", sos)
    mod = model.head_modulation(sos)
    lvl = model.level_embeddings()
    if tap is not None:
        tap("lvl_pos", torch.cat([lvl[si:si + 1].expand(n, -1) for si, n in enumerate(c.tokens())], 0)[None])
    pos_all = torch.cat((positions.to(dev), torch.zeros_like(positions, device=dev)), 0)  # uncond ids 0
    offsets = pos_all[:, -1]
    caches = [KVCache(kv_capacity(c, plan, i)) for i in range(c.depth)]
    ctr = [dict() for _ in range(c.depth)]
    f_hat = torch.zeros(B, Cv, P, P, device=dev)
    codebook = tok.codebook.float()
    nxt = None
    for si in range(S):
        pre = f"s{si:02d}."
        pn = c.patch_nums[si]
        n = pn * pn
        last = si == S - 1
        if si == 0:
            cos, sin = rope_prefix(pos_all, c.head_dim)
            x = sos + lvl[0]
        else:
            cos, sin = rope_2d(pn, P, offsets, c.head_dim)
            e = model.word_embed(nxt.to(model.word_embed.weight.dtype))
            x = e + lvl[si]
            x = torch.cat((x, x), 0)
        if tap is not None:
            tap(f"rope.s{si:02d}.cos", cos)
            tap(f"rope.s{si:02d}.sin", sin)
        x = emit(pre + "x_in", x)
        for i, blk in enumerate(model.blocks):
            fv = None
            if plan is not None and si >= 1:
                if si == plan["cache_scale"]:
                    fv = {"store": ctr[i]}
                elif si in plan["prune"] and i in plan["layers"]:
                    if not ctr[i]:
                        raise RuntimeError(f"FastVAR: scale {si} is pruned before the cache scale "
                                           f"{plan['cache_scale']} ran")
                    fv = {"ratio": plan["prune"][si], "cached": ctr[i], "side": pn, "branches": plan["branches"]}
            x = blk(x, cos, sin, caches[i], use_sdpa, fv, tap, f"{pre}block{i}.")
            x = emit(f"{pre}block{i}.out", x)
        if tap is not None or si > 0:
            raw = model.logits(x, mod).float()
            if tap is not None:
                raw = emit(pre + "logits_raw", raw)
            raw = raw[:, -1:] if si == 0 else raw
        else:  # scale 0 samples from the last prefix position only
            raw = model.logits(x[:, -1:], mod).float()
        ratio = (S - 2) / (S - 1) if last else si / (S - 1)
        t = cfg * ratio
        guided = (1 + t) * raw[:B] - t * raw[B:]
        guided = emit(pre + "logits_guided", guided)
        k = hart_top_k(si, top_k_switch)
        if tap is not None:
            tap(pre + "top_k", torch.tensor([k], dtype=torch.int32))
        filt = filter_top_k_top_p_(guided.clone(), k, top_p)
        keep = emit(pre + "filter_keep", torch.isfinite(filt).to(torch.uint8))
        filt = guided.masked_fill(keep == 0, float("-inf"))
        need_idx = not smooth or last
        idx = None
        if f"idx.s{si:02d}" in forced:
            idx = forced[f"idx.s{si:02d}"].to(dev).long().view(B, n)
        elif need_idx:
            idx = torch.multinomial(filt.softmax(-1).view(B * n, V), 1, generator=generator).view(B, n)
        if smooth:
            tau = max(0.27 * (1 - 0.95 * ratio), 0.005)
            E = forced.get(f"gumbel.s{si:02d}")
            if E is None:
                E = torch.empty_like(filt).exponential_(generator=generator)
            g = -(E.to(dev).float().view(B, n, V).log())
            y = ((filt * (1 + ratio) + g) / tau).softmax(-1)
            h_tok = y @ codebook  # [B, n, Cvae]
        else:
            h_tok = codebook[idx]
        h = h_tok.transpose(1, 2).reshape(B, Cv, pn, pn)
        if not last:
            h = emit(pre + "h", h)
            f_hat = emit(pre + "f_hat", tok.accumulate(f_hat, h, si))
            pn2 = c.patch_nums[si + 1]
            nx = F.interpolate(f_hat, size=(pn2, pn2), mode="area")
            nxt = emit(pre + "next_in", nx.reshape(B, Cv, pn2 * pn2).transpose(1, 2))
            continue
        # the last scale (spec 10): diffusion condition from the hard ids, residual, f_hat += h + residual
        if phase is not None:
            phase("diffusion")
        h_tok = emit(pre + "h", h).reshape(B, Cv, n).transpose(1, 2)
        discrete = emit("final.discrete_embed", codebook[idx])
        z = emit("final.diff_cond", model.diffusion_condition(x, discrete))
        if tap is not None:
            tap("final.diff_t", torch.tensor([t], dtype=torch.float32))
        noise_init = forced.get("diff.noise_init")
        if noise_init is None:
            noise_init = torch.randn(B * n, Cv, generator=generator, device=dev)

        def noise_fn(K):
            r = forced.get(f"diff.noise_step{K}")
            if r is None:
                return torch.randn(2 * B * n, Cv, generator=generator, device=dev)
            return r.to(dev).float()

        sample = diffusion_sample(model.diffloss.net, z.reshape(2 * B * n, c.C), t, diffusion_schedule(steps),
                                  noise_init.to(dev), noise_fn, temperature, tap)
        res = emit("final.diff_out", VAE_SCALE * sample)[:B * n].reshape(B, n, Cv)
        tokens = h_tok + res
        f_hat = f_hat + tokens.transpose(1, 2).reshape(B, Cv, P, P)
    if plan is not None and tap is not None:
        for i in range(c.depth):
            for br, v in ctr[i].items():
                tap(f"cache.block{i}.{br}", v)
    return emit("final.f_hat", f_hat)
