"""`imgclass train` writes results.json (kind "train") and report.html, and records its run in the run store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import mirror_file

from imgclass import load_model, results
from imgclass.cli import main
from imgclass.store import open_store
from imgclass.train import TrainConfig, train


def _npz(src: str, n: int, path: Path) -> Path:
    """The first ``n`` images of a lossless CIFAR-10 mirror file as an npz."""
    d = np.load(mirror_file(f"cifar10-lossless/{src}"))
    np.savez(path, images=d["images"][:n], labels=d["labels"][:n], class_names=d["class_names"])
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("data")
    return _npz("train-first2000.npz", 64, folder / "train.npz"), _npz("test-first1000.npz", 48, folder / "val.npz")


def _cfg(train_npz: Path, val_npz: Path | None, **kw) -> TrainConfig:
    base = {"data": f"npz:{train_npz}", "val_data": f"npz:{val_npz}" if val_npz else None, "model": "lenet",
            "epochs": 2, "batch_size": 32, "lr": 0.05, "workers": 0, "tensorboard": False, "crop": "none",
            "hflip": False, "probes": ("accuracy",)}
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run(data, tmp_path_factory, single_thread) -> dict:
    """Two epochs of LeNet on 64 images, validated on 48, recorded in a temporary SQLite store."""
    tmp = tmp_path_factory.mktemp("run")
    url = f"sqlite:///{tmp / 'runs.db'}"
    res = train(_cfg(*data), tmp / "out", progress=False, store=url)
    return {"out": tmp / "out", "url": url, "result": res, "tmp": tmp}


def _section(html: str, anchor: str) -> str:
    start = html.index(f'<section id="{anchor}">')
    return html[start:html.index("</section>", start)]


def test_results_json_is_a_train_run_of_the_saved_checkpoint(run, data):
    out = run["out"]
    r = results.load(out / "results.json")
    assert r.kind == "train" and r.seed == 0
    assert r.to_dict() == run["result"]["results"]
    name = r.training["checkpoint"]
    assert r.model.spec == f"file:{out / name}"
    # the checkpoint the final validation measured: best.safetensors when it set the best, else last.safetensors
    earlier = [row["val_top1"] for row in r.training["history"][:-1]]
    final_is_best = not earlier or r.training["history"][-1]["val_top1"] > max(earlier)
    assert name == ("best.safetensors" if final_is_best else "last.safetensors")
    loaded = load_model(r.model.spec)
    best = load_model(f"file:{out / 'best.safetensors'}")
    assert (r.model.group, r.model.group_label) == best.group() == loaded.group()
    assert r.model.group.startswith("recipe:") and r.model.weights_sha256 == loaded.weights_sha256()
    assert r.data.spec == f"npz:{data[0]}" and r.data.n_samples == 64 and r.data.files_sha256
    assert r.training["validation_data"]["spec"] == f"npz:{data[1]}"
    t = r.training
    assert [row["epoch"] for row in t["history"]] == [1, 2] and t["num_updates"] == 4 and t["stopped"] is None
    assert t["config"] == _cfg(*data).to_dict() and t["validated_epoch"] == 2
    assert t["best_val_top1"] == max(row["val_top1"] for row in t["history"])
    assert set(r.probes) == {"accuracy"} and r.probe_params["accuracy"] is not None
    assert r.probes["accuracy"]["top1"] == t["history"][-1]["val_top1"]
    assert r.settings["world_size"] == 1 and r.environment["torch"] and r.timing["train_seconds"] > 0


def test_report_has_the_training_section_and_rerenders_identically(run, tmp_path):
    out = run["out"]
    html = (out / "report.html").read_text(encoding="utf-8")
    training = _section(html, "training")
    assert "<h2>Training</h2>" in training and '<a href="#training">' in html
    for caption in ("training loss per epoch", "learning rate at the end of each epoch",
                    "validation metrics per validated epoch"):
        assert f"<figcaption>{caption}" in training
    assert training.count("data:image/png;base64,") == 3
    assert "<th>train_loss</th>" in training and "<th>val_top1</th>" in training  # the history table
    assert html.index('id="training"') < html.index('id="accuracy"')  # before the probes' own sections
    again = tmp_path / "again.html"
    assert main(["report", str(out / "results.json"), "--out", str(again)]) == 0
    assert again.read_text(encoding="utf-8") == html


def test_final_probe_results_equal_eval_of_the_checkpoint(run, data, tmp_path, monkeypatch):
    """Reference: `imgclass eval MODEL VAL --probes accuracy` of the checkpoint results.json names (same data,
    same probe): top-1, top-5 and the count agree exactly."""
    monkeypatch.setenv("IMGCLASS_STORE", f"sqlite:///{tmp_path / 'eval-runs.db'}")
    r = results.load(run["out"])
    assert main(["eval", r.model.spec, f"npz:{data[1]}", "--probes", "accuracy", "--out", str(tmp_path / "eval"),
                 "--workers", "0", "--quiet"]) == 0
    ref = json.loads((tmp_path / "eval" / "results.json").read_text())
    for key in ("top1", "top5", "n_evaluated"):
        assert r.probes["accuracy"][key] == ref["probes"]["accuracy"][key], key
    assert ref["model"]["weights_sha256"] == r.model.weights_sha256 and ref["model"]["group"] == r.model.group


def test_the_run_is_in_the_store(run):
    r = results.load(run["out"])
    with open_store(run["url"]) as store:
        runs = store.list(kind="train")
    assert [x.id for x in runs] == [run["result"]["run_id"]]
    rec = runs[0]
    assert rec.model_spec == r.model.spec and rec.data_spec == r.data.spec and rec.model_group == r.model.group
    assert rec.headline["accuracy.top1"] == r.probes["accuracy"]["top1"]
    assert rec.results_path == str((run["out"] / "results.json").resolve())
    assert rec.report_path == str((run["out"] / "report.html").resolve())


def test_cli_max_steps_without_validation_writes_results_and_records_in_the_given_store(data, tmp_path, capsys,
                                                                                         single_thread):
    """Stopped by max_steps, no validation data: the last checkpoint, no probes, the stop reason; --store records
    there, --no-store nowhere."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    args = ["train", f"npz:{data[0]}", "--model", "lenet", "--quiet", "--set", "epochs=2", "--set", "batch_size=32",
            "--set", "workers=0", "--set", "tensorboard=false", "--set", "max_steps=1"]
    assert main([*args, "--out", str(tmp_path / "a"), "--store", url]) == 0
    assert "results.json" in capsys.readouterr().out
    r = results.load(tmp_path / "a" / "results.json")
    assert r.kind == "train" and r.probes == {} and r.model.spec == f"file:{tmp_path / 'a' / 'last.safetensors'}"
    assert r.training["stopped"] == "max_steps=1" and r.training["num_updates"] == 1
    assert r.training["best_val_top1"] is None and r.training["validation_data"] is None
    assert "No validation data" in (tmp_path / "a" / "report.html").read_text(encoding="utf-8")
    assert main([*args, "--out", str(tmp_path / "b"), "--no-store"]) == 0
    assert (tmp_path / "b" / "results.json").is_file()
    with open_store(url) as store:
        assert [x.model_spec for x in store.list(kind="train")] == [r.model.spec]
