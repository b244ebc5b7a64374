"""Training losses: (soft-target) cross-entropy, BCE, knowledge distillation, TRADES."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UsageError

__all__ = ["classification_loss", "kd_loss", "trades_kl"]


def classification_loss(logits: torch.Tensor, target: torch.Tensor, *, kind: str = "ce",
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """``target`` is class indices (N,) or a distribution (N, C) from mixup/cutmix (smoothing already in it)."""
    logits = logits.float()
    if kind == "ce":
        if target.dim() == 1:
            return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
        return -(target * logits.log_softmax(1)).sum(1).mean()
    if kind == "bce":  # ResNet strikes back: binary cross-entropy per class on (mixed) one-hot targets
        if target.dim() == 1:
            target = F.one_hot(target, logits.shape[1]).float()
            if label_smoothing:
                target = target * (1 - label_smoothing) + label_smoothing / logits.shape[1]
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(logits)
    raise UsageError(f"loss must be 'ce' or 'bce', got {kind!r}")


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, *, mode: str = "soft",
            temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0) -> torch.Tensor:
    """Knowledge distillation.

    ``soft`` (Hinton et al. 2015): alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(student, labels).
    ``function_matching`` (Beyer et al. 2022): KL(p_t || p_s) on the same (mixed) view, no labels.
    """
    s, t = student.float(), teacher.float().detach()
    if mode == "function_matching":
        return F.kl_div(s.log_softmax(1), t.log_softmax(1), reduction="batchmean", log_target=True)
    if mode == "soft":
        T = temperature
        kd = F.kl_div((s / T).log_softmax(1), (t / T).log_softmax(1), reduction="batchmean", log_target=True)
        return alpha * T * T * kd + (1 - alpha) * classification_loss(s, target, label_smoothing=label_smoothing)
    raise UsageError(f"kd must be 'soft' or 'function_matching', got {mode!r}")


def trades_kl(adv_logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """TRADES' robustness term: KL(f(x) || f(x_adv)), averaged over the batch (Zhang et al. 2019)."""
    return F.kl_div(adv_logits.float().log_softmax(1), clean_logits.float().log_softmax(1),
                    reduction="batchmean", log_target=True)
