"""fastvar: VAR-family image generation (VAR, Infinity, HART) with FastVAR
cached token pruning, from Python.

A thin ctypes binding of the C API (include/fastvar/fastvar.h) in
libfastvar.so: one wheel serves every Python 3 version, nothing is compiled
against Python, and the GIL is released while an image is generated.

    import fastvar
    pipe = fastvar.Pipeline.default()            # the embedded Fashion-MNIST model
    out = pipe(class_label="sneaker", num_images=4, seed=0)
    out.images[0].save("sneaker.png")            # PIL images (output_type="np": uint8 [B, H, W, 3])

    pipe = fastvar.Pipeline.from_dir("hart-0.7b-1024px", llm="Qwen2-VL-1.5B-Instruct")
    out = pipe(prompt="a red fox in the snow", seed=1, callback=lambda i, n, info: print(i, n))
"""
import ctypes
import math
import os
import threading

__all__ = ["Error", "Pipeline", "PipelineOutput", "library_path"]
__version__ = "0.1.0"


class Error(RuntimeError):
    """An error of the engine, with its one-line message."""


class _Params(ctypes.Structure):
    # The layout of fastvar_params (include/fastvar/fastvar.h); tests check it
    # against the header's sizeof / offsetof.
    _fields_ = [
        ("num_images", ctypes.c_int),
        ("classes", ctypes.POINTER(ctypes.c_int)),
        ("class_id", ctypes.c_int),
        ("prompts", ctypes.POINTER(ctypes.c_char_p)),
        ("prompt", ctypes.c_char_p),
        ("h_div_w", ctypes.c_float),
        ("resolution", ctypes.c_char_p),
        ("tau", ctypes.c_float),
        ("no_smooth", ctypes.c_int),
        ("cfg", ctypes.c_float),
        ("top_k", ctypes.c_int),
        ("top_p", ctypes.c_float),
        ("seed", ctypes.c_uint64),
        ("seeds", ctypes.POINTER(ctypes.c_uint64)),
        ("threads", ctypes.c_int),
        ("fastvar", ctypes.c_int),
        ("prune", ctypes.c_char_p),
        ("skip_last", ctypes.c_int),
        ("cache_scale", ctypes.c_int),
        ("prune_layer_begin", ctypes.c_int),
        ("prune_layer_end", ctypes.c_int),
        ("score", ctypes.c_char_p),
        ("dtype", ctypes.c_char_p),
        ("device", ctypes.c_char_p),
        ("abort", ctypes.c_void_p),
        ("abort_user", ctypes.c_void_p),
        ("batch_invariant", ctypes.c_int),
        ("kv_dtype", ctypes.c_char_p),
    ]


class _ScaleInfo(ctypes.Structure):
    _fields_ = [
        ("scale", ctypes.c_int),
        ("num_scales", ctypes.c_int),
        ("side_h", ctypes.c_int),
        ("side_w", ctypes.c_int),
        ("ms", ctypes.c_double),
        ("skipped", ctypes.c_int),
        ("tokens", ctypes.c_int64),
        ("forwarded", ctypes.c_int64),
        ("kv_bytes", ctypes.c_int64),
        ("gflop", ctypes.c_double),
    ]


_PROGRESS = ctypes.CFUNCTYPE(None, ctypes.POINTER(_ScaleInfo), ctypes.c_void_p)
_ABORT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_OK, _ABORTED = 0, 2
_lib = None
_lib_lock = threading.Lock()


def library_path():
    """Where libfastvar.so is loaded from: $FASTVAR_LIBRARY, the package's own
    lib/ (a wheel), or the system's loader path."""
    env = os.environ.get("FASTVAR_LIBRARY")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    for sub in ("lib", "lib64", "."):
        p = os.path.join(here, sub, "libfastvar.so")
        if os.path.exists(p):
            return p
    return "libfastvar.so.0"


def _load():
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        lib = ctypes.CDLL(library_path())  # CDLL: the GIL is released during calls
        E = ctypes.c_void_p
        P = ctypes.POINTER(_Params)
        sigs = {
            "fastvar_params_default": (_Params, []),
            "fastvar_load": (E, [ctypes.c_char_p, ctypes.c_char_p]),
            "fastvar_load_auto": (E, [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]),
            "fastvar_is_text_to_image": (ctypes.c_int, [E]),
            "fastvar_free": (None, [E]),
            "fastvar_output_size": (ctypes.c_int, [E, P, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]),
            "fastvar_num_classes": (ctypes.c_int, [E]),
            "fastvar_class_name": (ctypes.c_char_p, [E, ctypes.c_int]),
            "fastvar_describe": (ctypes.c_char_p, [E]),
            "fastvar_check_params": (ctypes.c_int, [E, P]),
            "fastvar_generate": (ctypes.c_int, [E, P, ctypes.POINTER(ctypes.c_uint8), _PROGRESS, ctypes.c_void_p]),
            "fastvar_last_error": (ctypes.c_char_p, []),
        }
        for name, (res, args) in sigs.items():
            f = getattr(lib, name)
            f.restype = res
            f.argtypes = args
        _lib = lib
        return lib


def _error(lib):
    return Error(lib.fastvar_last_error().decode("utf-8", "replace"))


class PipelineOutput:
    """The result of a call: .images (PIL images, or a uint8 array [B, H, W, 3]),
    .timings (per scale, then the decoder: dicts with scale, side, ms, ...),
    .seeds (one per image)."""

    def __init__(self, images, timings, seeds):
        self.images = images
        self.timings = timings
        self.seeds = seeds


class Pipeline:
    """One loaded model. Thread-safe: calls on one pipeline run one at a time."""

    def __init__(self, engine):
        self._lib = _load()
        self._engine = engine
        self._lock = threading.Lock()
        self.text_to_image = bool(self._lib.fastvar_is_text_to_image(engine))
        self.description = self._lib.fastvar_describe(engine).decode("utf-8", "replace")
        self.device = "cpu"
        self.dtype = None
        self.threads = 0

    @classmethod
    def _make(cls, model, vae, text, device, dtype, threads):
        lib = _load()
        enc = lambda s: None if s is None else os.fsencode(s)
        e = lib.fastvar_load_auto(enc(model), enc(vae), enc(text))
        if not e:
            raise _error(lib)
        p = cls(e)
        p.device, p.dtype, p.threads = device, dtype, threads or 0
        return p

    @classmethod
    def default(cls, device="cpu", dtype=None, threads=None):
        """The model compiled into the library (Fashion-MNIST VAR, 10 classes, 32 px)."""
        return cls._make(None, None, None, device, dtype, threads)

    @classmethod
    def from_files(cls, model, vae=None, t5=None, llm=None, device="cpu", dtype=None, threads=None):
        """A transformer and its VAE (VAR, Infinity), with Infinity's T5 folder or
        HART's Qwen2 folder; the architecture is detected from the files."""
        if t5 and llm:
            raise Error("give t5 (Infinity) or llm (HART), not both")
        return cls._make(model, vae, t5 or llm, device, dtype, threads)

    @classmethod
    def from_dir(cls, path, llm=None, device="cpu", dtype=None, threads=None):
        """A model folder that identifies itself (HART's hart-0.7b-1024px or its llm/)."""
        return cls._make(path, None, llm, device, dtype, threads)

    def close(self):
        if getattr(self, "_engine", None):
            self._lib.fastvar_free(self._engine)
            self._engine = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def num_classes(self):
        return self._lib.fastvar_num_classes(self._engine)

    def class_names(self):
        names = []
        for i in range(self.num_classes):
            n = self._lib.fastvar_class_name(self._engine, i)
            if n is None:
                return []
            names.append(n.decode("utf-8", "replace"))
        return names

    def _class_id(self, c):
        if isinstance(c, int):
            return c
        if isinstance(c, str):
            if c.isdigit():
                return int(c)
            names = [n.lower() for n in self.class_names()]
            if c.lower() in names:
                return names.index(c.lower())
        raise Error(f"unknown class {c!r}")

    def __call__(self, prompt=None, class_label=None, num_images=1, seed=0, guidance_scale=None, top_k=None,
                 top_p=None, tau=None, size=None, fastvar=True, prune=None, skip_last=None, cache_scale=None,
                 prune_layers=None, score=None, smooth=True, callback=None, output_type="pil",
                 batch_invariant=False, kv_dtype=None):
        """Generates num_images images. seed: one integer (image i uses seed + i) or
        one per image; with batch_invariant=True an image is byte-identical alone or
        in any batch (slower batches). callback(scale,
        num_scales, info) after every scale (and the decoder); returning False
        aborts (fastvar.Error), as does Ctrl-C (KeyboardInterrupt). kv_dtype="bf16" keeps
        the KV and FastVAR caches in bfloat16 on the CPU (half their memory)."""
        lib = self._lib
        if output_type not in ("pil", "np"):
            raise Error(f"output_type must be 'pil' or 'np', not {output_type!r}")
        n = int(num_images)
        if n < 1:
            raise Error("num_images must be >= 1")
        p = lib.fastvar_params_default()
        keep = []  # buffers the params point into, alive for the call
        p.num_images = n
        if self.text_to_image:
            if class_label is not None:
                raise Error("class_label is for class-conditional models; give a prompt")
            prompts = [prompt] * n if isinstance(prompt, str) or prompt is None else list(prompt)
            if len(prompts) != n or any(not isinstance(t, str) or not t for t in prompts):
                raise Error(f"give one non-empty prompt, or {n}")
            arr = (ctypes.c_char_p * n)(*[t.encode("utf-8") for t in prompts])
            keep.append(arr)
            p.prompts = ctypes.cast(arr, ctypes.POINTER(ctypes.c_char_p))
        else:
            label = class_label if class_label is not None else prompt
            if label is None:
                raise Error("give class_label (a class id or name)")
            labels = [label] * n if isinstance(label, (int, str)) else list(label)
            if len(labels) != n:
                raise Error(f"give one class, or {n}")
            arr = (ctypes.c_int * n)(*[self._class_id(c) for c in labels])
            keep.append(arr)
            p.classes = arr
        if isinstance(seed, (list, tuple)):
            if len(seed) != n:
                raise Error(f"{len(seed)} seeds for {n} images")
            seeds = [int(s) for s in seed]
        else:
            seeds = [int(seed) + i for i in range(n)]
        if any(s < 0 or s >= 2 ** 64 for s in seeds):
            raise Error("seeds must be in [0, 2^64)")
        sarr = (ctypes.c_uint64 * n)(*seeds)
        keep.append(sarr)
        p.seeds = sarr
        if guidance_scale is not None:
            p.cfg = float(guidance_scale)
        if top_k is not None:
            p.top_k = int(top_k)
        if top_p is not None:
            p.top_p = float(top_p)
        if tau is not None:
            p.tau = float(tau)
        if size is not None:  # text-to-image: the resolution key nearest to the area, as the CLI's -W/-H
            w, h = size if isinstance(size, (tuple, list)) else (size, size)
            side = math.sqrt(float(w) * float(h))
            keys = [("0.06M", 256), ("0.25M", 512), ("0.60M", 768), ("1M", 1024), ("2K", 2048)]
            res = min(keys, key=lambda k: abs(math.log(side / k[1])))[0]
            r = res.encode()
            keep.append(r)
            p.resolution = r
            p.h_div_w = float(h) / float(w)
        p.fastvar = 1 if fastvar else 0
        strs = {"prune": prune, "score": score, "dtype": self.dtype, "device": self.device, "kv_dtype": kv_dtype}
        for k, v in strs.items():
            if v is not None:
                b = str(v).encode()
                keep.append(b)
                setattr(p, k, b)
        if skip_last is not None:
            p.skip_last = int(skip_last)
        if cache_scale is not None:
            p.cache_scale = int(cache_scale)
        if prune_layers is not None:
            a, b = prune_layers
            p.prune_layer_begin, p.prune_layer_end = int(a), int(b)
        p.no_smooth = 0 if smooth else 1
        p.batch_invariant = 1 if batch_invariant else 0
        p.threads = int(self.threads or 0)

        timings = []
        state = {"abort": False, "interrupt": False, "error": None}

        def on_scale(info_p, _user):
            i = info_p.contents
            t = {"scale": i.scale, "num_scales": i.num_scales, "side": (i.side_h, i.side_w), "ms": i.ms,
                 "skipped": bool(i.skipped), "tokens": i.tokens, "forwarded": i.forwarded, "kv_bytes": i.kv_bytes,
                 "gflop": i.gflop}
            timings.append(t)
            if callback is not None and not state["abort"]:
                try:
                    if callback(i.scale, i.num_scales, t) is False:
                        state["abort"] = True
                except KeyboardInterrupt:
                    state["abort"] = state["interrupt"] = True
                except BaseException as e:  # noqa: BLE001 - reported after the call
                    state["abort"] = True
                    state["error"] = e

        def should_abort(_user):
            try:
                return 1 if state["abort"] else 0
            except KeyboardInterrupt:
                state["abort"] = state["interrupt"] = True
                return 1

        progress_c = _PROGRESS(on_scale)
        abort_c = _ABORT(should_abort)
        p.abort = ctypes.cast(abort_c, ctypes.c_void_p)
        W, H = ctypes.c_int(), ctypes.c_int()
        # Ctrl-C: in the main thread, SIGINT only flags the generation, which
        # stops at the next scale; KeyboardInterrupt is raised once it returned.
        import signal as _signal
        old = None
        if threading.current_thread() is threading.main_thread():
            def on_sigint(_sig, _frame):
                state["abort"] = state["interrupt"] = True
            old = _signal.signal(_signal.SIGINT, on_sigint)
        try:
            with self._lock:
                if not self._engine:
                    raise Error("the pipeline is closed")
                if lib.fastvar_output_size(self._engine, ctypes.byref(p), ctypes.byref(W), ctypes.byref(H)) != _OK:
                    raise _error(lib)
                buf = (ctypes.c_uint8 * (n * W.value * H.value * 3))()
                st = lib.fastvar_generate(self._engine, ctypes.byref(p), buf, progress_c, None)
        finally:
            if old is not None:
                _signal.signal(_signal.SIGINT, old)
        if state["interrupt"]:
            raise KeyboardInterrupt
        if state["error"] is not None:
            raise state["error"]
        if st == _ABORTED:
            raise Error("generation aborted")
        if st != _OK:
            raise _error(lib)
        raw = bytes(buf)
        if output_type == "np":
            import numpy as np
            images = np.frombuffer(raw, dtype=np.uint8).reshape(n, H.value, W.value, 3).copy()
        else:
            from PIL import Image
            size_b = W.value * H.value * 3
            images = [Image.frombytes("RGB", (W.value, H.value), raw[i * size_b:(i + 1) * size_b]) for i in range(n)]
        return PipelineOutput(images, timings, seeds)
