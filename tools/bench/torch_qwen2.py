#!/usr/bin/env python3
"""PyTorch peer for HART's text encoder on the CPU: Hugging Face transformers' Qwen2Model (the model
class HART loads with AutoModel) at the shapes of Qwen2-VL-1.5B-Instruct's language model (28 layers,
hidden 1536, 12 heads / 2 KV heads, head_dim 128, MLP 8960, vocabulary 151936, RMSNorm eps 1e-6,
RoPE theta 1e6), random weights, float32 (or --dtype bf16: the weights converted, as HART's CUDA
path runs in half precision). Input as fastvar bench --shape qwen2-1.5b runs it: B rows of 600 tokens
(HART's system prompt truncated to 300 + a 300-token prompt), random ids, every token visible,
causal attention (sdpa), no KV cache. One untimed warm-up, then --runs timed forwards under
torch.inference_mode(). Threads: OMP_NUM_THREADS and torch.set_num_threads(T) before anything runs.

  python tools/bench/torch_qwen2.py [--runs 3] [--threads 2] [--batch 1] [--dtype fp32|bf16] [--json out.json]
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--tokens", type=int, default=600)
ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
ap.add_argument("--json")
args = ap.parse_args()
for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[k] = str(args.threads)

import torch  # noqa: E402
import transformers  # noqa: E402

torch.set_num_threads(args.threads)
torch.manual_seed(0)
cfg = transformers.Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                               num_attention_heads=12, num_key_value_heads=2, rms_norm_eps=1e-6,
                               rope_theta=1e6, max_position_embeddings=32768, attn_implementation="sdpa")
t0 = time.perf_counter()
with torch.device("cpu"):
    model = transformers.Qwen2Model(cfg).eval()
if args.dtype == "bf16":
    model = model.to(torch.bfloat16)
build_s = time.perf_counter() - t0
ids = torch.randint(0, cfg.vocab_size, (args.batch, args.tokens))
mask = torch.ones_like(ids)


def run():
    s = time.perf_counter()
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.isfinite(out.float()).all()
    return (time.perf_counter() - s) * 1e3


first = run()
ms = []
for i in range(args.runs):
    ms.append(run())
    print(f"   torch run {i + 1}/{args.runs} {ms[-1]:10.1f} ms", file=sys.stderr)
res = {"peer": "transformers Qwen2Model", "torch": torch.__version__, "transformers": transformers.__version__,
       "dtype": args.dtype, "threads": args.threads, "batch": args.batch, "tokens": args.tokens,
       "build_s": build_s, "first_ms": first, "ms_runs": ms, "ms_median": statistics.median(ms),
       "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
print(json.dumps(res))
if args.json:
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)
