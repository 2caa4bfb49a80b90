"""Multi-scale residual VQVAE with the official VAR state_dict layout (spec sections 2.2, 6, 7, 8),
plus a small training script for Fashion-MNIST (32x32, gray replicated to RGB).

Run:  python3 tools/train/vqvae.py --out /tmp/train/vae [--resume] [--minutes 40]
"""
import argparse
import csv
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import load_fmnist, save_safetensors, to_gray32  # noqa: E402


# --------------------------------------------------------------------------- building blocks
def Normalize(c):
    return nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = Normalize(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = Normalize(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1, 1, 0) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        s = self.nin_shortcut(x) if self.nin_shortcut is not None else x
        return s + h


class AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.C = c
        self.norm = Normalize(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1, 1, 0)
        self.proj_out = nn.Conv2d(c, c, 1, 1, 0)

    def forward(self, x):
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]               # (B, C, N)
        w = torch.bmm(q.transpose(1, 2), k) * (C ** -0.5)         # (B, Nq, Nk)
        w = torch.softmax(w, dim=2)
        h = torch.bmm(v, w.transpose(1, 2)).reshape(B, C, H, W)  # h[c,i] = sum_j v[c,j] w[i,j]
        return x + self.proj_out(h)


class Upsample2x(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Encoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels, in_channels=3):
        super().__init__()
        nl = len(ch_mult)
        in_mult = (1,) + tuple(ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        block_in = ch
        for l in range(nl):
            block_in = ch * in_mult[l]
            block_out = ch * ch_mult[l]
            d = nn.Module()
            d.block = nn.ModuleList()
            d.attn = nn.ModuleList()
            for _ in range(num_res_blocks):
                d.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if l == nl - 1:
                    d.attn.append(AttnBlock(block_in))
            if l != nl - 1:
                d.downsample = Downsample2x(block_in)
            self.down.append(d)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, 1, 1)
        self.nl = nl

    def forward(self, x):
        h = self.conv_in(x)
        for l in range(self.nl):
            d = self.down[l]
            for b, blk in enumerate(d.block):
                h = blk(h)
                if len(d.attn) > 0:
                    h = d.attn[b](h)
            if l != self.nl - 1:
                h = d.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels, out_channels=3):
        super().__init__()
        nl = len(ch_mult)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        ups = []
        for l in reversed(range(nl)):
            u = nn.Module()
            u.block = nn.ModuleList()
            u.attn = nn.ModuleList()
            block_out = ch * ch_mult[l]
            for _ in range(num_res_blocks + 1):
                u.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if l == nl - 1:
                    u.attn.append(AttnBlock(block_in))
            if l != 0:
                u.upsample = Upsample2x(block_in)
            ups.insert(0, u)
        self.up = nn.ModuleList(ups)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, 1, 1)
        self.nl = nl

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for l in reversed(range(self.nl)):
            u = self.up[l]
            for b, blk in enumerate(u.block):
                h = blk(h)
                if len(u.attn) > 0:
                    h = u.attn[b](h)
            if l != 0:
                h = u.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# --------------------------------------------------------------------------- quantiser
class Phi(nn.Conv2d):
    def __init__(self, c, ratio):
        super().__init__(c, c, 3, 1, 1)
        self.resi_ratio = abs(ratio)

    def forward(self, h):
        return h * (1 - self.resi_ratio) + super().forward(h) * self.resi_ratio


class PhiPartiallyShared(nn.Module):
    def __init__(self, c, ratio, K=4):
        super().__init__()
        self.qresi_ls = nn.ModuleList([Phi(c, ratio) for _ in range(K)])
        self.ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)

    def index(self, at):
        return int(np.argmin(np.abs(self.ticks - at)))

    def __getitem__(self, at):
        return self.qresi_ls[self.index(at)]


class MultiScaleVQ(nn.Module):
    def __init__(self, V, Cvae, patch_nums, beta=0.25, quant_resi=0.5):
        super().__init__()
        self.V, self.Cvae, self.patch_nums, self.beta = V, Cvae, tuple(patch_nums), beta
        self.quant_resi = PhiPartiallyShared(Cvae, quant_resi, 4)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(patch_nums), V))
        self.embedding = nn.Embedding(V, Cvae)
        self.embedding.weight.data.uniform_(-1.0 / V, 1.0 / V)
        self.record_hit = 0

    def phi(self, si):
        SN = len(self.patch_nums)
        return self.quant_resi[si / (SN - 1)]

    def _nearest(self, z_NC):
        E = self.embedding.weight.data
        d = z_NC.pow(2).sum(1, keepdim=True) + E.pow(2).sum(1) - 2 * z_NC @ E.t()
        return d.argmin(1)

    def forward(self, f):
        """Training forward: returns (f_hat with straight-through grads, vq_loss, per-scale hit counts, rests)."""
        B, C, H, W = f.shape
        SN = len(self.patch_nums)
        f_ng = f.detach()
        f_rest = f_ng.clone()
        f_hat = torch.zeros_like(f_rest)
        loss = 0.0
        hits, rests = [], []
        for si, pn in enumerate(self.patch_nums):
            if si != SN - 1:
                z = F.interpolate(f_rest, size=(pn, pn), mode="area")
            else:
                z = f_rest
            z_NC = z.permute(0, 2, 3, 1).reshape(-1, C)
            rests.append(z_NC)
            with torch.no_grad():
                idx = self._nearest(z_NC)
            hits.append(idx.bincount(minlength=self.V).float())
            h = self.embedding(idx).view(B, pn, pn, C).permute(0, 3, 1, 2)
            if si != SN - 1:
                h = F.interpolate(h, size=(H, W), mode="bicubic", align_corners=False)
            h = self.phi(si)(h)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            loss = loss + F.mse_loss(f_hat.detach(), f) * self.beta + F.mse_loss(f_hat, f_ng)
        loss = loss / SN
        f_hat_st = (f_hat.detach() - f_ng) + f  # straight-through to the encoder
        # codebook gets grads via f_hat term of the loss; decoder gets grads through f_hat_st... we also want
        # the decoder loss to train phi/codebook a bit, so return f_hat too
        with torch.no_grad():
            hv = torch.stack(hits)
            if self.record_hit == 0:
                self.ema_vocab_hit_SV.copy_(hv)
            else:
                self.ema_vocab_hit_SV.mul_(0.97).add_(hv * 0.03)
            self.record_hit += 1
        return f_hat_st, loss, rests

    @torch.no_grad()
    def f_to_idxBl(self, f):
        B, C, H, W = f.shape
        SN = len(self.patch_nums)
        f_rest = f.clone()
        f_hat = torch.zeros_like(f)
        out = []
        for si, pn in enumerate(self.patch_nums):
            z = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != SN - 1 else f_rest
            idx = self._nearest(z.permute(0, 2, 3, 1).reshape(-1, C)).view(B, pn * pn)
            out.append(idx)
            h = self.embedding(idx).view(B, pn, pn, C).permute(0, 3, 1, 2)
            if si != SN - 1:
                h = F.interpolate(h, size=(H, W), mode="bicubic", align_corners=False)
            h = self.phi(si)(h)
            f_hat += h
            f_rest -= h
        return out

    @torch.no_grad()
    def idxBl_to_fhat(self, idx_Bl):
        P = self.patch_nums[-1]
        SN = len(self.patch_nums)
        B = idx_Bl[0].shape[0]
        f_hat = torch.zeros(B, self.Cvae, P, P)
        for si, pn in enumerate(self.patch_nums):
            h = self.embedding(idx_Bl[si]).view(B, pn, pn, self.Cvae).permute(0, 3, 1, 2)
            if si != SN - 1:
                h = F.interpolate(h, size=(P, P), mode="bicubic", align_corners=False)
            f_hat = f_hat + self.phi(si)(h)
        return f_hat

    @torch.no_grad()
    def idxBl_to_var_input(self, idx_Bl):
        """Teacher-forcing inputs (B, L - 1, Cvae): area-downsampled accumulated f_hat for scales 1..SN-1."""
        P = self.patch_nums[-1]
        SN = len(self.patch_nums)
        B = idx_Bl[0].shape[0]
        f_hat = torch.zeros(B, self.Cvae, P, P)
        nxt = []
        for si in range(SN - 1):
            pn = self.patch_nums[si]
            h = self.embedding(idx_Bl[si]).view(B, pn, pn, self.Cvae).permute(0, 3, 1, 2)
            h = F.interpolate(h, size=(P, P), mode="bicubic", align_corners=False)
            f_hat = f_hat + self.phi(si)(h)
            pn2 = self.patch_nums[si + 1]
            nxt.append(F.interpolate(f_hat, size=(pn2, pn2), mode="area").view(B, self.Cvae, -1).transpose(1, 2))
        return torch.cat(nxt, dim=1)


class VQVAE(nn.Module):
    def __init__(self, V=256, Cvae=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                 patch_nums=(1, 2, 3, 4, 5, 6, 8), beta=0.25, quant_resi=0.5):
        super().__init__()
        self.cfg = dict(V=V, Cvae=Cvae, ch=ch, ch_mult=list(ch_mult), num_res_blocks=num_res_blocks,
                        patch_nums=list(patch_nums))
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, Cvae)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, Cvae)
        self.quantize = MultiScaleVQ(V, Cvae, patch_nums, beta, quant_resi)
        self.quant_conv = nn.Conv2d(Cvae, Cvae, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(Cvae, Cvae, 3, 1, 1)

    def encode(self, x):
        return self.quant_conv(self.encoder(x))

    def decode_fhat(self, f_hat):
        return self.decoder(self.post_quant_conv(f_hat))

    def forward(self, x):
        f = self.encode(x)
        f_hat, vq_loss, rests = self.quantize(f)
        return self.decode_fhat(f_hat), vq_loss, rests

    @torch.no_grad()
    def img_to_idxBl(self, x):
        return self.quantize.f_to_idxBl(self.encode(x))


# --------------------------------------------------------------------------- training
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/train/vae")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--minutes", type=float, default=40.0, help="wall-clock training budget")
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--V", type=int, default=256)
    ap.add_argument("--Cvae", type=int, default=16)
    ap.add_argument("--ch", type=int, default=32)
    ap.add_argument("--ch_mult", default="1,1,2")
    ap.add_argument("--bench", type=int, default=0, help="only time N steps")
    ap.add_argument("--export", default="models/fmnist_vae.safetensors")
    ap.add_argument("--log", default="tools/train/logs/vqvae.csv")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)

    xs, _ = load_fmnist("train")
    X = to_gray32(xs)  # (N,1,32,32)
    N = X.shape[0]
    model = VQVAE(V=args.V, Cvae=args.Cvae, ch=args.ch, ch_mult=tuple(int(c) for c in args.ch_mult.split(",")))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    step, elapsed = 0, 0.0
    ck = os.path.join(args.out, "ckpt.pt")
    if args.resume and os.path.exists(ck):
        s = torch.load(ck)
        model.load_state_dict(s["model"])
        opt.load_state_dict(s["opt"])
        step, elapsed = s["step"], s["elapsed"]
        model.quantize.record_hit = 1
        print(f"resumed at step {step}, {elapsed / 60:.1f} min", flush=True)
    budget = args.minutes * 60
    n_params = sum(p.numel() for p in model.parameters())
    print(f"VQVAE params {n_params}", flush=True)
    logf = open(args.log, "a", newline="")
    logw = csv.writer(logf)
    if step == 0:
        logw.writerow(["step", "minutes", "lr", "rec_l1", "rec_l2", "vq", "used_codes", "ms_per_step"])
    g = torch.Generator().manual_seed(1234 + step)
    t_last_ck = time.time()
    t0 = time.time() - elapsed
    acc = np.zeros(3)
    nacc = 0
    t_win = time.time()
    while True:
        elapsed = time.time() - t0
        if (args.bench and step >= args.bench) or (not args.bench and elapsed >= budget):
            break
        frac = min(elapsed / budget, 1.0)
        lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))) * min(1.0, (step + 1) / 200)
        for pg in opt.param_groups:
            pg["lr"] = lr
        bi = torch.randint(0, N, (args.bs,), generator=g)
        x = X[bi]
        if torch.rand(1, generator=g).item() < 0.5:
            x = x.flip(3)  # horizontal flip augmentation
        x3 = x.expand(-1, 3, -1, -1)
        if step == 0 and not args.resume:
            with torch.no_grad():  # data-dependent codebook init
                f = model.encode(x3).permute(0, 2, 3, 1).reshape(-1, args.Cvae)
                model.quantize.embedding.weight.data.copy_(f[torch.randint(0, f.shape[0], (args.V,))] * 0.3)
        rec, vq, rests = model(x3)
        l1 = (rec - x3).abs().mean()
        l2 = F.mse_loss(rec, x3)
        loss = l1 + l2 + vq
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        acc += [l1.item(), l2.item(), float(vq)]
        nacc += 1
        # dead-code restart (every 50 steps): codes unused at every scale get a random residual vector
        if step % 50 == 0 and elapsed < 0.85 * budget:
            with torch.no_grad():
                use = model.quantize.ema_vocab_hit_SV.sum(0)
                dead = (use < 0.03).nonzero().flatten()
                if dead.numel() > 0:
                    pool = torch.cat(rests[1:], 0)
                    pick = pool[torch.randint(0, pool.shape[0], (dead.numel(),))]
                    model.quantize.embedding.weight.data[dead] = pick + 0.01 * torch.randn_like(pick)
                    model.quantize.ema_vocab_hit_SV[:, dead] = 0.5
        if step % 50 == 0:
            used = int((model.quantize.ema_vocab_hit_SV.sum(0) > 0.03).sum())
            ms = (time.time() - t_win) / nacc * 1000
            a = acc / nacc
            row = [step, f"{elapsed / 60:.2f}", f"{lr:.2e}", f"{a[0]:.4f}", f"{a[1]:.4f}", f"{a[2]:.4f}", used,
                   f"{ms:.0f}"]
            logw.writerow(row)
            logf.flush()
            print(" ".join(map(str, row)), flush=True)
            acc[:] = 0
            nacc = 0
            t_win = time.time()
        if time.time() - t_last_ck > 180:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "elapsed": time.time() - t0, "cfg": model.cfg}, ck + ".tmp")
            os.replace(ck + ".tmp", ck)
            t_last_ck = time.time()
    if args.bench:
        print(f"bench: {(time.time() - t0) / step * 1000:.0f} ms/step (bs {args.bs})")
        return
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                "elapsed": time.time() - t0, "cfg": model.cfg}, ck + ".tmp")
    os.replace(ck + ".tmp", ck)
    save_safetensors(model.state_dict(), args.export)
    print(f"done: step {step}, {(time.time() - t0) / 60:.1f} min, exported {args.export}", flush=True)


if __name__ == "__main__":
    main()
