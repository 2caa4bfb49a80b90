#!/usr/bin/env python3
"""PyTorch baseline for VAR generation on the CPU or a CUDA GPU, to compare fastvar.cpp with PyTorch on
the same machine (bench/run_vs_torch.sh runs both on the CPU, interleaved; scripts/gpu-check.sh on a GPU).

Builds the release shapes with the project's own PyTorch code (tools/train/var_model.py VAR,
tools/train/vqvae.py Decoder / MultiScaleVQ) and seeded random weights (timing does not depend on the
values; the small training init keeps generation finite): VAR-d16 (C 1024, H 16, FFN 4096) or d30
(C 1920, H 30), 1000 classes, V 4096, Cvae 32, cosine attention, scales 1,2,3,4,5,6,8,10,13,16 (256 px);
VQVAE decoder ch 160, ch_mult (1,1,2,2,4), 2 res blocks, z 32, share_quant_resi 4 (the encoder, unused
for generation, is not built). Generation: B 1, class 207, cfg 4, top_k 900, top_p 0.96, seeded
generator, torch.inference_mode(); one untimed warm-up run, then --runs timed runs of the transformer
(VAR.infer_cfg, incl. sampling and the residual quantiser) and of the decode (post_quant_conv, decoder,
clamp to [0,1]). --dtype bf16 wraps both in torch.autocast('cpu', dtype=torch.bfloat16) (fp32 weights,
as a user would run PyTorch's own bf16 on the CPU). torch 1.13's CPU GroupNorm rejects the bf16 activations
autocast hands it (fp32 affine params, "expected scalar type BFloat16"), so under bf16 the decoder's
GroupNorms get their input cast to fp32 by a forward pre-hook (an fp32 op, like autocast's own fp32 list).

On a GPU (--device cuda): --dtype bf16 converts the transformer's weights to bfloat16 and runs both
parts under torch.autocast('cuda', bfloat16); --sdpa replaces the attention's explicit softmax(q k^T) v
by F.scaled_dot_product_attention (flash kernels: bf16, head dim 64, no mask since the KV cache holds
only earlier and current tokens). Times are taken after torch.cuda.synchronize(); the peak is
torch.cuda.max_memory_allocated() over the timed runs. --res 512 selects the 512 px scales
1,2,3,4,6,9,13,18,24,32 (VAR-d36); --batch B generates B images (classes 207, 208, ...).

Threads: OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS are set to T before torch is
imported (overriding the environment), then torch.set_num_threads(T); inter-op threads are left at the
default (the model code issues no parallel ops).

--var-ckpt / --vae-ckpt load the weights of official-layout checkpoints (the released files, or those
of tools/make_random_var.py) instead, strictly (every key and shape must match), so that fastvar.cpp and
this code run on the same files.

  /usr/bin/python3 tools/bench/torch_var.py [--depth 16|30] [--runs 3] [--threads 2] [--dtype fp32|bf16]
                                            [--var-ckpt var_d16.pth --vae-ckpt vae.pth] [--json out.json]
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--depth", type=int, choices=(16, 20, 24, 30, 36), default=16)
ap.add_argument("--res", type=int, choices=(256, 512), default=256)
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
ap.add_argument("--sdpa", action="store_true", help="attention through F.scaled_dot_product_attention")
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--json", help="also write the results as JSON")
ap.add_argument("--var-ckpt", help="load the transformer from this official-layout .pth (else seeded random weights)")
ap.add_argument("--vae-ckpt", help="load the VQVAE (quantiser, post_quant_conv, decoder) from this official-layout .pth")
args = ap.parse_args()
for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[k] = str(args.threads)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "train"))
from var_model import VAR  # noqa: E402
from vqvae import Decoder, MultiScaleVQ  # noqa: E402

PATCH_NUMS = {256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)}[args.res]
DEV = torch.device(args.device)
V, CVAE = 4096, 32


def build(depth, seed):
    torch.manual_seed(seed)
    if DEV.type == "cuda":  # initialise on the GPU (seconds instead of a minute for d36 on the CPU)
        with torch.device(DEV):
            return build_here(depth)
    return build_here(depth)


def build_here(depth):
    var = VAR(V=V, Cvae=CVAE, depth=depth, C=64 * depth, H=depth, mlp_ratio=4.0, num_classes=1000,
              patch_nums=PATCH_NUMS, cond_drop=0.0).eval()
    vq = MultiScaleVQ(V, CVAE, PATCH_NUMS, quant_resi=0.5).eval()  # 4 partially shared phi convs
    nn.init.normal_(vq.embedding.weight)  # codebook of O(1) entries like a trained one
    post_quant_conv = nn.Conv2d(CVAE, CVAE, 3, 1, 1)
    decoder = Decoder(ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=CVAE).eval()
    return var, vq, post_quant_conv, decoder


def load_checkpoints(model):
    var, vq, post_quant_conv, decoder = model
    if args.var_ckpt:
        var.load_state_dict(torch.load(args.var_ckpt, map_location="cpu", weights_only=True), strict=True)
    if args.vae_ckpt:
        es = torch.load(args.vae_ckpt, map_location="cpu", weights_only=True)
        for prefix, m in (("quantize.", vq), ("post_quant_conv.", post_quant_conv), ("decoder.", decoder)):
            m.load_state_dict({k[len(prefix):]: v for k, v in es.items() if k.startswith(prefix)}, strict=True)
        unknown = [k for k in es if not k.startswith(("quantize.", "post_quant_conv.", "decoder.", "encoder.",
                                                       "quant_conv."))]
        if unknown:
            sys.exit(f"torch_var: {args.vae_ckpt}: unexpected keys {unknown[:5]}")


def sdpa_forward(self, x, attn_bias=None):
    """SelfAttention.forward with F.scaled_dot_product_attention (same maths, q already scaled)."""
    B, L, C = x.shape
    bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
    qkv = torch.nn.functional.linear(x, self.mat_qkv.weight, bias).view(B, L, 3, self.H, self.hd)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    sm = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
    q = torch.nn.functional.normalize(q, dim=-1) * sm
    k = torch.nn.functional.normalize(k, dim=-1)
    if self.caching:
        if self.cached_k is None:
            self.cached_k, self.cached_v = k, v
        else:
            self.cached_k = torch.cat((self.cached_k, k), dim=2)
            self.cached_v = torch.cat((self.cached_v, v), dim=2)
        k, v = self.cached_k, self.cached_v
    dt = v.dtype
    out = torch.nn.functional.scaled_dot_product_attention(q.to(dt), k.to(dt), v, attn_mask=attn_bias, scale=1.0)
    return self.proj(out.transpose(1, 2).reshape(B, L, C))


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize(DEV)


def one_run(model, seed, autocast):
    var, vq, post_quant_conv, decoder = model
    g = torch.Generator(device=DEV).manual_seed(seed)
    label = torch.arange(207, 207 + args.batch, device=DEV) % 1000
    with torch.inference_mode():
        sync()
        t0 = time.perf_counter()
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=autocast):
            f_hat = var.infer_cfg(vq, args.batch, label, cfg=4.0, top_k=900, top_p=0.96, g=g)
        sync()
        t1 = time.perf_counter()
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=autocast):
            img = (decoder(post_quant_conv(f_hat)).clamp(-1, 1) + 1) / 2
        sync()
        t2 = time.perf_counter()
    if not (torch.isfinite(f_hat).all() and torch.isfinite(img).all()):
        sys.exit("torch_var: generation produced non-finite values")
    return {"transformer_s": t1 - t0, "decode_s": t2 - t1, "total_s": t2 - t0}


def main():
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    model = build(args.depth, args.seed)
    if args.var_ckpt or args.vae_ckpt:
        load_checkpoints(model)
    if args.sdpa:
        import var_model
        var_model.SelfAttention.forward = sdpa_forward
    bf16 = args.dtype == "bf16"
    model = tuple(m.to(DEV) for m in model)
    if bf16 and DEV.type == "cuda":
        model[0].to(torch.bfloat16)  # bf16 transformer weights; autocast handles the fp32 inputs
    n_var = sum(p.numel() for p in model[0].parameters())
    n_dec = sum(p.numel() for m in model[1:] for p in m.parameters())
    print(f"torch {torch.__version__}: VAR-d{args.depth} ({n_var / 1e6:.1f} M params) + VQVAE decoder "
          f"({n_dec / 1e6:.1f} M), {args.res} px, batch {args.batch}, {args.dtype}, {args.device}"
          f"{' (' + torch.cuda.get_device_name(DEV) + ')' if DEV.type == 'cuda' else ''}, sdpa {args.sdpa}, "
          f"{torch.get_num_threads()} thread(s), "
          f"built in {time.perf_counter() - t:.1f} s", flush=True)
    if bf16 and DEV.type == "cpu":
        for m in model[3].modules():
            if isinstance(m, nn.GroupNorm):
                m.register_forward_pre_hook(lambda mod, a: (a[0].float(),))
    one_run(model, args.seed, bf16)  # warm-up
    if DEV.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEV)
    runs = []
    for r in range(args.runs):
        runs.append(one_run(model, args.seed, bf16))
        x = runs[-1]
        print(f"   run {r + 1}/{args.runs}  transformer {x['transformer_s']:7.3f} s  decode {x['decode_s']:7.3f} s"
              f"  total {x['total_s']:7.3f} s", flush=True)
    med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    gpu_peak = torch.cuda.max_memory_allocated(DEV) / 2**20 if DEV.type == "cuda" else None
    print(f"   median      transformer {med['transformer_s']:7.3f} s  decode {med['decode_s']:7.3f} s"
          f"  total {med['total_s']:7.3f} s   peak RSS {rss:.0f} MiB"
          + (f"   peak GPU {gpu_peak:.0f} MiB" if gpu_peak is not None else ""))
    if args.json:
        out = {"tool": "torch", "torch_version": torch.__version__, "depth": args.depth, "res": args.res,
               "dtype": args.dtype, "device": args.device, "sdpa": args.sdpa,
               "gpu": torch.cuda.get_device_name(DEV) if DEV.type == "cuda" else None,
               "threads": args.threads, "batch": args.batch, "runs": runs, "median": med, "peak_rss_mib": rss,
               "peak_gpu_mib": gpu_peak}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
