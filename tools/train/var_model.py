"""VAR transformer (class-conditional next-scale prediction) with the official state_dict layout
(spec sections 2.1, 3, 4). Non-shared AdaLN, cosine attention (attn_l2_norm=True)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def ln(x, eps=1e-6):
    return F.layer_norm(x, (x.shape[-1],), None, None, eps)


class FFN(nn.Module):
    def __init__(self, C, hidden):
        super().__init__()
        self.fc1 = nn.Linear(C, hidden)
        self.fc2 = nn.Linear(hidden, C)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SelfAttention(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.C, self.H, self.hd = C, H, C // H
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), 4.0).log())
        self.max_scale_mul = math.log(100)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.proj = nn.Linear(C, C)
        self.caching = False
        self.cached_k = self.cached_v = None
        self.tap = None

    def kv_caching(self, on):
        self.caching = on
        self.cached_k = self.cached_v = None

    def forward(self, x, attn_bias=None):
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, L, 3, self.H, self.hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, hd)
        sm = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
        q = F.normalize(q, dim=-1) * sm
        k = F.normalize(k, dim=-1)
        if self.caching:
            if self.cached_k is None:
                self.cached_k, self.cached_v = k, v
            else:
                self.cached_k = torch.cat((self.cached_k, k), dim=2)
                self.cached_v = torch.cat((self.cached_v, v), dim=2)
            k, v = self.cached_k, self.cached_v
        att = q @ k.transpose(-2, -1)
        if attn_bias is not None:
            att = att + attn_bias
        out = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, L, C)
        return self.proj(out)


class AdaLNSelfAttn(nn.Module):
    def __init__(self, C, H, mlp_ratio=4.0):
        super().__init__()
        self.C = C
        self.attn = SelfAttention(C, H)
        self.ffn = FFN(C, round(C * mlp_ratio))
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(C, 6 * C))
        self.tap = None  # optional callback(name, tensor) for golden capture

    def ada(self, cond_BD):
        return self.ada_lin(cond_BD).view(-1, 1, 6, self.C)

    def forward(self, x, cond_BD, attn_bias=None):
        g1, g2, s1, s2, b1, b2 = self.ada(cond_BD).unbind(2)
        a_in = ln(x) * (1 + s1) + b1
        a_out = self.attn(a_in, attn_bias)
        if self.tap is not None:
            self.tap("attn_in", a_in)
            self.tap("attn_out", a_out)
        x = x + a_out * g1
        x = x + self.ffn(ln(x) * (1 + s2) + b2) * g2
        return x


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.C = C
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(C, 2 * C))

    def ada(self, cond_BD):
        return self.ada_lin(cond_BD).view(-1, 1, 2, self.C)

    def forward(self, x, cond_BD):
        scale, shift = self.ada(cond_BD).unbind(2)
        return ln(x) * (1 + scale) + shift


class VAR(nn.Module):
    def __init__(self, V=256, Cvae=16, depth=6, C=256, H=4, mlp_ratio=4.0, num_classes=10,
                 patch_nums=(1, 2, 3, 4, 5, 6, 8), cond_drop=0.1):
        super().__init__()
        self.V, self.Cvae, self.depth, self.C, self.H = V, Cvae, depth, C, H
        self.num_classes, self.patch_nums, self.cond_drop = num_classes, tuple(patch_nums), cond_drop
        self.L = sum(pn * pn for pn in patch_nums)
        self.first_l = patch_nums[0] ** 2
        self.begin_ends = []
        cur = 0
        for pn in patch_nums:
            self.begin_ends.append((cur, cur + pn * pn))
            cur += pn * pn
        init_std = math.sqrt(1 / C / 3)
        # parameters/buffers in the official creation order (state_dict order)
        self.word_embed = nn.Linear(Cvae, C)
        self.class_emb = nn.Embedding(num_classes + 1, C)
        nn.init.trunc_normal_(self.class_emb.weight, mean=0, std=init_std)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        nn.init.trunc_normal_(self.pos_start, mean=0, std=init_std)
        pos = []
        for pn in patch_nums:
            pe = torch.empty(1, pn * pn, C)
            nn.init.trunc_normal_(pe, mean=0, std=init_std)
            pos.append(pe)
        self.pos_1LC = nn.Parameter(torch.cat(pos, 1))
        self.lvl_embed = nn.Embedding(len(patch_nums), C)
        nn.init.trunc_normal_(self.lvl_embed.weight, mean=0, std=init_std)
        self.blocks = nn.ModuleList([AdaLNSelfAttn(C, H, mlp_ratio) for _ in range(depth)])
        d = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(patch_nums)]).view(1, self.L, 1)
        dT = d.transpose(1, 2)
        lvl_1L = dT[:, 0].contiguous().long()
        self.register_buffer("lvl_1L", lvl_1L)
        mask = torch.where(d >= dT, 0.0, -torch.inf).reshape(1, 1, self.L, self.L)
        self.register_buffer("attn_bias_for_masking", mask.contiguous())
        self.head_nm = AdaLNBeforeHead(C)
        self.head = nn.Linear(C, V)
        self._init_weights(init_std)

    def _init_weights(self, init_std, init_head=0.02, init_adaln=0.5, init_adaln_gamma=1e-5):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.head.weight.data.mul_(init_head)
        self.head.bias.data.zero_()
        self.head_nm.ada_lin[-1].weight.data.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.data.zero_()
        for b in self.blocks:
            b.attn.proj.weight.data.div_(math.sqrt(2 * self.depth))
            b.ffn.fc2.weight.data.div_(math.sqrt(2 * self.depth))
            lin = b.ada_lin[-1]
            lin.weight.data[2 * self.C:].mul_(init_adaln)
            lin.weight.data[:2 * self.C].mul_(init_adaln_gamma)
            lin.bias.data.zero_()

    # ----------------------------------------------------------------- training (teacher forcing)
    def forward(self, label_B, x_BLCv_wo_first_l):
        """label_B (B,), x_BLCv_wo_first_l (B, L-1, Cvae) -> logits (B, L, V)."""
        B = label_B.shape[0]
        if self.training and self.cond_drop > 0:
            drop = torch.rand(B) < self.cond_drop
            label_B = torch.where(drop, torch.full_like(label_B, self.num_classes), label_B)
        cond_BD = self.class_emb(label_B)
        sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
        x = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l)), dim=1)
        x = x + self.lvl_embed(self.lvl_1L.expand(B, -1)) + self.pos_1LC
        bias = self.attn_bias_for_masking
        for b in self.blocks:
            x = b(x, cond_BD, bias)
        return self.head(self.head_nm(x, cond_BD))

    # ----------------------------------------------------------------- inference (spec section 3)
    @torch.no_grad()
    def infer_cfg(self, vq, B, label_B, cfg=3.0, top_k=0, top_p=0.0, g=None, teacher_idx=None, tap=None):
        """vq: the VQVAE quantiser (MultiScaleVQ). teacher_idx: list of (B, pn^2) int64 replacing the sampler.
        Returns f_hat (B, Cvae, P, P)."""
        SN = len(self.patch_nums)
        P = self.patch_nums[-1]
        T = tap or (lambda n, t: None)
        cond_BD = self.class_emb(torch.cat((label_B, torch.full_like(label_B, self.num_classes))))
        T("cond_BD", cond_BD)
        for i, b in enumerate(self.blocks):
            T(f"ada.l{i}", b.ada(cond_BD)[:, 0])
        T("ada.head", self.head_nm.ada(cond_BD)[:, 0])
        lvl_pos = self.lvl_embed(self.lvl_1L) + self.pos_1LC
        x = cond_BD.unsqueeze(1).expand(2 * B, self.first_l, -1) + self.pos_start.expand(2 * B, self.first_l, -1) \
            + lvl_pos[:, :self.first_l]
        f_hat = torch.zeros(B, self.Cvae, P, P, device=cond_BD.device)
        for b in self.blocks:
            b.attn.kv_caching(True)
        cur = 0
        for si, pn in enumerate(self.patch_nums):
            ratio = si / (SN - 1)
            cur += pn * pn
            T(f"s{si}.x_in", x)
            for bi, b in enumerate(self.blocks):
                if bi == 0 and tap is not None:
                    b.tap = lambda n, t, si=si: T(f"s{si}.l0.{n}", t)
                x = b(x, cond_BD)
                b.tap = None
                T(f"s{si}.block{bi}", x)
                if bi == 0 and si == 3 and tap is not None:
                    T("l0.kv_k_after_s3", b.attn.cached_k)
                    T("l0.kv_v_after_s3", b.attn.cached_v)
            logits = self.head(self.head_nm(x, cond_BD))
            T(f"s{si}.logits_raw", logits)
            t = cfg * ratio
            logits = (1 + t) * logits[:B] - t * logits[B:]
            T(f"s{si}.logits_cfg", logits)
            if teacher_idx is not None:
                idx = teacher_idx[si]
            else:
                idx = sample_top_k_top_p(logits, top_k, top_p, g)
            h = vq.embedding(idx).transpose(1, 2).reshape(B, self.Cvae, pn, pn)
            T(f"s{si}.h", h)
            if si != SN - 1:
                f_hat = f_hat + vq.phi(si)(F.interpolate(h, size=(P, P), mode="bicubic", align_corners=False))
                T(f"s{si}.f_hat", f_hat)
                pn2 = self.patch_nums[si + 1]
                nxt = F.interpolate(f_hat, size=(pn2, pn2), mode="area")
                T(f"s{si}.next_in", nxt)
                x = self.word_embed(nxt.view(B, self.Cvae, -1).transpose(1, 2)) + lvl_pos[:, cur:cur + pn2 * pn2]
                x = x.repeat(2, 1, 1)
            else:
                f_hat = f_hat + vq.phi(si)(h)
                T(f"s{si}.f_hat", f_hat)
        for b in self.blocks:
            b.attn.kv_caching(False)
        return f_hat


def sample_top_k_top_p(logits, top_k=0, top_p=0.0, g=None):
    B, l, V = logits.shape
    logits = logits.clone()
    if top_k > 0:
        thr = logits.topk(top_k, dim=-1).values[..., -1:]
        logits[logits < thr] = -torch.inf
    if top_p > 0:
        srt, si = logits.sort(dim=-1, descending=False)
        rm = srt.softmax(-1).cumsum(-1) <= (1 - top_p)
        rm[..., -1:] = False
        logits.scatter_(-1, si, srt.masked_fill(rm, -torch.inf))
    p = logits.softmax(-1).view(-1, V)
    return torch.multinomial(p, 1, generator=g).view(B, l)
