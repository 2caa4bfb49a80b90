"""Sample from the trained PyTorch VAR (same loop as the engine, spec section 3) and evaluate class fidelity
(classifier accuracy) and a Frechet distance on the classifier's 128-d features vs the test set.

  python3 tools/train/sample.py --grid /tmp/train/grid.png --cls 7           # one class grid
  python3 tools/train/sample.py --sweep "3,0,0;3,0,0.9;5,0,0;3,50,0" --per_class 30   # cfg,top_k,top_p
  python3 tools/train/sample.py --recon /tmp/train/recon.png                 # VQVAE reconstructions
"""
import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from classifier import Classifier  # noqa: E402
from common import load_fmnist, load_safetensors, to_gray32  # noqa: E402
from make_golden import build_from_files  # noqa: E402
from train_var import load_vae  # noqa: E402


def save_grid(imgs, path, nrow=8):
    """imgs (N,3,H,W) in [0,1]."""
    N, _, H, W = imgs.shape
    ncol = min(nrow, N)
    rows = (N + ncol - 1) // ncol
    canvas = np.ones((rows * (H + 2) + 2, ncol * (W + 2) + 2, 3), np.float32)
    for i in range(N):
        r, c = divmod(i, ncol)
        canvas[2 + r * (H + 2):2 + r * (H + 2) + H, 2 + c * (W + 2):2 + c * (W + 2) + W] = \
            imgs[i].permute(1, 2, 0).numpy()
    im = Image.fromarray((canvas * 255 + 0.5).clip(0, 255).astype(np.uint8))
    im = im.resize((im.width * 3, im.height * 3), Image.NEAREST)
    im.save(path)


def frechet(mu1, s1, mu2, s2):
    w, U = np.linalg.eigh(s1)
    sq1 = (U * np.sqrt(np.clip(w, 0, None))) @ U.T
    ev = np.linalg.eigvalsh(sq1 @ s2 @ sq1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())


@torch.no_grad()
def generate(var, vae, labels, cfg, top_k, top_p, seed, bs=100):
    out = []
    g = torch.Generator().manual_seed(seed)
    for i in range(0, len(labels), bs):
        lab = labels[i:i + bs]
        f_hat = var.infer_cfg(vae.quantize, len(lab), lab, cfg=cfg, top_k=top_k, top_p=top_p, g=g)
        out.append(vae.decode_fhat(f_hat).clamp(-1, 1).add(1).mul(0.5))
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--var", default="models/fmnist_var.safetensors")
    ap.add_argument("--vae", default="models/fmnist_vae.safetensors")
    ap.add_argument("--classifier", default="models/fmnist_classifier.safetensors")
    ap.add_argument("--grid")
    ap.add_argument("--cls", type=int, default=7)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--top_k", type=int, default=0)
    ap.add_argument("--top_p", type=float, default=0.0)
    ap.add_argument("--sweep")
    ap.add_argument("--per_class", type=int, default=30)
    ap.add_argument("--recon")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.recon:
        vae = load_vae(args.vae)
        xt, yt = load_fmnist("test")
        x = to_gray32(xt[:1000]).expand(-1, 3, -1, -1)
        with torch.no_grad():
            idx = vae.img_to_idxBl(x)
            rec = vae.decode_fhat(vae.quantize.idxBl_to_fhat(idx)).clamp(-1, 1)
        print(f"test recon L1 {float((rec - x).abs().mean()):.4f} MSE {float(((rec - x) ** 2).mean()):.4f}")
        used = torch.cat(idx, 1).unique().numel()
        print(f"codes used on 1000 test images: {used}/{vae.quantize.V}")
        save_grid(torch.cat([x[:16], rec[:16]]).add(1).mul(0.5), args.recon)
        return
    var, vae = build_from_files(args.var, args.vae)
    var.eval()
    vae.eval()
    if args.grid:
        lab = torch.full((args.n,), args.cls, dtype=torch.int64)
        imgs = generate(var, vae, lab, args.cfg, args.top_k, args.top_p, 0)
        save_grid(imgs, args.grid)
        print(f"wrote {args.grid}")
    if args.sweep:
        cs = load_safetensors(args.classifier)
        clf = Classifier()
        clf.load_state_dict({k: v for k, v in cs.items() if not k.startswith("fid.")})
        clf.eval()
        mu_t, s_t = cs["fid.mu"].double().numpy(), cs["fid.sigma"].double().numpy()
        lab = torch.arange(10).repeat_interleave(args.per_class)
        for st in args.sweep.split(";"):
            cfg, k, p = st.split(",")
            imgs = generate(var, vae, lab, float(cfg), int(k), float(p), 1)
            with torch.no_grad():
                x = imgs.mean(1, keepdim=True) * 2 - 1
                f = clf.features(x)
                acc = (clf.fc(f).argmax(1) == lab).float().mean().item()
            f = f.double().numpy()
            fd = frechet(f.mean(0), np.cov(f, rowvar=False), mu_t, s_t)
            print(f"cfg {cfg} top_k {k} top_p {p}: class accuracy {acc:.3f}  FD {fd:.2f}  (n={len(lab)})",
                  flush=True)


if __name__ == "__main__":
    main()
