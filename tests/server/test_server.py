#!/usr/bin/env python3
"""End-to-end tests of `fastvar serve` on loopback (run by scripts/server-test.sh).

Each test starts its own server (port 0: any free port) on the embedded
model, bounded in time and request count. Needs the `openai` SDK and
`prometheus_client` (the script installs them into a venv). Writes the load
test's figures to $FASTVAR_SERVE_RESULTS (JSON) when set.

  FASTVAR_BIN=build/fastvar python3 tests/server/test_server.py [-k NAME]
"""
import base64
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import unittest
import urllib.request

BIN = os.environ.get("FASTVAR_BIN", "build/fastvar")
KEY = "test-key-123"


class Server:
    """A `fastvar serve` subprocess; its port is read from its first stderr line."""

    def __init__(self, *args, env=None):
        e = dict(os.environ)
        e.update(env or {})
        self.p = subprocess.Popen([BIN, "serve", "--port", "0", "-t", "2", *args], stderr=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, env=e, text=True)
        self.log = []
        line = self.p.stderr.readline()
        self.log.append(line)
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not m:
            self.p.kill()
            raise RuntimeError("server did not start: " + line + self.p.stderr.read())
        self.port = int(m.group(1))
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server not ready in 30 s")

    def _drain(self):
        for line in self.p.stderr:
            self.log.append(line)

    def request(self, method, path, body=None, headers=None, timeout=60):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = {"Authorization": "Bearer " + KEY}
        h.update(headers or {})
        data = json.dumps(body) if isinstance(body, (dict, list)) else body
        if data is not None and "Content-Type" not in h:
            h["Content-Type"] = "application/json"
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        out = (r.status, r.read(), dict(r.getheaders()))
        c.close()
        return out

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body, **kw):
        return self.request("POST", path, body, **kw)

    def gen(self, body, **kw):
        st, data, h = self.post("/v1/images/generations", body, **kw)
        return st, json.loads(data) if data else None, h

    def metric(self, name):
        st, data, _ = self.get("/metrics")
        assert st == 200
        for line in data.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def peak_rss_mib(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
        return 0.0

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.p.poll() is None:
            self.p.send_signal(sig)
        return self.p.wait(timeout=timeout)


def png_of(item):
    raw = base64.b64decode(item["b64_json"])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", raw[:16]
    return raw


def png_pixels(raw):
    """(width, height, the decompressed IDAT stream) of a PNG: equal for equal pixels from the same encoder,
    whatever its text chunks say."""
    import struct
    import zlib
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(raw):
        n, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    return w, h, zlib.decompress(idat)


class ServerTests(unittest.TestCase):
    def test_openai_sdk_b64_and_url(self):
        from openai import OpenAI
        s = Server("--api-key", KEY)
        try:
            client = OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key=KEY, max_retries=0, timeout=60)
            r = client.images.generate(prompt="sneaker", n=2, size="32x32", extra_body={"seed": 5})
            self.assertEqual(len(r.data), 2)
            raw = base64.b64decode(r.data[0].b64_json)
            self.assertEqual(raw[:8], b"\x89PNG\r\n\x1a\n")
            self.assertIn(b"tEXtparameters", raw)  # the generation parameters travel with the image
            self.assertIn(b"seed: 5", raw)
            u = client.images.generate(prompt="trouser", response_format="url", extra_body={"seed": 1})
            req = urllib.request.Request(u.data[0].url, headers={"Authorization": "Bearer " + KEY})
            with urllib.request.urlopen(req, timeout=30) as f:
                self.assertEqual(f.read()[:8], b"\x89PNG\r\n\x1a\n")
            models = client.models.list()
            self.assertEqual(models.data[0].id, "fastvar-embedded")
        finally:
            self.assertEqual(s.stop(), 0)

    def test_alone_equals_inside_a_batch_of_8(self):
        s = Server("--batch-wait-ms", "300", "--max-batch", "16")
        try:
            req = {"prompt": "sneaker", "seed": 11, "n": 1}
            st, alone, _ = s.gen(req)
            self.assertEqual(st, 200)
            batches0 = s.metric("fastvar_batches_total")
            bodies = [req] + [{"prompt": str(c), "seed": 100 + c, "n": 1 + c % 2} for c in range(7)]
            out = [None] * len(bodies)

            def call(i):
                out[i] = s.gen(bodies[i])

            ts = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
            for t in ts:
                t.start()
            for t in ts:
                t.join(60)
            for st, body, _ in out:
                self.assertEqual(st, 200)
            self.assertEqual(png_of(out[0][1]["data"][0]), png_of(alone["data"][0]))
            # They were batched: fewer generations than requests.
            self.assertLess(s.metric("fastvar_batches_total") - batches0, len(bodies))
            # Image i of a request is seed + i, so n=2 seed 101 holds seed 102's image.
            st, two, _ = s.gen({"prompt": "1", "seed": 101, "n": 2})
            st1, one, _ = s.gen({"prompt": "1", "seed": 102, "n": 1})
            self.assertEqual(png_of(two["data"][1]), png_of(one["data"][0]))
        finally:
            self.assertEqual(s.stop(), 0)

    def test_error_statuses(self):
        s = Server("--api-key", KEY, "--max-body", "4K", "--max-n", "4")
        try:
            self.assertEqual(s.get("/health", headers={"Authorization": ""})[0], 200)  # open
            st, data, h = s.request("POST", "/v1/images/generations", {"prompt": "1"}, headers={"Authorization": ""})
            self.assertEqual(st, 401)
            self.assertIn("error", json.loads(data))
            self.assertEqual(s.post("/v1/images/generations", {"prompt": "1"}, headers={"Authorization": "Bearer no"})[0], 401)
            st, data, _ = s.post("/v1/images/generations", {"prompt": "x" * 8000})
            self.assertEqual(st, 413)
            cases = [("{not json", None), ({"prompt": "1", "n": 0}, "n"), ({"prompt": "1", "n": 5}, "n"),
                     ({"prompt": "1", "n": "2"}, "n"), ({"prompt": "1", "size": "banana"}, "size"),
                     ({"prompt": "1", "size": "64x64"}, "size"), ({"prompt": "1", "seed": "x"}, "seed"),
                     ({"prompt": "unicorn"}, "prompt"), ({"prompt": "1", "response_format": "gif"}, "response_format"),
                     ({"prompt": "1", "guidance_scale": "high"}, "guidance_scale"), ({"prompt": "1", "prune": "9:x"}, "prune"),
                     ([1, 2], None), ({"n": 1}, "prompt")]
            for body, param in cases:
                st, data, _ = s.post("/v1/images/generations", body)
                self.assertEqual(st, 400, (body, data))
                err = json.loads(data)["error"]
                self.assertTrue(err["message"])
                if param:
                    self.assertEqual(err["param"], param, (body, err))
            self.assertEqual(s.get("/v1/jobs/job_nope")[0], 404)
            self.assertEqual(s.get("/nope")[0], 404)
        finally:
            self.assertEqual(s.stop(), 0)

    def test_queue_full_is_429(self):
        s = Server("--max-queue", "1", "--max-batch", "1", "--batch-wait-ms", "0",
                   env={"FASTVAR_SERVE_SCALE_DELAY_MS": "20"})
        try:
            res = []

            def call():
                st, _, h = s.gen({"prompt": "2", "seed": 1})
                res.append((st, h))

            ts = [threading.Thread(target=call) for _ in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(60)
            codes = sorted(st for st, _ in res)
            self.assertIn(429, codes)
            self.assertIn(200, codes)
            self.assertTrue(all(h.get("Retry-After") for st, h in res if st == 429))
            self.assertGreater(s.metric("fastvar_rejected_total"), 0)
        finally:
            self.assertEqual(s.stop(), 0)

    def test_cancel_disconnect_deadline(self):
        s = Server("--batch-wait-ms", "200", "--timeout", "30", env={"FASTVAR_SERVE_SCALE_DELAY_MS": "150"})
        try:
            # A job cancelled while running.
            st, data, _ = s.post("/v1/jobs", {"prompt": "3", "seed": 1})
            self.assertEqual(st, 202)
            jid = json.loads(data)["id"]
            for _ in range(200):
                j = json.loads(s.get("/v1/jobs/" + jid)[1])
                if j["status"] == "running" and j.get("progress", {}).get("scale", -1) >= 1:
                    break
                time.sleep(0.02)
            self.assertEqual(j["status"], "running")
            st, data, _ = s.post(f"/v1/jobs/{jid}/cancel", {})
            self.assertEqual(json.loads(data)["status"], "cancelled")
            # Its events: queued, running, scales, cancelled.
            st, ev, _ = s.get(f"/v1/jobs/{jid}/events")
            self.assertIn(b"event: scale", ev)
            self.assertIn(b"event: cancelled", ev)

            # A client that goes away mid-generation, batched with one that stays.
            cancelled0 = s.metric("fastvar_cancelled_total")
            keep = {}

            def stays():
                keep["r"] = s.gen({"prompt": "4", "seed": 2})

            t = threading.Thread(target=stays)
            t.start()
            sock = socket.create_connection(("127.0.0.1", s.port))
            body = json.dumps({"prompt": "5", "seed": 3}).encode()
            sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            time.sleep(0.6)  # inside the batch, a few scales in
            sock.close()
            t.join(60)
            self.assertEqual(keep["r"][0], 200)  # the batch went on for the other request
            for _ in range(100):
                if s.metric("fastvar_cancelled_total") > cancelled0:
                    break
                time.sleep(0.05)
            self.assertGreater(s.metric("fastvar_cancelled_total"), cancelled0)
        finally:
            self.assertEqual(s.stop(), 0)
        # A deadline: 504.
        s = Server("--timeout", "1", env={"FASTVAR_SERVE_SCALE_DELAY_MS": "300"})
        try:
            st, body, _ = s.gen({"prompt": "6", "seed": 4})
            self.assertEqual(st, 504)
            self.assertGreater(s.metric("fastvar_timeouts_total"), 0)
        finally:
            self.assertEqual(s.stop(), 0)

    def test_sigterm_answers_every_accepted_request(self):
        s = Server("--max-batch", "1", "--batch-wait-ms", "0", env={"FASTVAR_SERVE_SCALE_DELAY_MS": "100"})
        res = []

        def call(i):
            try:
                st, _, _ = s.gen({"prompt": str(i % 10), "seed": i})
                res.append(st)
            except OSError as e:
                res.append(repr(e))

        ts = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        time.sleep(0.4)  # one running, three queued
        s.p.send_signal(signal.SIGTERM)
        for t in ts:
            t.join(60)
        self.assertEqual(s.p.wait(timeout=30), 0)
        self.assertEqual(len(res), 4)
        self.assertTrue(all(r in (200, 503) for r in res), res)
        self.assertIn(200, res)
        self.assertIn(503, res)

    def test_metrics_parse_as_prometheus_text(self):
        from prometheus_client.parser import text_string_to_metric_families
        s = Server()
        try:
            s.gen({"prompt": "7", "seed": 1, "n": 2})
            st, data, h = s.get("/metrics")
            self.assertEqual(st, 200)
            fams = {f.name: f for f in text_string_to_metric_families(data.decode())}
            for name in ("fastvar_requests", "fastvar_images_generated", "fastvar_queue_depth", "fastvar_batch_size_images",
                         "fastvar_request_latency_seconds", "fastvar_rejected", "fastvar_cancelled", "fastvar_timeouts",
                         "fastvar_scale_seconds"):
                self.assertIn(name, fams)
            self.assertEqual(fams["fastvar_images_generated"].samples[0].value, 2)
        finally:
            self.assertEqual(s.stop(), 0)

    def test_malformed_http_and_slow_clients(self):
        s = Server()
        try:
            def raw(data, wait=2.0):
                c = socket.create_connection(("127.0.0.1", s.port), timeout=wait)
                c.sendall(data)
                try:
                    return c.recv(4096)
                except socket.timeout:
                    return b""
                finally:
                    c.close()

            self.assertIn(b" 400 ", raw(b"GARBAGE\r\n\r\n"))
            self.assertIn(b" 431 ", raw(b"GET / HTTP/1.1\r\nX: " + b"a" * 40000 + b"\r\n\r\n"))
            self.assertIn(b" 400 ", raw(b"POST /v1/jobs HTTP/1.1\r\nContent-Length: -5\r\n\r\n"))
            # Slow clients hold a connection each, never the server.
            slow = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(20)]
            for c in slow:
                c.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Le")
            t0 = time.time()
            st, body, _ = s.gen({"prompt": "8", "seed": 1})
            self.assertEqual(st, 200)
            self.assertLess(time.time() - t0, 5)
            for c in slow:
                c.close()
            self.assertEqual(s.get("/health")[0], 200)
        finally:
            self.assertEqual(s.stop(), 0)

    def test_engine_settings_kv_dtype_and_refusals_at_start(self):
        # --kv-dtype bf16: the server's images are the CLI's with the same setting.
        s = Server("--kv-dtype", "bf16")
        try:
            st, body, _ = s.gen({"prompt": "7", "seed": 3})
            self.assertEqual(st, 200)
            served = png_of(body["data"][0])
            self.assertIn(b"kv cache: bf16", served)  # in the parameters chunk
        finally:
            self.assertEqual(s.stop(), 0)
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "cli.png")
            subprocess.run([BIN, "generate", "--class", "7", "-s", "3", "--kv-dtype", "bf16", "-t", "2", "-q",
                            "-o", out], check=True, timeout=60)
            with open(out, "rb") as f:
                cli = f.read()
        self.assertEqual(png_pixels(served), png_pixels(cli))
        # Settings this machine cannot run stop the server while it loads, before any request: one error
        # line, non-zero exit. (Without a GPU the device is what is refused first.)
        no_gpu = "no usable CUDA device"
        for args, words in [(["--device", "cuda", "--dtype", "int8"], ("CPU only", no_gpu)),
                            (["--device", "cuda", "--kv-dtype", "bf16"], ("for the CPU", no_gpu)),
                            (["--kv-dtype", "fp16"], ("kv-dtype",))]:
            r = subprocess.run([BIN, "serve", "--port", "0", *args], capture_output=True, text=True, timeout=30)
            self.assertNotEqual(r.returncode, 0, args)
            errors = [line for line in r.stderr.splitlines() if "error" in line]
            self.assertEqual(len(errors), 1, r.stderr)
            self.assertTrue(any(w in errors[0] for w in words), (args, r.stderr))

    def test_web_page(self):
        s = Server()
        try:
            st, page, h = s.get("/")
            self.assertEqual(st, 200)
            self.assertIn(b"<title>fastvar.cpp</title>", page)
            self.assertNotIn(b"http://", page.replace(b"http://'", b""))  # no external assets
            # The page in headless Chromium generates an image (?auto=1 presses Generate).
            out = subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=760,900",
                                  "--virtual-time-budget=20000", "--dump-dom",
                                  f"http://127.0.0.1:{s.port}/?prompt=sneaker&seed=3&auto=1"],
                                 capture_output=True, text=True, timeout=120).stdout
            self.assertIn("<title>fastvar.cpp: done</title>", out)
            self.assertIn('<img src="data:image/png;base64,iVBORw0KGgo', out)
            self.assertIn("seed 3", out)
        finally:
            self.assertEqual(s.stop(), 0)

    def test_load_200_requests_16_clients(self):
        s = Server("--max-batch", "16", "--batch-wait-ms", "20", "--max-queue", "256")
        try:
            N, C = 200, 16
            lat = []
            lock = threading.Lock()
            nxt = [0]

            def client():
                while True:
                    with lock:
                        if nxt[0] >= N:
                            return
                        i = nxt[0]
                        nxt[0] += 1
                    t0 = time.time()
                    st, _, _ = s.gen({"prompt": str(i % 10), "seed": i})
                    assert st == 200, st
                    with lock:
                        lat.append(time.time() - t0)

            t0 = time.time()
            ts = [threading.Thread(target=client) for _ in range(C)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(300)
            conc_s = time.time() - t0
            self.assertEqual(len(lat), N)
            t0 = time.time()
            for i in range(N):
                st, _, _ = s.gen({"prompt": str(i % 10), "seed": i})
                self.assertEqual(st, 200)
            seq_s = time.time() - t0
            lat.sort()
            res = {"requests": N, "clients": C, "p50_ms": 1e3 * lat[N // 2], "p99_ms": 1e3 * lat[int(N * 0.99) - 1],
                   "images_per_s": N / conc_s, "sequential_images_per_s": N / seq_s,
                   "batching_speedup": seq_s / conc_s, "peak_rss_mib": s.peak_rss_mib(),
                   "batches": s.metric("fastvar_batches_total"), "threads": 2}
            print("\nload test:", json.dumps(res), file=sys.stderr)
            if os.environ.get("FASTVAR_SERVE_RESULTS"):
                with open(os.environ["FASTVAR_SERVE_RESULTS"], "w") as f:
                    json.dump(res, f, indent=1)
            self.assertLess(res["peak_rss_mib"], 1024)  # bounded
            self.assertGreater(res["batching_speedup"], 1.2)
        finally:
            self.assertEqual(s.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
