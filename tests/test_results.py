"""Typed, versioned results: round trips, upgrades of 0.1.0 files, the shipped JSON Schema, per-sample outputs and
clear errors for files that cannot be read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from imgclass import evaluate
from imgclass.cli import main
from imgclass.probes import PROBES
from imgclass.report import render_report
from imgclass.results import (SCHEMA_FILE, SCHEMA_VERSION, ProbeResult, ResultsError, from_dict, json_schema, load,
                              read_samples)

OLD = Path(__file__).parent / "data" / "results-0.1.0"
CIFAR_OLD = OLD / "cifar10-resnet20.json"
SHAPE_OLD = OLD / "cue-conflict-mobilenet.json"

EVERY_PROBE = {  # every probe but shape_bias (its own data), small settings
    "accuracy": {},
    "calibration": {},
    "corruptions": {"corruptions": "gaussian_noise,fog", "severities": "1,3", "example_size": 16},
    "adversarial": {"attacks": ("fgsm", "pgd"), "eps": ("1/255", "2/255"), "samples": 16, "gallery": 2},
    "tta": {"views": ("flip",)},
    "explanations": {"n_samples": 2, "gallery": 2, "randomization": False, "methods": ("saliency",)},
    "adaptation": {"methods": ("norm",)},
}


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    res = evaluate("zoo:cifar10-resnet20", "zoo:cifar10-lossless:test", probes=list(EVERY_PROBE),
                   probe_params=EVERY_PROBE, limit=40, out=out, progress=False, store=False)
    return out, res


@pytest.fixture(scope="module")
def shape_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("shape")
    res = evaluate("zoo:coral-mobilenet-v2-1.0-224", "zoo:cue-conflict:all", probes=["shape_bias"], limit=24,
                   out=out, progress=False, store=False)
    return out, res


def test_every_probe_has_a_typed_result():
    """Invariant: every registered probe declares its own result class with headline metrics."""
    for name, cls in PROBES.items():
        assert cls.Result is not ProbeResult and cls.Result.probe == name, name
        assert cls.Result.metrics, name


def test_round_trip_loads_validates_and_renders_the_same_report(cifar_run, shape_run):
    """Invariant: results.json of the current version loads into each probe's typed class and re-renders the report
    byte for byte; `imgclass report` writes the same file."""
    for out, res in (cifar_run, shape_run):
        r = load(out / "results.json")
        assert r.schema_version == SCHEMA_VERSION and r.kind == "eval"
        for name, pr in r.probes.items():
            assert type(pr) is PROBES[name].Result
        assert render_report(r).to_html() == (out / "report.html").read_text()
        assert r.to_dict() == json.loads((out / "results.json").read_text())
        assert r.headline() == res["headline"]
        again = out / "again.html"
        assert main(["report", str(out / "results.json"), "--out", str(again)]) == 0
        assert again.read_text() == (out / "report.html").read_text()


def test_headline_numbers_are_the_probes_own_numbers(cifar_run):
    """Invariant: each declared headline number is the figure the probe wrote (no recomputation, no rounding)."""
    out, res = cifar_run
    p, h = res["probes"], res["headline"]
    assert h["accuracy.top1"] == p["accuracy"]["top1"]
    assert h["calibration.ece"] == p["calibration"]["ece"]
    assert h["calibration.ece_after_scaling"] == p["calibration"]["temperature_scaling"]["after"]["ece"]
    assert h["corruptions.mean_accuracy"] == p["corruptions"]["mean_accuracy"]
    assert h["adversarial.robust_accuracy"] == p["adversarial"]["worst_case"]["2/255"]  # the largest eps
    assert h["adversarial.robust_accuracy@1/255"] == p["adversarial"]["worst_case"]["1/255"]
    assert h["adversarial.pgd@2/255"] == p["adversarial"]["robust_accuracy"]["pgd"]["2/255"]
    assert h["tta.accuracy@flip"] == p["tta"]["sets"]["flip"]["accuracy"]
    assert h["explanations.deletion_auc@saliency"] == p["explanations"]["deletion_auc"]["saliency"]
    assert h["adaptation.accuracy@gaussian_noise@norm"] == p["adaptation"]["accuracy"]["gaussian_noise"]["norm"]
    proto = res["protocols"]
    assert proto["adversarial"]["eps"] == ["1/255", "2/255"] and proto["adversarial"]["norm"] == "linf"
    assert proto["corruptions"]["parameter_set"] == "cifar10" and proto["corruptions"]["severities"] == [1, 3]
    assert proto["calibration"]["n_bins"] == 15


def test_per_sample_outputs_reproduce_the_probes_figures(cifar_run, shape_run):
    """Invariant: samples.npz holds, per sample, exactly what the probes' aggregate numbers count."""
    out, res = cifar_run
    s = read_samples(out / "samples.npz")
    p = res["probes"]
    assert len(s.sample_id) == 40 and res["samples"] == "samples.npz"
    acc = s.probes["accuracy"]
    assert np.array_equal(acc["correct"], acc["pred"] == s.label[acc["index"]])
    assert acc["correct"].mean() == p["accuracy"]["top1"]
    assert np.all((acc["confidence"] > 0) & (acc["confidence"] <= 1))
    cor = s.probes["corruptions"]
    for c in ("gaussian_noise", "fog"):
        for sev in ("1", "3"):
            assert cor[f"{c}@{sev}"].mean() == pytest.approx(p["corruptions"]["accuracy"][c][sev], abs=1e-12)
    adv = s.probes["adversarial"]
    assert len(adv["index"]) == p["adversarial"]["n_evaluated"] == 16
    for eps in ("1/255", "2/255"):
        assert adv[f"worst@{eps}"].mean() == pytest.approx(p["adversarial"]["worst_case"][eps], abs=1e-12)
        assert adv[f"robust@pgd@{eps}"].mean() == pytest.approx(p["adversarial"]["robust_accuracy"]["pgd"][eps],
                                                                abs=1e-12)
    assert s.probes["tta"]["correct@flip"].mean() == pytest.approx(p["tta"]["sets"]["flip"]["accuracy"], abs=1e-12)
    out, res = shape_run
    sb = read_samples(out / "samples.npz").probes["shape_bias"]
    n_shape, n_texture = int(sb["shape_decision"].sum()), int(sb["texture_decision"].sum())
    assert n_shape == res["probes"]["shape_bias"]["shape_decisions"]
    assert n_texture == res["probes"]["shape_bias"]["texture_decisions"]


@pytest.mark.parametrize("path", [CIFAR_OLD, SHAPE_OLD], ids=["cifar10", "cue-conflict"])
def test_results_of_release_0_1_0_still_load(path, tmp_path):
    """Reference: results.json files written by imgclass 0.1.0 (before typed results) load, upgrade to the current
    version, keep every number, and render."""
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == 1 and raw["imgclass_version"] == "0.1.0"
    r = load(path)
    assert r.schema_version == SCHEMA_VERSION and r.kind == "eval" and r.samples is None
    for name, pr in r.probes.items():
        assert type(pr) is PROBES[name].Result
        for k, v in raw["probes"][name].items():
            assert pr[k] == v, (name, k)
    h = r.headline()
    if "accuracy" in raw["probes"]:
        assert h["accuracy.top1"] == raw["probes"]["accuracy"]["top1"]
        assert h["adversarial.robust_accuracy"] == raw["probes"]["adversarial"]["worst_case"]["2/255"]
    else:
        assert h["shape_bias.shape_bias"] == raw["probes"]["shape_bias"]["shape_bias"]
    html = render_report(r).to_html()
    assert "<h2>Summary</h2>" in html
    copy = tmp_path / "results.json"
    shutil.copy(path, copy)
    assert main(["report", str(copy)]) == 0 and (tmp_path / "report.html").is_file()
    jsonschema.validate(r.to_dict(), json.loads(SCHEMA_FILE.read_text()))


def test_shipped_json_schema_is_current_and_validates(cifar_run, shape_run):
    """Reference: the jsonschema package validates results.json against the schema shipped with the package, and the
    shipped file equals the one the typed results generate (regenerate with imgclass.results.write_schema())."""
    shipped = json.loads(SCHEMA_FILE.read_text())
    assert shipped == json.loads(json.dumps(json_schema())), "results.schema.json is stale: run write_schema()"
    for out, _ in (cifar_run, shape_run):
        doc = json.loads((out / "results.json").read_text())
        jsonschema.validate(doc, shipped)
        bad = json.loads(json.dumps(doc))
        first = next(iter(bad["probes"]))
        bad["probes"][first][PROBES[first].Result.metrics[0].key] = "high"
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, shipped)
        with pytest.raises(ResultsError, match=f"probes.{first}"):
            from_dict(bad)


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "results.json"
    p.write_text(text)
    return p


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t[: len(t) // 2], "truncated"),
    (lambda t: "not json at all", "not valid JSON"),
    (lambda t: t.replace('"schema_version": 1', '"schema_version": 99'), "newer than this imgclass reads"),
    (lambda t: t.replace('"schema_version": 1', '"schema_version": 0'), "unknown results schema version 0"),
    (lambda t: "[1, 2]", "not a results.json of imgclass"),
    (lambda t: t.replace('"n_samples": 40', '"n_samples": "forty"'), "invalid results at data.n_samples"),
], ids=["truncated", "not-json", "newer", "unknown", "not-results", "invalid"])
def test_unreadable_results_get_one_clear_line(tmp_path, capsys, mutate, message):
    """Invariant: every unreadable results.json is a ResultsError naming the file; the CLI prints one line, exit 1."""
    p = _write(tmp_path, mutate(CIFAR_OLD.read_text()))
    with pytest.raises(ResultsError, match=message) as e:
        load(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    assert main(["report", str(p)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
