"""A loaded model as the server uses it: the same decode and eval resize/crop as ``imgclass eval``, predictions through
the evaluation engine behind a dynamic batcher, and a private copy of the model for the work that takes gradients
(explanations, attacks), watched at every forward pass for progress and time limits."""

from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..data.decode import DEFAULT_MAX_PIXELS, decode_image
from ..data.transforms import EvalTransform
from ..engine import Engine
from ..models.classifier import Classifier
from .batcher import DynamicBatcher
from .jobs import Job

__all__ = ["ModelSlot", "decode_upload", "top_k", "tune_max_batch", "SMALL_SIDE"]

SMALL_SIDE = 64  # images up to this size get the CIFAR-10-C corruption parameters (as `imgclass corrupt` decides)


def decode_upload(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Encoded image bytes to a uint8 ``(3, H, W)`` tensor with the toolkit's decoder (bomb, truncation and format
    checks: :class:`imgclass.data.decode.ImageError`)."""
    arr = decode_image(data, name, max_pixels=max_pixels)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)


def top_k(probs: torch.Tensor, names: list[str], k: int = 5) -> list[dict]:
    """The ``k`` most probable classes of one probability vector, as ``{index, class, probability}``."""
    k = min(k, probs.numel())
    p, i = torch.topk(probs.float(), k)
    return [{"index": int(j), "class": names[int(j)], "probability": float(q)} for q, j in zip(p, i)]


_FIRST_PREDICTION = threading.Lock()


@dataclass
class _Watch:
    job: Job | None = None


class ModelSlot:
    """One served model: ``spec``, the classifier, its evaluation engine and transform, a dynamic batcher for
    predictions, and a copy of the model for gradient work (one job at a time per model)."""

    def __init__(self, spec: str, classifier: Classifier, *, device: str | None = "cpu", max_batch: int = 32,
                 window_ms: float = 5.0, idle_ms: float = 1.0, tune: bool = False):
        self.spec = spec
        self.classifier = classifier
        # the evaluation engine `imgclass eval` uses: same device handling, inference copy, precision
        self.engine = Engine(classifier, device=device, workers=0, progress=False, batch_size=max_batch)
        self.transform = EvalTransform.for_model(classifier.config)
        self.tuning: dict | None = None
        # the engine makes its inference copy (torch.fx tracing, which patches nn.Module.__call__ process-wide) at its
        # first prediction: do it now, while nothing else runs, not on a batcher thread beside other models' forwards
        c, h, w = classifier.input_size
        with _FIRST_PREDICTION:
            self._predict_batch(torch.randint(0, 256, (2, c, h, w), dtype=torch.uint8,
                                              generator=torch.Generator().manual_seed(0)))
        if tune and max_batch > 1:
            max_batch, self.tuning = tune_max_batch(self._predict_batch, classifier.input_size, max_batch)
        self.batcher = DynamicBatcher(self._predict_batch, max_batch=max_batch, window_ms=window_ms, idle_ms=idle_ms,
                                      name=spec)
        self.names = classifier.class_names
        self._grad_model: Classifier | None = None
        self._watch = _Watch()
        self.job_lock = threading.Lock()  # gradient work: one job at a time on this model's copy

    # -- predictions -------------------------------------------------------------------------------------------------
    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """The model's eval resize/crop of a decoded uint8 ``(3, H, W)`` image (as ``imgclass eval`` applies it)."""
        return self.transform(image)

    def _predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        e = self.engine
        with torch.inference_mode():
            logits = e.logits(e.to_float(x.to(e.device)))
            return torch.softmax(logits.float(), 1).cpu()

    def predict_now(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities of a uint8 batch of model-size images, without the batcher (the reference it is held to)."""
        return self._predict_batch(x)

    async def probabilities(self, model_input: torch.Tensor) -> torch.Tensor:
        """Probabilities of one model-size uint8 image, through the dynamic batcher."""
        return await self.batcher.predict(model_input)

    # -- gradient work -------------------------------------------------------------------------------------------------
    @property
    def grad_model(self) -> Classifier:
        """A private copy of the classifier (evaluation mode) for explanations and attacks, so that their hooks and
        gradients never meet the batcher's forward passes; every forward pass ticks the running job."""
        if self._grad_model is None:
            try:
                m = copy.deepcopy(self.engine.classifier)
            except Exception:  # noqa: BLE001 - a module that cannot be copied: the model as loaded (same results)
                m = self.engine.classifier
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

            def tick(_module, _inputs):
                if self._watch.job is not None:
                    self._watch.job.tick()

            m.model.register_forward_pre_hook(tick)
            self._grad_model = m
        return self._grad_model

    def run_watched(self, job: Job, fn):
        """Run ``fn(model)`` on the gradient copy with ``job`` ticked at every forward pass."""
        with self.job_lock:
            model = self.grad_model
            self._watch.job = job
            try:
                return fn(model)
            finally:
                self._watch.job = None

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def corruption_params(self) -> str:
        _, h, w = self.classifier.input_size
        return "cifar10" if max(h, w) <= SMALL_SIDE else "imagenet"

    def describe(self) -> dict:
        c, h, w = self.classifier.input_size
        return {"spec": self.spec, "classes": len(self.names), "input_size": [c, h, w],
                "transform": self.transform.to_dict(), "device": str(self.device),
                "batching": {"max_batch": self.batcher.max_batch, "window_ms": self.batcher.window * 1000,
                             "idle_ms": self.batcher.idle * 1000,
                             "tuning": self.tuning, **self.batcher.stats.to_dict()}}

    def close(self) -> None:
        self.batcher.close()


def expected_passes(method: str, params: dict, internal_batch_size: int) -> int | None:
    """Forward passes an explanation method makes on one image, where that is known in advance."""
    if method in {"gradcam", "gradcam++", "saliency", "input_x_gradient", "guided_backprop", "deconvnet"}:
        return 2
    if method == "ig":
        return 1 + math.ceil(int(params.get("steps", 50)) / internal_batch_size)
    if method == "smoothgrad":
        return 1 + math.ceil(int(params.get("n_samples", 50)) / internal_batch_size)
    if method == "rise":
        return 1 + math.ceil(int(params.get("n_masks", 4000)) / internal_batch_size)
    return None


def tune_max_batch(predict, input_size: tuple[int, int, int], cap: int, *, tolerance: float = 0.05,
                   budget_s: float = 5.0) -> tuple[int, dict]:
    """The largest batch (a power of two up to ``cap``) whose time per image is within ``tolerance`` of the best, from
    timing ``predict`` on batches of 1, 2, 4 ... images; and the timings (ms per image by batch size).

    Batching pays where the device is under-used by one image (GPUs, small models); on a CPU a large model's batch
    of 8 can be slower per image than one alone (activations outgrow the caches), so the batcher's maximum follows
    what this machine measures. Stops early once larger batches get slower, or after ``budget_s``.
    """
    c, h, w = input_size
    x = torch.randint(0, 256, (cap, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    per_image: dict[int, float] = {}
    t_start = time.perf_counter()
    b = 1
    while b <= cap:
        predict(x[:b])  # warm-up (and, on the first call, the engine's inference copy)
        reps: list[float] = []
        t_b = time.perf_counter()
        while len(reps) < 3 or time.perf_counter() - t_b < 0.05:
            t0 = time.perf_counter()
            predict(x[:b])
            reps.append(time.perf_counter() - t0)
            if time.perf_counter() - t_start > budget_s and len(reps) >= 1:
                break
        per_image[b] = min(reps) / b  # the fastest repetition: a busy neighbour only ever adds time
        best = min(per_image.values())
        if per_image[b] > (1 + 5 * tolerance) * best or time.perf_counter() - t_start > budget_s:
            break
        b *= 2
    best = min(per_image.values())
    chosen = max(k for k, v in per_image.items() if v <= (1 + tolerance) * best)
    return chosen, {"cap": cap, "chosen": chosen, "ms_per_image": {k: round(v * 1000, 3) for k, v in per_image.items()},
                    "rule": f"largest batch within {tolerance:.0%} of the best time per image"}
