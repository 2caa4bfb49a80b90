"""Reads a .safetensors file into a dict of torch tensors (the format by hand: an 8-byte little-endian
header length, a JSON header, raw little-endian data), so that this project's PyTorch ports need no
safetensors package; and the pieces this project's PyTorch ports share: the SDPA switch, attention
without a mask, the preallocated KV cache, the holder that gives submodules their official names.
Shared by tools/infinity/infinity_torch.py and tools/hart/hart_torch.py."""
import json
import math
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")
_TV = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2] if p.isdigit())
SDPA_HAS_SCALE = HAS_SDPA and _TV >= (2, 1)  # the `scale=` argument came with torch 2.1


def attention(q, k, v, scale, use_sdpa=False, q_chunk_elems=1 << 30):
    """softmax(q k^T * scale) v for q [B, H, Lq, hd], k/v [B, H, Lk, hd]; no mask.

    The explicit path computes the scores in chunks of queries so that one score tensor stays
    below q_chunk_elems elements (same arithmetic, bounded memory)."""
    if use_sdpa:
        if not HAS_SDPA:
            raise RuntimeError(f"--sdpa needs torch >= 2.0 (have {torch.__version__})")
        dt = v.dtype
        q, k = q.to(dt), k.to(dt)
        if SDPA_HAS_SCALE:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        return F.scaled_dot_product_attention(q * (scale * math.sqrt(q.shape[-1])), k, v)
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    step = max(1, min(Lq, q_chunk_elems // max(1, B * H * Lk)))
    kt = k.transpose(-2, -1)
    outs = []
    for i in range(0, Lq, step):
        s = torch.matmul(q[:, :, i:i + step], kt)
        if scale != 1.0:
            s = s * scale
        outs.append(torch.matmul(s.softmax(-1).to(v.dtype), v))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


class KVCache:
    """Per-block self-attention cache, preallocated [R, H, capacity, hd] and filled scale by scale."""

    def __init__(self, capacity):
        self.cap, self.len, self.k, self.v = capacity, 0, None, None

    def append(self, k, v):
        R, H, L, hd = k.shape
        if self.k is None:
            self.k = k.new_empty(R, H, self.cap, hd)
            self.v = v.new_empty(R, H, self.cap, hd, dtype=v.dtype)
        if self.len + L > self.cap:
            raise RuntimeError("KV cache overflow")
        self.k[:, :, self.len:self.len + L] = k
        self.v[:, :, self.len:self.len + L] = v
        self.len += L
        return self.k[:, :, :self.len], self.v[:, :, :self.len]


class _Holder(nn.Module):
    """Gives submodules / parameters their official attribute names (head_nm.ada_lin, ln_wo_grad.weight)."""

    def __init__(self, **mods):
        super().__init__()
        for k, m in mods.items():
            setattr(self, k, m)



_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    buf = bytearray(data)  # writable, so torch.frombuffer does not warn
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dt = _ST_DTYPES[meta["dtype"]]
        a, b = meta["data_offsets"]
        t = torch.frombuffer(buf, dtype=dt, count=(b - a) // torch.tensor([], dtype=dt).element_size(),
                             offset=base + a) if b > a else torch.empty(0, dtype=dt)
        out[name] = t.reshape(meta["shape"]).clone()
    return out
