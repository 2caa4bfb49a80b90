#!/usr/bin/env python3
"""Write VAR transformer and VQVAE checkpoints with random weights in the
official state_dict layout (key names, order, shapes, buffers), saved with
torch.save exactly like the released var_d*.pth / vae_ch160v4096z32.pth.

Nothing here imports the official code: the layout follows shared/spec/var.md
section 2. Timing does not depend on the values; they are drawn so that a
generation run stays finite (small init like the official one).

  /usr/bin/python3 tools/make_random_var.py --depth 16 --out /tmp/var_d16.pth
  /usr/bin/python3 tools/make_random_var.py --vae --out /tmp/vae_ch160v4096z32.pth
  (add --safetensors to write .safetensors instead of .pth)
"""
import argparse
import collections
import json
import math
import struct

import torch

PATCH_NUMS = {256: [1, 2, 3, 4, 5, 6, 8, 10, 13, 16], 512: [1, 2, 3, 4, 6, 9, 13, 18, 24, 32]}


def var_state_dict(depth, px, num_classes=1000, V=4096, Cvae=32, shared=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    C, H = 64 * depth, depth
    pn = PATCH_NUMS[px]
    L, SN = sum(p * p for p in pn), len(pn)
    shared = (px == 512) if shared is None else shared
    rnd = lambda *s, std=0.02: torch.randn(*s, generator=g) * std
    sd = collections.OrderedDict()
    sd["pos_start"] = rnd(1, 1, C)
    sd["pos_1LC"] = rnd(1, L, C)
    sd["lvl_1L"] = torch.cat([torch.full((p * p,), i, dtype=torch.int64) for i, p in enumerate(pn)]).view(1, L)
    lvl = sd["lvl_1L"].view(L)
    mask = torch.where(lvl.view(L, 1) >= lvl.view(1, L), 0.0, -math.inf)
    sd["attn_bias_for_masking"] = mask.view(1, 1, L, L).float()
    sd["word_embed.weight"] = rnd(C, Cvae)
    sd["word_embed.bias"] = rnd(C)
    sd["class_emb.weight"] = rnd(num_classes + 1, C)
    sd["lvl_embed.weight"] = rnd(SN, C)
    if shared:
        sd["shared_ada_lin.1.weight"] = rnd(6 * C, C)
        sd["shared_ada_lin.1.bias"] = rnd(6 * C)
    for i in range(depth):
        p = f"blocks.{i}."
        if shared:
            sd[p + "ada_gss"] = rnd(1, 1, 6, C)
        sd[p + "attn.scale_mul_1H11"] = torch.full((1, H, 1, 1), 4.0).log()
        sd[p + "attn.q_bias"] = rnd(C)
        sd[p + "attn.v_bias"] = rnd(C)
        sd[p + "attn.zero_k_bias"] = torch.zeros(C)
        sd[p + "attn.mat_qkv.weight"] = rnd(3 * C, C)
        sd[p + "attn.proj.weight"] = rnd(C, C)
        sd[p + "attn.proj.bias"] = rnd(C)
        sd[p + "ffn.fc1.weight"] = rnd(4 * C, C)
        sd[p + "ffn.fc1.bias"] = rnd(4 * C)
        sd[p + "ffn.fc2.weight"] = rnd(C, 4 * C)
        sd[p + "ffn.fc2.bias"] = rnd(C)
        if not shared:
            sd[p + "ada_lin.1.weight"] = rnd(6 * C, C)
            sd[p + "ada_lin.1.bias"] = rnd(6 * C)
    sd["head_nm.ada_lin.1.weight"] = rnd(2 * C, C)
    sd["head_nm.ada_lin.1.bias"] = rnd(2 * C)
    sd["head.weight"] = rnd(V, C)
    sd["head.bias"] = rnd(V)
    return sd


def vae_state_dict(ch=160, ch_mult=(1, 1, 2, 2, 4), nrb=2, V=4096, Cvae=32, SN=10, seed=1, encoder=True):
    g = torch.Generator().manual_seed(seed)
    sd = collections.OrderedDict()

    def conv(name, cout, cin, k):
        sd[name + ".weight"] = torch.randn(cout, cin, k, k, generator=g) * (1.0 / math.sqrt(cin * k * k))
        sd[name + ".bias"] = torch.randn(cout, generator=g) * 0.01

    def norm(name, c):
        sd[name + ".weight"] = 1 + torch.randn(c, generator=g) * 0.02
        sd[name + ".bias"] = torch.randn(c, generator=g) * 0.02

    def resblock(name, cin, cout):
        norm(name + ".norm1", cin)
        conv(name + ".conv1", cout, cin, 3)
        norm(name + ".norm2", cout)
        conv(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(name + ".nin_shortcut", cout, cin, 1)

    def attn(name, c):
        norm(name + ".norm", c)
        conv(name + ".qkv", 3 * c, c, 1)
        conv(name + ".proj_out", c, c, 1)

    n = len(ch_mult)
    if encoder:
        conv("encoder.conv_in", ch, 3, 3)
        in_mult = (1,) + tuple(ch_mult)
        for l in range(n):
            cin, cout = ch * in_mult[l], ch * ch_mult[l]
            for b in range(nrb):
                resblock(f"encoder.down.{l}.block.{b}", cin, cout)
                cin = cout
            if l == n - 1:
                for b in range(nrb):
                    attn(f"encoder.down.{l}.attn.{b}", cout)
            if l != n - 1:
                conv(f"encoder.down.{l}.downsample.conv", cout, cout, 3)
        top = ch * ch_mult[-1]
        resblock("encoder.mid.block_1", top, top)
        attn("encoder.mid.attn_1", top)
        resblock("encoder.mid.block_2", top, top)
        norm("encoder.norm_out", top)
        conv("encoder.conv_out", Cvae, top, 3)
    top = ch * ch_mult[-1]
    conv("decoder.conv_in", top, Cvae, 3)
    resblock("decoder.mid.block_1", top, top)
    attn("decoder.mid.attn_1", top)
    resblock("decoder.mid.block_2", top, top)
    # state_dict order follows module creation: up.0 first
    cin_of = {}
    cin = top
    for l in reversed(range(n)):
        cin_of[l] = cin
        cin = ch * ch_mult[l]
    for l in range(n):
        cout = ch * ch_mult[l]
        c = cin_of[l]
        for b in range(nrb + 1):
            resblock(f"decoder.up.{l}.block.{b}", c, cout)
            c = cout
        if l == n - 1:
            for b in range(nrb + 1):
                attn(f"decoder.up.{l}.attn.{b}", cout)
        if l != 0:
            conv(f"decoder.up.{l}.upsample.conv", cout, cout, 3)
    norm("decoder.norm_out", ch)
    conv("decoder.conv_out", 3, ch, 3)
    sd["quantize.ema_vocab_hit_SV"] = torch.zeros(SN, V)
    for k in range(4):
        conv(f"quantize.quant_resi.qresi_ls.{k}", Cvae, Cvae, 3)
    sd["quantize.embedding.weight"] = torch.randn(V, Cvae, generator=g)
    conv("quant_conv", Cvae, Cvae, 3)
    conv("post_quant_conv", Cvae, Cvae, 3)
    return sd


def save_safetensors(sd, path):
    names = {torch.float32: "F32", torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16"}
    header, off, blobs = {}, 0, []
    for k, t in sd.items():
        t = t.contiguous()
        b = t.view(-1).view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--px", type=int, default=256, choices=sorted(PATCH_NUMS))
    ap.add_argument("--vae", action="store_true", help="write the VQVAE instead of the transformer")
    ap.add_argument("--no-encoder", action="store_true", help="VQVAE without encoder weights")
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    ap.add_argument("--safetensors", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    sd = vae_state_dict(encoder=not a.no_encoder, seed=a.seed + 1) if a.vae else var_state_dict(a.depth, a.px, seed=a.seed)
    cast = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    sd = collections.OrderedDict((k, v.to(cast) if v.is_floating_point() else v) for k, v in sd.items())
    if a.safetensors:
        save_safetensors(sd, a.out)
    else:
        torch.save(sd, a.out)
    n = sum(v.numel() for v in sd.values())
    print(f"wrote {a.out}: {len(sd)} tensors, {n:,} elements")


if __name__ == "__main__":
    main()
