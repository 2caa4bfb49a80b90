"""Reference outputs of the Fashion-MNIST classifier for tests/test_classifier.cpp.

Runs the classifier of models/fmnist_classifier.safetensors (architecture of
tools/train/classifier.py, re-stated here with torch.nn.functional) on the first 8
Fashion-MNIST test images (Debian package dataset-fashion-mnist) and writes
tests/data/eval/classifier_ref.safetensors:
  images   F32 (8, 3, 32, 32)  RGB in [0,1]: the gray image, padded with black to 32x32
  labels   I64 (8)             dataset labels
  features F32 (8, 128)        global-average-pooled conv3 features
  logits   F32 (8, 10)

  /usr/bin/python3 tools/eval/make_classifier_ref.py
"""
import argparse
import gzip
import json
import struct

import numpy as np
import torch
import torch.nn.functional as F

FMNIST = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    raw = gzip.open(path, "rb").read()
    nd = struct.unpack(">I", raw[:4])[0] & 0xFF
    dims = struct.unpack(">" + "I" * nd, raw[4:4 + 4 * nd])
    return np.frombuffer(raw[4 + 4 * nd:], dtype=np.uint8).reshape(dims)


def read_st(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    dt = {"F32": np.float32, "F64": np.float64, "I64": np.int64}
    out = {}
    for k, e in h.items():
        if k == "__metadata__":
            continue
        s, t = e["data_offsets"]
        out[k] = torch.from_numpy(np.frombuffer(b[8 + n + s:8 + n + t], dt[e["dtype"]]).reshape(e["shape"]).copy())
    return out


def write_st(path, tensors):
    header, blobs, off = {}, [], 0
    for k, a in tensors.items():
        a = np.ascontiguousarray(a)
        code = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}[a.dtype]
        header[k] = {"dtype": code, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    hj = json.dumps(header).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--classifier", default="models/fmnist_classifier.safetensors")
    ap.add_argument("--out", default="tests/data/eval/classifier_ref.safetensors")
    ap.add_argument("-n", type=int, default=8)
    args = ap.parse_args()
    w = read_st(args.classifier)
    x = read_idx(f"{FMNIST}/t10k-images-idx3-ubyte.gz")[:args.n].astype(np.float32) / 255.0
    y = read_idx(f"{FMNIST}/t10k-labels-idx1-ubyte.gz")[:args.n].astype(np.int64)
    gray = np.pad(x, ((0, 0), (2, 2), (2, 2)))  # black border = -1 after gray*2-1
    rgb = np.repeat(gray[:, None], 3, axis=1)
    with torch.no_grad():
        t = torch.from_numpy(rgb).double().mean(1, keepdim=True).float() * 2 - 1
        h = F.max_pool2d(F.relu(F.conv2d(t, w["conv1.weight"], w["conv1.bias"], padding=1)), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, w["conv2.weight"], w["conv2.bias"], padding=1)), 2)
        feats = F.relu(F.conv2d(h, w["conv3.weight"], w["conv3.bias"], padding=1)).mean(dim=(2, 3))
        logits = F.linear(feats, w["fc.weight"], w["fc.bias"])
    print("labels", y.tolist(), "argmax", logits.argmax(1).tolist())
    write_st(args.out, {"images": rgb.astype(np.float32), "labels": y, "features": feats.numpy(),
                        "logits": logits.numpy()})


if __name__ == "__main__":
    main()
