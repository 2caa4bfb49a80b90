"""fastvar on Ray Serve (run by scripts/ray-test.sh, which installs ray[serve]):
two replicas on a local Ray instance behind Ray Serve's HTTP proxy; the openai
SDK against it; images equal the local Pipeline's for the same seeds; concurrent
requests are spread over the replicas and batched."""
import base64
import io
import json
import socket
import threading
import urllib.request

import pytest
from PIL import Image

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

import fastvar  # noqa: E402
from fastvar.ray_serve import FastvarDeployment  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


@pytest.fixture(scope="module")
def url():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(FastvarDeployment.options(num_replicas=2).bind(threads=1, batch_wait_s=0.05), route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def post(url, body):
    req = urllib.request.Request(url + "/v1/images/generations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as f:
            return f.status, json.loads(f.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_openai_sdk_and_same_pixels_as_local(url):
    from openai import OpenAI
    client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    r = client.images.generate(prompt="sneaker", n=2, extra_body={"seed": 5})
    remote = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))).convert("RGB") for d in r.data]
    local = fastvar.Pipeline.default(threads=1)(class_label="sneaker", num_images=2, seed=5).images
    assert [im.tobytes() for im in remote] == [im.tobytes() for im in local]


def test_concurrent_requests_use_both_replicas(url):
    out = [None] * 12
    def call(i):
        out[i] = post(url, {"prompt": str(i % 10), "seed": i})
    ts = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(180)
    assert all(st == 200 for st, _ in out), out
    assert len({b["replica"] for _, b in out}) == 2


def test_bad_requests_are_400(url):
    assert post(url, {"prompt": "1", "n": "two"})[0] == 400
    assert post(url, {"prompt": "unicorn"})[0] == 400
    assert post(url, {"n": 1})[0] == 400
