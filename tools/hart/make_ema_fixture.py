#!/usr/bin/env python3
"""Writes tests/data/hart/ema_model.bin: the tiny golden HART transformer
(tests/data/golden/hart_tiny_a/weights_llm.safetensors) in the container of
the released llm/ema_model.bin: torch.save of a plain state dict to a file of
that name, so the zip's root folder is "ema_model" (not "archive"), with
float32 tensors, the int64 lvl_1L and the attn_bias_for_masking buffer.

  python3 -m venv /tmp/tv && /tmp/tv/bin/pip install numpy torch
  /tmp/tv/bin/python tools/hart/make_ema_fixture.py
"""
import collections
import json
import os
import struct

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SRC = os.path.join(ROOT, "tests", "data", "golden", "hart_tiny_a", "weights_llm.safetensors")
DST = os.path.join(ROOT, "tests", "data", "hart", "ema_model.bin")
DTYPES = {"F32": np.float32, "I64": np.int64}


def main():
    with open(SRC, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    sd = collections.OrderedDict()
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        b, end = e["data_offsets"]
        arr = np.frombuffer(data[b:end], dtype=DTYPES[e["dtype"]]).reshape(e["shape"]).copy()
        sd[name] = torch.from_numpy(arr)
    os.makedirs(os.path.dirname(DST), exist_ok=True)
    torch.save(sd, DST)
    import zipfile
    with zipfile.ZipFile(DST) as z:
        roots = {n.split("/")[0] for n in z.namelist()}
    assert roots == {"ema_model"}, roots
    print(f"wrote {DST}: {len(sd)} tensors, zip root {roots.pop()!r}")


if __name__ == "__main__":
    main()
