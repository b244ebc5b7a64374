"""The run store (imgclass.store) on SQLite and on a real PostgreSQL server.

Every test runs on both backends: a fresh SQLite file, and a fresh database created on the server that
IMGCLASS_TEST_POSTGRES names (a SQLAlchemy URL where the test may CREATE DATABASE; `.ci/postgres.sh start DIR`
starts one and `.ci/run` sets it). Without that variable the PostgreSQL cases skip, which CI turns into failures.
The references are the typed results themselves (`imgclass.results.load`), the bytes of the files, and the
invariants of a database: every write whole or absent, no lost or duplicated rows.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import sqlalchemy as sa

from imgclass import results
from imgclass.cli import main
from imgclass.errors import ImgclassError
from imgclass.store import (
    DEFAULT_URL_ENV,
    RunRecord,
    default_url,
    open_store,
    record_from_results,
    record_results,
)
from imgclass.store import schema as store_schema
from imgclass.store.schema import normalize_url

FIXTURES = Path(__file__).parent / "data" / "results-0.1.0"
CIFAR = FIXTURES / "cifar10-resnet20.json"
SHAPE = FIXTURES / "cue-conflict-mobilenet.json"
BACKENDS = ["sqlite", "postgresql"]  # store_url (conftest) gives a fresh store on each


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


def _count(url: str, sql: str, **params) -> int:
    engine = sa.create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql), params).scalar())
    finally:
        engine.dispose()


# -- import, list, show, filter -------------------------------------------------------------------------------------

def test_import_list_filter_and_headline_equal_typed_results(store):
    """Reference: `imgclass.results.load(f)` of each 0.1.0 file: its headline numbers (exactly, in order),
    protocols, probes and parameters are what the store gives back; the file's sha256 is its bytes' sha256."""
    ids, skipped = store.import_paths([CIFAR, SHAPE], progress=False)
    assert len(ids) == 2 and len(set(ids)) == 2 and skipped == []
    for run_id, f in zip(ids, (CIFAR, SHAPE)):
        r = results.load(f)
        run = store.get(run_id)
        assert run.id == run_id
        assert run.headline == r.headline() and list(run.headline) == list(r.headline())
        assert run.protocols == r.protocols()
        assert run.probes == list(r.probes) and run.probe_params == r.probe_params
        assert (run.kind, run.created, run.seed) == (r.kind, r.created, r.seed)
        assert (run.model_spec, run.data_spec) == (r.model.spec, r.data.spec)
        assert run.model_group == run.model_label == r.model.spec  # 0.1.0 files carry no group
        assert run.command == r.command and run.device == r.settings["device"]
        assert run.versions["torch"] == r.environment["torch"] and run.versions["imgclass"] == r.imgclass_version
        assert run.timings == r.timing
        assert run.results_path == str(f.resolve()) and Path(run.results_path).is_absolute()
        assert run.results_sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
        assert run.report_path is None  # no report.html beside the fixtures
        assert store.find_results(run.results_sha256) == run_id
        assert run.status == "done"

    cifar_id, shape_id = ids
    assert [r.id for r in store.list()] == [shape_id, cifar_id]  # newest first (created 09:14:05 vs 09:13:52)
    assert [r.id for r in store.list(limit=1)] == [shape_id]
    assert [r.id for r in store.list(model="RESNET20")] == [cifar_id]  # case-insensitive substring
    assert [r.id for r in store.list(model="mobilenet")] == [shape_id]
    assert [r.id for r in store.list(data="cue-conflict")] == [shape_id]
    assert [r.id for r in store.list(probe="shape_bias")] == [shape_id]
    assert [r.id for r in store.list(probe="accuracy")] == [cifar_id]
    assert [r.id for r in store.list(probe="accuracy", data="cue")] == []
    assert store.list(probe="shape") == []  # a probe name matches whole, not as a part
    assert store.list(kind="train") == [] and len(store.list(kind="eval")) == 2
    assert store.list(model="100%_") == []  # LIKE's wildcards are escaped
    assert store.find_results("0" * 64) is None


def test_report_path_and_model_group_from_results(tmp_path, store):
    """Reference: the results file's folder and `Results.model` extras: report.html beside results.json is found,
    a model group and its label are kept, paths are absolute."""
    raw = json.loads(CIFAR.read_text())
    raw["model"]["group"] = "cifar10-resnet20"
    raw["model"]["group_label"] = "ResNet-20 (CIFAR-10)"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps(raw))
    (run_dir / "report.html").write_text("<html></html>")
    rec = record_from_results(results.load(run_dir), run_dir)
    assert rec.results_path == str((run_dir / "results.json").resolve())
    assert rec.report_path == str((run_dir / "report.html").resolve())
    assert (rec.model_group, rec.model_label) == ("cifar10-resnet20", "ResNet-20 (CIFAR-10)")
    run_id = store.record(rec)
    assert store.get(run_id) == RunRecord(**{**asdict(rec), "id": run_id})
    assert [r.id for r in store.list(model="resnet-20 (cifar")] == [run_id]  # the label matches too
    unsaved = record_from_results(results.load(CIFAR), None)
    assert unsaved.results_path is unsaved.report_path is unsaved.results_sha256 is None


def test_reimport_skips_duplicates(tmp_path, store):
    """Reference: the files' sha256: a file already indexed is skipped, naming the run that holds it, also when
    found again under another folder; recording the same file directly is refused the same way."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    copy = tmp_path / "a" / "b" / "results.json"
    copy.write_bytes(CIFAR.read_bytes())
    ids, skipped = store.import_paths([CIFAR, SHAPE], progress=False)
    again, skipped = store.import_paths([SHAPE, tmp_path, CIFAR], progress=False)
    assert again == []
    assert skipped == [(str(SHAPE), f"already in the store as run {ids[1]}"),
                       (str(copy), f"already in the store as run {ids[0]}"),
                       (str(CIFAR), f"already in the store as run {ids[0]}")]
    with pytest.raises(ImgclassError, match=f"already in the store as run {ids[0]}"):
        store.record(record_from_results(results.load(copy), copy))
    assert len(store.list()) == 2


def test_bad_files_are_skipped_with_a_reason(tmp_path, store):
    """Reference: `imgclass.results.load`'s own verdicts: a truncated file, a non-JSON file and a results.json of
    an unknown schema version are skipped and listed with why; a good file beside them is indexed."""
    body = CIFAR.read_bytes()
    files = {}
    for name, data in {
        "truncated": body[: len(body) // 2],
        "not-json": b"this is not JSON at all\n",
        "binary": b"\x89PNG\r\n\x1a\n\x00\xff\xfe",
        "future": json.dumps({**json.loads(body), "schema_version": 99}).encode(),
        "good": SHAPE.read_bytes(),
    }.items():
        (tmp_path / name).mkdir()
        files[name] = tmp_path / name / "results.json"
        files[name].write_bytes(data)
    ids, skipped = store.import_paths([tmp_path, tmp_path / "missing"], progress=False)
    assert len(ids) == 1 and store.get(ids[0]).results_path == str(files["good"].resolve())
    reasons = dict(skipped)
    assert set(reasons) == {str(files[n]) for n in ("truncated", "not-json", "binary", "future")} | {
        str(tmp_path / "missing")}
    assert reasons[str(files["truncated"])].startswith("truncated")
    assert reasons[str(files["not-json"])].startswith("not valid JSON")
    assert reasons[str(files["binary"])].startswith("not a text file")
    assert "schema version 99" in reasons[str(files["future"])]
    assert reasons[str(tmp_path / "missing")] == "no such file or folder"
    assert all("\n" not in r for r in reasons.values())


# -- remove ----------------------------------------------------------------------------------------------------------

def test_rm_removes_the_run_and_its_metrics(store_url, store):
    """Reference: the metrics table itself: after rm the run and every metric row of it are gone (the foreign key
    cascades), the other run is untouched; an unknown id is one error naming the store."""
    ids, _ = store.import_paths([CIFAR, SHAPE], progress=False)
    n_cifar = len(results.load(CIFAR).headline())
    sql = "SELECT count(*) FROM metrics WHERE run_id = :r"
    assert _count(store_url, sql, r=ids[0]) == n_cifar
    store.remove(ids[0])
    assert _count(store_url, sql, r=ids[0]) == 0
    assert _count(store_url, sql, r=ids[1]) == len(results.load(SHAPE).headline())
    assert [r.id for r in store.list()] == [ids[1]]
    with pytest.raises(ImgclassError, match=f"^no run {ids[0]} in "):
        store.get(ids[0])
    with pytest.raises(ImgclassError, match=f"^no run {ids[0]} in "):
        store.remove(ids[0])
    assert store.find_results(hashlib.sha256(CIFAR.read_bytes()).hexdigest()) is None  # can be imported again


# -- the leaderboard's query -----------------------------------------------------------------------------------------

def test_metric_rows_read_only_the_store(store_url, tmp_path, store):
    """Reference: the typed results' headline numbers; the query reads the runs and metrics tables only (it works
    with the results files gone) in a fixed number of statements, whatever the number of runs."""
    for i, f in enumerate((CIFAR, SHAPE, CIFAR)):
        (tmp_path / str(i)).mkdir()
        raw = json.loads(f.read_text())
        raw["seed"] = i
        (tmp_path / str(i) / "results.json").write_text(json.dumps(raw))
    ids, _ = store.import_paths([tmp_path], progress=False)
    for i in range(3):
        (tmp_path / str(i) / "results.json").unlink()
    statements = []
    sa.event.listen(store._engine, "before_cursor_execute",
                    lambda conn, cursor, stmt, *a: statements.append(stmt))
    names = ["accuracy.top1", "calibration.ece", "shape_bias.shape_bias", "no.such"]
    rows = store.metric_rows(data=None, names=names)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 2
    assert all(" schema_version" not in s for s in statements)
    assert [r["id"] for r in rows] == [r.id for r in store.list()]
    typed = {CIFAR: results.load(CIFAR), SHAPE: results.load(SHAPE)}
    by_id = {r["id"]: r for r in rows}
    for run_id, f in zip(ids, (CIFAR, SHAPE, CIFAR)):
        row, expect, run = by_id[run_id], typed[f].headline(), store.get(run_id)
        assert row["values"] == {n: expect[n] for n in names if n in expect}
        probes = {n.split(".")[0] for n in row["values"]}
        assert row["protocols"] == {p: v for p, v in typed[f].protocols().items() if p in probes}
        assert row["seed"] == ids.index(run_id)
        for key in ("model_group", "model_label", "model_spec", "data_spec", "files_sha256", "created",
                    "results_path", "report_path"):
            assert row[key] == getattr(run, key), key
    assert {r["id"] for r in store.metric_rows(data="CIFAR10", names=names)} == {ids[0], ids[2]}
    assert store.metric_rows(data=None, names=["no.such"]) == [] and store.metric_rows(data=None, names=[]) == []


# -- concurrency -----------------------------------------------------------------------------------------------------

WRITER = """
import json, os, sys, time
from imgclass.store import RunRecord, open_store
url, base, tag, ready, go = sys.argv[1:6]
rec = json.loads(open(base).read())
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
store = open_store(url)  # a fresh store: both processes create the schema at once
for i in range(100):
    store.record(RunRecord(**{**rec, "id": None, "model_spec": f"{tag}-{i}", "seed": i, "results_sha256": None}))
store.close()
"""


def test_two_processes_writing_at_once_lose_nothing(store_url, tmp_path):
    """Reference: arithmetic: two processes that each record 100 runs into one fresh store at the same moment
    leave 200 runs with 200 distinct ids, each with every one of its metrics, and the schema created once."""
    rec = record_from_results(results.load(CIFAR), CIFAR)
    base = tmp_path / "record.json"
    base.write_text(json.dumps(asdict(rec)))
    go = tmp_path / "go"
    procs = []
    for tag in ("a", "b"):
        cmd = [sys.executable, "-c", WRITER, store_url, str(base), tag, str(tmp_path / f"ready-{tag}"), str(go)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{t}").exists() for t in "ab"):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    with open_store(store_url) as store:
        runs = store.list()
        assert len(runs) == 200 and len({r.id for r in runs}) == 200
        assert {r.model_spec for r in runs} == {f"{t}-{i}" for t in "ab" for i in range(100)}
        assert all(r.headline == rec.headline for r in runs)
        assert len(store.metric_rows(data=None, names=["accuracy.top1"])) == 200
    assert _count(store_url, "SELECT count(*) FROM metrics") == 200 * len(rec.headline)
    assert _count(store_url, "SELECT count(*) FROM schema_version") == store_schema.SCHEMA_VERSION


# -- schema versions -------------------------------------------------------------------------------------------------

def test_migrations_bring_an_older_store_up_to_date(store_url, monkeypatch):
    """Reference: the migration list: an empty database opens at the code's version; a version-1 store with runs
    opens under code that knows a version 2, which is applied once (runs kept); version-1 code then refuses it."""
    with open_store(store_url) as store:
        run_id = store.record(record_from_results(results.load(SHAPE), SHAPE))
    assert _count(store_url, "SELECT max(version) FROM schema_version") == 1

    def v2(conn):
        conn.execute(sa.text("ALTER TABLE runs ADD COLUMN note TEXT"))

    monkeypatch.setattr(store_schema, "MIGRATIONS", [*store_schema.MIGRATIONS, v2])
    for _ in range(2):  # the second open finds version 2 and applies nothing
        with open_store(store_url) as store:
            assert store.get(run_id).headline == results.load(SHAPE).headline()
    assert _count(store_url, "SELECT max(version) FROM schema_version") == 2
    assert _count(store_url, "SELECT count(*) FROM schema_version") == 2
    assert _count(store_url, "SELECT count(*) FROM runs WHERE note IS NULL") == 1
    monkeypatch.undo()
    with pytest.raises(ImgclassError) as e:
        open_store(store_url)
    assert "schema version 2, newer than this imgclass knows (up to 1)" in _one_line(str(e.value))


def test_a_store_stamped_newer_is_refused(store_url, capsys):
    """Reference: the stored version: a store stamped 99 is refused, in one line, by the API and the CLI (exit 1)."""
    open_store(store_url).close()
    engine = sa.create_engine(normalize_url(store_url))
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO schema_version (version, applied) VALUES (99, 'later')"))
    engine.dispose()
    with pytest.raises(ImgclassError) as e:
        open_store(store_url)
    line = _one_line(str(e.value))
    assert "schema version 99" in line and "upgrade imgclass" in line
    assert main(["runs", "list", "--store", store_url]) == 1
    assert _one_line(capsys.readouterr().err).startswith("error: run store ")


# -- URLs that do not connect ----------------------------------------------------------------------------------------

BAD_URLS = {
    "sqlite": "sqlite:////nonexistent-dir-imgclass/x.db",
    "postgresql": "postgresql+psycopg://nobody:s3cret@127.0.0.1:1/x",
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_url_that_does_not_connect_is_one_error_line(backend, capsys):
    """Reference: the error contract (README): ImgclassError with one line naming the store (password redacted)
    and the reason; the CLI prints `error: ...` on one line and exits 1."""
    url = BAD_URLS[backend]
    with pytest.raises(ImgclassError) as e:
        open_store(url)
    line = _one_line(str(e.value))
    assert line.startswith("cannot open run store ") and "s3cret" not in line
    assert ("/nonexistent-dir-imgclass" in line) if backend == "sqlite" else (
        "nobody:***@127.0.0.1:1/x" in line and "refused" in line.lower())
    for cmd in (["runs", "list"], ["runs", "show", "1"], ["runs", "rm", "1"], ["runs", "import", str(CIFAR)]):
        assert main([*cmd, "--store", url]) == 1
        err = _one_line(capsys.readouterr().err)
        assert err.startswith("error: cannot open run store ") and "s3cret" not in err


# -- defaults and the one-call recorder ------------------------------------------------------------------------------

def test_default_url_and_record_results(store_url, tmp_path, monkeypatch):
    """Reference: the documented defaults: $IMGCLASS_STORE when set, else runs.db in $IMGCLASS_HOME."""
    monkeypatch.delenv(DEFAULT_URL_ENV, raising=False)
    monkeypatch.setenv("IMGCLASS_HOME", str(tmp_path / "home"))
    assert default_url() == f"sqlite:///{(tmp_path / 'home' / 'runs.db').resolve()}"
    monkeypatch.setenv(DEFAULT_URL_ENV, store_url)
    assert default_url() == store_url
    run_id = record_results(results.load(CIFAR), CIFAR)
    with open_store() as store:
        assert store.get(run_id).results_path == str(CIFAR.resolve())


# -- the command line ------------------------------------------------------------------------------------------------

def test_cli_import_list_show_rm(store_url, tmp_path, capsys):
    """Reference: the store's own records: what `runs import/list/show/rm` print is what the API returns."""
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{")
    assert main(["runs", "import", str(CIFAR), str(SHAPE), str(tmp_path), "--quiet", "--store", store_url]) == 0
    out = capsys.readouterr().out
    with open_store(store_url) as store:
        cifar_id, shape_id = [r.id for r in sorted(store.list(), key=lambda r: r.id)]
    assert f"run {cifar_id}: {CIFAR.resolve()}" in out and f"run {shape_id}: {SHAPE.resolve()}" in out
    assert f"skipped {tmp_path / 'bad' / 'results.json'}: truncated" in out
    assert "indexed 2 run(s)" in out

    assert main(["runs", "import", str(CIFAR), "--quiet", "--store", store_url]) == 0
    assert f"already in the store as run {cifar_id}" in capsys.readouterr().out

    assert main(["runs", "list", "--store", store_url]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:6] == ["id", "created", "kind", "model", "data", "probes"]
    assert [ln.split()[0] for ln in lines[1:]] == [str(shape_id), str(cifar_id)]
    assert "accuracy.top1=0.95" in lines[2] and "shape_bias.shape_bias=0.24" in lines[1]
    assert main(["runs", "list", "--probe", "shape_bias", "--store", store_url]) == 0
    assert [ln.split()[0] for ln in capsys.readouterr().out.strip().splitlines()[1:]] == [str(shape_id)]
    assert main(["runs", "list", "--model", "no-such-model", "--store", store_url]) == 0
    assert "no runs" in capsys.readouterr().out

    assert main(["runs", "show", str(cifar_id), "--store", store_url]) == 0
    out = capsys.readouterr().out
    for text in (f"run {cifar_id}", "zoo:cifar10-resnet20", "zoo:cifar10-lossless:test", str(CIFAR.resolve()),
                 hashlib.sha256(CIFAR.read_bytes()).hexdigest(), "calibration.ece", "protocols",
                 "15 equal-width bins", "torch 2.14.1"):
        assert text in out, text

    assert main(["runs", "rm", str(cifar_id), "999999", "--store", store_url]) == 1  # all ids checked first
    with open_store(store_url) as store:
        assert _one_line(capsys.readouterr().err) == f"error: no run 999999 in {store.url}"
        assert store.get(cifar_id).id == cifar_id
    assert main(["runs", "rm", str(cifar_id), "--store", store_url]) == 0
    assert f"removed run {cifar_id}" in capsys.readouterr().out
    assert main(["runs", "show", str(cifar_id), "--store", store_url]) == 1
    assert _one_line(capsys.readouterr().err).startswith(f"error: no run {cifar_id} in ")


def test_cli_import_of_nothing_readable_exits_1(store_url, tmp_path, capsys):
    """Invariant: `runs import` of paths that hold no readable results.json (a typo) indexes nothing, lists why,
    and exits 1; re-importing files already in the store is not an error (exit 0)."""
    assert main(["runs", "import", str(tmp_path / "typo"), "--quiet", "--store", store_url]) == 1
    assert "no such file or folder" in capsys.readouterr().out
    assert main(["runs", "import", str(CIFAR), "--quiet", "--store", store_url]) == 0
    assert main(["runs", "import", str(CIFAR), "--quiet", "--store", store_url]) == 0
    assert "already in the store" in capsys.readouterr().out
