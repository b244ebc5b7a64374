"""Load test of ``imgclass serve``'s predict endpoint: dynamic batching against one request at a time, same model,
same load, same run.

For each model, ``imgclass serve`` runs in a subprocess on 127.0.0.1 twice: with dynamic batching (``--max-batch 32
--batch-window-ms 5``, the defaults, the maximum lowered at start-up to the batch size this machine runs fastest per
image) and one request at a time (``--max-batch 1 --batch-window-ms 0``). Each time,
``--clients`` threads with keep-alive connections send ``--requests`` POST /api/predict requests of one image (a
lossless CIFAR-10 test image as PNG for the CIFAR model; the ImageNet goldfish sample, a 256 px JPEG that the model
resizes and crops to 224, for the MobileNet) after a warm-up. Reported: throughput, p50/p95 latency, errors, the mean
batch the server ran, and the ratio of the two throughputs.

    python benchmarks/serve.py                 # 8 clients, 500 requests per model and mode
    python benchmarks/serve.py --quick         # 8 clients, 100 requests
    python benchmarks/serve.py --threads 1     # the server computes on one core, leaving the others to HTTP
    python benchmarks/serve.py --models zoo:cifar10-resnet20 --device cuda
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DEFAULT_MIRROR = ROOT.parent / "shared" / "assets"
os.environ.setdefault("IMGCLASS_MIRROR", str(DEFAULT_MIRROR))

MODELS = ("zoo:cifar10-resnet20", "zoo:coral-mobilenet-v2-1.0-224")


def image_for(spec: str) -> tuple[bytes, str, str]:
    """(bytes, content type, what) of the one image sent to ``spec``."""
    mirror = Path(os.environ["IMGCLASS_MIRROR"])
    if "cifar10" in spec:
        from PIL import Image

        with np.load(mirror / "cifar10-lossless" / "test-first1000.npz") as z:
            buf = io.BytesIO()
            Image.fromarray(z["images"][0]).save(buf, format="PNG")
        return buf.getvalue(), "image/png", "CIFAR-10 test image 0 (32 px PNG)"
    with tarfile.open(mirror / "imagenet" / "imagenet-samples.tar") as t:
        data = t.extractfile("imagenet-samples/n01443537/n01443537_goldfish.jpg").read()
    return data, "image/jpeg", "ImageNet goldfish sample (256 px JPEG, resized/cropped to 224)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``imgclass serve`` in a subprocess on 127.0.0.1 (its run pages over an empty folder)."""

    def __init__(self, spec: str, *, max_batch: int, window_ms: float, device: str, threads: int | None,
                 idle_ms: float = 1.0):
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory()
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imgclass", "serve", "--model", spec, "--runs", self._tmp.name, "--port",
             str(self.port), "--device", device, "--max-batch", str(max_batch), "--batch-window-ms", str(window_ms),
             "--batch-idle-ms", str(idle_ms),
             *(["--threads", str(threads)] if threads else [])],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0 = time.monotonic()
        while True:
            try:
                self.get("/api/health")
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}") from None
                if time.monotonic() - t0 > 180:
                    raise RuntimeError("server did not start in 180 s") from None
                time.sleep(0.2)

    def get(self, path: str) -> dict:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request("GET", path)
            return json.loads(c.getresponse().read())
        finally:
            c.close()

    def stop(self) -> None:
        self.proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._tmp.cleanup()


def load(port: int, data: bytes, ctype: str, *, clients: int, requests: int) -> dict:
    """``requests`` predictions spread over ``clients`` threads with one keep-alive connection each."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    todo = iter(range(requests))
    start = threading.Barrier(clients + 1)

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        start.wait()
        while True:
            with lock:
                if next(todo, None) is None:
                    break
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/api/predict", body=data, headers={"Content-Type": ctype})
                r = conn.getresponse()
                body = r.read()
                ok = r.status == 200 and b'"top"' in body
            except OSError as e:
                ok, body = False, str(e).encode()
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                if not ok:
                    errors.append(body[:200].decode("utf-8", "replace"))
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "first_error": errors[0] if errors else None,
            "seconds": wall, "throughput": len(latencies) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "latencies_ms": lat}


def measure(spec: str, *, clients: int, requests: int, warmup: int, device: str, threads: int | None,
            rounds: int, idle_ms: float) -> dict:
    """Both servers (batched, one at a time) started once; ``rounds`` alternating load runs of ``requests`` each (the
    order swapped every round, so a neighbour's load on a shared machine hits both alike)."""
    data, ctype, _ = image_for(spec)
    servers = {"one-at-a-time": Server(spec, max_batch=1, window_ms=0.0, device=device, threads=threads)}
    try:
        servers["batched"] = Server(spec, max_batch=32, window_ms=5.0, device=device, threads=threads,
                                    idle_ms=idle_ms)
        runs: dict[str, list[dict]] = {m: [] for m in servers}
        stats0 = {}
        for mode, srv in servers.items():
            load(srv.port, data, ctype, clients=clients, requests=warmup)
            stats0[mode] = srv.get("/api/health")["models"][0]["batching"]
        for r in range(rounds):
            for mode in (list(servers) if r % 2 == 0 else list(servers)[::-1]):
                runs[mode].append(load(servers[mode].port, data, ctype, clients=clients, requests=requests))
        out = {}
        for mode, srv in servers.items():
            after = srv.get("/api/health")["models"][0]["batching"]
            batches = after["batches"] - stats0[mode]["batches"]
            rs = runs[mode]
            lat = np.concatenate([x.pop("latencies_ms") for x in rs])
            out[mode] = {"requests": sum(x["requests"] for x in rs), "errors": sum(x["errors"] for x in rs),
                         "first_error": next((x["first_error"] for x in rs if x["first_error"]), None),
                         "throughput": float(np.median([x["throughput"] for x in rs])),
                         "throughput_rounds": [round(x["throughput"], 1) for x in rs],
                         "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                         "mean_batch": (after["items"] - stats0[mode]["items"]) / batches if batches else 0.0,
                         "max_batch": after["max_batch"], "tuning": after.get("tuning")}
        return out
    finally:
        for srv in servers.values():
            srv.stop()


def in_process(spec: str, *, clients: int, requests: int, device: str, threads: int | None, idle_ms: float) -> dict:
    """The batcher alone (no HTTP): ``clients`` threads predicting the model-size image through a ModelSlot with
    max_batch 32 (tuned as the server tunes it) and with max_batch 1; images per second of each."""
    import torch

    from imgclass import load_model
    from imgclass.serve.models import ModelSlot, decode_upload

    if threads:
        torch.set_num_threads(threads)
    data, _, _ = image_for(spec)
    clf = load_model(spec, device=device)
    out = {}
    for mode, mb in (("one-at-a-time", 1), ("batched", 32)):
        slot = ModelSlot(spec, clf, device=device, max_batch=mb, window_ms=5.0 if mb > 1 else 0.0, idle_ms=idle_ms,
                         tune=mb > 1)
        x = slot.preprocess(decode_upload(data, "x"))
        for _ in range(10):
            slot.batcher(x)
        todo = iter(range(requests))
        lock = threading.Lock()

        def worker():
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                slot.batcher(x, timeout=120)

        threads_ = [threading.Thread(target=worker) for _ in range(clients)]
        t0 = time.perf_counter()
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        out[mode] = requests / (time.perf_counter() - t0)
        slot.close()
    out["ratio"] = out["batched"] / out["one-at-a-time"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=500, help="requests per round, model and mode")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per model (median throughput reported)")
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--quick", action="store_true", help="100 requests, 1 round")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="the server's torch threads (imgclass serve --threads; default: torch's choice). Both modes "
                        "use the same setting")
    p.add_argument("--idle-ms", type=float, default=1.0, help="imgclass serve --batch-idle-ms (default: %(default)s)")
    p.add_argument("--no-in-process", action="store_true", help="skip the batcher-only measurement")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)
    n, rounds = (100, 1) if args.quick else (args.requests, args.rounds)
    import torch

    print(f"imgclass serve load test: {args.clients} clients, {rounds} round(s) of {n} predict requests per model and "
          f"mode, device {args.device}, server torch threads {args.threads or torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}")
    rows, out = [], {}
    for spec in args.models:
        _, _, what = image_for(spec)
        print(f"\n{spec}: {what}")
        res = measure(spec, clients=args.clients, requests=n, warmup=args.warmup, device=args.device,
                      threads=args.threads, rounds=rounds, idle_ms=args.idle_ms)
        for mode in ("one-at-a-time", "batched"):
            r = res[mode]
            print(f"  {mode:<14} {r['throughput']:8.1f} req/s (rounds {r['throughput_rounds']})   p50 "
                  f"{r['p50_ms']:7.1f} ms   p95 {r['p95_ms']:7.1f} ms   errors {r['errors']}/{r['requests']}   "
                  f"mean batch {r['mean_batch']:.2f} (max {r['max_batch']})"
                  + (f"   first error: {r['first_error']}" if r["first_error"] else ""))
        if res["batched"]["tuning"]:
            print(f"  batch tuning at start-up (ms per image by batch size): {res['batched']['tuning']['ms_per_image']}")
        ratio = res["batched"]["throughput"] / res["one-at-a-time"]["throughput"]
        print(f"  HTTP: dynamic batching / one at a time: {ratio:.2f}x throughput")
        if not args.no_in_process:
            ip = in_process(spec, clients=args.clients, requests=n, device=args.device, threads=args.threads,
                            idle_ms=args.idle_ms)
            res["in_process"] = ip
            print(f"  batcher alone (no HTTP): {ip['one-at-a-time']:.1f} -> {ip['batched']:.1f} images/s, "
                  f"{ip['ratio']:.2f}x")
        rows.append((spec, ratio))
        out[spec] = {**res, "ratio": ratio}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    errors = sum(r[m]["errors"] for r in out.values() for m in ("batched", "one-at-a-time"))
    print(f"\nerrors: {errors}; HTTP batching ratio: " + ", ".join(f"{s} {r:.2f}x" for s, r in rows)
          + f"; load average after {os.getloadavg()[0]:.2f}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
