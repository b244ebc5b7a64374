"""Asset layer: registry vs the mirror's own checksum list, resolution order, verification, offline errors."""

from __future__ import annotations

import hashlib
import io
import urllib.error

import pytest

from imgclass import assets
from imgclass.assets import ASSETS, Asset, AssetUnavailableError, ChecksumError, fetch

from conftest import MIRROR


def _sha256sums() -> dict[str, str]:
    f = MIRROR / "SHA256SUMS"
    if not f.is_file():
        pytest.skip("mirror SHA256SUMS not available")
    out = {}
    for line in f.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        out[name.lstrip("*").removeprefix("./")] = digest
    return out


def test_registry_checksums_equal_the_mirror_sha256sums(mirror):
    """Reference: the mirror's SHA256SUMS file. Every registered mirrored path has the same digest."""
    sums = _sha256sums()
    mirrored = [a for a in ASSETS.values() if a.path in sums]
    assert len(mirrored) >= 25
    for a in mirrored:
        assert sums[a.path] == a.sha256, a.name


def test_required_assets_are_registered():
    names = set(ASSETS)
    required = {"cifar10-python", "cifar10-jpeg-test", "cifar10-jpeg-train", "cifar10-lossless-test1000",
                "cifar10-lossless-train2000", "imagenet-samples", "cue-conflict", "coral-imagenet-labels",
                "coral-mobilenet-v2-1.0-224-quant"}
    required |= {f"cifar10-resnet{d}-weights" for d in (20, 32, 44, 56)}
    assert required <= names
    for d in (20, 32, 44, 56):
        assert ASSETS[f"cifar10-resnet{d}-weights"].url.startswith(
            "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/resnet")
    for a in ASSETS.values():
        assert len(a.sha256) == 64 and a.license


def test_mirror_is_used_in_place_and_verified(mirror):
    p = fetch("cifar10-lossless-test1000")
    assert p == MIRROR / "cifar10-lossless/test-first1000.npz"


@pytest.fixture
def fake_asset(tmp_path, monkeypatch):
    data = b"imgclass test payload\n" * 100
    a = Asset("test-fake", "fake/payload.bin", hashlib.sha256(data).hexdigest(), "CC0", "test payload",
              url="https://example.invalid/payload.bin")
    monkeypatch.setitem(ASSETS, a.name, a)
    mirror = tmp_path / "mirror"
    monkeypatch.setenv("IMGCLASS_MIRROR", str(mirror))
    monkeypatch.setenv("IMGCLASS_HOME", str(tmp_path / "home"))
    return a, data, mirror


def test_cache_is_preferred_to_mirror(fake_asset):
    a, data, mirror = fake_asset
    (mirror / "fake").mkdir(parents=True)
    (mirror / a.path).write_bytes(data)
    assert fetch(a.name) == mirror / a.path
    cached = assets.cache_path(a)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)
    assert fetch(a.name) == cached
    assert assets.asset_status(a) == "cached"


def test_corrupt_file_fails_checksum(fake_asset):
    a, data, mirror = fake_asset
    (mirror / "fake").mkdir(parents=True)
    (mirror / a.path).write_bytes(data[:-1] + b"X")
    with pytest.raises(ChecksumError, match="sha256"):
        fetch(a.name)


class _Resp(io.BytesIO):
    headers = {}

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_download_goes_to_cache_after_verification(fake_asset, monkeypatch):
    a, data, _ = fake_asset
    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda req, timeout=0: _Resp(data))
    p = fetch(a.name, progress=False)
    assert p == assets.cache_path(a) and p.read_bytes() == data


def test_download_with_wrong_checksum_leaves_nothing(fake_asset, monkeypatch):
    a, data, _ = fake_asset
    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda req, timeout=0: _Resp(data + b"tampered"))
    with pytest.raises(ChecksumError):
        fetch(a.name, progress=False)
    assert not assets.cache_path(a).exists()
    assert not list(assets.cache_path(a).parent.glob("*.part"))


def test_offline_error_names_asset_url_and_variable(fake_asset, monkeypatch):
    a, _, _ = fake_asset

    def offline(req, timeout=0):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(assets.urllib.request, "urlopen", offline)
    with pytest.raises(AssetUnavailableError) as e:
        fetch(a.name, progress=False)
    msg = str(e.value)
    assert a.name in msg and a.url in msg and "IMGCLASS_MIRROR" in msg and a.path in msg


def test_derived_asset_without_url_explains_the_mirror(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGCLASS_MIRROR", str(tmp_path / "empty"))
    monkeypatch.setenv("IMGCLASS_HOME", str(tmp_path / "home"))
    with pytest.raises(AssetUnavailableError) as e:
        fetch("cue-conflict")
    msg = str(e.value)
    assert "cue-conflict" in msg and "IMGCLASS_MIRROR" in msg and "rgeirhos/texture-vs-shape" in msg


def test_unknown_asset_lists_known():
    with pytest.raises(assets.AssetError, match="known assets: .*cifar10-python"):
        fetch("no-such-asset")
