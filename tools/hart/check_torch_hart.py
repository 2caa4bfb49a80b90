#!/usr/bin/env python3
"""Checks tools/hart/hart_torch.py (the PyTorch HART of the timing peer) against a golden folder of the
official code (default tests/data/golden/hart_tiny_a; see its README.md).

Everything comes from the folder: the model and tokenizer configuration from config.json (cross-checked
against the weights' keys, spec 2.2: FFN type, level embedding, context norm, cosine attention), the
weights from weights_llm.safetensors / weights_tokenizer.safetensors (load_state_dict(strict=True)), the
text features, position ids, forced indices, Gumbel Exp(1) samples and diffusion noise from
inputs.safetensors, cfg / top-p / the top-k switch scale / the diffusion steps / the FastVAR plan from
config.json. Runs on the CPU in fp32, teacher forced, every reference run present in the folder:
  ref_hart         more_smooth off, end to end;
  ref_hart_smooth  more_smooth on, stage by stage (spec 14: each scale's guided logits, filter mask, h,
                   f_hat and next input, the diffusion condition, its output and the final f_hat are
                   replaced by the reference after being compared, so every stage starts from the
                   reference's inputs; the Gumbel softmax amplifies fp32 rounding otherwise);
  ref_fastvar      the FastVAR plan of config.json (fastvar_plan), end to end, plus kept sets and caches.
Compared, wherever both sides have them: text path, level embeddings, RoPE tables, block inputs and
outputs, raw and guided logits, top-k filter masks and k, h, f_hat, next inputs, the diffusion condition,
every diffusion step (input, timestep, net output, guided output, x0, sample), the schedule tables, the
final f_hat, image, image01 and 8-bit RGB image, the FastVAR kept sets (as sets per row) and the
36x36-style branch caches. Also per run: the decoder alone on the reference f_hat against the reference
image ("decoder(ref f_hat)").

Tolerances (README / config.json `tolerances`): max-abs error <= 1e-4 x max|ref| per tensor;
diff.step0.pred_xstart 5e-2, diff.step* 2e-3, final.diff_out 3e-4 (x max|ref|); integers exact; filter
masks exact except entries within 1e-4 x max|logit| of the top-k threshold (with top-p: whose ascending
cumulative probability lies within 1e-5 of 1 - top_p); kept sets identical; 8-bit image +-1 LSB.
Prints the worst error per group (every tensor with -v); exit 1 past a tolerance.

  build/venv-torch/bin/python tools/hart/check_torch_hart.py [--golden DIR] [--sdpa] [-v]
"""
import argparse
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hart_torch as ht  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

# replaced by the reference after comparison in the stage-by-stage run
STAGE = re.compile(r"^(s\d\d\.(logits_guided|filter_keep|h|f_hat|next_in)|final\.(diff_cond|diff_out|f_hat))$")


def tolerance(name):
    if name == "diff.step0.pred_xstart":
        return 5e-2
    if name.startswith("diff.step"):
        return 2e-3
    if name == "final.diff_out":
        return 3e-4
    return 1e-4


def group(name):
    if name.startswith(("text.", "rope.", "cache.")):
        return name.split(".")[0]
    if name.startswith("diff.step"):
        return "diff.step*." + name.split(".", 2)[2]
    if name.startswith("diff."):
        return "diff.schedule"
    if name.startswith("final.") or "." not in name or name.startswith("decoder("):
        return name
    part = name.split(".", 1)[1]
    if part.startswith("block"):
        return "kept_idx" if part.endswith("kept_idx") else "block outputs"
    return part


def tokenizer_shapes(sd):
    """(ch, ch_mult, num_res_blocks, V, Cvae, K phi convs) from the tokenizer's keys."""
    ch = sd["decoder.norm_out.weight"].shape[0]
    n = 0
    while f"decoder.up.{n}.block.0.conv1.weight" in sd:
        n += 1
    mult = tuple(sd[f"decoder.up.{lv}.block.0.conv2.weight"].shape[0] // ch for lv in range(n))
    rb = 0
    while f"decoder.up.0.block.{rb}.conv1.weight" in sd:
        rb += 1
    K = 0
    while f"quantize.quant_resi.qresi_ls.{K}.weight" in sd:
        K += 1
    V, Cv = sd["quantize.embedding.weight"].shape
    return ch, mult, rb - 1, V, Cv, K


def fastvar_plan(cfg, hc):
    """The folder's FastVAR plan by scale index (config.json fastvar_plan; else the tiny section's
    map-side constants; else the official default)."""
    fp = cfg.get("fastvar_plan")
    tiny = cfg.get("tiny", {})
    if fp:
        if fp.get("skip"):
            raise NotImplementedError(f"FastVAR skipped scales {fp['skip']}")
        return {"cache_scale": int(fp["cache_scale"]), "prune": {int(k): float(v) for k, v in fp["prune"].items()},
                "layers": [int(i) for i in fp.get("pruned_layers", range(hc.depth))],
                "branches": tuple(fp.get("branches", ("attn", "ffn")))}
    if "fastvar_cache_side" in tiny:
        side = {p: si for si, p in enumerate(hc.patch_nums) if si > 0}
        return {"cache_scale": side[int(tiny["fastvar_cache_side"])],
                "prune": {side[int(k)]: float(v) for k, v in tiny["fastvar_ratios"].items()},
                "layers": list(range(hc.depth)), "branches": ("attn", "ffn")}
    return ht.default_fastvar_plan(hc.S, hc.depth)


def filter_flips_allowed(ref_logits, k, top_p):
    """Entries of a top-k(/top-p) mask that may legitimately flip (README tolerance)."""
    lg = ref_logits.float()
    kk = min(k, lg.shape[-1])
    thr = lg.topk(kk, dim=-1).values.amin(-1, keepdim=True)
    near = (lg - thr).abs() <= 1e-4 * lg.abs().max()
    if top_p > 0:
        f = lg.masked_fill(lg < thr, float("-inf"))
        srt, order = f.sort(-1)
        cum = srt.softmax(-1).cumsum(-1)
        close = ((cum - (1 - top_p)).abs() <= 1e-5)
        near |= close.scatter(-1, order, close)
    return near


def compare(run, got, ref, inp, top_p, verbose):
    worst, fails, compared = {}, [], 0
    missing = [k for k in ref if k not in got]
    for name in sorted(ref):
        if name not in got:
            continue
        r, o = ref[name], got[name]
        if tuple(r.shape) != tuple(o.shape):
            fails.append(f"{name}: shape {tuple(o.shape)} vs ref {tuple(r.shape)}")
            continue
        compared += 1
        grp = group(name)
        if name.endswith("kept_idx"):
            bad = sum(set(a.tolist()) != set(b.tolist()) for a, b in zip(o.long(), r.long()))
            line, val = f"{bad} of {r.shape[0]} rows differ as sets", float(bad)
            if bad:
                fails.append(f"{name}: {line}")
        elif name.endswith("filter_keep"):
            diff = o.to(torch.uint8) != r
            k = int(ref.get(name.replace("filter_keep", "top_k"), torch.tensor([600]))[0])
            lg = ref.get(name.replace("filter_keep", "logits_guided"))
            allowed = filter_flips_allowed(lg, k, top_p) if lg is not None else torch.zeros_like(diff)
            hard = int((diff & ~allowed).sum())
            line, val = f"{int(diff.sum())} flips ({hard} outside the threshold band)", float(hard)
            if hard:
                fails.append(f"{name}: {line}")
        elif r.dtype == torch.uint8:
            err = (o.int() - r.int()).abs().max().item()
            line, val = f"max |diff| {err} LSB", float(err)
            if err > 1:
                fails.append(f"{name}: {err} LSB")
        elif not r.is_floating_point():
            bad = int((o.long() != r.long()).sum())
            line, val = f"{bad} integer mismatches", float(bad)
            if bad:
                fails.append(f"{name}: {line}")
        else:
            r = r.float()
            o = o.float()
            err = (o - r).abs().max().item()
            scale = max(r.abs().max().item(), 1e-30)
            rel = err / scale
            line, val = f"max abs err {err:.3e}  rel {rel:.2e}  (max|ref| {scale:.3g})", rel
            if not rel <= tolerance(name):
                fails.append(f"{name}: max abs err {err:.3e}, rel {rel:.2e} > {tolerance(name):g}")
        if verbose:
            print(f"      {name:34s} {line}")
        if grp not in worst or val > worst[grp][0]:
            worst[grp] = (val, line, name)
    print(f"   compared {compared} tensors ({len(missing)} reference tensors not produced"
          f"{': ' + ', '.join(missing[:4]) if missing else ''})")
    for grp in sorted(worst):
        _, line, name = worst[grp]
        print(f"      {grp:28s} {line}   (worst: {name})")
    return fails, compared


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--golden", default=os.path.join(ROOT, "tests", "data", "golden", "hart_tiny_a"))
    ap.add_argument("--sdpa", action="store_true", help="attention through F.scaled_dot_product_attention")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every tensor, not only the group maxima")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    g = args.golden
    cfg = json.load(open(os.path.join(g, "config.json")))
    tiny = cfg.get("tiny") or cfg
    wl = ht.load_safetensors(os.path.join(g, "weights_llm.safetensors"))
    wt = ht.HartTokenizer.tokenizer_state_dict(ht.load_safetensors(os.path.join(g, "weights_tokenizer.safetensors")))
    inp = ht.load_safetensors(os.path.join(g, "inputs.safetensors"))

    hc = ht.HartConfig.from_json(cfg)
    hc.check_state_dict(wl)
    ch, mult, rb, V, Cv, K = tokenizer_shapes(wt)
    declared = {"vae_ch": (hc.vae_ch, ch), "vae_ch_mult": (tuple(hc.vae_ch_mult), mult), "vocab_size": (hc.V, V),
                "z_channels": (hc.Cvae, Cv), "share_quant_resi": (hc.share_quant_resi, K)}
    bad = [f"{k}: config {a}, weights {b}" for k, (a, b) in declared.items() if a != b]
    if bad:
        sys.exit("config.json and weights_tokenizer disagree: " + "; ".join(bad))
    hc.vae_num_res_blocks = rb  # not in config.json: the decoder has num_res_blocks + 1 blocks per level
    model = ht.HART(hc).eval()
    model.load_state_dict(wl, strict=True)
    tok = ht.HartTokenizer(hc, ema_rows=wt["quantize.ema_vocab_hit_SV"].shape[0]).eval()
    tok.load_state_dict(wt, strict=True)
    print(f"torch {torch.__version__}: {g}\n   {hc.describe()}\n   transformer {len(model.state_dict())} "
          f"tensors loaded strict (file: {len(wl)}); tokenizer {len(tok.state_dict())} (decoder "
          f"{rb + 1} blocks per level)")

    cfg_w = float(tiny.get("cfg", 4.5))
    top_p = float(tiny.get("top_p", 0.0) or 0.0)
    switch = int(tiny.get("topk_switch_si", 7))
    steps = str(tiny.get("num_sampling_steps", hc.num_sampling_steps))
    ctx = inp["text.context_tensor"].float()
    pos = inp["text.context_position_ids"].long()
    if "text.context_mask" in inp:
        m = inp["text.context_mask"].long()
        if not torch.equal(pos, m.cumsum(1) - 1):
            print("   note: context_position_ids differ from cumsum(mask) - 1; using the given ids")
    plan = fastvar_plan(cfg, hc)
    runs = [("ref_hart", False, None, False), ("ref_hart_smooth", True, None, True),
            ("ref_fastvar", False, plan, False)]
    total_fail, n_runs = [], 0
    for run, smooth, pl, stage in runs:
        path = os.path.join(g, run + ".safetensors")
        if not os.path.exists(path):
            print(f"== {run}: not in the folder, skipped")
            continue
        n_runs += 1
        ref = ht.load_safetensors(path)
        got = {}

        def tap(name, t, ref=ref, stage=stage, got=got):
            got[name] = t.detach().clone()
            if stage and STAGE.match(name) and name in ref:
                return ref[name]
            return None

        desc = (f"FastVAR plan: cache scale {pl['cache_scale']}, prune {pl['prune']}, layers "
                f"{len(pl['layers'])}, {'+'.join(pl['branches'])}" if pl else "full model")
        print(f"== {run}: more_smooth {'on (stage by stage)' if smooth else 'off'}, {desc}, cfg {cfg_w}, "
              f"top-k switch at scale {switch}, top-p {top_p}, {steps} diffusion steps")
        with torch.no_grad():
            f_hat = ht.generate(model, tok, ctx, pos, cfg=cfg_w, top_k_switch=switch, top_p=top_p, smooth=smooth,
                                steps=steps, plan=pl, forced=inp, tap=tap, use_sdpa=args.sdpa)
            img = tok.decode(f_hat)
            got["final.image"] = img
            got["final.image01"] = (img + 1) / 2
            got["final.image_u8_rgb"] = ((img + 1) / 2 * 255).to(torch.uint8).permute(0, 2, 3, 1)
            if "final.f_hat" in ref and "final.image" in ref:
                got["decoder(ref f_hat)"] = tok.decode(ref["final.f_hat"].float())
                ref["decoder(ref f_hat)"] = ref["final.image"]
        if "diff.timestep_map" in ref:
            for k, v in ht.diffusion_schedule(steps).items():
                if k != "log_betas":
                    got["diff." + k] = v
        fails, _ = compare(run, got, ref, inp, top_p, args.verbose)
        if fails:
            print("   FAILED:\n      " + "\n      ".join(fails[:20]))
        total_fail += [f"{run}: {f}" for f in fails]
    if not n_runs:
        sys.exit(f"no reference runs in {g}")
    if total_fail:
        print(f"check_torch_hart: FAILED ({len(total_fail)} tensors past tolerance)")
        return 1
    print("check_torch_hart: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
