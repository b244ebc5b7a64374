"""One run as the store keeps it (:class:`RunRecord`), made from typed results (:func:`record_from_results`)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..results import Results

__all__ = ["RunRecord", "created_key", "record_from_results"]


@dataclass
class RunRecord:
    """A run: what ran on what, how, its headline numbers and protocols, and where its files are."""

    id: int | None
    kind: str
    created: str
    model_spec: str
    model_group: str
    model_label: str
    weights_sha256: str | None
    data_spec: str
    files_sha256: str | None
    probes: list[str]
    probe_params: dict
    seed: int | None
    versions: dict
    device: str | None
    timings: dict
    headline: dict[str, float | None]
    protocols: dict
    results_path: str | None
    report_path: str | None
    results_sha256: str | None
    command: list[str] | None
    status: str = "done"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_from_results(results: Results, results_path: str | Path | None) -> RunRecord:
    """The store's record of a run from its typed results and the results.json they came from (or None).

    Paths are made absolute; ``report_path`` is the report.html beside results.json if there is one;
    ``results_sha256`` is the sha256 of the file's bytes (what import de-duplicates on)."""
    path = report = digest = None
    if results_path is not None:
        p = Path(results_path).expanduser()
        if p.is_dir():
            p = p / "results.json"
        p = p.resolve()
        path = str(p)
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        r = p.with_name("report.html")
        report = str(r) if r.is_file() else None
    model = results.model
    group = getattr(model, "group", None) or model.spec
    label = getattr(model, "group_label", None) or group
    env = results.environment or {}
    versions = {"imgclass": results.imgclass_version}
    versions.update({k: env[k] for k in ("python", "torch", "timm") if env.get(k) is not None})
    device = (results.settings or {}).get("device")
    return RunRecord(
        id=None, kind=results.kind, created=results.created,
        model_spec=model.spec, model_group=str(group), model_label=str(label),
        weights_sha256=model.weights_sha256, data_spec=results.data.spec, files_sha256=results.data.files_sha256,
        probes=list(results.probes), probe_params=dict(results.probe_params), seed=results.seed,
        versions=versions, device=None if device is None else str(device), timings=dict(results.timing),
        headline=results.headline(), protocols=results.protocols(),
        results_path=path, report_path=report, results_sha256=digest,
        command=None if results.command is None else [str(c) for c in results.command],
    )


def created_key(created: str) -> str:
    """A sortable UTC form of an ISO timestamp (naive ones taken as UTC); the text itself if it does not parse."""
    try:
        t = datetime.fromisoformat(created)
    except (TypeError, ValueError):
        return str(created)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

