#!/usr/bin/python3
"""Writes the checkpoint fixtures in tests/data/io/ used by tests/test_io.cpp.

Run once with Debian's torch (`/usr/bin/python3 tools/make_io_fixtures.py`); the
outputs are committed and CI never runs this script. Everything is seeded, so
re-running reproduces the same tensor values.

The evil_* files are pickles that would run a shell command if loaded with
plain pickle / torch.load(weights_only=False). This script only *writes* them;
nothing here unpickles them.
"""
import collections
import functools
import json
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "io")
MARKER = "/tmp/fastvar_pwned_marker"  # must match kMarker in tests/test_io.cpp

ST_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def raw_bytes(t):
    """Contiguous little-endian bytes of t (numpy has no bfloat16, so go via int16)."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


class Tiny(torch.nn.Module):
    """A few layers (so state_dict() carries _metadata) plus one tensor per dtype."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.norm = torch.nn.LayerNorm(3)
        self.proj = torch.nn.Linear(4, 5)
        # A transposed weight: saved with strides (1, 4), i.e. not contiguous.
        self.proj.weight = torch.nn.Parameter(torch.randn(4, 5).t())
        self.register_buffer("steps", torch.arange(6, dtype=torch.int64).reshape(2, 3) - 2)
        self.register_buffer("f16", torch.randn(3, 2).half())
        self.register_buffer("bf16", (torch.randn(5) * 100).bfloat16())
        self.register_buffer("f64", torch.randn(2, dtype=torch.float64))
        self.register_buffer("i32", torch.tensor([-7, 1 << 30], dtype=torch.int32))
        self.register_buffer("i16", torch.tensor([-300, 300], dtype=torch.int16))
        self.register_buffer("i8", torch.tensor([-128, 127], dtype=torch.int8))
        self.register_buffer("u8", torch.tensor([0, 255], dtype=torch.uint8))
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("scalar", torch.tensor(3.5))
        self.register_buffer("empty", torch.zeros(0, 4))


def write_safetensors(path, tensors, metadata):
    """Minimal safetensors writer: the header is padded with spaces to 8 bytes."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        b = raw_bytes(t)
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def expected_entry(t):
    return {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape), "hex": raw_bytes(t).hex(),
            "values": t.detach().double().flatten().tolist()}


def fixed_time(name, compress=zipfile.ZIP_STORED):
    """A ZipInfo with a fixed timestamp, so that re-running gives identical files."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = compress
    return info


def torch_zip(path, pickle_bytes):
    """A zip laid out like torch.save's, around a hand-written pickle."""
    folder = os.path.splitext(os.path.basename(path))[0]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(fixed_time(f"{folder}/data.pkl"), pickle_bytes)
        z.writestr(fixed_time(f"{folder}/version"), b"3\n")


# Tiny pickle assembler for the hand-written (malicious) pickles.
def p_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def p_str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def write_zip64(path, src):
    """Re-packs the records of `src` into a zip64 archive: every size and offset
    in the central directory is saturated to 0xffffffff and carried in the zip64
    extra field, and the counts come from the zip64 end-of-directory record."""
    with zipfile.ZipFile(src) as z:
        records = [(i.filename, z.read(i)) for i in z.infolist()]
    out, central = bytearray(), bytearray()
    for name, data in records:
        nb = name.encode()
        local_off = len(out)
        pad = -(len(out) + 30 + len(nb) + 4) % 64  # keep data 64-byte aligned like torch
        extra = struct.pack("<HH", 0xCAFE, pad) + b"\0" * pad
        crc = zipfile.crc32(data) & 0xFFFFFFFF
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, len(data),
                           len(data), len(nb), len(extra)) + nb + extra + data
        z64 = struct.pack("<HHQQQ", 1, 24, len(data), len(data), local_off)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc,
                               0xFFFFFFFF, 0xFFFFFFFF, len(nb), len(z64), 0, 0, 0, 0,
                               0xFFFFFFFF) + nb + z64
    cd_off = len(out)
    out += central
    eocd64_off = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(records), len(records),
                       len(central), cd_off)
    out += struct.pack("<IIQI", 0x07064B50, 0, eocd64_off, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with open(path, "wb") as f:
        f.write(out)


class PopenOnLoad:
    """Pickles as subprocess.Popen(['touch', MARKER])."""

    def __reduce__(self):
        return (subprocess.Popen, (["touch", MARKER],))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    out = lambda name: os.path.join(OUT, name)  # noqa: E731

    # The tiny module's state_dict, as .pth and .safetensors, plus the expected values.
    sd = Tiny().state_dict()
    assert hasattr(sd, "_metadata")
    assert not sd["proj.weight"].is_contiguous()
    torch.save(sd, out("state_dict.pth"))
    write_safetensors(out("state_dict.safetensors"), sd, {"format": "pt", "source": "fastvar"})
    write_zip64(out("state_dict_zip64.pth"), out("state_dict.pth"))
    torch.save(sd, out("state_dict_proto4.pth"), pickle_protocol=4)

    # Views of one storage: two slices at offsets 2 and 5 and a strided view.
    t = torch.arange(10.0)
    shared = collections.OrderedDict(a=t[2:5], b=t[5:], c=t[:8].view(2, 4).t())
    torch.save(shared, out("shared.pth"))

    expected = {
        "state_dict": {"order": list(sd.keys()),
                       "tensors": {k: expected_entry(v) for k, v in sd.items()}},
        "shared": {"order": list(shared.keys()),
                   "tensors": {k: expected_entry(v) for k, v in shared.items()}},
    }
    with open(out("expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")

    # Valid torch files that are not flat state_dicts.
    torch.save({"model": {"w": torch.ones(2)}}, out("nested_model.pth"))
    torch.save([torch.ones(2)], out("list.pth"))
    # A state_dict whose zip entries are deflated.
    with zipfile.ZipFile(out("state_dict.pth")) as src, \
            zipfile.ZipFile(out("compressed.pth"), "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(fixed_time(info.filename, zipfile.ZIP_DEFLATED), src.read(info))

    # Malicious pickles in a valid torch zip layout.
    touch = f"touch {MARKER}"
    torch_zip(out("evil_system.pth"),
              b"\x80\x02" + p_global("os", "system") + p_str(touch) + b"\x85R.")
    torch_zip(out("evil_eval.pth"),
              b"\x80\x02" + p_global("builtins", "eval")
              + p_str(f"__import__('os').system('{touch}')") + b"\x85R.")
    # A real torch.save of a plausible state_dict with one booby-trapped value.
    # fix_imports=False keeps the global spelled 'subprocess Popen' (protocol 2
    # would otherwise write the Python 2 name 'commands Popen').
    no_fix = types.ModuleType("no_fix_pickle")
    no_fix.Pickler = functools.partial(pickle.Pickler, fix_imports=False)
    torch.save(collections.OrderedDict([("w", torch.ones(3)), ("x", PopenOnLoad())]),
               out("evil_nested.pth"), pickle_module=no_fix)
    # The classic bare-pickle exploit named .pth: not a zip, so it reaches the
    # safetensors parser and must fail there.
    with open(out("evil_raw.pth"), "wb") as f:
        f.write(b"\x80\x02" + p_global("os", "system") + p_str(touch) + b"\x85R.")

    total = sum(os.path.getsize(out(n)) for n in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {os.path.normpath(OUT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
