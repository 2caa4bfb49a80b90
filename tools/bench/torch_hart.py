#!/usr/bin/env python3
"""PyTorch baseline for HART (hybrid next-scale text-to-image with a residual diffusion head) generation
on the CPU or a CUDA GPU, to compare fastvar.cpp's `fastvar bench --shape hart-0.7b` with PyTorch on the
same machine.

The model is the project's own compact PyTorch HART (tools/hart/hart_torch.py, written from
shared/spec/hart.md and checked against the official code's golden tensors by
tools/hart/check_torch_hart.py) with seeded random weights in the official key layout, drawn like the
engine's bench (src/models/hart/random_weights.cpp and the VQVAE of src/models/var/random_weights.cpp:
uniform, std 0.02 by default; RMSNorm / LayerNorm / GroupNorm weights 1 +- 0.02; qkv, proj, gate, up,
head, cond_embed std 1/sqrt(C); down std 1/sqrt(FFN); word_embed and input_proj std 0.2;
context_embed 1/sqrt(context_dim); the diffusion MLP's square layers and final linear 1/sqrt(W);
scale_mul_1H11 = ln 4; convs std 1/sqrt(fan_in) with bias std 0.01; codebook std 1) so that generation
stays finite (timing does not depend on the values).
  --preset 0.7b: HART-0.7B shapes (hart_preset("hart-0.7b")): depth 24, C 1536, 24 heads (hd 64), SwiGLU
                 hidden 4096, cosine attention, sinusoidal level embedding, context RMSNorm, text prefix
                 300 x 1536, 14 scales 1,2,3,4,5,7,9,12,16,21,27,36,48,64 (9750 tokens incl. the prefix),
                 V 4096, Cvae 32; diffusion MLP width 1024, 6 blocks, 8 respaced steps; tokenizer decoder
                 ch 160, ch_mult (1,1,2,2,4), 3 ResNet blocks per level -> 1024x1024.
  --preset tiny: the golden folder's shapes (hart-tiny: depth 4, C 64, 4 heads, SwiGLU 256, prefix 10 x 48,
                 scales 1,2,3,4,6,8, V 1024, Cvae 16, diffusion 48 x 2, decoder ch 32 (1,1,2)) -> 32x32.

Generation as the engine's bench: B prompts (--batch) of random "Qwen2 features" (normal, std 0.5, the
whole T-token prefix; the text encoder itself is NOT run and NOT timed) with --text-len real tokens
(right padding: context position ids 0..n-1 then n-1; default min(24, T) as `fastvar bench`), CFG batch 2B
(the unconditional rows: zero context), cfg 4.5 with HART's per-scale ramp (the last scale reuses
(S-2)/(S-1)), top-k 600 before scale index 7 and 300 from it, top-p off, more_smooth on (the Gumbel
mixture; --no-smooth: hard codebook rows), a seeded torch.Generator for the multinomial draws, the Exp(1)
samples and the diffusion noise, torch.inference_mode(). As the engine, the multinomial draw only runs
where its result is used (every scale without more_smooth; with it, only the last scale, whose hard ids
condition the diffusion). --warmup untimed runs (default 1), then --runs timed runs of
  transformer: context norm + context_embed, head modulation, level embeddings, then per scale all blocks
               (KV cache preallocated per block), head, CFG, top-k filter, sampling / Gumbel mixture,
               phi + bicubic accumulation into f_hat and the area next-scale input, and the last scale's
               transformer pass and sampling;
  diffusion:   the last scale's diffusion condition, the 8-step residual diffusion (MLP on 2B*P*P rows per
               step) and f_hat += h + residual;
  decode:      post_quant_conv + decoder, clamp to [-1, 1], map to [0, 1] (no uint8/PNG);
each taken between torch.cuda.synchronize() calls on CUDA. images/s = batch / median total.
--fastvar: the official HART FastVAR plan by scale index (cache S-3 = 36x36, prune S-2 = 48x48 at 0.5
and S-1 = 64x64 at 0.75, all blocks, attention and FFN branches; spec 12); otherwise the full model.
Peak memory: torch.cuda.max_memory_allocated() over the timed runs on CUDA; ru_maxrss of the process
(includes building the model) everywhere.

--dtype bf16: on CUDA the weights are converted to bfloat16 and everything runs under
torch.autocast('cuda', bfloat16); on the CPU the weights stay fp32 under torch.autocast('cpu', bfloat16)
and, as in torch_var.py, the decoder's GroupNorm inputs are cast to fp32 by a pre-hook (torch 1.13's CPU
GroupNorm rejects bf16 activations with fp32 affine parameters). Sampling, the Gumbel mixture, f_hat and
the diffusion update run in fp32.
--sdpa: the blocks' attention through F.scaled_dot_product_attention (torch >= 2.0; no mask: the KV cache
holds the prefix, earlier scales and the current one); otherwise explicit softmax(q k^T) v with the
scores computed in query chunks of at most 2^26 elements.

Threads: OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS are set to T before torch is
imported, then torch.set_num_threads(T).

  python3 tools/bench/torch_hart.py [--preset tiny|0.7b] [--fastvar] [--device cpu|cuda[:N]]
                                    [--dtype fp32|bf16] [--sdpa] [--batch B] [--runs N] [--warmup N]
                                    [--threads T] [--text-len 24] [--json out.json]
  e.g. on a GPU:  python3 tools/bench/torch_hart.py --preset 0.7b --device cuda --dtype bf16 --sdpa \\
                      --runs 3 --json torch_hart_07b.json
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
ap.add_argument("--preset", choices=("tiny", "0.7b"), default="0.7b")
ap.add_argument("--fastvar", action="store_true", help="the official HART FastVAR plan (else the full model)")
ap.add_argument("--batch", type=int, default=1, help="prompts per generation (the transformer batch is 2x)")
ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
ap.add_argument("--sdpa", action="store_true", help="attention through F.scaled_dot_product_attention")
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
ap.add_argument("--text-len", type=int,
                help="real tokens per prompt, right padded to the prefix length (default min(24, prefix) as "
                     "`fastvar bench`)")
ap.add_argument("--cfg", type=float, default=4.5)
ap.add_argument("--no-smooth", action="store_true", help="hard codebook rows instead of the more_smooth mixture")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--json", help="also write the results as JSON")
args = ap.parse_args()
for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[k] = str(args.threads)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "hart"))
import hart_torch as ht  # noqa: E402

PRESETS = {
    "0.7b": dict(),  # HartConfig's defaults are the release's shapes
    "tiny": dict(depth=4, embed_dim=64, num_heads=4, context_token=10, context_dim=48, patch_nums=(1, 2, 3, 4, 6, 8),
                 diff_width=48, diff_depth=2, vocab_size=1024, z_channels=16, vae_ch=32, vae_ch_mult=(1, 1, 2)),
}
CFG = ht.HartConfig(**PRESETS[args.preset])
DEV = torch.device(args.device)
TOPK_SWITCH = 7  # the official rule: 600 before scale index 7, 300 from it
SMOOTH = not args.no_smooth


def init_random_(model, tok, seed, device):
    """Seeded values like src/models/hart/random_weights.cpp and var::random_vae_checkpoint (uniform
    with the given std around the given mean)."""
    g = torch.Generator(device=device).manual_seed(seed)
    c = CFG

    def uni(t, mean, std):
        if std == 0:
            t.fill_(mean)
        else:
            a = math.sqrt(3.0) * std
            t.uniform_(mean - a, mean + a, generator=g)

    inv = lambda n: 1.0 / math.sqrt(n)  # noqa: E731
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale_mul_1H11"):
                uni(p, math.log(4.0), 0.0)
            elif name in ("word_embed.weight", "diffloss.net.input_proj.weight"):
                uni(p, 0.0, 0.2)
            elif name == "context_embed.weight":
                uni(p, 0.0, inv(c.context_dim))
            elif name.endswith(("ln_wo_grad.weight", "in_ln.weight")) or name in ("decoder_norm.weight",
                                                                                 "context_norm.weight"):
                uni(p, 1.0, 0.02)
            elif name == "head.weight" or name == "diffloss.net.cond_embed.weight" or name.endswith(
                    ("qkv_proj.weight", "attn.proj.weight", "gate_proj.weight", "up_proj.weight", "fc1.weight")):
                uni(p, 0.0, inv(c.C))
            elif name.endswith(("down_proj.weight", "fc2.weight")):
                uni(p, 0.0, inv(c.ffn_hidden))
            elif name.startswith("diffloss.net.res_blocks.") and name.endswith(("mlp.0.weight", "mlp.2.weight")) \
                    or name == "diffloss.net.final_layer.linear.weight":
                uni(p, 0.0, inv(c.diff_width))
            else:
                uni(p, 0.0, 0.02)
        for name, m in tok.named_modules():
            if isinstance(m, nn.Conv2d):
                uni(m.weight, 0.0, inv(m.weight[0].numel()))
                uni(m.bias, 0.0, 0.01)
            elif isinstance(m, nn.GroupNorm):
                uni(m.weight, 1.0, 0.02)
                uni(m.bias, 0.0, 0.02)
            elif isinstance(m, nn.Embedding):
                uni(m.weight, 0.0, 1.0)


def build():
    t = time.perf_counter()
    model = ht.HART(CFG, train_buffers=False, device=DEV).eval()
    tok = ht.HartTokenizer(CFG, device=DEV).eval()
    init_random_(model, tok, args.seed + 1, DEV)
    if args.dtype == "bf16" and DEV.type == "cuda":
        model.to(torch.bfloat16)
        tok.to(torch.bfloat16)
    return model, tok, time.perf_counter() - t


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize(DEV)


def one_run(model, tok, ctx, pos, plan, seed, autocast):
    g = torch.Generator(device=DEV).manual_seed(seed)
    marks = {}

    def phase(name):
        sync()
        marks[name] = time.perf_counter()

    with torch.inference_mode():
        sync()
        t0 = time.perf_counter()
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=autocast):
            f_hat = ht.generate(model, tok, ctx, pos, cfg=args.cfg, top_k_switch=TOPK_SWITCH, top_p=0.0,
                                smooth=SMOOTH, plan=plan, generator=g, use_sdpa=args.sdpa, phase=phase)
        sync()
        t1 = time.perf_counter()
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=autocast):
            img = (tok.decode(f_hat) + 1) / 2
        sync()
        t2 = time.perf_counter()
    if not (torch.isfinite(f_hat).all() and torch.isfinite(img).all()):
        sys.exit("torch_hart: generation produced non-finite values")
    td = marks["diffusion"]
    return {"transformer_s": td - t0, "diffusion_s": t1 - td, "decode_s": t2 - t1, "total_s": t2 - t0}


def main():
    if args.text_len is None:
        args.text_len = min(24, CFG.T)
    if args.batch < 1 or args.runs < 1 or args.warmup < 0:
        sys.exit("--batch and --runs must be >= 1, --warmup >= 0")
    if not 1 <= args.text_len <= CFG.T:
        sys.exit(f"--text-len must be in 1..{CFG.T}")
    if args.sdpa and not ht.HAS_SDPA:
        sys.exit(f"--sdpa needs torch >= 2.0 (F.scaled_dot_product_attention); this is torch {torch.__version__}")
    torch.set_num_threads(args.threads)
    model, tok, t_build = build()
    n_diff = sum(p.numel() for p in model.diffloss.parameters())
    n_tr = sum(p.numel() for p in model.parameters()) - n_diff
    n_dec = sum(p.numel() for p in tok.parameters())
    bf16 = args.dtype == "bf16"
    if bf16 and DEV.type == "cpu":
        for m in tok.modules():
            if isinstance(m, nn.GroupNorm):
                m.register_forward_pre_hook(lambda mod, a: (a[0].float(),))
    plan = ht.default_fastvar_plan(CFG.S, CFG.depth) if args.fastvar else None
    gtext = torch.Generator().manual_seed(args.seed + 3)
    ctx = (torch.randn(args.batch, CFG.T, CFG.context_dim, generator=gtext) * 0.5).to(DEV)
    pos = torch.arange(CFG.T).clamp_max(args.text_len - 1)[None].expand(args.batch, -1).contiguous().to(DEV)
    side = CFG.P * 2 ** (len(CFG.vae_ch_mult) - 1)
    ntok = sum(CFG.tokens())
    gpu = torch.cuda.get_device_name(DEV) if DEV.type == "cuda" else None
    mode = "fastvar" if plan else "full"
    plan_desc = (f"FastVAR: cache {CFG.patch_nums[plan['cache_scale']]}x{CFG.patch_nums[plan['cache_scale']]}, "
                 + ", ".join(f"prune {CFG.patch_nums[si]}x{CFG.patch_nums[si]} at {r}" for si, r in plan["prune"].items())
                 + ", all blocks") if plan else "full model"
    print(f"torch {torch.__version__}: HART {args.preset} ({n_tr / 1e6:.1f} M params + diffusion MLP "
          f"{n_diff / 1e6:.2f} M) + tokenizer decoder ({n_dec / 1e6:.2f} M)\n   {CFG.describe()}\n   "
          f"{CFG.S} scales ({ntok} tokens incl. the {CFG.T}-token prefix) -> {side}x{side}, batch {args.batch} "
          f"(CFG rows {2 * args.batch}), {args.text_len} real prompt tokens (text encoder not run), "
          f"{'more_smooth' if SMOOTH else 'hard ids'}, cfg {args.cfg}, {plan_desc}, {args.dtype}, {args.device}"
          f"{' (' + gpu + ')' if gpu else ''}, sdpa {args.sdpa}, {torch.get_num_threads()} thread(s), "
          f"built in {t_build:.1f} s", flush=True)
    for w in range(args.warmup):
        one_run(model, tok, ctx, pos, plan, args.seed, bf16)  # untimed: first-use costs
    if DEV.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEV)
    runs = []
    for r in range(args.runs):
        x = one_run(model, tok, ctx, pos, plan, args.seed + 1 + r, bf16)
        runs.append(x)
        print(f"   run {r + 1}/{args.runs}  transformer {x['transformer_s']:8.3f} s  diffusion {x['diffusion_s']:7.3f} s"
              f"  decode {x['decode_s']:7.3f} s  total {x['total_s']:8.3f} s", flush=True)
    med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    gpu_peak = torch.cuda.max_memory_allocated(DEV) / 2**20 if DEV.type == "cuda" else None
    ips = args.batch / med["total_s"]
    print(f"   median      transformer {med['transformer_s']:8.3f} s  diffusion {med['diffusion_s']:7.3f} s"
          f"  decode {med['decode_s']:7.3f} s  total {med['total_s']:8.3f} s   {ips:.3f} images/s"
          f"   peak RSS {rss:.0f} MiB" + (f"   peak GPU {gpu_peak:.0f} MiB" if gpu_peak is not None else ""))
    if args.json:
        out = {"tool": "torch", "model": "hart", "preset": args.preset, "torch_version": torch.__version__,
               "mode": mode, "plan": ({"cache_scale": plan["cache_scale"],
                                       "prune": {str(k): v for k, v in plan["prune"].items()},
                                       "layers": "all", "branches": list(plan["branches"])} if plan else None),
               "scales": list(CFG.patch_nums), "tokens": ntok, "image_px": [side, side],
               "params_transformer": n_tr, "params_diffusion": n_diff, "params_decoder": n_dec,
               "dtype": args.dtype, "device": args.device, "sdpa": args.sdpa, "gpu": gpu,
               "threads": args.threads, "batch": args.batch, "text_len": args.text_len, "text_encoder_timed": False,
               "cfg": args.cfg, "top_k": "600 before scale 7, 300 from it", "top_p": 0.0, "more_smooth": SMOOTH,
               "diffusion_steps": int(CFG.num_sampling_steps), "warmup": args.warmup,
               "runs": runs, "median": med, "images_per_s": ips, "peak_rss_mib": rss, "peak_gpu_mib": gpu_peak,
               "build_s": t_build}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
