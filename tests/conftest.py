"""Shared fixtures. The asset mirror defaults to ../shared/assets beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MIRROR = ROOT.parent / "shared" / "assets"
os.environ.setdefault("IMGCLASS_MIRROR", str(DEFAULT_MIRROR))
MIRROR = Path(os.environ["IMGCLASS_MIRROR"])
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Never touch the user's cache: every test session gets its own IMGCLASS_HOME."""
    old = os.environ.get("IMGCLASS_HOME")
    os.environ["IMGCLASS_HOME"] = str(tmp_path_factory.mktemp("imgclass-home"))
    yield
    if old is None:
        os.environ.pop("IMGCLASS_HOME", None)
    else:
        os.environ["IMGCLASS_HOME"] = old


def unavailable(why: str) -> None:
    """A test's reference or data is missing: a failure in CI (whose script provides everything), elsewhere a skip."""
    if IN_CI:
        pytest.fail(f"{why} (.ci/run provides it)")
    pytest.skip(why)


def mirror_file(rel: str) -> Path:
    """A file of the asset mirror; in CI its absence is a failure, elsewhere a skip."""
    p = MIRROR / rel
    if not p.is_file():
        unavailable(f"asset mirror file {p} is missing (IMGCLASS_MIRROR={MIRROR})")
    return p


@pytest.fixture
def mirror():
    if not MIRROR.is_dir():
        unavailable(f"asset mirror {MIRROR} is missing")
    return MIRROR


@pytest.fixture(scope="module")
def single_thread():
    """Small models on small batches: intra-op threads only add synchronisation (and on a shared machine, waits for
    descheduled threads at every operation); modules that use this run single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
