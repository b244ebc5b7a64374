"""The evaluation protocol around the attacks: default epsilons, the large-epsilon budget, and the
gradient-masking sanity checks of Athalye, Carlini & Wagner (2018)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import UsageError
from .base import ATTACKS, format_eps

__all__ = ["default_eps", "large_eps", "sanity_checks", "run_sanity_checks", "eps_key", "WHITE_BOX", "BLACK_BOX",
           "CHECK_MONOTONE", "CHECK_LARGE", "CHECK_BLACK_BOX", "CHECK_ENSEMBLE_BLACK", "CHECK_FGSM", "CHECK_ENSEMBLE",
           "CHECK_RANDOMIZED"]

WHITE_BOX = "white-box"
BLACK_BOX = ("black-box (scores)", "black-box (decisions)")


def default_eps(input_size: tuple[int, int, int], norm: str) -> tuple[str, ...]:
    """Epsilons for a model's input resolution: the CIFAR ladder for small inputs (Linf 1..8/255, L2
    0.125..1), a smaller ladder for ImageNet-size inputs (Linf 0.5..4/255, L2 0.25..3)."""
    small = max(input_size[1:]) <= 64
    if norm == "linf":
        return ("1/255", "2/255", "4/255", "8/255") if small else ("0.5/255", "1/255", "2/255", "4/255")
    if norm == "l2":
        return ("0.125", "0.25", "0.5", "1") if small else ("0.25", "0.5", "1", "3")
    raise UsageError(f"unknown norm {norm!r}; known: linf, l2")


def large_eps(input_size: tuple[int, int, int], norm: str, above: float | None = None) -> str:
    """A budget under which every honest model is broken: Linf 64/255, L2 0.1 * sqrt(dims) (5.5 on CIFAR); with
    ``above`` (the largest tested epsilon) at least twice that, up to the largest budget that means anything
    (Linf 1, L2 the diagonal sqrt(dims)), so the check tests more than the evaluation did."""
    diag = math.sqrt(int(np.prod(input_size)))
    base, cap = (64 / 255, 1.0) if norm == "linf" else (0.1 * diag, diag)
    if above is None or base > above:
        return "64/255" if norm == "linf" else f"{base:.3g}"
    return f"{min(2 * above, cap):.6g}"


# the gradient-masking checks, by the names the report gives them
CHECK_MONOTONE = "robust accuracy does not rise with epsilon"
CHECK_LARGE = "a large budget breaks the model"
CHECK_BLACK_BOX = "no black-box attack beats the white-box ones"
CHECK_ENSEMBLE_BLACK = "no image resists the ensemble's white-box members but falls to a black-box one"
CHECK_FGSM = "iterative attacks beat FGSM"
CHECK_ENSEMBLE = "no single attack beats the ensemble"
CHECK_RANDOMIZED = "the model answers the same twice, or gradients are averaged (EOT)"


def sanity_checks(**kwargs) -> list[str]:
    """Warnings that flag a suspect evaluation (gradient masking), empty when every check passes; the arguments
    are those of :func:`run_sanity_checks`."""
    return run_sanity_checks(**kwargs)["warnings"]


def run_sanity_checks(*, robust_accuracy: dict[str, dict[str, float]], eps_values: dict[str, float],
                      ensemble: dict[str, float] | None = None, large: tuple[str, float] | None = None,
                      per_sample: dict[str, dict[str, np.ndarray]] | None = None, tolerance: float = 0.02,
                      n_samples: int | None = None, ensemble_black_only: dict[str, float] | None = None,
                      randomized: bool | None = None, eot_samples: int = 1,
                      skipped: dict[str, str] | None = None) -> dict:
    """The gradient-masking checks of Athalye, Carlini & Wagner (2018) that the given results allow:
    ``{"warnings": [...], "ran": [check names], "skipped": {check name: why}}``.

    ``robust_accuracy[attack][eps_key]``; ``eps_values[eps_key]`` its value; ``large`` the
    (eps_key, accuracy) of a white-box attack at a budget above every tested one; ``per_sample[attack][eps_key]``
    the robust flags per sample (for the black-box vs white-box count); ``ensemble_black_only[eps_key]`` the
    fraction of images that resisted every white-box member of the ensemble but fell to a black-box one;
    ``randomized`` whether two forward passes differed (None: not looked at); ``skipped`` checks the caller
    could not run, with the reason. Differences count when they exceed ``tolerance`` and, on few samples
    (``n_samples``), 3 samples' worth, so that sampling noise alone does not raise a flag.
    """
    out: list[str] = []
    ran: list[str] = []
    skip: dict[str, str] = dict(skipped or {})
    tol = max(tolerance, 3.0 / n_samples) if n_samples else tolerance
    keys = sorted(eps_values, key=eps_values.get)
    curves = dict(robust_accuracy)
    if ensemble:
        curves["ensemble"] = ensemble
    # 1. robust accuracy must not rise with epsilon
    if len(keys) < 2 or not curves:
        skip.setdefault(CHECK_MONOTONE, "one epsilon only" if curves else "no epsilon-bounded result")
    else:
        ran.append(CHECK_MONOTONE)
        for name, acc in curves.items():
            ks = [k for k in keys if acc.get(k) is not None]
            for a, b in zip(ks, ks[1:]):
                if acc[b] > acc[a] + tol:
                    out.append(f"SUSPECT: robust accuracy under {name} rises from {acc[a]:.2%} at eps {a} to "
                               f"{acc[b]:.2%} at eps {b}; a larger budget cannot help the model, so the attack is "
                               "failing (gradient masking?)")
    # 2. a large budget must break (almost) everything
    if large is not None and large[1] is not None:
        ran.append(CHECK_LARGE)
        if large[1] > tol:
            out.append(f"SUSPECT: PGD at the large budget eps {large[0]} leaves {large[1]:.2%} accuracy; it should "
                       "reach ~0. Gradients may be obfuscated, shattered or saturated.")
    else:
        skip.setdefault(CHECK_LARGE, "no large-budget run")
    # 3. a black-box attack must not beat the (iterative) white-box ones
    white = [a for a in robust_accuracy if a in ATTACKS and ATTACKS[a].threat == WHITE_BOX and a != "fgsm"]
    black = [a for a in robust_accuracy if a in ATTACKS and ATTACKS[a].threat in BLACK_BOX]
    if not white or not black:
        skip.setdefault(CHECK_BLACK_BOX, "needs a black-box and an iterative white-box attack run on their own; "
                        f"ran: {', '.join(robust_accuracy) or 'none'}")
    else:
        ran.append(CHECK_BLACK_BOX)
    for k in keys:
        wb = [(robust_accuracy[a][k], a) for a in white if robust_accuracy[a].get(k) is not None]
        bb = [(robust_accuracy[a][k], a) for a in black if robust_accuracy[a].get(k) is not None]
        if not wb or not bb:
            continue
        w_acc, w_name = min(wb)
        b_acc, b_name = min(bb)
        if b_acc < w_acc - tol:
            extra = ""
            if per_sample and all(k in per_sample.get(a, {}) for a in white + [b_name]):
                wb_rob = np.logical_and.reduce([per_sample[a][k] for a in white])
                only = int(np.sum(wb_rob & ~per_sample[b_name][k]))
                extra = f" ({only} samples resist every white-box attack but fall to {b_name})"
            out.append(f"SUSPECT: black-box {b_name} ({b_acc:.2%}) beats the best white-box attack {w_name} "
                       f"({w_acc:.2%}) at eps {k}{extra}; the gradients do not show the model's real weakness.")
    if ensemble_black_only:
        ran.append(CHECK_ENSEMBLE_BLACK)
    else:
        skip.setdefault(CHECK_ENSEMBLE_BLACK, "needs an ensemble with white-box and black-box members")
    for k in keys:
        frac = (ensemble_black_only or {}).get(k)
        if frac is not None and frac > tol:
            out.append(f"SUSPECT: at eps {k}, {frac:.2%} of the images resisted every white-box member of the "
                       "ensemble but fell to a black-box one; the gradients do not show the model's real weakness.")
    # 4. iterative attacks must beat single-step ones
    iterative = [a for a in white if not ATTACKS[a].minimal]
    if "fgsm" not in robust_accuracy or not iterative:
        skip.setdefault(CHECK_FGSM, "FGSM did not run" if "fgsm" not in robust_accuracy
                        else "no iterative white-box attack ran")
    else:
        ran.append(CHECK_FGSM)
        for k in keys:
            it = [robust_accuracy[a][k] for a in iterative if robust_accuracy[a].get(k) is not None]
            f = robust_accuracy["fgsm"].get(k)
            if it and f is not None and f < min(it) - tol:
                out.append(f"SUSPECT: single-step FGSM ({f:.2%}) beats the iterative attacks ({min(it):.2%}) at eps "
                           f"{k}; the loss surface is not smooth around the data (gradient masking?)")
    # 5. the ensemble is meant to be the strongest: no single attack may beat it
    singles = [a for a in robust_accuracy if a in ATTACKS and not ATTACKS[a].minimal]
    if not ensemble or not singles:
        skip.setdefault(CHECK_ENSEMBLE, "no ensemble ran" if not ensemble else "no attack ran on its own beside it")
    else:
        ran.append(CHECK_ENSEMBLE)
        for k in keys:
            e = ensemble.get(k)
            single = [(robust_accuracy[a][k], a) for a in singles if robust_accuracy[a].get(k) is not None]
            if e is not None and single and min(single)[0] < e - tol:
                acc, name = min(single)
                out.append(f"SUSPECT: {name} alone ({acc:.2%}) beats the ensemble ({e:.2%}) at eps {k}; the "
                           "ensemble's attacks are too weak for this model (more steps, restarts or queries).")
    if randomized is None:
        skip.setdefault(CHECK_RANDOMIZED, "not looked at")
    else:
        ran.append(CHECK_RANDOMIZED)
        if randomized and eot_samples == 1:
            out.append("The model is randomized (two forward passes on the same images differ), and the attacks used "
                       "one sample per gradient: set eot_samples > 1 (expectation over transformation) for a "
                       "reliable figure.")
    for name in ran:
        skip.pop(name, None)
    return {"warnings": out, "ran": ran, "skipped": skip}


def eps_key(text: str | float, value: float) -> str:
    """The results key of an epsilon as the user wrote it (``"8/255"``), or a canonical one for numbers."""
    if not isinstance(text, str):
        return format_eps(value)
    t = text.strip().replace(" ", "")
    return t if t else format_eps(value)
