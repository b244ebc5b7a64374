"""The HTML pages: the playground, the run list, a run, a comparison of runs, the leaderboard; a run's report and
files (only by run id, from the registered run's folder); dataset images for the playground's picker."""

from __future__ import annotations

import io

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ..commands.runs import format_number
from .app import HERE, LEADERBOARD_COLUMNS, ServeState, board_json
from .runs import NoSuchRun, RunSource

__all__ = ["add_pages"]

# A run's files are data, not part of the app: served in a sandbox (an opaque origin: their scripts run, but cannot
# read the app's cookies or call its API as the user), never sniffed into another type.
RUN_FILE_HEADERS = {"Content-Security-Policy": "sandbox allow-scripts allow-popups", "X-Content-Type-Options": "nosniff"}


def add_pages(app: FastAPI, state: ServeState) -> None:  # noqa: C901 - one place for the page routes
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["num"] = format_number
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def page(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"state": state, **ctx}, status_code=status)

    def runs_or_page(request: Request) -> RunSource | HTMLResponse:
        if state.runs is None or state.runs.store is None:
            why = state.runs.error if state.runs is not None else "run pages are off"
            return page(request, "message.html", 503, title="No runs", message=f"No run store: {why}")
        return state.runs

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def playground(request: Request):
        from ..corruptions import CORRUPTIONS
        from ..explain import METHODS

        datasets = [{"key": k, "spec": spec, "size": len(d)} for k, (spec, d) in state.datasets.items()]
        return page(request, "playground.html", models=list(state.slots.values()), corruptions=CORRUPTIONS,
                    methods=list(METHODS.names()) if hasattr(METHODS, "names") else sorted(METHODS),
                    datasets=datasets, limits=state.limits)

    @app.get("/datasets/{key}/{index}.png", include_in_schema=False)
    def dataset_image(key: str, index: str):
        from PIL import Image

        if key not in state.datasets or not index.isdigit():
            raise HTTPException(404, "no such dataset image")
        spec, ds = state.datasets[key]
        i = int(index)
        if i >= len(ds):
            raise HTTPException(404, f"{spec} has {len(ds)} images")
        img = ds.load(i).permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png",
                        headers={"X-Sample-Id": str(ds.sample_id(i)).encode("ascii", "replace").decode()})

    @app.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    def runs_page(request: Request, model: str = "", data: str = "", probe: str = "", kind: str = "",
                  limit: int = 500):
        src = runs_or_page(request)
        if isinstance(src, HTMLResponse):
            return src
        runs = src.list(model=model, data=data, probe=probe, kind=kind, limit=max(1, limit))
        return page(request, "runs.html", runs=runs, where=src.where, limit=max(1, limit),
                    filters={"model": model, "data": data, "probe": probe, "kind": kind})

    @app.get("/runs/compare", response_class=HTMLResponse, include_in_schema=False)
    def compare_page(request: Request, ids: str = ""):
        src = runs_or_page(request)
        if isinstance(src, HTMLResponse):
            return src
        wanted = [i for part in request.query_params.getlist("ids") for i in part.split(",") if i.strip()]
        if len(wanted) < 2:
            return page(request, "message.html", 400, title="Compare runs",
                        message="Pick at least two runs to compare (tick them in the run list).")
        c = src.compare([int(i) if i.strip().isdigit() else -1 for i in wanted])
        return page(request, "compare.html", c=c, ids=[r.run_id for r in c.runs])

    @app.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def run_page(request: Request, run_id: str):
        src = runs_or_page(request)
        if isinstance(src, HTMLResponse):
            return src
        try:
            r = src.get(run_id)
        except NoSuchRun as e:
            return page(request, "message.html", 404, title="No such run", message=str(e))
        return page(request, "run.html", r=r)

    @app.get("/runs/{run_id}/report", include_in_schema=False)
    def run_report(run_id: str):
        if state.runs is None or state.runs.store is None:
            raise HTTPException(404, "no runs")
        try:
            return FileResponse(state.runs.report(run_id), media_type="text/html", headers=RUN_FILE_HEADERS)
        except NoSuchRun as e:
            raise HTTPException(404, str(e)) from None

    @app.get("/runs/{run_id}/files/{rel:path}", include_in_schema=False)
    def run_file(run_id: str, rel: str):
        if state.runs is None or state.runs.store is None:
            raise HTTPException(404, "no runs")
        try:
            return FileResponse(state.runs.file(run_id, rel), headers=RUN_FILE_HEADERS)
        except NoSuchRun as e:
            raise HTTPException(404, str(e)) from None

    @app.get("/leaderboard", response_class=HTMLResponse, include_in_schema=False)
    def leaderboard_page(request: Request, data: str = "", columns: str = ",".join(LEADERBOARD_COLUMNS)):
        src = runs_or_page(request)
        if isinstance(src, HTMLResponse):
            return src
        cols = [c.strip() for c in columns.split(",") if c.strip()]
        board = board_json(src.leaderboard(data=data or None, columns=cols))
        shown = [c for c in board["columns"] if c["protocol"] is not None] or board["columns"]
        datasets = sorted({r.data_spec for r in src.list(kind="eval")})
        return page(request, "leaderboard.html", board=board, columns=shown, data=data, datasets=datasets)
