"""Weighted kNN classification on frozen features, the protocol of InstDisc (Wu et al. 2018) as MoCo's notebook
and lightly's ``knn_predict`` implement it: cosine similarity of L2-normalized features, the ``k`` most similar
bank entries, each weighted by ``exp(similarity / t)``, weights summed per class."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["knn_scores", "knn_predictions", "knn_top1"]

_MAX_ELEMENTS = 1 << 25  # elements of the (rows, k, classes) one-hot block of one chunk (128 MiB in float32)


def knn_scores(test_feats: Tensor, bank_feats: Tensor, bank_labels: Tensor, num_classes: int, *, k: int = 200,
               t: float = 0.1, chunk: int = 1024) -> Tensor:
    """(N, C) class scores of ``test_feats`` (N, D) against the labelled bank (M, D), (M,).

    Both sides are L2-normalized here; ``k`` is capped at M. Test rows are processed ``chunk`` at a time (fewer
    when the number of classes is large), so a 10,000 x 50,000 problem never holds the full similarity matrix.
    The per-class sum is lightly's arithmetic (one-hot times weight, summed over the neighbours), so the scores
    are those of ``lightly.utils.benchmarking.knn_predict`` and so are its predictions.
    """
    if test_feats.dim() != 2 or bank_feats.dim() != 2 or test_feats.shape[1] != bank_feats.shape[1]:
        raise ValueError(f"knn_scores: expected (N, D) and (M, D) features, got {tuple(test_feats.shape)} and "
                         f"{tuple(bank_feats.shape)}")
    if bank_labels.shape != (bank_feats.shape[0],):
        raise ValueError(f"knn_scores: {bank_feats.shape[0]} bank features but labels of shape "
                         f"{tuple(bank_labels.shape)}")
    if k < 1 or t <= 0:
        raise ValueError(f"knn_scores: k must be at least 1 and t positive, got k={k}, t={t}")
    n, m = test_feats.shape[0], bank_feats.shape[0]
    dtype = torch.promote_types(test_feats.dtype, torch.float32)
    if m == 0:
        return torch.zeros(n, num_classes, dtype=dtype, device=test_feats.device)
    k = min(int(k), m)
    bank_t = F.normalize(bank_feats.to(dtype), dim=1).t().contiguous()  # (D, M), as lightly takes it
    labels = bank_labels.to(test_feats.device).long()
    step = max(1, min(int(chunk), _MAX_ELEMENTS // max(1, k * num_classes)))
    out = []
    for s in range(0, n, step):
        q = F.normalize(test_feats[s:s + step].to(dtype), dim=1)
        sim_weight, sim_indices = torch.mm(q, bank_t).topk(k=k, dim=-1)
        sim_labels = torch.gather(labels.expand(q.shape[0], -1), dim=-1, index=sim_indices)
        sim_weight = (sim_weight / t).exp()
        one_hot = torch.zeros(q.shape[0] * k, num_classes, dtype=dtype, device=q.device)
        one_hot = one_hot.scatter(dim=-1, index=sim_labels.view(-1, 1), value=1.0)
        out.append(torch.sum(one_hot.view(q.shape[0], -1, num_classes) * sim_weight.unsqueeze(-1), dim=1))
    return torch.cat(out) if out else torch.zeros(0, num_classes, dtype=dtype, device=test_feats.device)


def knn_predictions(scores: Tensor) -> Tensor:
    """Top-1 class per row of ``knn_scores``; ties resolved as lightly resolves them (the first of
    ``argsort(descending=True)``)."""
    return scores.argsort(dim=-1, descending=True)[:, 0]


def knn_top1(test_feats: Tensor, test_labels: Tensor, bank_feats: Tensor, bank_labels: Tensor, num_classes: int, *,
             k: int = 200, t: float = 0.1) -> float:
    """Fraction of ``test_feats`` whose kNN prediction is their label (NaN for no test rows)."""
    if len(test_feats) == 0:
        return float("nan")
    pred = knn_predictions(knn_scores(test_feats, bank_feats, bank_labels, num_classes, k=k, t=t))
    return float((pred.cpu() == test_labels.cpu().long()).double().mean())
