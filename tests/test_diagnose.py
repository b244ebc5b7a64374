"""imgclass diagnose: the runner, issues.csv, re-scoring, human labels, bad probability files, the official-order
CIFAR-10 JPEG test set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from imgclass import evaluate, load_dataset
from imgclass.cli import main
from imgclass.diagnose import diagnose
from imgclass.report import render_report
from imgclass.results import load

from conftest import mirror_file

LOSSLESS = "zoo:cifar10-lossless:test"


def test_official_order_jpeg_test_set_joins_the_official_indices():
    """Reference: the lossless first 1,000 test images (official order): zoo:cifar10-jpeg:test-official has the
    same labels and ids test/<index>, the same images up to JPEG (mean absolute difference of a few levels, while
    neighbouring images differ by tens), and CIFAR-10H attached row for row."""
    jpeg = load_dataset("zoo:cifar10-jpeg:test-official")
    lossless = load_dataset(LOSSLESS)
    assert len(jpeg) == 10_000
    assert np.array_equal(jpeg.labels[:1000], lossless.labels)
    assert [jpeg.sample_id(i) for i in (0, 1, 999)] == [lossless.sample_id(i) for i in (0, 1, 999)]
    for i in (0, 17, 500, 999):
        same = (jpeg.load(i).float() - lossless.load(i).float()).abs().mean()
        other = (jpeg.load(i).float() - lossless.load(i + 1 if i < 999 else 0).float()).abs().mean()
        assert same < 12 < other
    h = np.load(mirror_file("cifar10h/cifar10h-probs.npy"))
    assert np.array_equal(jpeg.soft_labels, h)


@pytest.fixture(scope="module")
def human_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diag")
    res = diagnose(LOSSLESS, models=["zoo:cifar10-resnet20"], checks=["human_labels"], out=out, progress=False,
                   store=False)
    return out, res


def test_human_labels_against_the_accuracy_probes_figures(human_run, tmp_path):
    """Reference: `imgclass eval --probes accuracy,calibration` on the same model and data computes the agreement
    with the human majority and the cross-entropy to CIFAR-10H its own way; the check's numbers equal them, and its
    flagged samples are exactly those whose CIFAR-10H majority is not the given label."""
    _, res = human_run
    ev = evaluate("zoo:cifar10-resnet20", LOSSLESS, probes=["accuracy", "calibration"], progress=False, store=False)
    h = res["probes"]["human_labels"]
    assert h["accuracy"] == pytest.approx(ev["probes"]["accuracy"]["top1"], abs=1e-12)
    assert h["human_majority_accuracy"] == pytest.approx(ev["probes"]["accuracy"]["human"]["top1_vs_human_majority"],
                                                         abs=1e-12)
    assert h["expected_agreement_with_an_annotator"] == pytest.approx(
        ev["probes"]["accuracy"]["human"]["expected_agreement_with_a_human"], abs=1e-9)
    assert h["cross_entropy"] == pytest.approx(ev["probes"]["calibration"]["human"]["cross_entropy"], abs=1e-6)
    ds = load_dataset(LOSSLESS)
    want = {ds.sample_id(i) for i in np.flatnonzero(ds.soft_labels.argmax(1) != ds.labels)}
    assert {f.sample_id for f in res["flags"]} == want and h["n_disagree"] == len(want)


def test_outputs_issues_csv_and_report_round_trip(human_run, tmp_path):
    """Invariant: issues.csv has one row per flagged sample with the flag's fields; results.json loads through
    imgclass.results (kind diagnose) and re-renders the written report byte for byte."""
    out, res = human_run
    rows = list(csv.DictReader((out / "issues.csv").open()))
    assert [r["sample_id"] for r in rows] == [f.sample_id for f in res["flags"]]
    names = load_dataset(LOSSLESS).classes.names
    for r, f in zip(rows, res["flags"]):
        assert r["check"] == "human_labels" and r["given_label"] == names[f.given]
        assert r["suggested_label"] == names[f.suggested] and float(r["score"]) == f.score
    typed = load(out)
    assert typed.kind == "diagnose" and typed.probes["human_labels"]["n_flagged"] == len(rows)
    assert render_report(typed).to_html() == (out / "report.html").read_text()
    page = (out / "report.html").read_text()
    assert "Diagnosis" in page and page.count("data:image/png;base64,") >= min(len(rows), 24)


def test_rescoring_with_corrected_labels(tmp_path):
    """Reference: the accuracy recomputed by hand from the model's predictions and the corrected labels."""
    ds = load_dataset(LOSSLESS)
    ev = evaluate("zoo:cifar10-resnet20", LOSSLESS, probes=["accuracy"], out=tmp_path / "ev", progress=False,
                  store=False)
    from imgclass.results import read_samples

    s = read_samples(tmp_path / "ev" / "samples.npz").probes["accuracy"]
    pred = s["pred"]
    wrong = np.flatnonzero(pred != ds.labels)[:7]  # relabel seven errors to the predicted class
    fix = tmp_path / "fix.csv"
    fix.write_text("sample_id,label\n" + "".join(f"{ds.sample_id(i)},{ds.classes.names[pred[i]]}\n" for i in wrong))
    res = diagnose(LOSSLESS, models=["zoo:cifar10-resnet20"], checks=["human_labels"], relabel=str(fix),
                   progress=False, store=False)
    r = res["rescoring"]
    assert r["accuracy"] == ev["probes"]["accuracy"]["top1"]
    assert r["relabeled"] == 7 and r["accuracy_relabeled"] == pytest.approx(r["accuracy"] + 7 / len(ds), abs=1e-12)
    bad = tmp_path / "bad.csv"
    bad.write_text("sample_id,label\ntest/0,giraffe\n")
    with pytest.raises(Exception, match="giraffe"):
        diagnose(LOSSLESS, checks=["human_labels"], relabel=str(bad), progress=False, store=False)


@pytest.mark.parametrize("make, words", [
    (lambda p: p[:, :5], "shape (1000, 5), expected (1000, 10)"),
    (lambda p: p[:999], "shape (999, 10)"),
    (lambda p: p * 0.9, "sum"),
    (lambda p: np.where(np.arange(10) == 3, np.nan, p), "NaN"),
], ids=["columns", "rows", "not-normalized", "nan"])
def test_a_bad_probability_file_is_one_clear_line(tmp_path, capsys, make, words):
    """Invariant: a --probs file of the wrong shape, with rows not summing to 1, or with NaN is a usage error
    naming the file and the problem (exit 2, one line)."""
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10), size=1000)
    f = tmp_path / "p.npy"
    np.save(f, make(p))
    code = main(["diagnose", LOSSLESS, "--probs", str(f), "--checks", "label_issues", "--no-store", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and str(f) in err and words.lower() in err.lower(), err


def test_check_needs_are_usage_errors(capsys):
    """Invariant: a check without what it needs says what to give, in one line (exit 2)."""
    assert main(["diagnose", "zoo:imagenet-samples:all", "--checks", "human_labels", "--no-store", "--quiet"]) == 2
    assert "CIFAR-10H" in capsys.readouterr().err
    assert main(["diagnose", LOSSLESS, "--checks", "human_labelz", "--no-store", "--quiet"]) == 2
    assert "did you mean 'human_labels'" in capsys.readouterr().err


def test_diagnose_records_its_run(tmp_path, capsys):
    """Invariant: a diagnosis is a run in the store (kind diagnose) with its headline numbers."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    assert main(["diagnose", LOSSLESS, "--checks", "human_labels", "--out", str(tmp_path / "d"), "--store", url,
                 "--quiet"]) == 0
    from imgclass.store import open_store

    with open_store(url) as st:
        (run,) = st.list(kind="diagnose")
    assert run.headline["human_labels.n_disagree"] == json.loads(
        (tmp_path / "d" / "results.json").read_text())["probes"]["human_labels"]["n_disagree"]


def test_label_issues_on_the_published_probabilities_equal_cleanlab(tmp_path):
    """Reference: cleanlab.filter.find_label_issues (ranked by self-confidence) on the published cross-validated
    probabilities of the CIFAR-10 test set (Northcutt et al. 2021) and the official labels of
    zoo:cifar10-jpeg:test-official: the same 284 samples in the same order; accuracy 92.94 % as published."""
    from cleanlab.filter import find_label_issues

    probs = mirror_file("cifar10-label-errors/cifar10_test_set_pyx.npy")
    res = diagnose("zoo:cifar10-jpeg:test-official", probs=str(probs), checks=["label_issues", "human_labels"],
                   out=tmp_path, progress=False, store=False)
    ds = load_dataset("zoo:cifar10-jpeg:test-official")
    want = find_label_issues(ds.labels, np.load(probs), return_indices_ranked_by="self_confidence")
    assert len(want) == 284 and res["probes"]["label_issues"]["n_issues"] == 284
    assert [f.index for f in res["flags"] if f.check == "label_issues"] == want.tolist()
    assert res["rescoring"]["accuracy"] == pytest.approx(0.9294, abs=1e-12)
    agree = res["agreement"]["label_issues_vs_human_majority"]
    human = {f.index for f in res["flags"] if f.check == "human_labels"}
    assert agree["both"] == len(human & set(want.tolist())) and agree["human_majority_disagrees"] == len(human)


def test_cross_validated_probabilities_come_from_the_model_that_did_not_see_the_sample(tmp_path):
    """Reference: each fold's own checkpoint (file:OUT/cv/foldK/last.safetensors) predicting its held-out samples,
    and the data layer's stratified fold split: the folds partition the data, each fold's model trained on the other
    folds only, and the probabilities of a held-out sample are that model's."""
    from helpers import lossless_train

    from imgclass import load_model
    from imgclass.data import fold_assignment
    from imgclass.engine import Engine

    data = f"npz:{lossless_train(100, tmp_path / 'data')}"
    res = diagnose(data, cv=2, recipe=None, cv_model="lenet", train_settings=["epochs=1", "batch_size=16",
                   "workers=0", "tensorboard=false", "max_steps=2"], checks=["label_issues"], out=tmp_path / "out",
                   progress=False, store=False)
    folds = res["cross_validation"]["folds"]
    ds = load_dataset(data)
    assign = fold_assignment(ds.labels, 2, 0)
    assert [f["n_heldout"] for f in folds] == [int((assign == k).sum()) for k in (0, 1)]
    assert sum(f["n_heldout"] for f in folds) == 100 and all(f["n_train"] == 100 - f["n_heldout"] for f in folds)
    for f in folds:
        trained = load(Path(f["run"]))
        assert trained.data.n_samples == f["n_train"]
        assert trained.data.spec.endswith(f"fold={f['fold']}&fold_seed=0&part=train")
    issues = load(tmp_path / "out").probes["label_issues"]
    assert issues.n_evaluated == 100
    # the probabilities of fold 1's held-out samples are fold 1's model's
    held = load_dataset(f"{data}?folds=2&fold=1&part=heldout")
    assert len(held) == int((assign == 1).sum())
    clf = load_model(f"file:{tmp_path / 'out' / 'cv' / 'fold1' / 'last.safetensors'}")
    pred = Engine(clf, workers=0, progress=False).predict(held)
    import torch

    want = torch.softmax(pred.logits.double(), 1).numpy().argmax(1)
    flagged = {f.sample_id for f in res["flags"]}
    for row, i in enumerate(np.flatnonzero(assign == 1)):  # suggested label = that model's argmax
        if ds.sample_id(int(i)) in flagged:
            (flag,) = [f for f in res["flags"] if f.sample_id == ds.sample_id(int(i))]
            assert flag.suggested == want[row]
