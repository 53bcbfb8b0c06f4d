"""`rnnlab serve`, `rnnlab worker` and `rnnlab migrate`: the server, a worker alone, the schema."""

from __future__ import annotations

import argparse
import logging

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
    from service import metrics
    from service.queue.backend import queue_for

    settings = get_settings()
    _logging(settings)
    metrics.init(settings, owner=False)
    return queue_for(settings).run_worker(burst=args.burst)


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
