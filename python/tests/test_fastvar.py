"""Tests of the fastvar Python package against libfastvar.so (run by
scripts/python-test.sh with FASTVAR_LIBRARY and FASTVAR_BIN set)."""
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
from PIL import Image

import fastvar

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
BIN = os.environ.get("FASTVAR_BIN", os.path.join(ROOT, "build", "fastvar"))


def test_struct_layouts_match_the_header():
    # The C compiler's sizeof/offsetof of every field against ctypes'.
    fields = [f for f, _ in fastvar._Params._fields_]
    info_fields = [f for f, _ in fastvar._ScaleInfo._fields_]
    src = "#include <stddef.h>\n#include <stdio.h>\n#include \"fastvar/fastvar.h\"\nint main(void){\n"
    src += 'printf("%zu\\n", sizeof(fastvar_params));\n'
    src += "".join(f'printf("%zu\\n", offsetof(fastvar_params, {f}));\n' for f in fields)
    src += 'printf("%zu\\n", sizeof(fastvar_scale_info));\n'
    src += "".join(f'printf("%zu\\n", offsetof(fastvar_scale_info, {f}));\n' for f in info_fields)
    src += "return 0;}\n"
    with tempfile.TemporaryDirectory() as d:
        c = os.path.join(d, "layout.c")
        open(c, "w").write(src)
        exe = os.path.join(d, "layout")
        subprocess.run(["cc", "-I", os.path.join(ROOT, "include"), c, "-o", exe], check=True)
        got = [int(x) for x in subprocess.run([exe], capture_output=True, text=True, check=True).stdout.split()]
    want = [ctypes.sizeof(fastvar._Params)] + [getattr(fastvar._Params, f).offset for f in fields]
    want += [ctypes.sizeof(fastvar._ScaleInfo)] + [getattr(fastvar._ScaleInfo, f).offset for f in info_fields]
    assert got == want


def test_images_equal_the_clis_pixels():
    pipe = fastvar.Pipeline.default(threads=2)
    out = pipe(class_label="sneaker", num_images=2, seed=3)
    assert len(out.images) == 2 and out.images[0].size == (32, 32)
    with tempfile.TemporaryDirectory() as d:
        png = os.path.join(d, "a.png")
        subprocess.run([BIN, "generate", "--class", "sneaker", "-n", "2", "-s", "3", "--no-grid", "-q", "-o", png],
                       check=True)
        for i in range(2):
            cli = Image.open(os.path.join(d, f"a-{i}.png")).convert("RGB")
            assert cli.tobytes() == out.images[i].tobytes()
    arr = pipe(class_label=7, num_images=2, seed=3, output_type="np").images
    assert arr.dtype == np.uint8 and arr.shape == (2, 32, 32, 3)
    assert arr[0].tobytes() == out.images[0].tobytes()
    # Per-image seeds: seed [4] alone is image 1 of seed 3.
    one = pipe(class_label=7, seed=[4], output_type="np").images
    assert one[0].tobytes() == arr[1].tobytes()


def test_bf16_kv_cache_halves_the_cache_and_matches_the_cli():
    pipe = fastvar.Pipeline.default(threads=2)
    f32 = pipe(class_label=2, num_images=2, seed=5)
    b16 = pipe(class_label=2, num_images=2, seed=5, kv_dtype="bf16")
    kv = lambda out: [t["kv_bytes"] for t in out.timings[:-1]]  # noqa: E731 - the scales, not the decoder
    assert kv(b16) == [b // 2 for b in kv(f32)] and max(kv(b16)) > 0
    with tempfile.TemporaryDirectory() as d:
        png = os.path.join(d, "k.png")
        subprocess.run([BIN, "generate", "--class", "2", "-n", "2", "-s", "5", "--kv-dtype", "bf16", "--no-grid", "-q",
                        "-o", png], check=True)
        for i in range(2):
            assert Image.open(os.path.join(d, f"k-{i}.png")).convert("RGB").tobytes() == b16.images[i].tobytes()
    with pytest.raises(fastvar.Error, match="KV cache dtype"):
        pipe(class_label=2, kv_dtype="fp16")


def test_callback_once_per_scale_and_abort():
    pipe = fastvar.Pipeline.default()
    calls = []
    out = pipe(class_label=1, callback=lambda i, n, info: calls.append((i, n)))
    n = calls[0][1]
    assert [c[0] for c in calls] == list(range(n + 1))  # every scale, then the decoder
    assert len(out.timings) == n + 1
    with pytest.raises(fastvar.Error, match="aborted"):
        pipe(class_label=1, callback=lambda i, n, info: i < 2)
    pipe(class_label=1)  # fine after an abort


def test_bad_files_raise_fastvar_error():
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
        f.flush()
        with pytest.raises(fastvar.Error) as e:
            fastvar.Pipeline.from_files(f.name, f.name)
        assert "\n" not in str(e.value)
    with pytest.raises(fastvar.Error, match="no such file|cannot open"):
        fastvar.Pipeline.from_files("/nonexistent/model.safetensors", "/nonexistent/vae.safetensors")
    pipe = fastvar.Pipeline.default()
    with pytest.raises(fastvar.Error, match="unknown class"):
        pipe(class_label="unicorn")
    with pytest.raises(fastvar.Error):
        pipe(class_label=99)


def test_two_pipelines_and_threads_release_the_gil():
    a, b = fastvar.Pipeline.default(threads=1), fastvar.Pipeline.default(threads=1)
    ticks = [0]
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    res = {}
    ts = [threading.Thread(target=lambda k, p: res.__setitem__(k, p(class_label=3, num_images=8, seed=9, output_type="np")),
                           args=(k, p)) for k, p in (("a", a), ("b", b))]
    t0 = time.time()
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    done.set()
    t.join()
    assert res["a"].images.tobytes() == res["b"].images.tobytes()
    assert ticks[0] > 0.2 * (time.time() - t0) * 1000 / 2  # the other thread kept running


def test_ctrl_c_aborts():
    code = ("import fastvar, sys\np = fastvar.Pipeline.default(threads=1)\nprint('ready', flush=True)\n"
            "try:\n    [p(class_label=1, num_images=16) for _ in range(200)]\nexcept KeyboardInterrupt:\n"
            "    print('interrupted', flush=True); sys.exit(3)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3, out
    assert "interrupted" in out
