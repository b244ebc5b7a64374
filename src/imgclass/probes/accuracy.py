"""Probe ``accuracy``: top-1/top-5, per-class accuracy, confusion matrix, macro P/R/F1, skipped files."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import metrics
from .base import Metric, Probe, ProbeContext, ProbeResult, register_probe

DENSE_CONFUSION_MAX = 100  # above this many classes the confusion matrix is stored sparse


class AccuracyResult(ProbeResult):
    probe = "accuracy"
    metrics = (Metric("top1", "top-1 accuracy"), Metric("top5", "top-5 accuracy"),
               Metric("balanced_accuracy", "balanced accuracy"), Metric("macro_f1", "macro F1"))
    primary = "top1"

    top1: float | None
    top5: float | None = None
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    n_evaluated: int
    n_skipped: int = 0
    class_names: list[str]

    def protocol(self, params: dict) -> dict:
        return {"prediction": "top-1 of the logits over the dataset's classes", "n_evaluated": self.n_evaluated}


@register_probe
class AccuracyProbe(Probe):
    name = "accuracy"
    title = "Accuracy"
    description = "top-1/top-5, per-class accuracy, confusion matrix, macro precision/recall/F1"

    Result = AccuracyResult

    @dataclass
    class Params:
        top_k: int = 5

    def run(self, ctx: ProbeContext) -> dict:
        pred = ctx.predictions()
        names = list(ctx.dataset.classes.names)
        c = len(names)
        y = pred.labels.numpy()
        top1_pred = pred.logits.argmax(1).numpy() if len(y) else np.empty(0, dtype=np.int64)
        conf = torch.softmax(pred.logits.double(), 1).amax(1) if len(y) else torch.empty(0)
        ctx.record_samples(self.name, pred.indices, pred=top1_pred, confidence=conf.float(), correct=top1_pred == y)
        cm = metrics.confusion_matrix(y, top1_pred, c)
        support = cm.sum(1)
        predicted = cm.sum(0)
        tp = np.diag(cm).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            recall = np.where(support > 0, tp / support, np.nan)
            precision = np.where(predicted > 0, tp / predicted, 0.0)
            f1 = np.where(precision + np.nan_to_num(recall) > 0,
                          2 * precision * np.nan_to_num(recall) / (precision + np.nan_to_num(recall)), 0.0)
        present = support > 0  # macro averages over classes that occur in the data (sklearn's labels=present)
        res = {
            "top1": metrics.topk_accuracy(pred.logits, pred.labels, 1),
            "top5": metrics.topk_accuracy(pred.logits, pred.labels, 5) if c >= 5 else None,
            "balanced_accuracy": float(np.mean(recall[present])) if present.any() else None,
            "macro_precision": float(np.mean(precision[present])) if present.any() else None,
            "macro_recall": float(np.mean(recall[present])) if present.any() else None,
            "macro_f1": float(np.mean(f1[present])) if present.any() else None,
            "n_evaluated": int(len(y)),
            "n_skipped": len(pred.skipped),
            "skipped": [{"path": s["path"] or s["id"], "reason": s["reason"]} for s in pred.skipped],
            "class_names": names,
            "per_class": {
                "accuracy": [None if np.isnan(r) else float(r) for r in recall],
                "precision": precision.tolist(),
                "f1": f1.tolist(),
                "support": support.tolist(),
            },
        }
        k = self.params.top_k
        if k not in (1, 5) and k <= c:
            res[f"top{k}"] = metrics.topk_accuracy(pred.logits, pred.labels, k)
        if c <= DENSE_CONFUSION_MAX:
            res["confusion_matrix"] = cm.tolist()
        else:
            nz = np.nonzero(cm)
            res["confusion_sparse"] = [[int(i), int(j), int(cm[i, j])] for i, j in zip(*nz)]
        soft = ctx.dataset.soft_labels
        if soft is not None and len(y):
            h = torch.as_tensor(soft[pred.indices])
            res["human"] = {
                "source": ctx.dataset.soft_label_source,
                "top1_vs_human_majority": float((pred.logits.argmax(1) == h.argmax(1)).double().mean()),
                "expected_agreement_with_a_human": float(h.gather(1, pred.logits.argmax(1, keepdim=True)).mean()),
                "human_majority_vs_label": float((h.argmax(1) == pred.labels).double().mean()),
            }
        return res

    def summary(self, r: dict) -> list[tuple[str, str]]:
        out = [("top-1", f"{r['top1']:.4f}")]
        if r.get("top5") is not None:
            out.append(("top-5", f"{r['top5']:.4f}"))
        out += [("macro F1", f"{r['macro_f1']:.4f}" if r.get("macro_f1") is not None else "-"),
                ("evaluated", str(r["n_evaluated"])), ("skipped", str(r["n_skipped"]))]
        if "human" in r:
            out.append(("top-1 vs human majority", f"{r['human']['top1_vs_human_majority']:.4f}"))
        return out

    def render(self, r: dict, sec) -> None:
        from . import plots

        sec.kv([(k, v) for k, v in self.summary(r)] + [
            ("balanced accuracy", r.get("balanced_accuracy")), ("macro precision", r.get("macro_precision")),
            ("macro recall", r.get("macro_recall")),
        ])
        if "human" in r:
            h = r["human"]
            sec.p(f"Human labels ({h['source']}): the model's top-1 agrees with the human majority on "
                  f"{h['top1_vs_human_majority']:.2%} of images; a randomly drawn annotator would agree with it "
                  f"{h['expected_agreement_with_a_human']:.2%} of the time.")
        names = r["class_names"]
        acc = r["per_class"]["accuracy"]
        sec.figure(plots.per_class_bars(names, acc, r["per_class"]["support"]), "Per-class accuracy (recall)")
        if "confusion_matrix" in r:
            cm = np.asarray(r["confusion_matrix"])
        else:
            cm = np.zeros((len(names), len(names)), dtype=np.int64)
            for i, j, v in r.get("confusion_sparse", []):
                cm[i, j] = v
        sec.figure(plots.confusion_heatmap(cm, names), "Confusion matrix (rows: true class, normalised per row)")
        off = [(names[i], names[j], int(cm[i, j])) for i, j in zip(*np.nonzero(cm)) if i != j]
        if off:
            off.sort(key=lambda t: -t[2])
            sec.p("Most frequent confusions")
            sec.table(["true", "predicted", "count"], off[:15])
        sec.html("<h3>Skipped files</h3>")
        if r["skipped"]:
            sec.warn(f"{len(r['skipped'])} file(s) could not be read and were not evaluated.")
            sec.table(["file", "reason"], [(s["path"], s["reason"]) for s in r["skipped"]], numeric=False)
        else:
            sec.p("None: every sample was read.")
