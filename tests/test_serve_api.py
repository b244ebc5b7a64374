"""``imgclass serve``'s JSON API: predictions equal ``imgclass eval``'s, dynamic batching changes no result, every bad
upload is a 4xx and the server keeps serving, the token gate off loopback, no path traversal, time limits and jobs."""

from __future__ import annotations

import functools
import http.client
import io
import json
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from starlette.testclient import TestClient  # noqa: E402

from imgclass.serve import Limits, create_app  # noqa: E402
from serve_support import ServerThread, one_per_class, png_bytes, record_runs  # noqa: E402

MODEL = "zoo:cifar10-resnet20"
# small models, one image at a time: intra-op threads would only wait on each other (see conftest.single_thread)
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs recorded by imgclass eval: (store URL, run ids, folder holding their outputs)."""
    root = tmp_path_factory.mktemp("serve-runs")
    url = f"sqlite:///{root / 'runs.db'}"
    return url, record_runs(root / "out", url), root / "out"


@pytest.fixture(scope="module")
def app(runs):
    url, _, _ = runs
    return create_app([MODEL], store=url, limits=Limits(max_upload_bytes=2**20, time_limit_s=20))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def good_png():
    return png_bytes(one_per_class()[0][1])


def _post(client, path, data: bytes, ctype="image/png", name="x.png", **fields):
    return client.post(path, files={"file": (name, data, ctype)}, data=fields)


# -- predictions ---------------------------------------------------------------------------------------------------

def test_predict_equals_imgclass_eval(client, tmp_path):
    """The reference is ``imgclass eval`` itself: the first lossless CIFAR-10 test image of each class written as PNG
    into a one-image-per-class folder, evaluated with ``imgclass.evaluate(MODEL, "folder:DIR", probes=["accuracy"])``.
    Its per-sample top-1 class and confidence (samples.npz) and the whole softmax of the evaluation engine's logits on
    the same folder must equal the API's, image by image."""
    from imgclass import evaluate, load_model
    from imgclass.data import load_dataset
    from imgclass.engine import Engine
    from imgclass.results import read_samples

    images = one_per_class()
    for i, img, cls in images:
        (tmp_path / "data" / cls).mkdir(parents=True)
        Image.fromarray(img).save(tmp_path / "data" / cls / f"{i:04d}.png")
    spec = f"folder:{tmp_path / 'data'}"
    evaluate(MODEL, spec, probes=["accuracy"], out=tmp_path / "run", store=False, progress=False, workers=0)
    samples = read_samples(tmp_path / "run" / "samples.npz")
    pred, conf = samples.column("accuracy", "pred"), samples.column("accuracy", "confidence")
    ds = load_dataset(spec)
    engine = Engine(load_model(MODEL, device="cpu"), device="cpu", workers=0, progress=False)
    ref = torch.softmax(engine.predict(ds).logits, 1)
    assert list(ds.classes.names) == engine.classifier.class_names  # same label order: the vectors compare index by index
    for k in range(len(ds)):
        sid = ds.sample_id(k)
        data = (tmp_path / "data" / sid).read_bytes()
        r = client.post("/api/predict?full=true", files={"file": (sid, data, "image/png")})
        assert r.status_code == 200, r.text
        got = r.json()["predictions"][0]
        assert got["model"] == MODEL
        assert got["top"][0]["index"] == pred[sid]
        assert got["top"][0]["probability"] == pytest.approx(conf[sid], abs=1e-6)
        np.testing.assert_allclose(got["probabilities"], ref[k].numpy(), atol=1e-6, rtol=0)
    # raw image bytes (Content-Type image/png) are the same request as a multipart upload
    r = client.post("/api/predict", content=data, headers={"content-type": "image/png"})
    assert r.json()["predictions"][0]["top"][0]["index"] == pred[sid]


def test_dynamic_batching_changes_no_result(app):
    """24 images sent concurrently through the model's batcher come back in batches (fewer forward passes than
    images) and equal the one-image-at-a-time probabilities of the same model (float32: to 1e-6, same top-5)."""
    slot = app.state.imgclass.slots[MODEL]
    # the inference copy is made at load (torch.fx tracing patches nn.Module.__call__ process-wide: on a batcher thread
    # it broke another model's concurrent forward pass)
    assert slot.engine._predictor is not None
    rng = np.random.default_rng(0)
    xs = [torch.from_numpy(rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)) for _ in range(16)]
    xs += [torch.from_numpy(img).permute(2, 0, 1).contiguous() for _, img, _ in one_per_class()[:8]]
    before = slot.batcher.stats.batches
    start = threading.Barrier(len(xs))

    def one(x):
        start.wait()
        return slot.batcher(x, timeout=60)

    with ThreadPoolExecutor(len(xs)) as pool:
        batched = list(pool.map(one, xs))
    assert slot.batcher.stats.batches - before < len(xs), "no two requests shared a batch"
    for x, b in zip(xs, batched):
        alone = slot.predict_now(x[None])[0]
        np.testing.assert_allclose(b.numpy(), alone.numpy(), atol=1e-6, rtol=0)
        assert torch.equal(torch.topk(b, 5).indices, torch.topk(alone, 5).indices)


def test_batcher_errors_reach_every_caller_and_it_keeps_serving():
    """A failing forward pass fails the requests of its batch, not the worker; closing refuses new requests."""
    from imgclass.serve import BatcherClosed, DynamicBatcher

    def fn(x):
        if (x == 7).any():
            raise ValueError("bad batch")
        return x.float().flatten(1).mean(1, keepdim=True)

    b = DynamicBatcher(fn, max_batch=4, window_ms=1)
    with pytest.raises(ValueError, match="bad batch"):
        b(torch.full((3, 2, 2), 7, dtype=torch.uint8), timeout=10)
    assert float(b(torch.full((3, 2, 2), 2, dtype=torch.uint8), timeout=10)) == 2.0
    b.close()
    with pytest.raises(BatcherClosed):
        b(torch.zeros(3, 2, 2, dtype=torch.uint8), timeout=10)


def test_batch_tuning_picks_the_fastest_batch_per_image():
    """Against a stand-in model whose time per image is 2 ms up to batches of 4 and 4 ms beyond (as a MobileNet's on a
    CPU once its activations outgrow the caches), the tuner picks 4 and stops timing after the first slower size."""
    from imgclass.serve.models import tune_max_batch

    def predict(x):
        time.sleep((0.002 if len(x) <= 4 else 0.004) * len(x))

    chosen, info = tune_max_batch(predict, (3, 8, 8), 32)
    assert chosen == 4, info
    assert sorted(info["ms_per_image"]) == [1, 2, 4, 8]


# -- bad uploads ---------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _bomb_png() -> bytes:
    """A 20000 x 20000 PNG (400 megapixels, beyond Pillow's and the decoder's limit) of a few tens of kilobytes."""
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _bad_uploads(good: bytes):
    return {
        "not an image": (dict(files={"file": ("x.png", b"this is no image" * 10, "image/png")}), 400, "not an image"),
        "truncated": (dict(files={"file": ("x.png", good[: len(good) // 2], "image/png")}), 400, "truncated"),
        "empty": (dict(files={"file": ("x.png", b"", "image/png")}), 400, "empty"),
        "bomb": (dict(files={"file": ("bomb.png", _bomb_png(), "image/png")}), 413, "decompression bomb"),
        "part content type": (dict(files={"file": ("x.txt", good, "text/plain")}), 415, "wrong content type"),
        "body content type": (dict(content=good, headers={"content-type": "text/plain"}), 415, "wrong content type"),
        "no content type": (dict(content=good, headers={"content-type": ""}), 415, "wrong content type"),
        "no file field": (dict(data={"model": MODEL}, files={"other": ("x.png", good, "image/png")}), 400, "field 'file'"),
        "too large": (dict(files={"file": ("big.png", b"\0" * (2**20 + 10), "image/png")}), 413, "too large"),
        "too large, chunked": (dict(content=(b"\0" * 65536 for _ in range(20)), headers={"content-type": "image/png"}),
                               413, "too large"),
    }


def test_bad_uploads_get_4xx_and_the_server_keeps_serving(client, good_png):
    """Every kind of bad upload named in the issue gets its 4xx with a message saying what is wrong, on every upload
    endpoint; after each, a good image is still predicted."""
    for what in _bad_uploads(good_png):
        for path in ("/api/predict", "/api/corrupt"):
            kwargs, status, words = _bad_uploads(good_png)[what]  # fresh: a chunked body is a one-shot generator
            r = client.post(path, **kwargs)
            assert r.status_code == status, (what, path, r.status_code, r.text)
            assert words in r.json()["detail"], (what, r.json())
        ok = _post(client, "/api/predict", good_png)
        assert ok.status_code == 200, (what, ok.text)


def test_bad_parameters_are_400(client, good_png):
    """Unknown corruption, method, model or class, a bad severity or eps: 400 with the reason (close matches)."""
    cases = [("/api/corrupt", {"corruption": "fogg"}, "fog"), ("/api/corrupt", {"severity": "6"}, "severity"),
             ("/api/explain", {"method": "gradcamm"}, "gradcam"), ("/api/predict", {"model": "zoo:nope"}, "not loaded"),
             ("/api/explain", {"target": "unicorn"}, "unicorn"), ("/api/attack", {"eps": "lots"}, "eps"),
             ("/api/attack", {"steps": "100000"}, "steps")]
    for path, fields, words in cases:
        r = _post(client, path, good_png, **fields)
        assert r.status_code == 400, (path, fields, r.text)
        assert words in r.json()["detail"], (path, r.json())


# -- playground endpoints ----------------------------------------------------------------------------------------------

def test_explain_corrupt_attack(client, good_png):
    """Grad-CAM of the predicted class returns an overlay at the model's input size; a severity-5 corruption and a
    PGD attack return their images and the predictions before/after (a cat at eps 8/255 is fooled, as the CIFAR-10
    ResNet-20 is not robust)."""
    r = _post(client, "/api/explain", good_png, method="gradcam")
    assert r.status_code == 200, r.text
    e = r.json()
    assert e["target"]["class"] == "cat" and e["overlay"].startswith("data:image/png;base64,")
    ov = Image.open(io.BytesIO(__import__("base64").b64decode(e["overlay"].split(",", 1)[1])))
    assert ov.size == (32, 32)
    assert e["job"]["forward_passes"] >= 1
    r = _post(client, "/api/explain", good_png, method="ig", steps="8", target="dog")
    assert r.status_code == 200 and r.json()["target"]["class"] == "dog"
    c1 = _post(client, "/api/corrupt", good_png, corruption="gaussian_noise", severity="1").json()
    c5 = _post(client, "/api/corrupt", good_png, corruption="gaussian_noise", severity="5").json()
    assert c1["parameter_set"] == "cifar10" and c1["image"] != c5["image"]
    assert c1["clean_top"] == c5["clean_top"]
    a = _post(client, "/api/attack", good_png, eps="8/255", steps="10").json()
    assert a["before"][0]["class"] == "cat" and a["success"] and a["after"][0]["class"] != "cat"
    assert a["linf"] <= 8 / 255 + 1e-6


def test_time_limit_and_job_progress(runs, good_png):
    """An attack past the time limit stops at its next forward pass with 504; with async=true the job is polled to the
    end with its forward passes counted."""
    url, _, _ = runs
    app = create_app([MODEL], store=url, limits=Limits(time_limit_s=0.05))
    with TestClient(app) as c:
        t0 = time.monotonic()
        r = _post(c, "/api/attack", good_png, eps="0.0001", steps="200")  # too small to fool: no early stop
        assert r.status_code == 504, r.text
        assert "time limit" in r.json()["detail"]
        assert time.monotonic() - t0 < 10
    app = create_app([MODEL], store=url)
    with TestClient(app) as c:
        r = _post(c, "/api/attack", good_png, eps="2/255", steps="5", **{"async": "true"})
        assert r.status_code == 202
        job = r.json()
        for _ in range(200):
            job = c.get(f"/api/jobs/{job['id']}").json()
            if job["status"] not in {"queued", "running"}:
                break
            time.sleep(0.05)
        assert job["status"] == "done" and job["progress"] == 1.0 and job["forward_passes"] >= 2
        assert job["result"]["before"][0]["class"] == "cat"
        assert c.get("/api/jobs/nope").status_code == 404


# -- runs ----------------------------------------------------------------------------------------------------------

def test_runs_api_and_pages(client, runs, tmp_path):
    """The runs recorded by imgclass eval are listed, shown, compared and on the leaderboard; local paths are not
    given out; with --runs DIR the same runs come from the folder scan."""
    _, ids, out = runs
    listed = client.get("/api/runs").json()["runs"]
    assert {r["id"] for r in listed} == set(ids)
    assert all("results_path" not in r for r in listed)
    assert len(client.get("/api/runs", params={"model": "resnet32"}).json()["runs"]) == 1
    one = client.get(f"/api/runs/{ids[0]}").json()
    assert one["model_spec"] == "zoo:cifar10-resnet20" and "accuracy.top1" in one["headline"]
    board = client.get("/api/leaderboard", params={"columns": "clean,calibration"}).json()
    assert len(board["rows"]) == 2 and board["columns"][0]["name"] == "clean"
    assert client.get("/api/leaderboard", params={"sort": "nope"}).status_code == 400
    for page in ("/runs", f"/runs/{ids[0]}", "/leaderboard", f"/runs/compare?ids={ids[0]}&ids={ids[1]}", "/"):
        r = client.get(page)
        assert r.status_code == 200, (page, r.text[:300])
    report = client.get(f"/runs/{ids[0]}/report")
    assert "<html" in report.text.lower()
    assert report.headers["content-security-policy"].startswith("sandbox")  # cannot script the app's origin
    assert client.get(f"/runs/{ids[0]}/files/results.json").json()["model"]["spec"] == "zoo:cifar10-resnet20"
    scanned = create_app([], runs_dir=str(out))
    with TestClient(scanned) as c:
        specs = sorted(r["model_spec"] for r in c.get("/api/runs").json()["runs"])
        assert specs == ["zoo:cifar10-resnet20", "zoo:cifar10-resnet32"]
        rid = c.get("/api/runs").json()["runs"][0]["id"]
        assert c.get(f"/runs/{rid}/report").status_code == 200


def test_path_traversal_is_404(client, runs, tmp_path):
    """Only a registered run's own files are served: .. segments (plain and percent-encoded), absolute paths, links
    out of the run folder, unknown and non-numeric ids and static-file escapes all get 404."""
    _, ids, out = runs
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    link = out / "cifar10-resnet20" / "link.txt"
    if not link.exists():
        os.symlink(secret, link)
    rid = ids[0]
    for path in (f"/runs/{rid}/files/%2e%2e/%2e%2e/runs.db", f"/runs/{rid}/files/..%2f..%2fruns.db",
                 f"/runs/{rid}/files/%2Fetc%2Fpasswd", f"/runs/{rid}/files/link.txt", f"/runs/{rid}/files/",
                 "/runs/999/report", "/runs/999/files/results.json", "/runs/..%2f..%2fetc/report", "/runs/-1/report",
                 "/static/..%2fapp.py", "/static/%2e%2e/app.py", "/api/runs/999", "/api/runs/abc"):
        r = client.get(path)
        assert r.status_code == 404, (path, r.status_code, r.text[:200])
        assert "secret" not in r.text


# -- a real server: token gate off loopback, raw paths, keeps serving, graceful shutdown --------------------------------

def _raw(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """One request with the path sent exactly as given (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def _multipart(data: bytes, ctype: str = "image/png") -> tuple[bytes, str]:
    b = "imgclassboundary"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\nContent-Type: {ctype}"
            "\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def test_binding_off_loopback_needs_a_token(monkeypatch):
    """127.0.0.1, ::1 and localhost need no token; 0.0.0.0 or a LAN address without --token or IMGCLASS_TOKEN is a usage
    error (exit 2) before any model loads; the variable counts as a token."""
    from imgclass.cli import main
    from imgclass.commands.serve import check_binding
    from imgclass.errors import UsageError

    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_binding(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.10"):
        with pytest.raises(UsageError, match="token"):
            check_binding(host, None)
        check_binding(host, "t")
    monkeypatch.delenv("IMGCLASS_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1", "--model", "zoo:nope"]) == 2


def test_real_server_token_traversal_and_keeps_serving(runs, good_png):
    """uvicorn bound to 0.0.0.0 (not loopback) with a token: requests without it, or with a wrong one, get 401; the
    Bearer header, the X-Imgclass-Token header and the cookie set by ?token= are let in. Raw '..' paths get 404. Every
    bad upload gets its 4xx and a good predict still answers after them. Shutdown is graceful: the server thread ends
    with the batcher closed."""
    url, ids, _ = runs
    token = "s3cret-token"
    app = create_app([MODEL], store=url, token=token, limits=Limits(max_upload_bytes=2**20))
    body, ctype = _multipart(good_png)
    auth = {"Authorization": f"Bearer {token}"}
    with ServerThread(app, host="0.0.0.0") as s:
        for path in ("/", "/api/runs", "/docs", "/openapi.json", f"/runs/{ids[0]}/report"):
            assert _raw(s.port, "GET", path)[0] == 401, path
        status, text, _ = _raw(s.port, "POST", "/api/predict", body, {"Content-Type": ctype})
        assert status == 401 and b"token" in text
        assert _raw(s.port, "GET", "/api/runs", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert _raw(s.port, "GET", "/api/runs", headers=auth)[0] == 200
        assert _raw(s.port, "GET", "/api/runs", headers={"X-Imgclass-Token": token})[0] == 200
        status, _, headers = _raw(s.port, "GET", f"/leaderboard?token={token}")
        assert status == 303 and "imgclass_token=" in headers.get("set-cookie", "")
        cookie = headers["set-cookie"].split(";")[0]
        assert _raw(s.port, "GET", "/leaderboard", headers={"Cookie": cookie})[0] == 200
        for path in (f"/runs/{ids[0]}/files/../../runs.db", f"/runs/{ids[0]}/files/../../../../../../etc/passwd",
                     "/static/../app.py", f"/runs/{ids[0]}/../../etc/passwd"):
            assert _raw(s.port, "GET", path, headers=auth)[0] == 404, path
        for what, data, ct, want in (("not an image", b"nope" * 50, "image/png", 400),
                                     ("truncated", good_png[:200], "image/png", 400),
                                     ("bomb", _bomb_png(), "image/png", 413),
                                     ("wrong type", good_png, "text/plain", 415),
                                     ("too large", b"\0" * (2**20 + 1), "image/png", 413)):
            b, c = _multipart(data, ct)
            status, text, _ = _raw(s.port, "POST", "/api/predict", b, {"Content-Type": c, **auth})
            assert status == want, (what, status, text[:200])
            status, text, _ = _raw(s.port, "POST", "/api/predict", body, {"Content-Type": ctype, **auth})
            assert status == 200 and json.loads(text)["predictions"][0]["top"][0]["class"] == "cat", what
        req = urllib.request.Request(f"{s.url}/api/health", headers=auth)
        assert json.loads(urllib.request.urlopen(req, timeout=30).read())["token_required"] is True
        assert s.stop(30), "the server did not shut down"
    assert app.state.imgclass.slots[MODEL].batcher.closed


def test_shutdown_cancels_running_jobs(runs, good_png):
    """Graceful shutdown: a running attack (200 PGD steps at an eps too small to fool, 10 minutes allowed) is cancelled
    at its next forward pass when the server stops, and the server thread ends within seconds."""
    url, _, _ = runs
    app = create_app([MODEL], store=url, limits=Limits(time_limit_s=600))
    state = app.state.imgclass
    body, ctype = _multipart(good_png)
    with ServerThread(app) as s:
        status, text, _ = _raw(s.port, "POST", "/api/attack?eps=0.00001&steps=200&async=true", body,
                               {"Content-Type": ctype})
        assert status == 202, text
        job = state.jobs.get(json.loads(text)["id"])
        while job.status == "queued":
            time.sleep(0.01)
        t0 = time.monotonic()
        assert s.stop(30)
        assert time.monotonic() - t0 < 20
    assert job.status in {"cancelled", "done"}, job.to_dict()
    assert job.status == "cancelled" or job.done < 200  # stopped early, not run to the end


def test_cli_serve_starts_answers_and_stops_on_sigterm(tmp_path):
    """``imgclass serve`` as a user starts it: it loads the model, answers on 127.0.0.1 without a token, and on SIGTERM
    shuts down gracefully (uvicorn's shutdown, then the app's: batchers drained, jobs cancelled) before it exits."""
    import signal
    import subprocess
    import sys

    from serve_support import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "imgclass", "serve", "--model", MODEL, "--runs", str(tmp_path),
                             "--port", str(port), "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while True:
            try:
                health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5).read())
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() - t0 < 120, "imgclass serve did not start"
                time.sleep(0.2)
        assert health["models"][0]["spec"] == MODEL and health["token_required"] is False
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        out = proc.stdout.read().decode()
        assert f"http://127.0.0.1:{port}/" in out
        assert "Application shutdown complete" in out, out  # the app's shutdown ran to its end
        assert rc in (0, -signal.SIGTERM), out  # uvicorn re-raises the signal after a graceful shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
