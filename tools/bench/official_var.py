#!/usr/bin/env python3
"""Times the official VAR code (FoundationVision/VAR) on the CPU, for bench/run_vs_torch.sh.

The official repository is not part of fastvar.cpp: give a local copy of it with --var-dir (or the
VAR_OFFICIAL_DIR environment variable); nothing from it is stored here. Its models are built with its
own build_vae_var() for the release shapes (VAR-d16 .. d30 at 256 px, d36 at 512 px) and the weights
are loaded from the given checkpoint files (the released var_d*.pth / vae_ch160v4096z32.pth, or the
random ones of tools/make_random_var.py, which have the same layout), so that fastvar.cpp and the
official code run on the same files. Generation is the official autoregressive_infer_cfg (B 1, class
207, cfg 4, top_k 900, top_p 0.96, seeded): the transformer loop and the decode are timed apart by
wrapping the VQVAE's fhat_to_img, which the official loop calls once at its end. --dtype bf16 runs it
under torch.autocast('cpu', bfloat16), as a user would. One untimed warm-up run, then --runs runs.

Threads: OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS are set to T before torch is
imported, then torch.set_num_threads(T).

  python tools/bench/official_var.py --var-dir ~/src/VAR --var-ckpt var_d16.pth --vae-ckpt vae.pth
                                     [--runs 3] [--threads 2] [--dtype fp32|bf16] [--json out.json]
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--var-dir", default=os.environ.get("VAR_OFFICIAL_DIR"), help="local copy of FoundationVision/VAR")
ap.add_argument("--var-ckpt", required=True)
ap.add_argument("--vae-ckpt", required=True)
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--json", help="also write the results as JSON")
args = ap.parse_args()
if not args.var_dir or not os.path.isfile(os.path.join(args.var_dir, "models", "var.py")):
    sys.exit("official_var: --var-dir (or VAR_OFFICIAL_DIR) must name a copy of FoundationVision/VAR")
for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[k] = str(args.threads)

import torch  # noqa: E402

sys.path.insert(0, os.path.abspath(args.var_dir))
from models import build_vae_var  # noqa: E402  (the official code)


def main():
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    sd = torch.load(args.var_ckpt, map_location="cpu", weights_only=True)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    L = sd["pos_1LC"].shape[1]
    patch_nums = {680: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 2240: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)}.get(L)
    if patch_nums is None:
        sys.exit(f"official_var: {args.var_ckpt}: {L} tokens is not a released VAR scale list")
    vae, var = build_vae_var(device="cpu", patch_nums=patch_nums, depth=depth,
                             shared_aln="shared_ada_lin.1.weight" in sd)
    var.load_state_dict(sd, strict=True)
    vae_sd = torch.load(args.vae_ckpt, map_location="cpu", weights_only=True)
    vae.load_state_dict(vae_sd, strict=True)
    var.eval()
    vae.eval()
    times = {}
    inner = vae.fhat_to_img

    def timed_fhat_to_img(f_hat):
        times["decode_start"] = time.perf_counter()
        return inner(f_hat)

    vae.fhat_to_img = timed_fhat_to_img
    bf16 = args.dtype == "bf16"
    print(f"official VAR on torch {torch.__version__}: d{depth}, scales {patch_nums[-1]}, {args.dtype}, "
          f"{torch.get_num_threads()} thread(s), loaded in {time.perf_counter() - t:.1f} s", flush=True)

    def one_run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            t0 = time.perf_counter()
            img = var.autoregressive_infer_cfg(B=1, label_B=207, g_seed=args.seed, cfg=4.0, top_k=900,
                                               top_p=0.96, more_smooth=False)
            t2 = time.perf_counter()
        if not torch.isfinite(img.float()).all():
            sys.exit("official_var: generation produced non-finite values")
        t1 = times["decode_start"]
        return {"transformer_s": t1 - t0, "decode_s": t2 - t1, "total_s": t2 - t0}

    one_run()  # warm-up
    runs = []
    for r in range(args.runs):
        runs.append(one_run())
        x = runs[-1]
        print(f"   run {r + 1}/{args.runs}  transformer {x['transformer_s']:7.3f} s  decode {x['decode_s']:7.3f} s"
              f"  total {x['total_s']:7.3f} s", flush=True)
    med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"   median      transformer {med['transformer_s']:7.3f} s  decode {med['decode_s']:7.3f} s"
          f"  total {med['total_s']:7.3f} s   peak RSS {rss:.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tool": "official", "torch_version": torch.__version__, "depth": depth, "dtype": args.dtype,
                       "threads": args.threads, "runs": runs, "median": med, "peak_rss_mib": rss}, f, indent=1)


if __name__ == "__main__":
    main()
