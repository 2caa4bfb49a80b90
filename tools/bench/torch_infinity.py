#!/usr/bin/env python3
"""PyTorch baseline for Infinity (bitwise next-scale text-to-image) generation on the CPU or a CUDA GPU,
to compare fastvar.cpp's `fastvar bench --shape infinity-2b` with PyTorch on the same machine.

The model is the project's own compact PyTorch Infinity (tools/infinity/infinity_torch.py, written from
shared/spec/infinity.md and checked against the official code's golden tensors by
tools/infinity/check_torch_infinity.py) with seeded random weights in the official key layout, drawn like
the engine's bench (src/models/infinity/random_weights.cpp: uniform, std 0.02; norm weights 1 +- 0.02;
cfg_uncond std 0.1; scale_mul_1H11 = ln 4; VAE convs std 1/sqrt(fan_in)) so that generation stays finite
(timing does not depend on the values).
  --preset 2b:   Infinity-2B shapes (infinity_2b_reg): depth 32 (8 block chunks), C 2048, 16 heads (hd 128),
                 FFN 8192, Flan-T5-XL width Ct5 2048 (16 pooling heads), cfg_uncond 512 rows, 32 bits per token
                 (head 64), 15 level embeddings; BSQ-VAE d32 decoder: ch 128, ch_mult (1,2,4,4,4), 3 res blocks
                 per level, stride 16. Schedule: 1:1 '1M', 13 scales 1,2,4,6,8,12,16,20,24,32,40,48,64
                 (10521 tokens) -> 64x64 latent -> 1024x1024 image.
  --preset tiny: the golden folder's shapes (depth 6, C 64, 2 heads, Ct5 256, 16 bits, VAE ch 32 (1,1,2)),
                 1:1 '0.25M' (10 scales to 32x32) -> 128x128; for a quick run on the CPU.
--pn picks another prefix of the 1:1 list (0.06M, 0.25M, 0.60M, 1M). RoPE positions are normalised to
64x64 (the '1M' last scale) as in the official code.

Generation (the "full" mode of `fastvar bench`: no FastVAR pruning): B prompts (--batch) with
--text-len random "T5 features" each (normal, std 0.2; the T5 encoder itself is NOT run and NOT
timed), CFG batch 2B (prompts, then cfg_uncond[:n]), cfg 4 and tau 0.5 on every scale (guidance on
the logits: cfg*cond/tau + (1-cfg)*uncond/tau), top_k 900, top_p 0.97, per-bit sampling from a
seeded torch.Generator, torch.inference_mode(). One untimed warm-up run, then --runs timed runs of
  transformer: text conditioning (RMS norm, attention pooling, text_proj_for_ca MLP, shared AdaLN and
               head modulation), then per scale all blocks (KV cache preallocated per block), head,
               CFG/temperature, bit sampling, bits -> codes, bilinear accumulation into the summed codes
               and the bilinear next-scale input (everything up to the decoder input);
  decode:      BSQ-VAE decoder on the summed codes, clamp to [-1, 1], map to [0, 1] (no uint8/PNG);
each taken between torch.cuda.synchronize() calls on CUDA. images/s = batch / median total.
Peak memory: torch.cuda.max_memory_allocated() over the timed runs on CUDA; ru_maxrss of the
process (includes building the model) everywhere.

--dtype bf16: on CUDA the transformer's and the decoder's weights are converted to bfloat16 and both
parts run under torch.autocast('cuda', bfloat16) (LayerNorm/GroupNorm/softmax in fp32 as autocast
does; sampling and the code accumulation in fp32). On the CPU the weights stay fp32 under
torch.autocast('cpu', bfloat16) and, as in torch_var.py, the decoder's GroupNorm inputs are cast to fp32
by a pre-hook (torch 1.13's CPU GroupNorm rejects bf16 activations with fp32 affine parameters).
--sdpa: the blocks' self-attention and cross-attention through F.scaled_dot_product_attention
(torch >= 2.0; no mask: the KV cache holds only earlier scales and the current one; all prompts have
--text-len tokens, so the text attention is one batched call); otherwise, and always for the one-query
text pooling, explicit softmax(q k^T) v with the scores computed in query chunks of at most 2^30
elements. torch's default matmul precision is left alone (no TF32 for fp32 matmuls on CUDA).

Threads: OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS are set to T before torch is
imported, then torch.set_num_threads(T).

  python3 tools/bench/torch_infinity.py [--preset tiny|2b] [--device cpu|cuda[:N]] [--dtype fp32|bf16]
                                        [--sdpa] [--batch B] [--runs N] [--text-len 77] [--json out.json]
  e.g. on a GPU:  python3 tools/bench/torch_infinity.py --preset 2b --device cuda --dtype bf16 --sdpa \\
                      --runs 3 --json torch_infinity_2b.json
"""
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--preset", choices=("tiny", "2b"), default="2b")
ap.add_argument("--pn", choices=("0.06M", "0.25M", "0.60M", "1M"), help="1:1 schedule (default: 1M for 2b, "
                "0.25M for tiny)")
ap.add_argument("--batch", type=int, default=1, help="prompts per generation (the transformer batch is 2x)")
ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
ap.add_argument("--sdpa", action="store_true", help="attention through F.scaled_dot_product_attention")
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
ap.add_argument("--text-len", type=int, default=77,
                help="tokens per prompt (random T5 features; default 77 as in `fastvar bench`)")
ap.add_argument("--cfg", type=float, default=4.0)
ap.add_argument("--tau", type=float, default=0.5)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--json", help="also write the results as JSON")
args = ap.parse_args()
for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[k] = str(args.threads)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "infinity"))
import infinity_torch as it  # noqa: E402

PRESETS = {
    "2b": dict(model=dict(depth=32, C=2048, heads=16, ffn=8192, Ct5=2048, text_maxlen=512, bits=32, pool_heads=16,
                          chunks=8, levels=15),
               vae=dict(ch=128, ch_mult=(1, 2, 4, 4, 4), res_blocks=3, code_dim=32), pn="1M", stride=16),
    "tiny": dict(model=dict(depth=6, C=64, heads=2, ffn=256, Ct5=256, text_maxlen=512, bits=16, pool_heads=2,
                            chunks=2, levels=15),
                 vae=dict(ch=32, ch_mult=(1, 1, 2), res_blocks=3, code_dim=16), pn="0.25M", stride=4),
}
P = PRESETS[args.preset]
PN = args.pn or P["pn"]
SCHED = it.square_schedule(PN)
ROPE_HW = (64, 64)  # last scale of the 1:1 '1M' list, for every pn
DEV = torch.device(args.device)


def init_random_(model, seed, device):
    """Seeded values like src/models/infinity/random_weights.cpp (uniform with the given std)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def uni(t, mean, std):
        a = math.sqrt(3.0) * std
        t.uniform_(mean - a, mean + a, generator=g)

    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if name == "cfg_uncond":
                uni(p, 0.0, 0.1)
            elif name.endswith("scale_mul_1H11"):
                p.fill_(math.log(4.0))
            elif name.startswith("decoder."):
                if ".conv." in name + "." and p.dim() == 4:
                    uni(p, 0.0, 1.0 / math.sqrt(p[0].numel()))
                elif ".conv." in name:
                    uni(p, 0.0, 0.01)
                else:  # GroupNorm affine
                    uni(p, 1.0 if leaf == "weight" else 0.0, 0.02)
            elif name in ("text_norm.weight",) or (name.endswith("ca_norm.weight")):
                uni(p, 1.0, 0.02)
            else:
                uni(p, 0.0, 0.02)


def build():
    t = time.perf_counter()
    model = it.Infinity(**P["model"], device=DEV).eval()
    vae = it.BSQVAE(**P["vae"], device=DEV).eval()
    init_random_(model, args.seed + 1, DEV)
    init_random_(vae, args.seed + 2, DEV)
    if args.dtype == "bf16" and DEV.type == "cuda":
        model.to(torch.bfloat16)
        vae.to(torch.bfloat16)
    return model, vae, time.perf_counter() - t


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize(DEV)


def one_run(model, vae, feats, seed, autocast):
    g = torch.Generator(device=DEV).manual_seed(seed)
    with torch.inference_mode():
        sync()
        t0 = time.perf_counter()
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=autocast):
            summed = it.generate(model, feats, SCHED, args.cfg, args.tau, top_k=900, top_p=0.97, generator=g,
                                 rope_hw=ROPE_HW, use_sdpa=args.sdpa)
        sync()
        t1 = time.perf_counter()
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=autocast):
            img = (vae(summed) + 1) / 2
        sync()
        t2 = time.perf_counter()
    if not (torch.isfinite(summed).all() and torch.isfinite(img).all()):
        sys.exit("torch_infinity: generation produced non-finite values")
    return {"transformer_s": t1 - t0, "decode_s": t2 - t1, "total_s": t2 - t0}, img


def main():
    if args.batch < 1 or args.runs < 1:
        sys.exit("--batch and --runs must be >= 1")
    if not 1 <= args.text_len <= P["model"]["text_maxlen"]:
        sys.exit(f"--text-len must be in 1..{P['model']['text_maxlen']}")
    if args.sdpa and not it.HAS_SDPA:
        sys.exit(f"--sdpa needs torch >= 2.0 (F.scaled_dot_product_attention); this is torch {torch.__version__}")
    torch.set_num_threads(args.threads)
    model, vae, t_build = build()
    n_tr = sum(p.numel() for p in model.parameters())
    n_dec = sum(p.numel() for p in vae.parameters())
    bf16 = args.dtype == "bf16"
    if bf16 and DEV.type == "cpu":
        for m in vae.modules():
            if isinstance(m, nn.GroupNorm):
                m.register_forward_pre_hook(lambda mod, a: (a[0].float(),))
    gtext = torch.Generator().manual_seed(args.seed + 3)
    feats = [(torch.randn(args.text_len, P["model"]["Ct5"], generator=gtext) * 0.2).to(DEV)
             for _ in range(args.batch)]
    Hf, Wf = SCHED[-1]
    px = (Hf * P["stride"], Wf * P["stride"])
    ntok = sum(h * w for h, w in SCHED)
    gpu = torch.cuda.get_device_name(DEV) if DEV.type == "cuda" else None
    print(f"torch {torch.__version__}: Infinity {args.preset} ({n_tr / 1e6:.1f} M params) + BSQ-VAE decoder "
          f"({n_dec / 1e6:.1f} M), 1:1 {PN} ({len(SCHED)} scales, {ntok} tokens) -> {px[0]}x{px[1]}, batch "
          f"{args.batch} (CFG rows {2 * args.batch}), {args.text_len}-token prompts (T5 not run), {args.dtype}, "
          f"{args.device}{' (' + gpu + ')' if gpu else ''}, sdpa {args.sdpa}, {torch.get_num_threads()} thread(s), "
          f"built in {t_build:.1f} s", flush=True)
    one_run(model, vae, feats, args.seed, bf16)  # warm-up
    if DEV.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEV)
    runs = []
    for r in range(args.runs):
        x, _ = one_run(model, vae, feats, args.seed + 1 + r, bf16)
        runs.append(x)
        print(f"   run {r + 1}/{args.runs}  transformer {x['transformer_s']:7.3f} s  decode {x['decode_s']:7.3f} s"
              f"  total {x['total_s']:7.3f} s", flush=True)
    med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    gpu_peak = torch.cuda.max_memory_allocated(DEV) / 2**20 if DEV.type == "cuda" else None
    ips = args.batch / med["total_s"]
    print(f"   median      transformer {med['transformer_s']:7.3f} s  decode {med['decode_s']:7.3f} s"
          f"  total {med['total_s']:7.3f} s   {ips:.3f} images/s   peak RSS {rss:.0f} MiB"
          + (f"   peak GPU {gpu_peak:.0f} MiB" if gpu_peak is not None else ""))
    if args.json:
        out = {"tool": "torch", "model": "infinity", "preset": args.preset, "torch_version": torch.__version__,
               "pn": PN, "scales": [list(s) for s in SCHED], "tokens": ntok, "image_px": list(px),
               "params_transformer": n_tr, "params_decoder": n_dec,
               "dtype": args.dtype, "device": args.device, "sdpa": args.sdpa, "gpu": gpu,
               "threads": args.threads, "batch": args.batch, "text_len": args.text_len, "t5_timed": False,
               "cfg": args.cfg, "tau": args.tau, "top_k": 900, "top_p": 0.97, "mode": "full",
               "runs": runs, "median": med, "images_per_s": ips, "peak_rss_mib": rss, "peak_gpu_mib": gpu_peak,
               "build_s": t_build}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
