"""fastvar on Ray Serve: the OpenAI images routes of `fastvar serve` (same
request and reply JSON) in front of fastvar engines in Ray Serve replicas, on
one machine or a Ray cluster.

    serve run fastvar.serve:app                        # the embedded model, 2 replicas
    serve run deploy/serve_config.yaml                 # model paths, replicas, autoscaling

or from Python:

    from ray import serve
    from fastvar.serve import build_app
    serve.run(build_app({"model": "var_d16.pth", "vae": "vae.pth", "replicas": 4, "threads": 8}))

Two deployments: `FastvarModel`, one engine per replica (`num_replicas`, or
`autoscaling_config`; `ray_actor_options` with CPUs or `num_gpus: 1` and
device=cuda), which batches concurrent requests with `@serve.batch` and runs
the compatible ones (same settings) as one generation with per-image seeds;
and `Ingress`, which parses and validates the request, calls a model replica,
and, since Ray does not re-run a request whose replica died, retries it on
another one (safe: an image depends only on its seed). Needs `pip install
"ray[serve]"` (the `ray` extra of this package).
"""
import asyncio
import base64
import io
import os
import time

from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import ReplicaUnavailableError
from starlette.requests import Request
from starlette.responses import JSONResponse

from . import Error, Pipeline

# Settings a batch must share (everything but what to draw, the seed and n).
_SETTINGS = ("guidance_scale", "top_k", "top_p", "tau", "fastvar", "prune", "skip_last", "cache_scale", "score",
             "smooth")
_RETRIABLE = (ActorDiedError, ActorUnavailableError, RayActorError, ReplicaUnavailableError)


def png_bytes(image):
    """The PNG of a PIL image as this application writes it (no metadata;
    deterministic, so equal pixels give equal bytes)."""
    b = io.BytesIO()
    image.save(b, format="PNG")
    return b.getvalue()


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64, health_check_period_s=5)
class FastvarModel:
    def __init__(self, model=None, vae=None, t5=None, llm=None, threads=None, device="cpu", dtype=None,
                 max_batch=16, batch_wait_s=0.02):
        if model:
            self.pipe = Pipeline.from_files(model, vae, t5=t5, llm=llm, device=device, dtype=dtype, threads=threads)
        else:
            self.pipe = Pipeline.default(device=device, dtype=dtype, threads=threads)
        self.replica = os.environ.get("RAY_SERVE_REPLICA_ID", "") or str(os.getpid())
        self.generate.set_max_batch_size(max_batch)
        self.generate.set_batch_wait_timeout_s(batch_wait_s)

    def check_health(self):
        """Ray Serve's health check: the engine is loaded."""
        if self.pipe is None or not self.pipe._engine:
            raise RuntimeError("no engine")

    def info(self):
        return {"text_to_image": self.pipe.text_to_image, "description": self.pipe.description,
                "class_names": self.pipe.class_names()}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def generate(self, reqs):
        """reqs: validated requests; one generation per group of compatible ones.
        Returns per request the PNGs, or an error message."""
        out = [None] * len(reqs)
        groups = {}
        for i, r in enumerate(reqs):
            groups.setdefault(tuple(repr(r["settings"].get(k)) for k in _SETTINGS), []).append(i)
        loop = asyncio.get_running_loop()
        for idx in groups.values():
            what, seeds = [], []
            for i in idx:
                what += [reqs[i]["what"]] * reqs[i]["n"]
                seeds += [reqs[i]["seed"] + j for j in range(reqs[i]["n"])]
            kw = dict(reqs[idx[0]]["settings"])
            kw["prompt" if self.pipe.text_to_image else "class_label"] = what
            try:
                res = await loop.run_in_executor(None, lambda: self.pipe(num_images=len(seeds), seed=seeds,
                                                                        batch_invariant=True, **kw))
            except Error as e:
                for i in idx:
                    out[i] = {"error": str(e)}
                continue
            at = 0
            for i in idx:
                out[i] = {"pngs": [png_bytes(im) for im in res.images[at:at + reqs[i]["n"]]], "replica": self.replica}
                at += reqs[i]["n"]
        return out


def _error(status, message, param=None, kind="invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param}}, status_code=status)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class Ingress:
    def __init__(self, model_handle, model_id="fastvar-embedded", max_n=16, retries=3):
        self.model = model_handle
        self.model_id = model_id
        self.max_n = max_n
        self.retries = retries
        self.retried = 0
        self._info = None

    async def _model_info(self):
        if self._info is None:
            self._info = await self.model.info.remote()
        return self._info

    def _parse(self, body, info):
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
        if info["text_to_image"]:
            what = field("prompt", str)
            if not what:
                raise ValueError(("'prompt' is required (a non-empty string)", "prompt"))
        else:
            what = field("class_label", (int, str))
            if what is None:
                what = field("prompt", str)
            names = [c.lower() for c in info["class_names"]]
            if isinstance(what, str) and what.isdigit():
                what = int(what)
            if isinstance(what, str):
                if what.lower() not in names:
                    raise ValueError((f"unknown class '{what}'", "prompt"))
                what = names.index(what.lower())
            if what is None:
                raise ValueError(("'prompt' is required: a class name or id (or class_label)", "prompt"))
        seed = field("seed", int)
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        if not 0 <= seed < 2 ** 64:
            raise ValueError(("'seed' must be in [0, 2^64 - 1]", "seed"))
        fmt = field("response_format", str, "b64_json")
        if fmt != "b64_json":
            raise ValueError(("only response_format b64_json is served on Ray (fastvar serve has url)",
                              "response_format"))
        field("model", str)
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
            return JSONResponse({"status": "ok"})
        info = await self._model_info()
        if path.endswith("/v1/models") and request.method == "GET":
            return JSONResponse({"object": "list", "data": [{"id": self.model_id, "object": "model", "created": 0,
                                                             "owned_by": "fastvar", "description": info["description"],
                                                             "text_to_image": info["text_to_image"]}]})
        if not path.endswith("/v1/images/generations"):
            return _error(404, "no such endpoint")
        if request.method != "POST":
            return _error(405, "use POST")
        try:
            body = await request.json()
        except Exception:
            return _error(400, "the body is not valid JSON")
        try:
            req = self._parse(body, info)
        except ValueError as e:
            msg, param = e.args[0]
            return _error(400, msg, param)
        for attempt in range(self.retries + 1):
            try:
                res = await self.model.generate.remote(req)
                break
            except _RETRIABLE:  # its replica died: the same request on another one
                if attempt == self.retries:
                    return _error(503, "no model replica could serve the request", kind="server_error")
                self.retried += 1
                await asyncio.sleep(0.2 * (attempt + 1))
        if "error" in res:
            return _error(400, res["error"])
        return JSONResponse({"created": int(time.time()), "model": self.model_id, "seed": req["seed"],
                             "data": [{"b64_json": base64.b64encode(p).decode(), "seed": req["seed"] + j}
                                      for j, p in enumerate(res["pngs"])],
                             "replica": res["replica"], "retries": attempt})


def build_app(args):
    """The application from `serve run` arguments or a config file's `args`:
    model, vae, t5, llm (paths; none = the embedded model), threads, device,
    dtype, replicas (default 2), max_batch, batch_wait_s, max_n, retries, and
    autoscaling (a dict passed to Ray Serve as autoscaling_config)."""
    args = dict(args or {})
    kw = {k: args[k] for k in ("model", "vae", "t5", "llm", "device", "dtype") if args.get(k)}
    for k, f in (("threads", int), ("max_batch", int), ("batch_wait_s", float)):
        if k in args:
            kw[k] = f(args[k])
    opts = {}
    if args.get("autoscaling"):
        opts["autoscaling_config"] = args["autoscaling"]
    else:
        opts["num_replicas"] = int(args.get("replicas", 2))
    if args.get("num_gpus"):
        opts["ray_actor_options"] = {"num_cpus": 1, "num_gpus": float(args["num_gpus"])}
    model = FastvarModel.options(**opts).bind(**kw)
    model_id = os.path.basename(os.path.normpath(kw["model"])) if kw.get("model") else "fastvar-embedded"
    return Ingress.bind(model, model_id=model_id, max_n=int(args.get("max_n", 16)), retries=int(args.get("retries", 3)))


app = build_app({})
