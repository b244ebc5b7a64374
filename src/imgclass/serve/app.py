"""The ASGI app: ``create_app(models=[...], store=..., runs_dir=..., token=..., limits=Limits(...))``.

The JSON API (``/api/...``, OpenAPI at ``/docs`` and ``/openapi.json``) and the HTML pages (``pages.py``) share one
state: the loaded models (:class:`~imgclass.serve.models.ModelSlot`), the runs (:class:`~imgclass.serve.runs.RunSource`),
the job pool for attacks and explanations, and the limits.
"""

from __future__ import annotations

import asyncio
import io
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..data.decode import DEFAULT_MAX_PIXELS
from ..errors import ImgclassError, UsageError
from ..models.classifier import Classifier
from .jobs import Job, Jobs
from .models import ModelSlot, expected_passes, top_k
from .runs import NoSuchRun, RunSource
from .security import BodyLimit, TokenGate
from .uploads import UPLOAD_BODY, read_upload

__all__ = ["create_app", "Limits", "ServeState"]

HERE = Path(__file__).resolve().parent
LEADERBOARD_COLUMNS = ("clean", "adversarial", "corruptions", "calibration", "ood", "shape_bias")
ATTACKS = ("pgd", "fgsm")


@dataclass(frozen=True)
class Limits:
    """What one request may cost: upload bytes, decoded pixels, seconds for an attack or explanation, attack steps;
    and the dynamic batcher's maximum batch, window and idle gap (``tune_batch``: the maximum lowered to the batch size that
    this machine runs fastest per image, measured at start-up)."""

    max_upload_bytes: int = 16 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    time_limit_s: float = 60.0
    max_steps: int = 200
    max_batch: int = 32
    window_ms: float = 5.0
    idle_ms: float = 1.0
    tune_batch: bool = False  # lower max_batch to the batch size this machine runs fastest per image
    job_workers: int = 1

    def __post_init__(self):
        for k in ("max_upload_bytes", "max_pixels", "max_steps", "max_batch", "job_workers"):
            if int(getattr(self, k)) < 1:
                raise UsageError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.time_limit_s <= 0 or self.window_ms < 0:
            raise UsageError(f"time_limit_s must be > 0 and window_ms >= 0 (got {self.time_limit_s}, {self.window_ms})")


class ServeState:
    """Everything the routes share."""

    def __init__(self, slots: list[ModelSlot], runs: RunSource | None, limits: Limits, datasets: dict, token: str | None):
        self.slots = {s.spec: s for s in slots}
        self.runs = runs
        self.limits = limits
        self.jobs = Jobs(workers=limits.job_workers)
        self.datasets = datasets  # name -> (spec, ImageDataset)
        self.token_required = token is not None

    def slot(self, spec: str | None) -> ModelSlot:
        if not self.slots:
            raise HTTPException(400, "no models are loaded (start the server with --model SPEC)")
        if not spec:
            return next(iter(self.slots.values()))
        if spec not in self.slots:
            raise HTTPException(400, f"model {spec!r} is not loaded; loaded: {', '.join(self.slots)}")
        return self.slots[spec]

    def chosen(self, spec: str | None) -> list[ModelSlot]:
        if not spec or spec == "all":
            if not self.slots:
                raise HTTPException(400, "no models are loaded (start the server with --model SPEC)")
            return list(self.slots.values())
        return [self.slot(spec)]

    def close(self) -> None:
        self.jobs.shutdown(wait=True)
        for s in self.slots.values():
            s.close()
        if self.runs is not None:
            self.runs.close()


def _load_slots(models, *, device, limits: Limits) -> list[ModelSlot]:
    from ..models import load_model

    items = list(models.items()) if isinstance(models, dict) else [(None, m) for m in models]
    slots = []
    for name, m in items:
        if isinstance(m, ModelSlot):
            slots.append(m)
            continue
        clf = m if isinstance(m, Classifier) else load_model(m, device=device)
        spec = name or (m if isinstance(m, str) else clf.source)
        slots.append(ModelSlot(spec, clf, device=device, max_batch=limits.max_batch, window_ms=limits.window_ms,
                               idle_ms=limits.idle_ms, tune=limits.tune_batch))
    return slots


def create_app(
    models: Sequence[str | Classifier | ModelSlot] | dict = (),
    *,
    store: str | None = None,
    runs_dir: str | None = None,
    token: str | None = None,
    limits: Limits | None = None,
    device: str | None = "cpu",
    datasets: Sequence[str] = (),
    runs: bool = True,
) -> FastAPI:
    """The imgclass web app: playground and JSON API over ``models`` (specs, Classifiers, or a dict name ->
    either), pages over the runs of ``store`` (a URL; default: the toolkit's default store) or of the results.json
    files under ``runs_dir``; with ``token``, every request must carry it. ``datasets``: dataset specs whose
    images the playground can pick; ``runs=False``: no run pages."""
    limits = limits or Limits()
    if store is not None and runs_dir is not None:
        raise UsageError("give --store or --runs, not both")
    slots = _load_slots(models, device=device, limits=limits)
    source = RunSource(store_url=store, runs_dir=runs_dir) if runs else None
    ds = {}
    if datasets:
        from ..data import load_dataset

        for i, spec in enumerate(datasets):
            ds[str(i)] = (spec, load_dataset(spec))
    state = ServeState(slots, source, limits, ds, token)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(state.close)  # cancel jobs at their next forward pass, drain the batchers

    app = FastAPI(title="imgclass", summary="Image classifier playground, runs and leaderboard",
                  version=_version(), lifespan=lifespan)
    app.state.imgclass = state

    @app.exception_handler(ImgclassError)
    async def _imgclass_error(request: Request, e: ImgclassError):
        status = 404 if isinstance(e, NoSuchRun) else 400
        return JSONResponse({"detail": str(e)}, status_code=status)

    _api_routes(app, state)
    from .pages import add_pages

    add_pages(app, state)
    if token is not None:
        app.add_middleware(TokenGate, token=token)
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)
    return app


def _version() -> str:
    try:
        from .. import __version__

        return str(__version__)
    except ImportError:
        return "0"


def png_uri(arr: np.ndarray | torch.Tensor) -> str:
    """A data URI of a uint8 image (``(H, W, 3)`` or ``(3, H, W)``) as PNG."""
    from PIL import Image

    from ..report.images import data_uri

    a = arr.detach().cpu().numpy() if torch.is_tensor(arr) else np.asarray(arr)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a.astype(np.uint8))).save(buf, format="PNG")
    return data_uri(buf.getvalue())


def _int(fields: dict, key: str, default: int, lo: int, hi: int) -> int:
    raw = fields.get(key)
    if raw in (None, ""):
        return default
    try:
        v = int(raw)
    except ValueError:
        raise HTTPException(400, f"{key} must be an integer, got {raw!r}") from None
    if not lo <= v <= hi:
        raise HTTPException(400, f"{key} must lie in {lo}..{hi}, got {v}")
    return v


def _truthy(v: str | None) -> bool:
    return str(v).lower() in {"1", "true", "yes", "on"}


def _pixels_and_probs(model: Classifier, slot, image) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An uploaded image after eval's resize/crop (uint8, 1 x C x H x W), as the model's input (pixels in [0, 1], on
    its device), and the model's class probabilities for it."""
    x8 = slot.preprocess(image).unsqueeze(0)
    x = x8.float().div(255).to(slot.device)
    with torch.no_grad():
        return x8, x, torch.softmax(model(x).float(), 1)[0].cpu()


def _target(model: Classifier, text: str | None, probs: torch.Tensor) -> int:
    from ..explain.base import class_index

    if text in (None, "", "predicted"):
        return int(probs.argmax())
    t = class_index(model, text)
    if not 0 <= t < model.num_classes:
        raise UsageError(f"class indices run from 0 to {model.num_classes - 1}, got {t}")
    return t


async def _job_response(state: ServeState, job: Job, fields: dict):
    """202 with the job (``async=true``: poll ``/api/jobs/{id}``), else wait for it: its result, or its error with
    its status (504 past the time limit)."""
    if job.future is None:  # refused at submission (shutting down)
        raise HTTPException(job.http_status, job.error)
    if _truthy(fields.get("async")):
        return JSONResponse(job.to_dict(with_result=False), status_code=202,
                            headers={"Location": f"/api/jobs/{job.id}"})
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job.future)), job.limit_s + 30)
    except asyncio.TimeoutError:
        job.cancel()
        raise HTTPException(504, f"{job.kind} ran past the time limit of {job.limit_s:g} s") from None
    if job.status != "done":
        raise HTTPException(job.http_status, job.error)
    return {**job.result, "job": job.to_dict(with_result=False)}


def _api_routes(app: FastAPI, state: ServeState) -> None:  # noqa: C901 - one place for the API's routes
    lim = state.limits

    @app.get("/api/models", tags=["playground"], summary="The loaded models, their input contract and batching")
    def api_models():
        return {"models": [s.describe() for s in state.slots.values()]}

    @app.post("/api/predict", tags=["playground"], openapi_extra=UPLOAD_BODY,
              summary="Top-k classes with probabilities for each loaded model (or the one named by 'model')")
    async def api_predict(request: Request):
        """The image is decoded and resized/cropped exactly as ``imgclass eval`` does; the probabilities are the
        softmax of the model's logits (``full=true`` adds the whole vector). Concurrent requests are batched."""
        up = await read_upload(request, max_pixels=lim.max_pixels)
        k = _int(up.fields, "top", 5, 1, 100000)
        full = _truthy(up.fields.get("full"))

        async def one(slot: ModelSlot) -> dict:
            x = slot.preprocess(up.image) if slot.transform.size == tuple(up.image.shape[1:]) and \
                slot.transform.crop_pct == 1.0 else await run_in_threadpool(slot.preprocess, up.image)
            probs = await slot.probabilities(x)
            d = {"model": slot.spec, "top": top_k(probs, slot.names, k)}
            if full:
                d["probabilities"] = probs.tolist()
                d["classes"] = slot.names
            return d

        preds = await asyncio.gather(*(one(s) for s in state.chosen(up.fields.get("model"))))
        return JSONResponse({"image": {"name": up.name, "height": int(up.image.shape[1]),
                                       "width": int(up.image.shape[2])}, "predictions": list(preds)})

    @app.post("/api/explain", tags=["playground"], openapi_extra=UPLOAD_BODY,
              summary="An attribution map (Grad-CAM, IG, ...) of one class, as an overlay on the model's input")
    async def api_explain(request: Request):
        """Fields: ``model``, ``method`` (gradcam, gradcam++, scorecam, saliency, input_x_gradient, ig, smoothgrad,
        guided_backprop, deconvnet, occlusion, rise, extremal), ``target`` (index, name or wnid; default the
        predicted class), ``steps`` (ig), ``async=true`` to get a job to poll. Limited to the server's time limit."""
        from ..explain import METHODS, explain, overlay, normalize_map

        up = await read_upload(request, max_pixels=lim.max_pixels)
        slot = state.slot(up.fields.get("model"))
        method = up.fields.get("method") or "gradcam"
        m = METHODS[method]  # an unknown name: 400 with the close matches
        params = {}
        if "steps" in m.params and up.fields.get("steps"):
            params["steps"] = _int(up.fields, "steps", 50, 1, lim.max_steps)
        ibs = 16
        image = up.image

        def work(job: Job) -> dict:
            def fn(model: Classifier) -> dict:
                x8, x, probs = _pixels_and_probs(model, slot, image)
                t = _target(model, up.fields.get("target"), probs)
                maps = explain(model, x, torch.tensor([t], device=slot.device), method=method,
                               internal_batch_size=ibs, **params)
                mp = maps[0].float().cpu()
                heat = (normalize_map(mp) * 255).round().astype(np.uint8)
                return {"model": slot.spec, "method": method,
                        "target": {"index": t, "class": slot.names[t], "probability": float(probs[t])},
                        "top": top_k(probs, slot.names, 5), "input": png_uri(x8[0]),
                        "overlay": png_uri(overlay(x8[0], mp)), "map": png_uri(np.repeat(heat[..., None], 3, 2))}

            return slot.run_watched(job, fn)

        job = state.jobs.submit("explain", slot.spec, work, limit_s=lim.time_limit_s,
                                total=expected_passes(method, {**m.params, **params}, ibs))
        return await _job_response(state, job, up.fields)

    @app.post("/api/corrupt", tags=["playground"], openapi_extra=UPLOAD_BODY,
              summary="One of the 19 common corruptions at severity 1-5, and the model's prediction on it")
    async def api_corrupt(request: Request):
        """Fields: ``model``, ``corruption`` (default gaussian_noise), ``severity`` (1..5), ``seed``. The corruption
        is applied to the model's input (after its resize/crop) with the CIFAR-10-C parameters for inputs up to
        64 px and the ImageNet-C ones above, as ``imgclass corrupt`` chooses them."""
        from ..corruptions import corrupt

        up = await read_upload(request, max_pixels=lim.max_pixels)
        slot = state.slot(up.fields.get("model"))
        name = up.fields.get("corruption") or "gaussian_noise"
        sev = _int(up.fields, "severity", 3, 1, 5)
        seed = _int(up.fields, "seed", 0, 0, 2**31 - 1)

        def make() -> tuple[torch.Tensor, torch.Tensor]:
            x = slot.preprocess(up.image)
            y = corrupt(x.unsqueeze(0), name, sev, seed=seed, sample_ids=["upload"], params=slot.corruption_params())
            return x, y[0]

        x, y = await run_in_threadpool(make)
        clean, bad = await asyncio.gather(slot.probabilities(x), slot.probabilities(y))
        return {"model": slot.spec, "corruption": name, "severity": sev, "seed": seed,
                "parameter_set": slot.corruption_params(), "image": png_uri(y), "input": png_uri(x),
                "top": top_k(bad, slot.names, 5), "clean_top": top_k(clean, slot.names, 5)}

    @app.post("/api/attack", tags=["playground"], openapi_extra=UPLOAD_BODY,
              summary="An adversarial example (PGD at a chosen eps) with the prediction before and after")
    async def api_attack(request: Request):
        """Fields: ``model``, ``eps`` (pixel units of [0, 1]; ``8/255`` style fractions work; Linf), ``steps``
        (default 10), ``attack`` (pgd or fgsm), ``label`` (the class to move away from; default the predicted one),
        ``seed``, ``async=true`` to get a job to poll. Limited to the server's time limit."""
        from ..attacks import get_attack

        up = await read_upload(request, max_pixels=lim.max_pixels)
        slot = state.slot(up.fields.get("model"))
        kind = up.fields.get("attack") or "pgd"
        if kind not in ATTACKS:
            raise HTTPException(400, f"attack must be one of {', '.join(ATTACKS)}, got {kind!r}")
        steps = _int(up.fields, "steps", 10, 1, lim.max_steps)
        seed = _int(up.fields, "seed", 0, 0, 2**31 - 1)
        eps_text = up.fields.get("eps") or "8/255"
        params = {"eps": eps_text, "seed": seed, **({"steps": steps} if kind == "pgd" else {})}
        atk = get_attack(kind, **params)  # a bad eps: 400 with the reason
        image = up.image

        def work(job: Job) -> dict:
            def fn(model: Classifier) -> dict:
                x8, x, p0 = _pixels_and_probs(model, slot, image)
                y = _target(model, up.fields.get("label"), p0)
                res = atk(model, x, torch.tensor([y], device=slot.device))
                with torch.no_grad():
                    p1 = torch.softmax(model(res.adv).float(), 1)[0].cpu()
                delta = (res.adv - x)[0].cpu()
                vis = ((delta / (2 * atk.eps) + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
                adv8 = (res.adv[0].cpu() * 255).round().clamp(0, 255).to(torch.uint8)
                return {"model": slot.spec, "attack": kind, "eps": eps_text, "eps_value": float(atk.eps),
                        "steps": steps if kind == "pgd" else 1, "label": {"index": y, "class": slot.names[y]},
                        "before": top_k(p0, slot.names, 5), "after": top_k(p1, slot.names, 5),
                        "success": bool(res.success[0]), "linf": float(delta.abs().max()),
                        "input": png_uri(x8[0]), "adversarial": png_uri(adv8), "perturbation": png_uri(vis)}

            return slot.run_watched(job, fn)

        total = 3 + (steps if kind == "pgd" else 1)
        job = state.jobs.submit("attack", slot.spec, work, limit_s=lim.time_limit_s, total=total)
        return await _job_response(state, job, up.fields)

    @app.get("/api/jobs/{job_id}", tags=["playground"], summary="Progress of an attack or explanation; its result")
    def api_job(job_id: str):
        job = state.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job.to_dict()

    @app.get("/api/runs", tags=["runs"], summary="Runs, newest first, filtered by model, data, probe or kind")
    def api_runs(model: str | None = None, data: str | None = None, probe: str | None = None,
                 kind: str | None = None, limit: int | None = None):
        if limit is not None and limit < 1:
            raise HTTPException(400, "limit must be >= 1")
        runs = _runs(state).list(model=model, data=data, probe=probe, kind=kind, limit=limit)
        return {"runs": [run_json(r) for r in runs]}

    @app.get("/api/runs/{run_id}", tags=["runs"], summary="One run: what ran on what, its headline numbers and "
                                                           "protocols")
    def api_run(run_id: str):
        return run_json(_runs(state).get(run_id))

    @app.get("/api/leaderboard", tags=["runs"], summary="One row per model, one column per headline number")
    def api_leaderboard(data: str | None = None, columns: str = ",".join(LEADERBOARD_COLUMNS),
                        sort: str | None = None):
        cols = [c.strip() for c in columns.split(",") if c.strip()]
        board = _runs(state).leaderboard(data=data, columns=cols)
        return board_json(board, sort=sort)

    @app.get("/api/health", tags=["server"], summary="Liveness, loaded models and batching counters")
    def api_health():
        return {"ok": True, "models": [s.describe() for s in state.slots.values()],
                "runs": None if state.runs is None else state.runs.where, "limits": asdict(lim),
                "token_required": state.token_required}


def _runs(state: ServeState) -> RunSource:
    if state.runs is None or state.runs.store is None:
        why = state.runs.error if state.runs is not None else "run pages are off"
        raise HTTPException(503, f"no run store: {why}")
    return state.runs


def run_json(r) -> dict:
    """A run record for clients: local paths replaced by the server's URLs."""
    d = r.to_dict()
    d.pop("results_path", None)
    d.pop("report_path", None)
    d["url"] = f"/runs/{r.id}"
    d["report_url"] = f"/runs/{r.id}/report" if r.report_path else None
    d["api_url"] = f"/api/runs/{r.id}"
    return d


def board_json(board, *, sort: str | None = None) -> dict:
    from ..compare.leaderboard import cell_text

    names = [c.name for c in board.columns]
    if sort is not None and sort not in names:
        raise UsageError(f"sort {sort!r}: not among the columns ({', '.join(names)})")
    rows = board.sorted_by(sort or names[0]) if board.rows else []
    return {
        "data": board.data, "n_runs": board.n_runs,
        "columns": [{"name": c.name, "label": c.label, "metric": c.key, "higher_is_better": c.higher_is_better,
                     "percent": c.percent, "protocol": board.protocols[c.name]} for c in board.columns],
        "rows": [{"label": r["label"], "group": r["group"], "models": r["models"],
                  "cells": {c.name: {"mean": r["cells"][c.name].mean, "std": r["cells"][c.name].std,
                                     "n": r["cells"][c.name].n, "text": cell_text(r["cells"][c.name], c),
                                     "runs": [x["id"] for x in r["cells"][c.name].runs],
                                     "other_protocol": r["cells"][c.name].other_protocol}
                            for c in board.columns}} for r in rows],
    }
