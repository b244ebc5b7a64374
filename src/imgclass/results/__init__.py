"""Read and write results: ``load(path)`` validates a results.json (upgrading older versions) into :class:`Results`.

Every reader (the report, the run store, ``runs compare``, the leaderboard) goes through here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .models import SCHEMA_VERSION, Metric, ProbeResult, Results, ResultsError, result_type
from .samples import SAMPLES_FILE, SampleTable, read_samples, write_samples
from .upgrade import UPGRADES, upgrade

__all__ = ["load", "load_bytes", "from_dict", "Results", "ProbeResult", "Metric", "SCHEMA_VERSION", "result_type", "json_schema",
           "SCHEMA_FILE", "SampleTable", "SAMPLES_FILE", "read_samples", "write_samples", "upgrade", "UPGRADES",
           "ResultsError"]

SCHEMA_FILE = Path(__file__).with_name("results.schema.json")


def load(path: str | os.PathLike) -> Results:
    """Read, upgrade and validate a results.json (or the folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise ResultsError(f"{p}: no such file (give a results.json that `imgclass eval --out DIR` wrote, or DIR)")
    return load_bytes(p.read_bytes(), source=str(p))


def load_bytes(data: bytes, *, source: str = "results") -> Results:
    """Read, upgrade and validate the bytes of a results.json (``source`` names it in errors)."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except json.JSONDecodeError as e:
        what = "truncated" if e.pos >= len(e.doc.rstrip()) else "not valid JSON"
        raise ResultsError(f"{source}: {what} ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ResultsError(f"{source}: not a text file ({e.reason})") from None
    return from_dict(raw, source=source, _owned=True)


def from_dict(raw: Any, *, source: str = "results", _owned: bool = False) -> Results:
    """Validate a results dict (as ``evaluate`` returns it or results.json holds it), upgrading older versions;
    ``raw`` is not changed."""
    if not isinstance(raw, dict) or "probes" not in raw:
        raise ResultsError(f"{source}: not a results.json of imgclass (no 'probes' entry)")
    data = upgrade(raw, source=source, copy_input=not _owned)
    probes = data.get("probes")
    if isinstance(probes, dict):  # each probe by its own class, so that errors name the probe
        typed = {}
        for name, r in probes.items():
            try:
                typed[name] = result_type(name).model_validate(r)
            except ValidationError as e:
                raise _invalid(source, e, prefix=("probes", name)) from None
        data = {**data, "probes": typed}
    try:
        return Results.model_validate(data)
    except ValidationError as e:
        raise _invalid(source, e) from None


def _invalid(source: str, e: ValidationError, prefix: tuple = ()) -> ResultsError:
    first = e.errors()[0]
    where = ".".join(str(x) for x in prefix + tuple(first["loc"]))
    more = f" (and {e.error_count() - 1} more problem(s))" if e.error_count() > 1 else ""
    return ResultsError(f"{source}: invalid results at {where}: {first['msg']}{more}")


def json_schema() -> dict:
    """The JSON Schema of a current results.json, each known probe's result typed (shipped as results.schema.json)."""
    from pydantic import create_model

    from ..probes import PROBES

    probe_fields: dict[str, Any] = {name: (result_type(name) | None, None) for name in sorted(PROBES)}
    probes_model = create_model("Probes", __config__={"extra": "allow"}, **probe_fields)
    file_model = create_model("ResultsFile", __base__=Results, probes=(probes_model, ...))
    schema = file_model.model_json_schema()
    schema["properties"]["headline"] = {"type": "object", "title": "Headline",
                                        "description": "every probe's headline numbers, keyed PROBE.METRIC",
                                        "additionalProperties": {"anyOf": [{"type": "number"}, {"type": "null"}]}}
    schema["properties"]["protocols"] = {"type": "object", "title": "Protocols",
                                         "description": "how each probe's numbers were produced",
                                         "additionalProperties": {"type": "object"}}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"imgclass results.json, schema version {SCHEMA_VERSION}"
    return schema


def write_schema(path: str | os.PathLike = SCHEMA_FILE) -> Path:
    from ..files import atomic_write

    return atomic_write(path, json.dumps(json_schema(), indent=1, sort_keys=True) + "\n")
