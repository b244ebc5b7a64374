"""How the command line fails: usage errors exit 2 with one line, data and run errors exit 1 with one line, a bug
is named as one (exit 1), ``--debug`` adds the traceback, Ctrl-C is one line (exit 130)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

from imgclass.cli import main

DATA = "zoo:cifar10-lossless:test"


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.ci_may_skip("CI machines have no GPU; on a GPU machine --device cuda is valid")
def test_device_cuda_without_cuda_is_one_usage_line(capsys):
    for argv in (["eval", "zoo:cifar10-resnet20", DATA, "--device", "cuda", "--quiet"],
                 ["explain", "zoo:cifar10-resnet20", __file__, "--device", "cuda", "--out", "/tmp/never"]):
        assert main(argv) == 2
        line = _one_line(capsys.readouterr().err)
        assert "CUDA is not available on this machine" in line and "--device cpu" in line


def test_device_names_are_checked(capsys):
    assert main(["eval", "zoo:cifar10-resnet20", DATA, "--device", "gpu0", "--quiet"]) == 2
    assert "is not a device" in _one_line(capsys.readouterr().err)


def test_usage_data_and_bug_errors_have_their_exit_codes(capsys, monkeypatch, tmp_path):
    """Reference: the exit-code contract (2 usage, 1 data/run, 1 and 'a bug in imgclass' for anything unexpected)."""
    assert main(["eval", "zoo:cifar10-resnet21", DATA]) == 2
    assert "'cifar10-resnet20'" in _one_line(capsys.readouterr().err).split("; known ")[0]
    assert main(["eval", "zoo:cifar10-resnet20", DATA, "--probes", "acuracy"]) == 2
    assert "did you mean 'accuracy'" in _one_line(capsys.readouterr().err)
    assert main(["eval", "zoo:cifar10-resnet20", f"folder:{tmp_path / 'missing'}"]) == 1
    assert "is not a directory" in _one_line(capsys.readouterr().err)

    ev = importlib.import_module("imgclass.evaluate")

    def broken(*a, **k):
        return {}["no such key"]  # a real bug: a KeyError nobody meant to raise

    monkeypatch.setattr(ev, "load_dataset", broken)
    assert main(["eval", "zoo:cifar10-resnet20", DATA]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "internal error, KeyError" in line and "a bug in imgclass" in line and "--debug" in line
    assert main(["eval", "zoo:cifar10-resnet20", DATA, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err


def test_debug_flag_goes_before_or_after_the_command(capsys):
    for argv in (["--debug", "eval", "zoo:nope", DATA], ["eval", "zoo:nope", DATA, "--debug"]):
        assert main(argv) == 2
        assert "Traceback" in capsys.readouterr().err


def test_interrupt_is_one_line_exit_130(monkeypatch, capsys):
    ev = importlib.import_module("imgclass.evaluate")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "load_dataset", interrupted)
    assert main(["eval", "zoo:cifar10-resnet20", DATA]) == 130
    assert _one_line(capsys.readouterr().err) == "interrupted"


def test_probes_listing_shows_defaults_not_dataclass_internals():
    """``imgclass probes`` prints every parameter with its default (factories evaluated) or '(required)'."""
    p = subprocess.run([sys.executable, "-m", "imgclass", "probes"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "_MISSING_TYPE" not in p.stdout and "dataclasses" not in p.stdout
    assert "n_bins=15" in p.stdout and "eval flags: --attacks (attacks)" in p.stdout


def test_eval_help_metavars_name_the_parameter():
    p = subprocess.run([sys.executable, "-m", "imgclass", "eval", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "PROBEFLAG" not in p.stdout and "--eps EPS" in p.stdout, p.stdout


def test_report_of_a_missing_or_malformed_file_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.json").write_text('{"a":')
    (tmp_path / "list.json").write_text("[1]")
    for name, words in [("none.json", "no such file"), ("bad.json", "truncated"),
                        ("list.json", "not a results.json of imgclass")]:
        assert main(["report", str(tmp_path / name)]) == 1
        assert words in _one_line(capsys.readouterr().err)


def test_unknown_probe_parameter_suggests_the_close_name(capsys):
    assert main(["eval", "zoo:cifar10-resnet20", DATA, "--set", "calibration.nbins=3"]) == 2
    assert "(did you mean 'n_bins'?)" in _one_line(capsys.readouterr().err)
