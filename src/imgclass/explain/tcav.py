"""TCAV: testing with concept activation vectors (Kim et al. 2018).

Concepts are sets of example images (folders, or tensors), contrasted with random counterexample sets.
For each concept C and random set R_i a linear classifier (scikit-learn) separates their activations at a
layer; its normal, pointing to C, is the CAV. The TCAV score is the fraction of the target class's images
whose target logit increases along the CAV. As in Kim et al. and their code, a concept is significant when
its scores over the random sets differ from those of a random set taken as a concept (R_0 against the
other R_i) by a two-sided t-test. Captum has a TCAV, but it trains CAVs with its own SGD on torch and ties
CAVs to files on disk; this one keeps to scikit-learn and memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import ParameterError, UsageError
from ..models.classifier import Classifier
from .base import chunks, eval_mode, find_module, model_device, resolve_targets
from .cam import LayerCapture, cam_layer
from .images import image_files, load_images

__all__ = ["TCAVResult", "ConceptScore", "tcav", "layer_activations", "train_cav"]

def _as_pixels(source: Any, classifier: Classifier, what: str) -> torch.Tensor:
    if isinstance(source, (str, os.PathLike)):
        x = load_images(image_files(source), classifier.config)
    elif torch.is_tensor(source):
        x = source
    else:
        raise ParameterError(f"{what}: give a folder of images or an (N, 3, H, W) tensor, got {type(source).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise UsageError(f"{what}: images must be (N, 3, H, W), got {tuple(x.shape)}")
    if len(x) < 2:
        raise UsageError(f"{what}: needs at least 2 images, got {len(x)}")
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def layer_activations(classifier: Classifier, x: torch.Tensor, layer: str, *, batch_size: int = 32) -> torch.Tensor:
    """Flattened activations ``(N, D)`` of ``layer`` for float pixels ``x``."""
    mod = find_module(classifier, layer)
    dev = model_device(classifier)
    out = []
    with eval_mode(classifier), torch.no_grad():
        for s in chunks(len(x), batch_size):
            with LayerCapture(mod) as cap:
                classifier(x[s].to(dev))
            out.append(cap.output.flatten(1).float().cpu())
    return torch.cat(out)


def _layer_gradients(classifier: Classifier, x: torch.Tensor, targets: torch.Tensor, layer: str, *,
                     batch_size: int) -> torch.Tensor:
    mod = find_module(classifier, layer)
    dev = model_device(classifier)
    out = []
    with eval_mode(classifier):
        for s in chunks(len(x), batch_size):
            xs = x[s].to(dev).requires_grad_(True)
            with LayerCapture(mod) as cap:
                logits = classifier(xs)
            (g,) = torch.autograd.grad(logits.gather(1, targets[s].to(dev)[:, None]).sum(), cap.output)
            out.append(g.flatten(1).float().cpu())
    return torch.cat(out)


def train_cav(pos: np.ndarray, neg: np.ndarray, *, seed: int = 0, model: str = "sgd",
              test_fraction: float = 0.33) -> tuple[np.ndarray, float]:
    """Unit CAV pointing from ``neg`` to ``pos`` activations, and the classifier's held-out accuracy.

    ``model='sgd'``: ``SGDClassifier(alpha=0.01)`` as in Kim et al.'s code; 'logistic': LogisticRegression.
    The two sets are balanced by seeded subsampling.
    """
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    n = min(len(pos), len(neg))
    pos = pos[rng.choice(len(pos), n, replace=False)]
    neg = neg[rng.choice(len(neg), n, replace=False)]
    X = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_fraction, random_state=seed, stratify=y)
    if model == "sgd":
        clf = SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed)
    elif model == "logistic":
        clf = LogisticRegression(max_iter=2000, random_state=seed)
    else:
        raise UsageError(f"CAV model must be 'sgd' or 'logistic', got {model!r}")
    clf.fit(Xtr, ytr)
    v = clf.coef_[0].astype(np.float64)
    norm = np.linalg.norm(v)
    return (v / norm if norm > 0 else v), float(clf.score(Xte, yte))


@dataclass
class ConceptScore:
    scores: list[float]  # TCAV score against each random set
    cav_accuracy: list[float]  # held-out accuracy of each CAV's linear classifier
    p_value: float
    significant: bool

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores))


@dataclass
class TCAVResult:
    target: int
    target_name: str
    layer: str
    alpha: float
    random_scores: list[float]  # the null: random set R_0 taken as a concept, against R_1..R_K
    concepts: dict[str, ConceptScore] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"target": self.target, "target_name": self.target_name, "layer": self.layer, "alpha": self.alpha,
                "random_scores": self.random_scores,
                "random_mean": float(np.mean(self.random_scores)),
                "concepts": {k: {"scores": c.scores, "mean": c.mean, "std": c.std, "p_value": c.p_value,
                                 "significant": c.significant, "cav_accuracy": c.cav_accuracy}
                             for k, c in self.concepts.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TCAVResult":
        """The result back from :meth:`to_dict` (e.g. read from results.json)."""
        return cls(int(d["target"]), str(d["target_name"]), str(d["layer"]), float(d["alpha"]),
                   [float(v) for v in d["random_scores"]],
                   {k: ConceptScore([float(v) for v in c["scores"]], [float(v) for v in c["cav_accuracy"]],
                                    float(c["p_value"]), bool(c["significant"])) for k, c in d["concepts"].items()})

    def plot(self):
        """Bars of mean TCAV score (± std over random sets) per concept and for the random null;
        significant concepts are starred, the others hatched."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(self.concepts) + ["random (null)"]
        means = [c.mean for c in self.concepts.values()] + [float(np.mean(self.random_scores))]
        stds = [c.std for c in self.concepts.values()] + [float(np.std(self.random_scores))]
        sig = [c.significant for c in self.concepts.values()] + [False]
        fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names) + 1.5), 3.4))
        xs = np.arange(len(names))
        bars = ax.bar(xs, means, yerr=stds, capsize=4, color=["#4a7ab5"] * (len(names) - 1) + ["#aaaaaa"])
        for b, s, i in zip(bars, sig, range(len(names))):
            if i < len(names) - 1 and not s:
                b.set_hatch("//")
                b.set_alpha(0.6)
            if s:
                ax.text(b.get_x() + b.get_width() / 2, min(1.0, means[i] + stds[i]) + 0.02, "*", ha="center",
                        fontsize=14)
        ax.set_xticks(xs)
        ax.set_xticklabels(names, rotation=20, ha="right")
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("TCAV score")
        ax.set_title(f"TCAV for '{self.target_name}' at {self.layer} (* p < {self.alpha:g}, two-sided t-test)",
                     fontsize=9)
        return fig


def tcav(
    classifier: Classifier,
    class_images: Any,
    target: int | str | None = None,
    *,
    concepts: Mapping[str, Any],
    random: Sequence[Any],
    layer: str | None = None,
    alpha: float = 0.05,
    cav_model: str = "sgd",
    seed: int = 0,
    batch_size: int = 32,
) -> TCAVResult:
    """TCAV scores of ``concepts`` (name -> folder or image tensor) for the target class on ``class_images``.

    ``random``: at least 3 random counterexample sets (folders or tensors). ``target`` defaults to the most
    frequent prediction on ``class_images``; ``layer`` to the CAM layer. Folders are read with the model's
    eval resize/crop; tensors must already be at the model's input size (uint8 or float in [0, 1]).
    """
    if len(random) < 3:
        raise UsageError(f"TCAV needs at least 3 random counterexample sets for its t-test, got {len(random)}")
    if not concepts:
        raise UsageError("TCAV needs at least one concept")
    from scipy.stats import ttest_ind

    layer = cam_layer(classifier, layer)
    xc = _as_pixels(class_images, classifier, "class images")
    dev = model_device(classifier)
    with eval_mode(classifier):
        if target is None:
            pred = resolve_targets(classifier, xc.to(dev), None, batch_size=batch_size)
            target = int(torch.bincount(pred.cpu()).argmax())
        t = resolve_targets(classifier, xc[:1].to(dev), target).cpu()
    tgt = int(t[0])
    grads = _layer_gradients(classifier, xc, t.expand(len(xc)), layer, batch_size=batch_size).double().numpy()
    acts = {f"random_{i}": layer_activations(classifier, _as_pixels(r, classifier, f"random set {i}"), layer,
                                             batch_size=batch_size).numpy() for i, r in enumerate(random)}
    rnames = list(acts)

    def scores_for(pos: np.ndarray, against: list[str], salt: int) -> tuple[list[float], list[float]]:
        sc, acc = [], []
        for j, r in enumerate(against):
            cav, a = train_cav(pos, acts[r], seed=seed * 1000 + salt * 100 + j, model=cav_model)
            sc.append(float(np.mean(grads @ cav > 0)))
            acc.append(a)
        return sc, acc

    null, _ = scores_for(acts[rnames[0]], rnames[1:], 0)
    res = TCAVResult(tgt, classifier.class_names[tgt] if tgt < len(classifier.class_names) else str(tgt), layer,
                     alpha, null)
    for k, (name, src) in enumerate(concepts.items(), start=1):
        a = layer_activations(classifier, _as_pixels(src, classifier, f"concept {name!r}"), layer,
                              batch_size=batch_size).numpy()
        sc, acc = scores_for(a, rnames[1:], k)
        if np.std(sc) == 0 and np.std(null) == 0:
            p = 1.0 if np.mean(sc) == np.mean(null) else 0.0
        else:
            p = float(ttest_ind(sc, null).pvalue)
        res.concepts[name] = ConceptScore(sc, acc, p, bool(p < alpha))
    return res
