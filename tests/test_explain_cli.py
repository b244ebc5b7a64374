"""The `explanations` probe through evaluate() and the `imgclass explain` command: their numbers and maps
are those of the library functions on the same images (the model's resize/crop applied)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from imgclass.explain import deletion_auc, explain, insertion_auc, load_images


@pytest.fixture(scope="module")
def cifar_assets():
    from conftest import mirror_file

    mirror_file("cifar10-lossless/test-first1000.npz")
    mirror_file("models/akamaster-resnet-cifar10/resnet20-12fca82f.th")


def test_probe_results_report_and_agreement_with_the_functions(cifar_assets, tmp_path):
    import imgclass
    from imgclass.evaluate import evaluate
    from imgclass.probes.explanations import sample_seed

    params = {"n_samples": 4, "methods": ("gradcam", "saliency"), "n_steps": 8, "randomization_stages": (1, 2),
              "gallery": 2}
    res = evaluate("zoo:cifar10-resnet20", "zoo:cifar10-lossless:test", probes=["explanations"],
                   probe_params={"explanations": params}, out=tmp_path, progress=False, seed=3, workers=0, limit=40)
    r = json.loads((tmp_path / "results.json").read_text())["probes"]["explanations"]
    assert r == json.loads(json.dumps(res["probes"]["explanations"]))
    assert r["n_evaluated"] == 4 and set(r["deletion_auc"]) == {"gradcam", "saliency", "random", "random_smooth"}
    assert set(r["insertion_auc"]) == set(r["deletion_auc"])
    assert set(r["randomization"]["mean_spearman_abs"]) == {"gradcam", "saliency"}
    assert r["randomization"]["stages"] == [1, 2] and len(r["gallery"]) == 2
    html = (tmp_path / "report.html").read_text()
    assert "Gallery" in html and html.count("data:image/jpeg;base64") == 2 and "deletion AUC" in html
    # a warning exactly for the methods that do no better than the per-pixel random map, on either measure
    worse = {m for m in ("gradcam", "saliency") if r["deletion_auc"][m] >= r["deletion_auc"]["random"]
             or r["insertion_auc"][m] <= r["insertion_auc"]["random"]}
    assert {w.split(" ")[0] for w in r["warnings"]} == worse
    assert all(f"explanations: {w}" in res["warnings"] for w in r["warnings"])

    # the same samples through the library functions
    clf = imgclass.load_model("zoo:cifar10-resnet20")
    ds = imgclass.load_dataset("zoo:cifar10-lossless:test")
    ids = {ds.sample_id(i): i for i in range(len(ds))}
    idx = [ids[s] for s in r["sample_ids"]]
    x = torch.stack([ds.load(i) for i in idx]).float() / 255
    with torch.no_grad():
        t = clf(x).argmax(1)
    seeds = [sample_seed(3, s) for s in r["sample_ids"]]
    for m in ("gradcam", "saliency"):
        maps = explain(clf, x, t, method=m, internal_batch_size=32)
        d = deletion_auc(clf, x, maps, t, n_steps=8, seed=seeds).auc
        i = insertion_auc(clf, x, maps, t, n_steps=8, seed=seeds).auc
        np.testing.assert_allclose(r["per_sample"]["deletion_auc"][m], d.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(r["per_sample"]["insertion_auc"][m], i.numpy(), rtol=1e-4, atol=1e-6)
        assert r["deletion_auc"][m] == pytest.approx(float(d.double().mean()), rel=1e-4)


def test_probe_rejects_unknown_methods(cifar_assets):
    from imgclass.evaluate import evaluate

    with pytest.raises(ValueError, match="unknown method.*nope"):
        evaluate("zoo:cifar10-resnet20", "zoo:cifar10-lossless:test", probes=["explanations"],
                 probe_params={"explanations": {"methods": ("nope",)}}, progress=False, workers=0)


def test_explain_command_writes_overlays_and_maps(cifar_assets, tmp_path):
    import imgclass
    from imgclass.cli import main

    ds = imgclass.load_dataset("zoo:cifar10-lossless:test")
    files = []
    for i, name in ((0, "a/cat.png"), (1, "b/cat.png"), (2, "plane.jpg")):
        p = tmp_path / "in" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.load(i).permute(1, 2, 0).numpy()).resize((48, 40)).save(p)  # not the model's size
        files.append(str(p))
    out = tmp_path / "out"
    rc = main(["explain", "zoo:cifar10-resnet20", *files, "--method", "gradcam,saliency", "--out", str(out),
               "--save-npy", "--target", "cat", "--layer", "layer2"])
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{s}.{m}.{e}" for s in ("cat", "cat-2", "plane") for m in ("gradcam", "saliency")
                           for e in ("png", "npy"))
    clf = imgclass.load_model("zoo:cifar10-resnet20")
    x = load_images(files, clf.config).float() / 255
    assert x.shape == (3, 3, 32, 32)  # the model's eval resize/crop
    ref = {"gradcam": explain(clf, x, 3, method="gradcam", layer="layer2"), "saliency": explain(clf, x, 3, method="saliency")}
    for k, stem in enumerate(("cat", "cat-2", "plane")):
        for m in ("gradcam", "saliency"):
            np.testing.assert_allclose(np.load(out / f"{stem}.{m}.npy"), ref[m][k].numpy(), rtol=1e-5, atol=1e-6)
            assert Image.open(out / f"{stem}.{m}.png").size == (32, 32)
    assert main(["explain", "zoo:cifar10-resnet20", files[0], "--method", "saliency", "--layer", "layer2",
                 "--out", str(out)]) == 2
    assert main(["explain", "zoo:cifar10-resnet20", files[0], "--method", "nope", "--out", str(out)]) == 2
    assert main(["explain", "zoo:cifar10-resnet20", files[0], "--set", "gradcam.steps=3", "--out", str(out)]) == 2


def test_worse_than_random_names_the_direction_of_each_measure():
    """Invariant: deletion AUC must be below the random map's, insertion AUC above it; ties count as no better."""
    from imgclass.probes.explanations import _worse_than_random

    d = {"good": 0.10, "tie": 0.30, "bad_ins": 0.20, "random": 0.30}
    i = {"good": 0.60, "tie": 0.70, "bad_ins": 0.40, "random": 0.40}
    w = _worse_than_random(d, i, ["good", "tie", "bad_ins"])
    assert [x.split(" ")[0] for x in w] == ["tie", "bad_ins"]
    assert "deletion AUC 0.3000 >= random map's 0.3000 (lower is better)" in w[0]
    assert "insertion AUC 0.4000 <= random map's 0.4000 (higher is better)" in w[1]
