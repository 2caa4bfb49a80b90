"""Scale-out on Ray Serve: fastvar engines in Ray Serve replicas (on one
machine or a Ray cluster), behind Ray Serve's HTTP proxy, with the OpenAI
images route of `fastvar serve`.

    from ray import serve
    from fastvar.ray_serve import FastvarDeployment
    serve.run(FastvarDeployment.options(num_replicas=4).bind(model="var_d16.pth", vae="vae.pth", threads=8))
    # POST http://127.0.0.1:8000/v1/images/generations {"prompt": "...", "n": 2, "seed": 5}

or from the command line: `serve run fastvar.ray_serve:build_app model=... vae=... replicas=4`.
Each replica holds one engine; Ray Serve batches concurrent requests to a
replica (`@serve.batch`) and this groups the compatible ones (same settings)
into one generation with per-image seeds, so an image depends only on its
seed. Needs `pip install "ray[serve]"` (the `ray` extra of this package).
"""
import asyncio
import base64
import io
import os
import time

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from . import Error, Pipeline

_SETTINGS = ("guidance_scale", "top_k", "top_p", "tau", "fastvar", "prune", "skip_last", "cache_scale", "score",
             "smooth", "size")


def _png(img):
    b = io.BytesIO()
    img.save(b, format="PNG")
    return b.getvalue()


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class FastvarDeployment:
    def __init__(self, model=None, vae=None, t5=None, llm=None, threads=None, device="cpu", dtype=None,
                 max_batch=16, batch_wait_s=0.02):
        if model:
            self.pipe = Pipeline.from_files(model, vae, t5=t5, llm=llm, device=device, dtype=dtype, threads=threads)
        else:
            self.pipe = Pipeline.default(device=device, dtype=dtype, threads=threads)
        self.model_id = os.path.basename(os.path.normpath(model)) if model else "fastvar-embedded"
        self.replica = os.environ.get("RAY_SERVE_REPLICA_ID", "") or str(os.getpid())
        self.max_n = max_batch
        self._generate.set_max_batch_size(max_batch)
        self._generate.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def _generate(self, reqs):
        """reqs: parsed requests; one generation per group of compatible ones."""
        out = [None] * len(reqs)
        groups = {}
        for i, r in enumerate(reqs):
            groups.setdefault(tuple(repr(r["settings"].get(k)) for k in _SETTINGS), []).append(i)
        loop = asyncio.get_running_loop()
        for idx in groups.values():
            prompts, seeds = [], []
            for i in idx:
                prompts += [reqs[i]["what"]] * reqs[i]["n"]
                seeds += [reqs[i]["seed"] + j for j in range(reqs[i]["n"])]
            kw = dict(reqs[idx[0]]["settings"])
            kw.pop("size", None)
            what = {"prompt": prompts} if self.pipe.text_to_image else {"class_label": prompts}
            try:
                res = await loop.run_in_executor(None, lambda: self.pipe(num_images=len(seeds), seed=seeds, **what, **kw))
            except Error as e:
                for i in idx:
                    out[i] = e
                continue
            at = 0
            for i in idx:
                out[i] = [_png(im) for im in res.images[at:at + reqs[i]["n"]]]
                at += reqs[i]["n"]
        return out

    def _parse(self, body):
        if not isinstance(body, dict):
            raise ValueError(("the body must be a JSON object", None))
        def field(name, types, default=None):
            v = body.get(name, default)
            if v is None:
                return None
            tt = types if isinstance(types, tuple) else (types,)
            if (isinstance(v, bool) and bool not in tt) or not isinstance(v, tt):
                raise ValueError((f"'{name}' has the wrong type", name))
            return v
        n = field("n", int, 1)
        if not 1 <= n <= self.max_n:
            raise ValueError((f"'n' must be in [1, {self.max_n}]", "n"))
        what = field("prompt", str) if self.pipe.text_to_image else (field("class_label", (int, str)) or field("prompt", str))
        if what is None or what == "":
            raise ValueError(("'prompt' is required", "prompt"))
        seed = field("seed", int, int.from_bytes(os.urandom(4), "little"))
        if seed < 0:
            raise ValueError(("'seed' must be >= 0", "seed"))
        fmt = field("response_format", str, "b64_json")
        if fmt != "b64_json":
            raise ValueError(("only response_format b64_json is served here", "response_format"))
        settings = {}
        for k, t in (("guidance_scale", (int, float)), ("top_k", int), ("top_p", (int, float)), ("tau", (int, float)),
                     ("fastvar", bool), ("prune", str), ("skip_last", int), ("cache_scale", int), ("score", str),
                     ("smooth", bool)):
            v = field(k, t)
            if v is not None:
                settings[k] = v
        return {"n": n, "what": what, "seed": seed, "settings": settings}

    async def __call__(self, request: Request):
        path = request.url.path.rstrip("/")
        if path.endswith("/health"):
            return JSONResponse({"status": "ok", "replica": self.replica})
        if path.endswith("/v1/models"):
            return JSONResponse({"object": "list", "data": [{"id": self.model_id, "object": "model", "created": 0,
                                                             "owned_by": "fastvar", "description": self.pipe.description}]})
        if not path.endswith("/v1/images/generations") or request.method != "POST":
            return JSONResponse({"error": {"message": "no such endpoint", "type": "invalid_request_error"}}, status_code=404)
        try:
            body = await request.json()
        except Exception:
            return JSONResponse({"error": {"message": "the body is not valid JSON", "type": "invalid_request_error",
                                           "param": None}}, status_code=400)
        try:
            req = self._parse(body)
        except ValueError as e:
            msg, param = e.args[0]
            return JSONResponse({"error": {"message": msg, "type": "invalid_request_error", "param": param}},
                                status_code=400)
        res = await self._generate(req)
        if isinstance(res, Error):
            return JSONResponse({"error": {"message": str(res), "type": "invalid_request_error", "param": None}},
                                status_code=400)
        return JSONResponse({"created": int(time.time()), "model": self.model_id, "seed": req["seed"],
                             "replica": self.replica,
                             "data": [{"b64_json": base64.b64encode(p).decode(), "seed": req["seed"] + j}
                                      for j, p in enumerate(res)]})


def build_app(args):
    """For `serve run fastvar.ray_serve:build_app key=value ...`: model, vae, t5,
    llm, threads, replicas, max_batch."""
    replicas = int(args.pop("replicas", 1))
    kw = {k: args[k] for k in ("model", "vae", "t5", "llm", "device", "dtype") if k in args}
    for k in ("threads", "max_batch"):
        if k in args:
            kw[k] = int(args[k])
    return FastvarDeployment.options(num_replicas=replicas).bind(**kw)
