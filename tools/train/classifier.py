"""Small Fashion-MNIST CNN for class-fidelity accuracy and an FID-style Frechet distance of generated images.

Input: (N, 1, 32, 32) = mean of the RGB channels of an image in [0,1], mapped to [-1,1] (gray*2-1);
Fashion-MNIST 28x28 is padded to 32x32 with -1 (background).
Architecture: conv3x3(1->32)+ReLU+maxpool2 -> conv3x3(32->64)+ReLU+maxpool2 -> conv3x3(64->128)+ReLU
-> global average pool -> 128-d feature (FID) -> linear(128->10).
The output file also holds `fid.mu` (128) and `fid.sigma` (128x128), float64, of the TEST-set features.

  python3 tools/train/classifier.py --epochs 4 --out models/fmnist_classifier.safetensors [--resume]
"""
import argparse
import csv
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CLASS_NAMES, load_fmnist, save_safetensors, to_gray32  # noqa: E402


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1, 1)
        self.conv3 = nn.Conv2d(64, 128, 3, 1, 1)
        self.fc = nn.Linear(128, 10)

    def features(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        return x.mean(dim=(2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


@torch.no_grad()
def evaluate(model, X, Y, bs=1000):
    model.eval()
    feats, correct = [], 0
    for i in range(0, X.shape[0], bs):
        f = model.features(X[i:i + bs])
        feats.append(f.double())
        correct += (model.fc(f).argmax(1) == Y[i:i + bs]).sum().item()
    model.train()
    return correct / X.shape[0], torch.cat(feats).numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="models/fmnist_classifier.safetensors")
    ap.add_argument("--ckpt", default="/tmp/train/cls_ckpt.pt")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--log", default="tools/train/logs/classifier.csv")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    xs, ys = load_fmnist("train")
    xt, yt = load_fmnist("test")
    X, Y = to_gray32(xs), torch.from_numpy(ys)
    XT, YT = to_gray32(xt), torch.from_numpy(yt)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    ep0 = 0
    if args.resume and os.path.exists(args.ckpt):
        s = torch.load(args.ckpt)
        model.load_state_dict(s["model"])
        opt.load_state_dict(s["opt"])
        ep0 = s["epoch"]
    logf = open(args.log, "a", newline="")
    lw = csv.writer(logf)
    if ep0 == 0:
        lw.writerow(["epoch", "minutes", "train_loss", "test_acc"])
    t0 = time.time()
    N = X.shape[0]
    steps_total = args.epochs * (N // args.bs)
    for ep in range(ep0, args.epochs):
        perm = torch.randperm(N)
        tot, n = 0.0, 0
        for it in range(N // args.bs):
            step = ep * (N // args.bs) + it
            for pg in opt.param_groups:
                pg["lr"] = args.lr * 0.5 * (1 + np.cos(np.pi * step / steps_total))
            bi = perm[it * args.bs:(it + 1) * args.bs]
            x = X[bi]
            flip = torch.rand(x.shape[0]) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            loss = F.cross_entropy(model(x), Y[bi])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item()
            n += 1
        acc, _ = evaluate(model, XT, YT)
        lw.writerow([ep + 1, f"{(time.time() - t0) / 60:.2f}", f"{tot / n:.4f}", f"{acc:.4f}"])
        logf.flush()
        print(f"epoch {ep + 1}: loss {tot / n:.4f} test acc {acc:.4f} ({(time.time() - t0) / 60:.1f} min)", flush=True)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": ep + 1}, args.ckpt)
    acc, feats = evaluate(model, XT, YT)
    mu = feats.mean(0)
    sigma = np.cov(feats, rowvar=False)
    sd = dict(model.state_dict())
    sd["fid.mu"] = torch.from_numpy(mu)
    sd["fid.sigma"] = torch.from_numpy(sigma)
    save_safetensors(sd, args.out, metadata={"class_names": ",".join(CLASS_NAMES), "test_accuracy": f"{acc:.4f}",
                                             "input": "mean(RGB in [0,1])*2-1, 32x32 (28x28 padded with -1)",
                                             "fid_stats": "Fashion-MNIST test set (10000), 128-d GAP features, "
                                                          "float64, np.cov (N-1)"})
    print(f"final test accuracy {acc:.4f}; wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
