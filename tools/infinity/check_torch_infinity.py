#!/usr/bin/env python3
"""Checks tools/infinity/infinity_torch.py (the PyTorch Infinity of the GPU baseline) against a golden
folder of the official code (default tests/data/golden/infinity_tiny_a; see its README.md).

Loads weights_infinity.safetensors and weights_vae.safetensors into the modules with
load_state_dict(strict=True), runs the teacher-forced generation of the folder (its prompts' T5
features, schedule, per-scale cfg/tau, forced bits, rope normaliser from config.json) on the CPU in
fp32, decodes, and compares every tensor that both sides produce: text path, block-0 inputs, block
outputs, raw and guided logits, codes, summed codes, next-scale inputs, rope tables, final summed
codes and image. Prints the max-abs error and the error relative to max|ref| per tensor (and the
worst per group); fails (exit 1) past the README's tolerances:
hidden states / logits / image 1e-4 x max|ref|, codes and summed codes 1e-5 x max|ref|.

  /usr/bin/python3 tools/infinity/check_torch_infinity.py [--golden DIR] [--sdpa] [-v]
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import infinity_torch as it  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--golden", default=os.path.join(ROOT, "tests", "data", "golden", "infinity_tiny_a"))
    ap.add_argument("--sdpa", action="store_true", help="attention through F.scaled_dot_product_attention")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every tensor, not only the group maxima")
    args = ap.parse_args()
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    g = args.golden
    cfg = json.load(open(os.path.join(g, "config.json")))
    wt = it.load_safetensors(os.path.join(g, "weights_infinity.safetensors"))
    wv = it.load_safetensors(os.path.join(g, "weights_vae.safetensors"))
    inp = it.load_safetensors(os.path.join(g, "inputs.safetensors"))
    ref = it.load_safetensors(os.path.join(g, "ref_infinity.safetensors"))

    model = it.Infinity.from_state_dict_shapes(wt).eval()
    model.load_state_dict(wt, strict=True)
    n_loaded = len(model.state_dict())
    vae = it.BSQVAE.from_state_dict_shapes(wv).eval()
    vae.load_state_dict(it.BSQVAE.decoder_state_dict(wv), strict=True)
    left = [k for k in wv if not k.startswith("decoder.") and not k.startswith("quantize")]
    if left:
        sys.exit(f"unexpected VAE tensors: {left[:5]}")
    tiny = cfg["tiny"]
    for k_cfg, v in (("depth", model.depth), ("embed_dim", model.C), ("num_heads", model.heads),
                     ("codebook_dim", model.bits)):
        if k_cfg in tiny and tiny[k_cfg] != v:
            sys.exit(f"config {k_cfg} = {tiny[k_cfg]}, model built with {v}")
    print(f"torch {torch.__version__}: {g}\n   transformer: depth {model.depth} ({model.chunks} chunks), C {model.C}, "
          f"{model.heads} heads, {model.bits} bits; {n_loaded} state-dict tensors loaded strict "
          f"(file: {len(wt)}); VAE decoder: {len(vae.state_dict())} tensors")

    lens = [int(x) for x in inp["text.lens"].tolist()]
    feats = list(torch.split(inp["text.t5_features"].float(), lens, 0))
    sched = [(int(r[1]), int(r[2])) for r in inp["scale_schedule"].tolist()]
    cfg_list = [float(x) for x in inp["cfg_list"].tolist()]
    tau_list = [float(x) for x in inp["tau_list"].tolist()]
    rope_hw = tuple(cfg.get("rope", {}).get("normalizer_hw", [64, 64]))

    def teacher(si, h, w):
        return inp[f"labels.s{si:02d}"]

    got = {}

    def tap(name, t):
        got[name] = t.detach().float().clone()

    with torch.no_grad():
        summed = it.generate(model, feats, sched, cfg_list, tau_list, top_k=tiny.get("top_k", 900),
                             top_p=tiny.get("top_p", 0.97), rope_hw=rope_hw, teacher=teacher, tap=tap,
                             use_sdpa=args.sdpa)
        img = vae(summed)
    got["final.image"] = img
    got["final.image_u8_bgr"] = ((img + 1) / 2 * 255).to(torch.uint8).permute(0, 2, 3, 1).flip(-1)

    def group(name):
        if name.startswith("text."):
            return "text"
        if name.startswith("rope."):
            return "rope"
        if name.startswith("final."):
            return name
        part = name.split(".", 1)[1]
        if part.startswith("block"):
            return "block outputs"
        return part  # x_in, logits_raw, logits_guided, codes, summed_codes, next_in_codes

    tol = {"codes": 1e-5, "summed_codes": 1e-5, "next_in_codes": 1e-5, "final.summed_codes": 1e-5}
    worst = {}
    fails, compared = [], 0
    missing = [k for k in ref if k not in got]
    for name in sorted(ref):
        if name not in got:
            continue
        r, o = ref[name], got[name]
        if tuple(r.shape) != tuple(o.shape):
            fails.append(f"{name}: shape {tuple(o.shape)} vs ref {tuple(r.shape)}")
            continue
        compared += 1
        if r.dtype == torch.uint8:
            err = (o.int() - r.int()).abs().max().item()
            if args.verbose:
                print(f"   {name:28s} max |diff| {err} LSB")
            worst[group(name)] = (err, float("nan"), name)
            if err > 1:
                fails.append(f"{name}: {err} LSB")
            continue
        r = r.float()
        err = (o - r).abs().max().item()
        scale = max(r.abs().max().item(), 1e-30)
        rel = err / scale
        grp = group(name)
        if args.verbose:
            print(f"   {name:28s} max abs err {err:.3e}  (rel {rel:.2e}, max|ref| {scale:.3g})")
        if grp not in worst or rel > worst[grp][1]:
            worst[grp] = (err, rel, name)
        if not rel <= tol.get(grp, 1e-4):
            fails.append(f"{name}: max abs err {err:.3e}, rel {rel:.2e} > {tol.get(grp, 1e-4):g}")
    print(f"   compared {compared} tensors ({len(missing)} reference tensors not produced: "
          f"{', '.join(missing[:4]) or '-'})")
    for grp in sorted(worst):
        err, rel, name = worst[grp]
        if rel != rel:
            print(f"   {grp:22s} max |diff| {err} LSB ({name})")
        else:
            print(f"   {grp:22s} max abs err {err:.3e}  rel {rel:.2e}  (worst: {name})")
    if fails:
        print("FAILED:\n   " + "\n   ".join(fails[:20]))
        return 1
    print("check_torch_infinity: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
