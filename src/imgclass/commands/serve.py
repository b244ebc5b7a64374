"""``imgclass serve [--model SPEC ...] [--store URL | --runs DIR] [--host 127.0.0.1] [--port 8000]``: the web app and
JSON API of :mod:`imgclass.serve`."""

from __future__ import annotations

import argparse
import os

TOKEN_ENV = "IMGCLASS_TOKEN"


def add_command(sub) -> None:
    p = sub.add_parser(
        "serve", help="web app and JSON API: playground over loaded models, runs, reports and the leaderboard",
        description="Serve a playground (upload an image: each model's top-5 classes, attribution overlays, "
                    "corruption previews, adversarial examples), the runs of a store or folder (list, report, "
                    "comparison, leaderboard) and a JSON API with OpenAPI docs at /docs. Binds to 127.0.0.1 unless "
                    f"--host says otherwise; any other address needs an access token (--token or ${TOKEN_ENV}).",
    )
    p.add_argument("--model", action="append", default=[], metavar="SPEC",
                   help="model to load (repeatable), e.g. zoo:cifar10-resnet20, timm:resnet50.a1_in1k")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--store", default=None, metavar="URL",
                     help="run store: a SQLAlchemy URL (default: $IMGCLASS_STORE, else $IMGCLASS_HOME/runs.db)")
    src.add_argument("--runs", default=None, metavar="DIR", help="show the results.json files found under DIR instead")
    p.add_argument("--data", action="append", default=[], metavar="SPEC",
                   help="dataset whose images the playground can pick (repeatable), e.g. zoo:cifar10-lossless:test")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None,
                   help=f"access token every request must carry (default: ${TOKEN_ENV}); required off loopback")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=16.0, help="largest request body (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=None, help="largest decoded image (default: Pillow's bomb limit)")
    p.add_argument("--time-limit", type=float, default=60.0,
                   help="seconds an attack or explanation may run (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=32, help="dynamic batching: largest batch (default: %(default)s)")
    p.add_argument("--no-batch-tuning", action="store_true",
                   help="keep --max-batch as given (default: lowered at start-up to the batch size this machine runs "
                        "fastest per image)")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="dynamic batching: how long a batch waits for more requests (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice, one per core); on a small machine fewer "
                        "threads leave cores to the HTTP event loop")
    p.add_argument("--batch-idle-ms", type=float, default=1.0,
                   help="dynamic batching: stop waiting when no request came for this long (default: %(default)s)")
    p.add_argument("--graceful-timeout", type=float, default=10.0,
                   help="on shutdown, seconds to let open requests finish (default: %(default)s)")
    p.set_defaults(func=_run, interrupt_message="stopped")


def check_binding(host: str, token: str | None) -> None:
    """Off loopback, a token is required (a UsageError otherwise)."""
    from ..errors import UsageError
    from ..serve.security import is_loopback

    if not is_loopback(host) and not token:
        raise UsageError(f"--host {host} is reachable from other machines: give an access token with --token or "
                         f"${TOKEN_ENV} (every request must then carry it)")


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..data.decode import DEFAULT_MAX_PIXELS
    from ..errors import UsageError
    from ..serve import Limits, create_app

    token = args.token or os.environ.get(TOKEN_ENV) or None
    check_binding(args.host, token)
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must lie in 0..65535, got {args.port}")
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
                    time_limit_s=args.time_limit, max_batch=args.max_batch, window_ms=args.batch_window_ms,
                    idle_ms=args.batch_idle_ms, tune_batch=not args.no_batch_tuning)
    for spec in args.model:
        print(f"loading {spec} ...", flush=True)
    app = create_app(args.model, store=args.store, runs_dir=args.runs, token=token, limits=limits,
                     device=args.device, datasets=args.data)
    for slot in app.state.imgclass.slots.values():
        t = slot.tuning
        print(f"{slot.spec}: batches of up to {slot.batcher.max_batch}"
              + (f" (ms per image by batch size: {t['ms_per_image']})" if t else ""), flush=True)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"imgclass serve: http://{shown}:{args.port}/ (API docs at /docs)"
          + (" — requests need the token" if token else ""), flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                            timeout_graceful_shutdown=args.graceful_timeout)
    uvicorn.Server(config).run()
    return 0
