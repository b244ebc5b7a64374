"""One registry type for everything looked up by name: every registry refuses silent overwrites and answers an
unknown name with close matches and the full list; a probe without ``render`` is refused at registration."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from imgclass.assets import ASSETS
from imgclass.attacks import ATTACKS
from imgclass.corruptions.base import REGISTRY as CORRUPTIONS
from imgclass.data import DATASET_SOURCES, ZOO_DATASETS
from imgclass.errors import UnknownNameError, UsageError
from imgclass.explain import METHODS
from imgclass.models import MODEL_SOURCES, ZOO_MODELS
from imgclass.models.checkpoint import ARCHS
from imgclass.probes import PROBES, Probe, register_probe
from imgclass.registry import Registry

ALL = {"probe": PROBES, "attack": ATTACKS, "explanation method": METHODS, "corruption": CORRUPTIONS,
       "model source": MODEL_SOURCES, "zoo model": ZOO_MODELS, "dataset source": DATASET_SOURCES,
       "zoo dataset": ZOO_DATASETS, "architecture": ARCHS, "asset": ASSETS}


@pytest.mark.parametrize("kind", sorted(ALL))
def test_every_registry_refuses_overwrites_and_suggests_names(kind):
    """Invariant, registry-wide: re-registering a name fails; a misspelt name gets the closest names and the list."""
    reg = ALL[kind]
    assert isinstance(reg, Registry) and reg.kind == kind and len(reg) > 0
    name = sorted(reg)[0]
    with pytest.raises(ValueError, match="registered twice"):
        reg[name] = reg[name]
    typo = name[:-1] + ("x" if name[-1] != "x" else "y")
    with pytest.raises(UnknownNameError) as e:
        reg[typo]
    msg = str(e.value)
    assert isinstance(e.value, KeyError) and isinstance(e.value, UsageError)
    suggestion, listing = msg.split("; known ")
    assert suggestion.startswith(f"unknown {kind} {typo!r} (did you mean ") and repr(name) in suggestion, msg
    assert all(n in listing for n in reg), msg  # the full list


def test_override_restores_the_entry():
    reg = Registry("thing")
    reg.register("a", 1)
    with reg.override("a", 2):
        assert reg["a"] == 2
    with reg.override("b", 3):
        assert reg["b"] == 3
    assert dict(reg) == {"a": 1}
    with pytest.raises(ValueError, match="registered twice"):
        reg.update({"a": 5})


def test_a_probe_without_render_is_refused_at_registration():
    class Half(Probe):
        name = "half-probe-for-test"

        @dataclass
        class Params:
            pass

        def run(self, ctx):
            return {}

    with pytest.raises(TypeError, match="does not implement render"):
        register_probe(Half)
    assert "half-probe-for-test" not in PROBES
