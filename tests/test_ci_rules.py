"""The suite's own rules, checked on a throw-away test file run with this conftest: under CI a skip is a failure
unless the test names why it may skip there too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

BODY = '''
import pytest

def test_plain():
    assert True

def test_skips():
    pytest.skip("reference missing")

@pytest.mark.ci_may_skip("needs a GPU, which CI has not")
def test_may_skip():
    pytest.skip("no GPU")

@pytest.mark.xfail(reason="known", strict=True)
def test_xfails():
    assert False
'''

IMPORT_SKIP = '''
import pytest
pytest.importorskip("a_module_that_does_not_exist")

def test_never_runs():
    assert True
'''


def _run(tmp_path: Path, ci: str | None, *files: str) -> subprocess.CompletedProcess:
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
                           "--rootdir", str(tmp_path), *files], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_skip_fails_under_ci_but_not_elsewhere(tmp_path):
    """Invariant: the same file passes on a newcomer's machine (one skip) and fails under CI=true, where only the
    test marked ci_may_skip may skip and an xfail stays an xfail."""
    (tmp_path / "test_sample.py").write_text(BODY)
    local = _run(tmp_path, None, "test_sample.py")
    assert local.returncode == 0, local.stdout + local.stderr
    assert "1 passed, 2 skipped, 1 xfailed" in local.stdout
    ci = _run(tmp_path, "true", "test_sample.py", "-rA")
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed" in ci.stdout
    assert "test_skips was skipped under CI (reference missing)" in ci.stdout


def test_a_module_that_skips_at_import_fails_under_ci(tmp_path):
    """Invariant: ``importorskip`` at module level (a broken reference package) is a failure under CI too."""
    (tmp_path / "test_imports.py").write_text(IMPORT_SKIP)
    assert _run(tmp_path, None, "test_imports.py").returncode == 5  # nothing ran: pytest's "no tests" code
    ci = _run(tmp_path, "1", "test_imports.py")
    assert ci.returncode != 0 and "skipped under CI" in ci.stdout, ci.stdout
