#!/usr/bin/env python3
"""Convert a .safetensors file to a torch.save .pth (a plain OrderedDict
state_dict, as the official checkpoints are), keeping key order and dtypes.

  /usr/bin/python3 tools/safetensors_to_pth.py in.safetensors out.pth
"""
import collections
import json
import struct
import sys

import numpy as np
import torch

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "U8": np.uint8, "I8": np.int8, "BOOL": np.bool_}


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    sd = collections.OrderedDict()
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        b, end = e["data_offsets"]
        if e["dtype"] == "BF16":
            raw = np.frombuffer(data[b:end], dtype=np.int16).copy()
            t = torch.from_numpy(raw).view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.frombuffer(data[b:end], dtype=DTYPES[e["dtype"]]).copy())
        sd[name] = t.reshape(e["shape"])
    torch.save(sd, dst)
    print(f"wrote {dst}: {len(sd)} tensors")


if __name__ == "__main__":
    main()
