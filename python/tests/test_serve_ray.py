"""fastvar.serve on Ray Serve, on one machine (run by scripts/ray-test.sh,
which installs ray[serve]): `ray start --head --num-cpus=2` on 127.0.0.1, two
replicas of the embedded model with one thread each; the openai SDK; 200
requests with distinct seeds from 16 concurrent clients while one replica is
killed (ray.kill): every request gets 200 and the PNG bytes the Python package
gives for its seed, Serve brings the replica back; then the same load on
`fastvar serve`. Figures to $FASTVAR_RAY_RESULTS (JSON) when set."""
import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

import fastvar  # noqa: E402
from fastvar.serve import build_app, png_bytes  # noqa: E402

BIN = os.environ.get("FASTVAR_BIN", "build/fastvar")
N, CLIENTS = 200, 16


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def post(url, body, timeout=120):
    req = urllib.request.Request(url + "/v1/images/generations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as f:
            return f.status, json.loads(f.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def load(url, on_progress=None):
    """N requests (seed i, class i % 10) from CLIENTS threads: statuses, bodies, latencies, seconds."""
    res, lat = [None] * N, [0.0] * N
    nxt, lock = [0], threading.Lock()

    def client():
        while True:
            with lock:
                if nxt[0] >= N:
                    return
                i = nxt[0]
                nxt[0] += 1
            t0 = time.time()
            res[i] = post(url, {"prompt": str(i % 10), "seed": i})
            lat[i] = time.time() - t0
            if on_progress:
                on_progress(i)

    t0 = time.time()
    ts = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(600)
    return res, sorted(lat), time.time() - t0


@pytest.fixture(scope="module")
def cluster():
    port = free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    subprocess.run([ray_bin, "start", "--head", "--num-cpus=2", f"--port={port}", "--node-ip-address=127.0.0.1",
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
    http = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": http})
    serve.run(build_app({"threads": 1, "replicas": 2, "batch_wait_s": 0.02}), name="fastvar", route_prefix="/")
    yield f"http://127.0.0.1:{http}"
    serve.shutdown()
    ray.shutdown()
    subprocess.run([ray_bin, "stop", "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def replicas_running():
    st = serve.status().applications["fastvar"].deployments["FastvarModel"]
    return st.replica_states.get("RUNNING", 0)


def test_openai_sdk(cluster):
    from openai import OpenAI
    client = OpenAI(base_url=cluster + "/v1", api_key="none", max_retries=0, timeout=120)
    r = client.images.generate(prompt="sneaker", n=2, extra_body={"seed": 5})
    local = fastvar.Pipeline.default(threads=1)(class_label="sneaker", num_images=2, seed=5).images
    assert [base64.b64decode(d.b64_json) for d in r.data] == [png_bytes(im) for im in local]
    assert client.models.list().data[0].id == "fastvar-embedded"
    assert post(cluster, {"prompt": "1", "n": "two"})[0] == 400
    assert post(cluster, {"prompt": "unicorn"})[0] == 400


def test_200_requests_with_a_replica_killed(cluster):
    pipe = fastvar.Pipeline.default(threads=1)
    want = [png_bytes(pipe(class_label=i % 10, seed=[i]).images[0]) for i in range(N)]
    killed = []

    def kill_one(i):
        if i == N // 3 and not killed:
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if "FastvarModel" in a["name"] and "SERVE_REPLICA" in a["name"]]
            ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
            killed.append(names[0])

    res, lat, secs = load(cluster, kill_one)
    assert killed
    bad = [i for i, (st, _) in enumerate(res) if st != 200]
    assert not bad, [res[i] for i in bad[:3]]
    mismatched = [i for i, (_, b) in enumerate(res) if base64.b64decode(b["data"][0]["b64_json"]) != want[i]]
    assert not mismatched, f"{len(mismatched)} images differ from the Python package's, e.g. seed {mismatched[:5]}"
    retries = sum(b["retries"] for _, b in res)
    for _ in range(120):  # Serve brings the replica back
        if replicas_running() == 2:
            break
        time.sleep(0.5)
    assert replicas_running() == 2
    ray_fig = {"p50_ms": 1e3 * lat[N // 2], "p99_ms": 1e3 * lat[int(N * 0.99) - 1], "images_per_s": N / secs,
               "retries": retries, "replicas": 2, "threads_per_replica": 1}
    # The same load on fastvar serve (one process, two threads).
    p = subprocess.Popen([BIN, "serve", "--port", "0", "-t", "2", "--max-batch", "16"], stderr=subprocess.PIPE,
                         text=True)
    try:
        port = int(re.search(r":(\d+)/", p.stderr.readline()).group(1))
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as f:
                    if f.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        res2, lat2, secs2 = load(f"http://127.0.0.1:{port}")
        assert all(st == 200 for st, _ in res2)
        fv_fig = {"p50_ms": 1e3 * lat2[N // 2], "p99_ms": 1e3 * lat2[int(N * 0.99) - 1], "images_per_s": N / secs2,
                  "threads": 2}
    finally:
        p.terminate()
        p.wait(30)
    figures = {"requests": N, "clients": CLIENTS, "ray_serve": ray_fig, "fastvar_serve": fv_fig}
    print("\nray load test:", json.dumps(figures), file=sys.stderr)
    if os.environ.get("FASTVAR_RAY_RESULTS"):
        with open(os.environ["FASTVAR_RAY_RESULTS"], "w") as f:
            json.dump(figures, f, indent=1)
