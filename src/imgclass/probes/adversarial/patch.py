"""The universal patch (attack ``patch``): trained on some images, evaluated on others against a random patch."""

from __future__ import annotations

import numpy as np
import torch

from ...attacks import derive_seed, get_attack, sample_keys
from ...report.images import image_base64
from .params import AdversarialParams
from .run import Aligned, to_u8, make_attack

__all__ = ["patch_result"]


def patch_result(ctx, p: AdversarialParams, ds) -> dict:
    """Train the patch (on ``patch_train``, or a seeded half of ``ds``), then compare it with a random patch of the
    same size at the same per-sample positions on the evaluation images."""
    eng, clf = ctx.engine, ctx.classifier
    if p.patch_train:
        from ...data import load_dataset

        train, ev = load_dataset(p.patch_train), ds
        how = f"trained on {p.patch_train}, evaluated on the selected samples"
    else:
        perm = ctx.generator("adversarial-patch").permutation(len(ds))
        half = len(ds) // 2
        train, ev = ds.subset(np.sort(perm[:half])), ds.subset(np.sort(perm[half:]))
        how = f"trained on a seeded half of the selected samples (seed {ctx.seed}), evaluated on the other half"
    m_train = Aligned(clf, eng.alignment(train)).eval()
    m_eval = Aligned(clf, eng.alignment(ev)).eval()
    att = make_attack(p, "patch", p.norm)
    gen = torch.Generator(device=eng.device).manual_seed(derive_seed(ctx.seed, "patch-fit"))
    losses = []
    for e in range(att.epochs):  # every process trains the same patch on every batch
        eng.map(train, lambda b: (losses.append(att.fit_step(m_train, eng.to_float(b.images), b.labels, gen)),
                                  {})[1], grad=True, shard=False, desc=f"patch epoch {e + 1}/{att.epochs}")
    c, h, w = clf.config.input_size
    side = att.side(h, w)
    rnd = get_attack("patch", size=att.size, patch=torch.rand((c, side, side), generator=gen, device=eng.device))
    seed = derive_seed(ctx.seed, "patch")

    def fe(b):
        x, y = eng.to_float(b.images), b.labels
        keys = sample_keys(seed, torch.as_tensor(b.indices), x.device)  # same positions for both patches
        return {"label": y, "clean": m_eval(x).argmax(1),
                "patched": m_eval(att(m_eval, x, y, seed=seed, keys=keys).adv).argmax(1),
                "random": m_eval(rnd(m_eval, x, y, seed=seed, keys=keys).adv).argmax(1)}

    o = eng.map(ev, fe, desc="patch evaluation").outputs
    y, ok = o["label"], o["clean"] == o["label"]
    res = {
        "how": how, "size": att.size, "side_px": side, "target_class": att.target_class, "epochs": att.epochs,
        "n_train": len(train), "n_eval": int(len(y)), "final_train_loss": losses[-1] if losses else None,
        "clean_accuracy": float(ok.double().mean()), "patched_accuracy": float((o["patched"] == y).double().mean()),
        "random_patch_accuracy": float((o["random"] == y).double().mean()),
        "success_rate": float((o["patched"][ok] != y[ok]).double().mean()) if ok.any() else None,
        "patch_png": image_base64(to_u8(att.patch), max_side=256),
    }
    if att.target_class is not None:
        res["target_rate"] = float((o["patched"] == att.target_class).double().mean())
    return res
