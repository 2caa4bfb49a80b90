"""Teacher-forced training of the VAR transformer on Fashion-MNIST tokens of the frozen VQVAE.

  python3 tools/train/train_var.py --vae models/fmnist_vae.safetensors --out /tmp/train/var --minutes 45 [--resume]

Inputs are built upstream-style: ground-truth multi-scale indices -> idxBl_to_var_input (accumulate f_hat,
area-downsample to the next scale); block-causal mask; cross-entropy over all L tokens; 10% label dropout
to the null class (for classifier-free guidance).
"""
import argparse
import csv
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CLASS_NAMES, load_fmnist, load_safetensors, save_safetensors, to_gray32  # noqa: E402
from var_model import VAR  # noqa: E402
from vqvae import VQVAE  # noqa: E402


def load_vae(path, patch_nums=(1, 2, 3, 4, 5, 6, 8)):
    es = load_safetensors(path)
    V, Cvae = es["quantize.embedding.weight"].shape
    ch = es["decoder.conv_out.weight"].shape[1]
    nl = 1 + max(int(k.split(".")[2]) for k in es if k.startswith("decoder.up."))
    ch_mult = [es[f"decoder.up.{l}.block.0.conv2.weight"].shape[0] // ch for l in range(nl)]
    nrb = sum(1 for k in es if k.startswith("decoder.up.0.block.") and k.endswith("conv1.weight")) - 1
    vae = VQVAE(V=V, Cvae=Cvae, ch=ch, ch_mult=ch_mult, num_res_blocks=nrb, patch_nums=patch_nums)
    vae.load_state_dict(es, strict=True)
    return vae.eval()


@torch.no_grad()
def tokenize(vae, path, n, chunk=500):
    """Encode the first n train images (and their horizontal flips) into multi-scale indices; resumable."""
    st = torch.load(path) if os.path.exists(path) else {"done": 0, "idx": [], "labels": None}
    xs, ys = load_fmnist("train")
    perm = torch.randperm(xs.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    while st["done"] < n:
        sl = perm[st["done"]:st["done"] + chunk].numpy()
        x = to_gray32(xs[sl]).expand(-1, 3, -1, -1)
        idx = vae.img_to_idxBl(x)
        st["idx"].append(torch.cat(idx, 1).short())
        st["done"] += len(sl)
        st["labels"] = torch.from_numpy(ys[perm[:st["done"]].numpy()])
        torch.save(st, path + ".tmp")
        os.replace(path + ".tmp", path)
        print(f"tokenized {st['done']}/{n}", flush=True)
    return torch.cat(st["idx"], 0)[:n].long(), st["labels"][:n].long()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vae", default="models/fmnist_vae.safetensors")
    ap.add_argument("--out", default="/tmp/train/var")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--minutes", type=float, default=45.0)
    ap.add_argument("--ntok", type=int, default=60000)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--C", type=int, default=128)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench", type=int, default=0)
    ap.add_argument("--export", default="models/fmnist_var.safetensors")
    ap.add_argument("--log", default="tools/train/logs/var.csv")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    vae = load_vae(args.vae)
    q = vae.quantize
    pn = q.patch_nums
    model = VAR(V=q.V, Cvae=q.Cvae, depth=args.depth, C=args.C, H=args.C // 64, num_classes=10, patch_nums=pn)
    print(f"VAR params {sum(p.numel() for p in model.parameters())}, L {model.L}", flush=True)
    if args.bench:
        idx_all = torch.randint(0, q.V, (512, model.L))
        lab_all = torch.randint(0, 10, (512,))
    else:
        idx_all, lab_all = tokenize(vae, os.path.join(args.out, "tokens.pt"), args.ntok)
    N = idx_all.shape[0]
    splits = [be for be in model.begin_ends]
    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "pos_" in n_ or "emb" in n_ or "scale_mul" in n_ else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    step, elapsed = 0, 0.0
    ck = os.path.join(args.out, "ckpt.pt")
    budget = args.minutes * 60
    if args.resume and os.path.exists(ck):
        s = torch.load(ck)
        model.load_state_dict(s["model"])
        opt.load_state_dict(s["opt"])
        step, elapsed = s["step"], s["elapsed"]
        budget = s.get("budget", budget) if not args.minutes else budget
        print(f"resumed at step {step}, {elapsed / 60:.1f} min", flush=True)
    logf = open(args.log, "a", newline="")
    logw = csv.writer(logf)
    if step == 0 and not args.bench:
        logw.writerow(["step", "minutes", "lr", "loss", "acc", "loss_last_scale", "ms_per_step"])
    g = torch.Generator().manual_seed(4321 + step)
    t0 = time.time() - elapsed
    t_ck = time.time()
    t_win = time.time()
    acc_l, acc_a, acc_ll, nacc = 0.0, 0.0, 0.0, 0
    model.train()
    while True:
        elapsed = time.time() - t0
        if (args.bench and step >= args.bench) or (not args.bench and elapsed >= budget):
            break
        frac = min(elapsed / budget, 1.0)
        lr = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))) * min(1.0, (step + 1) / 150)
        for pg in opt.param_groups:
            pg["lr"] = lr
        bi = torch.randint(0, N, (args.bs,), generator=g)
        gt = idx_all[bi]
        lab = lab_all[bi]
        idx_Bl = [gt[:, a:b] for a, b in splits]
        with torch.no_grad():
            x_in = q.idxBl_to_var_input(idx_Bl)
        logits = model(lab, x_in)
        loss = F.cross_entropy(logits.reshape(-1, q.V), gt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        step += 1
        with torch.no_grad():
            a, b = splits[-1]
            acc_l += loss.item()
            acc_a += (logits.argmax(-1) == gt).float().mean().item()
            acc_ll += F.cross_entropy(logits[:, a:b].reshape(-1, q.V), gt[:, a:b].reshape(-1)).item()
            nacc += 1
        if step % 25 == 0 or (args.bench and step == args.bench):
            ms = (time.time() - t_win) / nacc * 1000
            row = [step, f"{elapsed / 60:.2f}", f"{lr:.2e}", f"{acc_l / nacc:.4f}", f"{acc_a / nacc:.4f}",
                   f"{acc_ll / nacc:.4f}", f"{ms:.0f}"]
            if not args.bench:
                logw.writerow(row)
                logf.flush()
            print(" ".join(map(str, row)), flush=True)
            acc_l = acc_a = acc_ll = 0.0
            nacc = 0
            t_win = time.time()
        if not args.bench and time.time() - t_ck > 180:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "elapsed": time.time() - t0, "budget": budget}, ck + ".tmp")
            os.replace(ck + ".tmp", ck)
            save_safetensors(model.state_dict(), os.path.join(args.out, "latest.safetensors"),
                             metadata={"class_names": ",".join(CLASS_NAMES)})
            t_ck = time.time()
    if args.bench:
        return
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                "elapsed": time.time() - t0, "budget": budget}, ck + ".tmp")
    os.replace(ck + ".tmp", ck)
    save_safetensors(model.state_dict(), args.export, metadata={"class_names": ",".join(CLASS_NAMES)})
    print(f"done: step {step}, {(time.time() - t0) / 60:.1f} min, exported {args.export}", flush=True)


if __name__ == "__main__":
    main()
