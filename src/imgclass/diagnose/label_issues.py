"""Confident learning on out-of-sample predicted probabilities (Northcutt, Jiang, Chuang, JAIR 2021).

Pure numpy functions with the semantics of cleanlab 2.9.0 (``cleanlab.filter.find_label_issues``,
``cleanlab.count.compute_confident_joint`` / ``estimate_joint`` / ``estimate_latent``,
``cleanlab.rank.get_label_quality_scores``), down to per-class thresholds, the calibration and rounding of the
confident joint, the pruning counts and the order in which ties are broken: every sort is the same numpy sort of
the same values that cleanlab performs, so masks and rankings agree exactly. Nothing loops over samples; the work
per class is one grouped sort, without cleanlab's process pool.

Conventions: ``labels`` is ``(N,)`` int in ``0..K-1`` with every class present, ``pred_probs`` is ``(N, K)`` with
rows summing to 1; a confident joint is indexed ``[given label, true label]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple, Sequence

import numpy as np
from scipy.special import xlogy

from ..errors import UsageError, unknown_name

__all__ = [
    "FILTER_BY",
    "RANK_BY",
    "LabelIssues",
    "NoiseMatrices",
    "check_probs",
    "confident_thresholds",
    "confident_joint",
    "estimate_joint",
    "noise_matrix",
    "label_quality_scores",
    "find_label_issues",
    "label_issues",
]

FILTER_BY = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
             "low_normalized_margin", "low_self_confidence")
RANK_BY = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
_PRUNING = ("prune_by_noise_rate", "prune_by_class", "both")  # the rules that take frac_noise, num_to_remove_per_class

# cleanlab.internal.constants
_FUZZ = 1e-6  # FLOATING_POINT_COMPARISON
_THRESHOLD_FLOOR = 2 * _FUZZ  # CONFIDENT_THRESHOLDS_LOWER_BOUND
_CLIP_LOW = 1e-6  # CLIPPING_LOWER_BOUND
_TINY = 1e-100  # TINY_VALUE
_ROW_SUM_ATOL = 1e-3


# -- validation -----------------------------------------------------------------------------------------------


def check_probs(labels, pred_probs, *, n_classes: int | None = None,
                source: str = "probabilities") -> tuple[np.ndarray, np.ndarray]:
    """``(labels, pred_probs)`` as a contiguous int64 vector and float matrix, or a one-line UsageError saying
    what is wrong (shape, a row that is not a distribution, a label out of range, a class without examples)."""
    p = np.asarray(pred_probs)
    if p.ndim != 2:
        raise UsageError(f"{source}: expected a 2-D array (samples, classes), got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        if not (np.issubdtype(p.dtype, np.integer) or p.dtype == np.bool_):
            raise UsageError(f"{source}: expected numbers, got dtype {p.dtype}")
        p = p.astype(np.float64)
    p = np.ascontiguousarray(p)
    n, k = p.shape
    if n_classes is not None and k != n_classes:
        raise UsageError(f"{source}: {k} columns, expected one per class ({n_classes})")
    if k < 2:
        raise UsageError(f"{source}: {k} class column(s); label issues need at least 2 classes")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise UsageError(f"labels: expected a 1-D array of class indices, got shape {y.shape}")
    if len(y) != n:
        raise UsageError(f"{source}: {n} rows but {len(y)} labels; expected one row per label")
    if n == 0:
        raise UsageError(f"{source}: no samples")
    if not (p.min() >= 0 and p.max() <= 1):  # NaN fails both comparisons
        finite = np.isfinite(p)
        if not finite.all():
            raise UsageError(f"{source}: row {_first_row(~finite)} is not finite (NaN or infinity)")
        raise UsageError(f"{source}: row {_first_row((p < 0) | (p > 1))} has a value outside [0, 1]")
    sums = p @ np.ones(k) if p.dtype == np.float64 else p.sum(axis=1, dtype=np.float64)
    bad = np.abs(sums - 1.0) > _ROW_SUM_ATOL
    if bad.any():
        i = int(np.argmax(bad))
        raise UsageError(f"{source}: row {i} sums to {sums[i]:.6g}, not 1 (tolerance {_ROW_SUM_ATOL:g}); "
                         f"pass probabilities (softmax of the logits), not logits")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise UsageError(f"labels: expected integer class indices, got dtype {y.dtype}")
    y = np.ascontiguousarray(y, dtype=np.int64)
    out = (y < 0) | (y >= k)
    if out.any():
        i = int(np.argmax(out))
        raise UsageError(f"labels: label {y[i]} at index {i} is out of range for {k} classes (0..{k - 1})")
    missing = np.flatnonzero(np.bincount(y, minlength=k) == 0)
    if len(missing):
        names = ", ".join(str(c) for c in missing[:20]) + (", ..." if len(missing) > 20 else "")
        raise UsageError(f"labels: class{'es' if len(missing) > 1 else ''} {names} of {k} never appear; confident "
                         f"learning needs at least one example of every class")
    return y, p


def _first_row(bad: np.ndarray) -> int:
    return int(np.argmax(bad.any(axis=1)))


def _choice(kind: str, value: str, known: Sequence[str]) -> str:
    if value not in known:
        raise unknown_name(kind, value, known)
    return value


# -- cleanlab's numerics, vectorized ------------------------------------------------------------------------


def _round_preserving_row_totals(x: np.ndarray) -> np.ndarray:
    """cleanlab's ``round_preserving_row_totals``: round each row to integers, keeping its rounded total (the
    rows whose rounded entries miss it move by one where the rounding moved them most)."""
    floats = np.asarray(x, dtype=float)
    ints = floats.round()
    target = np.ascontiguousarray(floats).sum(axis=1).round()  # the same pairwise sum as np.sum(row)
    diff = np.round(target - np.ascontiguousarray(ints).sum(axis=1).round())
    rows = np.flatnonzero(np.abs(diff) > _FUZZ)  # NaN rows stay as cleanlab leaves them
    if len(rows):
        # one pass of cleanlab's while loop is enough: |diff| <= K/2 + 1/2 <= K changes
        k = floats.shape[1]
        step = np.where(diff[rows] < 0.0, -1.0, 1.0)
        changes = np.minimum(np.abs(diff[rows]).astype(int), k)
        order = np.argsort(floats[rows] - ints[rows], axis=1)  # each row as cleanlab's 1-D argsort sorts it
        order = np.where(step[:, None] > 0, order[:, ::-1], order)
        take = np.arange(k)[None, :] < changes[:, None]
        r, c = np.nonzero(take)
        ints[rows[r], order[r, c]] += step[r]
    return np.ascontiguousarray(ints).astype(int)  # C-ordered, as cleanlab's apply_along_axis returns it


class _Counting:
    """Everything confident learning derives from ``(labels, pred_probs)``, each computed once, on demand."""

    def __init__(self, labels: np.ndarray, pred_probs: np.ndarray):
        self.labels, self.pred_probs = labels, pred_probs
        self.n, self.k = pred_probs.shape
        self.label_counts = np.bincount(labels, minlength=self.k)

    @cached_property
    def groups(self) -> list[np.ndarray]:
        """Per class, the indices of its examples in dataset order (``labels == k``)."""
        small = self.labels.astype(np.uint16) if self.k <= 1 << 16 else self.labels  # radix sort
        order = np.argsort(small, kind="stable")
        return np.split(order, np.cumsum(self.label_counts)[:-1])

    @cached_property
    def thresholds(self) -> np.ndarray:
        # np.mean over the same values in the same order as cleanlab's pred_probs[:, k][labels == k]
        means = [np.mean(self.pred_probs[idx, c]) for c, idx in enumerate(self.groups)]
        return np.clip(means, a_min=_THRESHOLD_FLOOR, a_max=None)

    @cached_property
    def argmax(self) -> np.ndarray:
        return self.pred_probs.argmax(axis=1)

    @cached_property
    def _confident(self) -> tuple[np.ndarray, np.ndarray]:
        p, y, k = self.pred_probs, self.labels, self.k
        confident = p >= self.thresholds - 1e-6
        n_confident = confident.sum(axis=1)
        guess = np.where(n_confident > 1, self.argmax, confident.argmax(axis=1))
        counted = n_confident > 0
        # sklearn's confusion_matrix(guess, labels).T: int64, Fortran-ordered (the calibration sums in this layout)
        cj = np.bincount(guess[counted] * k + y[counted], minlength=k * k).astype(np.int64).reshape(k, k).T
        np.fill_diagonal(cj, cj.diagonal().clip(min=1))
        return cj, np.flatnonzero(counted & (guess != y))

    @property
    def raw_joint(self) -> np.ndarray:
        return self._confident[0]

    @property
    def off_diagonal(self) -> np.ndarray:
        """Indices counted off the diagonal of the confident joint (ascending)."""
        return self._confident[1]

    @cached_property
    def joint_counts(self) -> np.ndarray:
        """The calibrated confident joint (cleanlab's ``calibrate_confident_joint``)."""
        cj, counts = self.raw_joint, self.label_counts
        cal = (cj.T / np.clip(cj.sum(axis=1), a_min=_TINY, a_max=None) * counts).T
        cal = cal / np.clip(np.sum(cal), a_min=_TINY, a_max=None) * np.sum(counts)
        return _round_preserving_row_totals(cal)

    @cached_property
    def agrees(self) -> np.ndarray:
        """Examples whose given label is the prediction, up to 1e-6 (cleanlab's ``_reduce_issues``)."""
        # argmax(p with p[label] += 1e-6) == label, without the copy: the bumped label beats the first maximum
        rows, y, top = np.arange(self.n), self.labels, self.argmax
        bumped, best = self.pred_probs[rows, y] + _FUZZ, self.pred_probs[rows, top]
        return (top == y) | (bumped > best) | ((bumped == best) & (y < top))

    def scores(self, method: str) -> np.ndarray:
        return _scores(self.labels, self.pred_probs, method)


def _scores(labels: np.ndarray, p: np.ndarray, method: str) -> np.ndarray:
    n, k = p.shape
    rows = np.arange(n)
    self_confidence = p[rows, labels]
    if method == "self_confidence":
        return self_confidence
    if method == "normalized_margin":
        others = p.copy()
        others[rows, labels] = -np.inf
        return (self_confidence - others.max(axis=1) + 1) / 2
    # confidence_weighted_entropy
    entropy = -np.sum(xlogy(p, p), axis=1) / np.log(k)
    scores = entropy / np.clip(self_confidence, a_min=_CLIP_LOW, a_max=None)
    return np.log(scores + 1) / np.clip(scores, a_min=_CLIP_LOW, a_max=None)


# -- public functions ---------------------------------------------------------------------------------------


def confident_thresholds(labels, pred_probs) -> np.ndarray:
    """Per class, the mean predicted probability of the class over the examples labelled with it (floored at
    2e-6): an example is confidently of class j when ``pred_probs[:, j] >= threshold[j] - 1e-6``."""
    return _Counting(*check_probs(labels, pred_probs)).thresholds


def confident_joint(labels, pred_probs, *, calibrate: bool = True) -> np.ndarray:
    """``(K, K)`` counts of examples confidently of true class j among those labelled i (rows given, columns
    true); calibrated (the default) so row i sums to the count of label i and the whole to N."""
    c = _Counting(*check_probs(labels, pred_probs))
    return c.joint_counts if calibrate else c.raw_joint


def estimate_joint(labels, pred_probs) -> np.ndarray:
    """The joint distribution ``p(given label = i, true label = j)``: the calibrated confident joint over N."""
    c = _Counting(*check_probs(labels, pred_probs))
    return _joint(c.joint_counts)


def _joint(counts: np.ndarray) -> np.ndarray:
    return counts / np.clip(float(np.sum(counts)), a_min=_TINY, a_max=None)


class NoiseMatrices(NamedTuple):
    """cleanlab's ``estimate_latent`` (``py_method='cnt'``, no convergence step) on the calibrated joint."""

    py: np.ndarray  # (K,) prior of the true labels
    noise_matrix: np.ndarray  # (K, K) p(given = i | true = j); columns sum to 1
    inverse_noise_matrix: np.ndarray  # (K, K) p(true = i | given = j); columns sum to 1


def noise_matrix(labels, pred_probs) -> NoiseMatrices:
    """The latent prior, noise matrix and inverse noise matrix estimated from the calibrated confident joint."""
    c = _Counting(*check_probs(labels, pred_probs))
    return _latent(c.joint_counts, c.label_counts, c.n)


def _clip_noise_rates(m: np.ndarray) -> np.ndarray:
    diagonal = np.diagonal(m)
    m = np.clip(m, 0, 0.9999)
    np.fill_diagonal(m, diagonal)
    return m / np.clip(m.sum(axis=0), a_min=_TINY, a_max=None)


def _latent(cj: np.ndarray, label_counts: np.ndarray, n: int) -> NoiseMatrices:
    ps = label_counts / float(n)
    given_counts = cj.sum(axis=1).astype(float)
    true_counts = cj.sum(axis=0).astype(float)
    nm = cj / np.clip(true_counts, a_min=_TINY, a_max=None)
    inv = cj.T / np.clip(given_counts, a_min=_TINY, a_max=None)
    py = inv.diagonal() / np.clip(nm.diagonal(), a_min=_TINY, a_max=None) * ps
    py = np.clip(py, _CLIP_LOW, 1.0)
    py = py * 1.0 / np.clip(np.sum(py), a_min=_TINY, a_max=None)
    return NoiseMatrices(py, _clip_noise_rates(nm), _clip_noise_rates(inv))


def label_quality_scores(labels, pred_probs, *, method: str = "self_confidence") -> np.ndarray:
    """Per example, how likely its given label is correct (lower = more likely an issue): ``self_confidence``
    p[label]; ``normalized_margin`` (p[label] - max other p + 1) / 2; ``confidence_weighted_entropy``."""
    _choice("ranking method", method, RANK_BY)
    return _scores(*check_probs(labels, pred_probs), method)


def find_label_issues(labels, pred_probs, *, filter_by: str = "prune_by_noise_rate", frac_noise: float = 1.0,
                      num_to_remove_per_class: Sequence[int] | None = None, min_examples_per_class: int = 1,
                      return_indices_ranked_by: str | None = None) -> np.ndarray:
    """The examples whose given label is likely wrong: a bool mask, or (with ``return_indices_ranked_by``) their
    indices, lowest label quality first. ``filter_by`` picks the confident-learning rule (see ``FILTER_BY``)."""
    c = _Counting(*check_probs(labels, pred_probs))
    mask = _find(c, filter_by, frac_noise, num_to_remove_per_class, min_examples_per_class)
    if return_indices_ranked_by is None:
        return mask
    _choice("ranking method", return_indices_ranked_by, RANK_BY)
    return _rank(mask, c.scores(return_indices_ranked_by))


def _rank(mask: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask)[np.argsort(scores[mask])]


def _find(c: _Counting, filter_by: str, frac_noise: float, num_to_remove_per_class, min_examples: int) -> np.ndarray:
    _choice("label-issue rule (filter_by)", filter_by, FILTER_BY)
    try:
        frac_noise = float(frac_noise)
    except (TypeError, ValueError):
        raise UsageError(f"frac_noise must be a number in (0, 1], got {frac_noise!r}") from None
    if not 0.0 < frac_noise <= 1.0:
        raise UsageError(f"frac_noise must be in (0, 1], got {frac_noise:g}")
    if filter_by not in _PRUNING and (frac_noise != 1.0 or num_to_remove_per_class is not None):
        raise UsageError(f"frac_noise and num_to_remove_per_class apply only to filter_by {', '.join(_PRUNING)}; "
                         f"not to {filter_by!r}")
    if isinstance(min_examples, bool) or not isinstance(min_examples, (int, np.integer)) or min_examples < 0:
        raise UsageError(f"min_examples_per_class must be an integer >= 0, got {min_examples!r}")
    if filter_by == "predicted_neq_given":
        return (c.argmax != c.labels) & ~c.agrees
    if filter_by == "confident_learning":
        mask = np.zeros(c.n, dtype=bool)
        mask[c.off_diagonal] = True
        return mask & ~c.agrees
    if filter_by in ("low_normalized_margin", "low_self_confidence"):
        n_issues = int(np.count_nonzero(~c.agrees[c.off_diagonal]))  # cleanlab's num_label_issues
        mask = np.zeros(c.n, dtype=bool)
        mask[np.argsort(c.scores(filter_by[4:]))[:n_issues]] = True
        return mask
    prune = _prune_counts(c, frac_noise, num_to_remove_per_class, min_examples)
    if filter_by in ("prune_by_class", "both"):
        by_class = _prune_by_class(c, prune, min_examples)
        if filter_by == "prune_by_class":
            return by_class & ~c.agrees
    by_noise_rate = _prune_by_noise_rate(c, prune, min_examples)
    if filter_by == "both":
        by_noise_rate &= by_class
    return by_noise_rate & ~c.agrees


def _prune_counts(c: _Counting, frac_noise: float, num_to_remove_per_class, n: int) -> np.ndarray:
    """cleanlab's ``prune_count_matrix`` (indexed [true, given]): how many examples of each given label to flag
    as each true label, after keeping ``n`` per class and keeping ``frac_noise`` of the noise."""
    pcm = c.joint_counts.T
    diagonal = np.diagonal(pcm)
    new_diagonal = np.maximum(diagonal, n)
    spread = (new_diagonal - diagonal) / np.maximum(np.count_nonzero(pcm, axis=0) - 1.0, 1.0)
    m = pcm - spread
    m[m < 0] = 0
    np.fill_diagonal(m, new_diagonal)
    reduced = m * frac_noise
    np.fill_diagonal(reduced, m.diagonal())
    np.fill_diagonal(reduced, m.diagonal() + np.sum(m - reduced, axis=0))
    pcm = _round_preserving_row_totals(reduced.astype(int)).astype(int)
    if num_to_remove_per_class is None:
        return pcm
    remove = np.asarray(num_to_remove_per_class)
    if remove.shape != (c.k,) or not np.issubdtype(remove.dtype, np.integer) or (remove < 0).any():
        raise UsageError(f"num_to_remove_per_class must be {c.k} integers >= 0 (one per class), got "
                         f"{list(np.ravel(remove))[:c.k + 1]}")
    with np.errstate(divide="ignore", invalid="ignore"):
        psy = pcm / np.sum(pcm, axis=1)  # (sic: cleanlab divides column j by row total j)
        noise_per_label = psy.sum(axis=1) - psy.diagonal()
        target = (psy.T * remove / noise_per_label).T
    np.fill_diagonal(target, c.label_counts - remove)
    with np.errstate(invalid="ignore"):
        return _round_preserving_row_totals(target)


def _prune_by_class(c: _Counting, prune: np.ndarray, min_examples: int) -> np.ndarray:
    """Per class k, flag the examples labelled k with the lowest p[k], all but ``prune[k, k]`` of them."""
    mask = np.zeros(c.n, dtype=bool)
    for k, idx in enumerate(c.groups):
        n_issues = len(idx) - prune[k, k]
        if len(idx) <= max(min_examples, 1) or n_issues < 1:
            continue
        mask[idx[np.argsort(c.pred_probs[idx, k])[:n_issues]]] = True
    return mask


def _prune_by_noise_rate(c: _Counting, prune: np.ndarray, min_examples: int) -> np.ndarray:
    """Per given label k and true label j != k, flag the ``prune[j, k]`` examples labelled k with the largest
    margin p[j] - p[k]."""
    mask = np.zeros(c.n, dtype=bool)
    for k, idx in enumerate(c.groups):
        wanted = prune[:, k].copy()
        wanted[k] = 0
        cols = np.flatnonzero(wanted > 0)
        if len(idx) <= max(min_examples, 1) or not len(cols):
            continue
        p = c.pred_probs[idx]
        margins = (p[:, cols] - p[:, [k]]).T  # row r: cleanlab's margin for true label cols[r]
        order = np.argsort(-margins, axis=1)
        take = np.arange(len(idx))[None, :] < wanted[cols][:, None]
        mask[idx[order[take]]] = True
    return mask


@dataclass
class LabelIssues:
    """The label issues of a data set and the statistics confident learning found them with."""

    mask: np.ndarray  # (N,) bool: the given label is likely wrong
    ranked: np.ndarray  # indices of the issues, most severe (lowest score) first
    scores: np.ndarray  # (N,) label quality (``rank_by``); lower = more likely mislabelled
    suggested: np.ndarray  # (N,) the predicted class (argmax of the probabilities)
    thresholds: np.ndarray  # (K,) per-class confidence thresholds
    confident_joint: np.ndarray  # (K, K) calibrated counts [given, true]
    joint: np.ndarray  # (K, K) p(given, true)
    noise_matrix: np.ndarray  # (K, K) p(given | true)
    inverse_noise_matrix: np.ndarray  # (K, K) p(true | given)
    py: np.ndarray  # (K,) estimated prior of the true labels
    # flagged issues per (given label, suggested label = estimated true label), most frequent first
    pair_counts: dict[tuple[int, int], int] = field(default_factory=dict)
    filter_by: str = "prune_by_noise_rate"
    rank_by: str = "self_confidence"

    @property
    def n_issues(self) -> int:
        return int(self.mask.sum())


def label_issues(labels, pred_probs, *, filter_by: str = "prune_by_noise_rate", rank_by: str = "self_confidence",
                 frac_noise: float = 1.0, min_examples_per_class: int = 1) -> LabelIssues:
    """Find the label issues and return them with their ranking, suggested labels and the noise statistics,
    computing each shared step once."""
    _choice("ranking method", rank_by, RANK_BY)
    labels, pred_probs = check_probs(labels, pred_probs)
    c = _Counting(labels, pred_probs)
    mask = _find(c, filter_by, frac_noise, None, min_examples_per_class)
    scores = c.scores(rank_by)
    latent = _latent(c.joint_counts, c.label_counts, c.n)
    k = c.k
    pairs = np.bincount(labels[mask] * k + c.argmax[mask], minlength=k * k)
    nonzero = np.flatnonzero(pairs)
    nonzero = nonzero[np.argsort(-pairs[nonzero], kind="stable")]
    return LabelIssues(
        mask=mask, ranked=_rank(mask, scores), scores=scores, suggested=c.argmax, thresholds=c.thresholds,
        confident_joint=c.joint_counts, joint=_joint(c.joint_counts), noise_matrix=latent.noise_matrix,
        inverse_noise_matrix=latent.inverse_noise_matrix, py=latent.py,
        pair_counts={(int(i // k), int(i % k)): int(pairs[i]) for i in nonzero},
        filter_by=filter_by, rank_by=rank_by)
