"""The `rnnlab` command: serve (API + local workers), worker, migrate; train, predict and
runs watch."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from service import commands
from service.settings import Settings, get_settings


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.security import warn_if_open

    settings = get_settings()
    _logging(settings)
    app = create_app(settings)
    warn_if_open(args.host, settings.keys)
    # One server process: it owns the worker pool (uvicorn's own --workers would fork copies).
    uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level.lower())
    return 0


def worker(args: argparse.Namespace) -> int:
    from service import db as database
    from service import metrics
    from service.queue.workers import Worker, configure_threads

    settings = get_settings()
    _logging(settings)
    metrics.init(settings, owner=False)
    if settings.queue == "celery":
        from service.queue import celery as dispatch

        db = database.Database(settings)
        try:
            database.upgrade(db.engine)
        finally:
            db.dispose()
        return dispatch.run_worker(settings)
    configure_threads(settings)
    w = Worker(settings)
    database.upgrade(w.db.engine)

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger("rnnlab.worker").info(
            "signal %d: finishing the current epoch, then re-queueing", signum
        )
        w.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        w.work(burst=args.burst, reap=True)
    finally:
        w.db.dispose()
    return 0


def migrate(args: argparse.Namespace) -> int:
    from service import db as database

    settings = get_settings()
    _logging(settings)
    db = database.Database(settings)
    try:
        if args.revision.startswith("-") or args.revision == "base":
            database.downgrade(db.engine, args.revision)
        else:
            database.upgrade(db.engine, args.revision)
        print(f"database at {database.current_revision(db.engine)} ({settings.database_url})")
    finally:
        db.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rnnlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="start the API and its local worker processes")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=serve)
    p = sub.add_parser("worker", help="run a worker alone against the same database")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.set_defaults(func=worker)
    p = sub.add_parser("migrate", help="upgrade the database schema (default: to head)")
    p.add_argument("revision", nargs="?", default="head", help="head, base, or a revision id")
    p.set_defaults(func=migrate)
    p = sub.add_parser(
        "train",
        help="train in the foreground, no server (the options and defaults of POST /runs)",
        description="Train a network here, with a progress bar; Ctrl+C stops at the end of "
        "the epoch and still writes what was asked. Exit status: 0 trained, 1 failed, "
        "2 invalid options, 130 stopped early.",
    )
    commands.add_train_options(p)
    p.set_defaults(func=commands.train)
    p = sub.add_parser(
        "predict",
        help="outputs for sequences (JSON on stdin or --input) from a checkpoint file",
        description='Reads {"sequences": [[[value, marker], ...], ...]} (or the bare list) and '
        'writes {"outputs": [[...], ...]}, one output per step: the numbers POST /predict gives.',
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="safetensors file of a run")
    p.add_argument("--input", type=Path, help="read the sequences here instead of stdin")
    p.set_defaults(func=commands.predict)
    p = sub.add_parser("runs", help="runs on a server")
    runs_sub = p.add_subparsers(dest="runs_command", required=True)
    p = runs_sub.add_parser(
        "watch",
        help="follow a run's progress live; exit 0 if it succeeds, 1 if not",
    )
    p.add_argument("run_id")
    p.add_argument("--server", default="http://127.0.0.1:8000", help="(default: %(default)s)")
    p.add_argument(
        "--api-key", help="bearer key for a server with keys (default: RNNLAB_API_KEY's)"
    )
    p.set_defaults(func=commands.watch)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
