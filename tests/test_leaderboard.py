"""The leaderboard and `runs compare` over a real store (SQLite and PostgreSQL): numbers equal the runs' results.json
figures, seeds of one recipe aggregate as mean +- std, and compare lists exactly the samples whose correctness
differs."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from imgclass import evaluate, load_dataset, load_model
from imgclass.cli import main
from imgclass.compare import board_html, compare, leaderboard, resolve_runs
from imgclass.results import load
from imgclass.store import open_store
from imgclass.train import TrainConfig, train

from helpers import lossless_train

DATA = "zoo:cifar10-lossless:test"
ZOO = ["zoo:cifar10-resnet20", "zoo:mlperf-tiny-resnet8", "zoo:vnncomp-cifar10-small"]
PROBES = ["accuracy", "calibration", "corruptions", "adversarial"]
PARAMS = {"corruptions": {"corruptions": "gaussian_noise,fog", "severities": "1,3", "example_size": 0},
          "adversarial": {"attacks": ("fgsm", "pgd"), "eps": ("1/255",), "samples": 24, "gallery": 0}}
LIMIT = 64


@pytest.fixture(scope="module")
def zoo_runs(tmp_path_factory) -> dict[str, Path]:
    """The zoo's CIFAR-10 models, each evaluated once with accuracy, calibration, corruptions and adversarial."""
    root = tmp_path_factory.mktemp("zoo-runs")
    out = {}
    for spec in ZOO:
        d = root / spec.split(":")[1]
        evaluate(spec, DATA, probes=PROBES, probe_params=PARAMS, limit=LIMIT, out=d, progress=False, store=False)
        out[spec] = d
    return out


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory) -> list[Path]:
    """One tiny training recipe with two seeds, each checkpoint evaluated on the test subset."""
    root = tmp_path_factory.mktemp("seeds")
    data = lossless_train(64, root / "data")
    runs = []
    for seed in (0, 1):
        cfg = TrainConfig(data=f"npz:{data}", model="lenet", epochs=1, batch_size=32, lr=0.05, workers=0,
                          tensorboard=False, crop="none", hflip=False, seed=seed)
        train(cfg, root / f"train{seed}", progress=False, store=False)
        d = root / f"eval{seed}"
        evaluate(f"file:{root / f'train{seed}' / 'last.safetensors'}", DATA, probes=["accuracy", "calibration"],
                 limit=LIMIT, out=d, progress=False, store=False)
        runs.append(d)
    return runs


def _figure(results_dir: Path, probe: str, *path: str):
    v = json.loads((results_dir / "results.json").read_text())["probes"][probe]
    for p in path:
        v = v[p]
    return v


def test_leaderboard_numbers_equal_the_runs_results_and_seeds_aggregate(zoo_runs, seed_runs, store_url, tmp_path):
    """Reference: each run's results.json. A zoo model's cell is its run's figure exactly; the two seeds of one
    recipe form one row with mean and sample standard deviation (statistics.stdev) over n = 2; each column's header
    states its protocol (attack norm/eps/attacks, corruption parameter set and severities, ECE bins)."""
    with open_store(store_url) as store:
        # the seeds' folder holds the training runs too (kind "train": validation numbers, left out of the board)
        ids, skipped = store.import_paths([*zoo_runs.values(), seed_runs[0].parent], progress=False)
        assert len(ids) == 3 + 4 and not skipped
        assert len(store.list(kind="train")) == 2
        board = leaderboard(store, data=DATA, columns=["clean", "adversarial", "corruptions", "calibration"])
    rows = {r["label"]: r for r in board.rows}
    assert len(rows) == 4  # three zoo models and one recipe
    for spec, d in zoo_runs.items():
        cells = rows[spec]["cells"]
        assert cells["clean"].mean == _figure(d, "accuracy", "top1") and cells["clean"].n == 1
        assert cells["adversarial"].mean == _figure(d, "adversarial", "worst_case", "1/255")
        assert cells["corruptions"].mean == _figure(d, "corruptions", "mean_accuracy")
        assert cells["calibration"].mean == _figure(d, "calibration", "ece")
        assert cells["clean"].std is None
    (recipe,) = [r for label, r in rows.items() if label not in zoo_runs]
    top1 = [_figure(d, "accuracy", "top1") for d in seed_runs]
    cell = recipe["cells"]["clean"]
    assert cell.n == 2 and cell.mean == pytest.approx(statistics.fmean(top1), abs=1e-15)
    assert cell.std == pytest.approx(statistics.stdev(top1), abs=1e-15)
    assert {r["seed"] for r in cell.runs} == {0} and len(recipe["models"]) == 2  # two checkpoints, one recipe
    assert recipe["cells"]["adversarial"].n == 0
    sample_set = load(zoo_runs[ZOO[0]]).data.files_sha256[:12]
    assert board.protocols["adversarial"] == {"norm": "linf", "primary_eps": "1/255", "ensemble": None,
                                              "attacks": ["fgsm", "pgd"], "robust_accuracy": load(
                                                  zoo_runs[ZOO[0]]).protocols()["adversarial"]["robust_accuracy"],
                                              "sample_set": sample_set}
    assert board.protocols["corruptions"] == {"parameter_set": "cifar10", "corruptions": ["gaussian_noise", "fog"],
                                              "severities": [1, 3], "sample_set": sample_set}
    assert "15 equal-width bins" in board.protocols["calibration"]["ece"]
    page = board_html(board, out=tmp_path / "board.html")
    for d in [*zoo_runs.values(), *seed_runs]:
        assert f'href="{os.path.relpath(d / "report.html", tmp_path)}"' in page
    assert "eps=1/255" in page.replace("primary_eps", "eps") and "parameter_set=cifar10" in page
    assert "± " in page and "(n=2)" in page and "th[data-col]" in page


def test_leaderboard_cli_writes_a_linked_board(zoo_runs, store_url, tmp_path, capsys):
    """Invariant: `imgclass leaderboard` prints one row per model and writes HTML whose numbers link to each run's
    report (paths relative to the board); an unknown column is a usage error naming the known ones."""
    assert main(["runs", "import", *map(str, zoo_runs.values()), "--store", store_url]) == 0
    out = tmp_path / "board" / "board.html"
    assert main(["leaderboard", "--data", DATA, "--columns", "clean,adversarial,calibration", "--out", str(out),
                 "--store", store_url]) == 0
    text = capsys.readouterr().out
    for spec in zoo_runs:
        assert spec in text
    page = out.read_text()
    for d in zoo_runs.values():
        assert f'href="{os.path.relpath(d / "report.html", out.parent)}"' in page
    assert main(["leaderboard", "--columns", "clean,robustnes", "--store", store_url]) == 2
    err = capsys.readouterr().err
    assert "robustnes" in err and "adversarial" in err and err.count("\n") == 1


def test_runs_on_another_sample_set_are_left_out_not_mixed(zoo_runs, store_url, tmp_path):
    """Invariant: a number measured on another subset of the same dataset (another --limit) does not enter a cell's
    mean; the cell lists it as measured with another protocol."""
    other = tmp_path / "other"
    evaluate(ZOO[0], DATA, probes=["accuracy"], limit=LIMIT // 2, out=other, progress=False, store=False)
    with open_store(store_url) as store:
        ids, _ = store.import_paths([*zoo_runs.values(), other], progress=False)
        board = leaderboard(store, data=DATA, columns=["clean"])
    cell = next(r for r in board.rows if r["label"] == ZOO[0])["cells"]["clean"]
    assert cell.n == 1 and cell.mean == _figure(zoo_runs[ZOO[0]], "accuracy", "top1")
    assert cell.other_protocol == [ids[-1]]


def _correct_by_plain_forward(spec: str, ids: list[str]) -> dict[str, bool]:
    """Reference: the model's own forward pass on the dataset's images (no engine, no batching tricks)."""
    clf = load_model(spec).eval()
    ds = load_dataset(DATA)
    index = {ds.sample_id(i): i for i in range(len(ds))}
    out = {}
    with torch.no_grad():
        for sid in ids:
            i = index[sid]
            x = ds.load(i).float().div(255)[None]
            out[sid] = bool(clf(x).argmax(1).item() == ds.label(i))
    return out


def test_compare_lists_exactly_the_samples_whose_correctness_differs(zoo_runs, store_url, tmp_path, capsys):
    """Reference: each model's plain forward pass on the same samples; compare's flips are exactly the samples right
    under one model and wrong under the other, in both directions; the HTML shows each flipped image."""
    a, b = ZOO[0], ZOO[2]
    with open_store(store_url) as store:
        ids, _ = store.import_paths([zoo_runs[a], zoo_runs[b]], progress=False)
        refs = resolve_runs([str(i) for i in ids], store)
    c = compare(refs)
    (f,) = c.flips
    sample_ids = [s for s in np.load(zoo_runs[a] / "samples.npz")["sample_id"].tolist()]
    ra, rb = _correct_by_plain_forward(a, sample_ids), _correct_by_plain_forward(b, sample_ids)
    assert f.n_common == LIMIT
    assert set(f.a_right_b_wrong) == {s for s in sample_ids if ra[s] and not rb[s]}
    assert set(f.a_wrong_b_right) == {s for s in sample_ids if rb[s] and not ra[s]}
    assert f.a_right_b_wrong and f.a_wrong_b_right  # the two models differ on this subset
    for s in f.a_right_b_wrong:  # the gallery's captions: each run's predicted class
        assert f.predicted[s][0] == f.labels[s] != f.predicted[s][1]
    for s in f.a_wrong_b_right:
        assert f.predicted[s][1] == f.labels[s] != f.predicted[s][0]
    metrics = dict(c.metrics)
    assert metrics["accuracy.top1"] == [_figure(zoo_runs[a], "accuracy", "top1"), _figure(zoo_runs[b], "accuracy", "top1")]
    html_out = tmp_path / "cmp.html"
    assert main(["runs", "compare", *map(str, ids), "--out", str(html_out), "--store", store_url]) == 0
    text = capsys.readouterr().out
    assert f"{len(f.a_right_b_wrong)} right in run {ids[0]} and wrong in run {ids[1]}" in text
    page = html_out.read_text()
    assert page.count("<figure style=") == len(f.a_right_b_wrong) + len(f.a_wrong_b_right)
    assert page.count("data:image/png;base64,") >= len(f.a_right_b_wrong) + len(f.a_wrong_b_right)


def test_eval_records_its_run_in_the_store(store_url, tmp_path, capsys):
    """Invariant: `imgclass eval --store URL` records one run whose stored headline numbers, hashes and paths are
    those of the results.json it wrote."""
    out = tmp_path / "run"
    assert main(["eval", "zoo:cifar10-resnet20", DATA, "--limit", "20", "--probes", "accuracy", "--quiet", "--out",
                 str(out), "--store", store_url]) == 0
    assert "recorded as run" in capsys.readouterr().out
    r = load(out)
    with open_store(store_url) as store:
        (run,) = store.list()
    assert run.kind == "eval" and run.model_spec == "zoo:cifar10-resnet20" and run.data_spec == DATA
    assert run.headline == r.headline() and run.weights_sha256 == r.model.weights_sha256
    assert run.files_sha256 == r.data.files_sha256 and Path(run.results_path) == (out / "results.json").resolve()
    assert run.probes == ["accuracy"] and run.seed == 0


def test_eval_with_a_store_that_does_not_connect_keeps_the_results(tmp_path, capsys):
    """Invariant: a store that does not connect is one error line after the results are on disk, naming them."""
    out = tmp_path / "run"
    code = main(["eval", "zoo:cifar10-resnet20", DATA, "--limit", "8", "--probes", "accuracy", "--quiet", "--out",
                 str(out), "--store", "postgresql+psycopg://nobody@127.0.0.1:1/none"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and err.startswith("error: ")
    assert "127.0.0.1" in err and "runs import" in err and str(out / "results.json") in err
    assert load(out).probes["accuracy"].n_evaluated == 8


def test_std_of_a_single_run_is_none_and_math_is_sample_std():
    """Reference: statistics.stdev (n - 1 in the denominator) for the aggregated cells."""
    from imgclass.compare.leaderboard import Cell

    c = Cell(values=[0.5, 0.75, 0.25])
    assert c.mean == statistics.fmean(c.values) and math.isclose(c.std, statistics.stdev(c.values))
    assert Cell(values=[0.3]).std is None and Cell().mean is None
