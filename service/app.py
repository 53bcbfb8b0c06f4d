"""The FastAPI application: lifespan (migrate, workers), routes, errors, offline Swagger UI."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import swagger_ui_bundle
import torch
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__, health, limits, metrics, openapi, problems, security
from service import db as database
from service.predict import endpoints as predict
from service.predict import oip_endpoints
from service.predict.inference import ModelCache
from service.queue import lifecycle
from service.queue.backend import queue_for
from service.queue.workers import local_worker_is_dead, warm_up_models
from service.reports import endpoints as reports
from service.runs import endpoints as runs
from service.settings import Settings, get_settings
from service.sweeps import endpoints as sweeps

log = logging.getLogger("rnnlab.api")
DOCS_ASSETS = "/docs-assets"
STATIC_DIR = Path(__file__).parent / "static"


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, before they are read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(scope, receive, send)
                return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        detail = limits.body_too_large(self.max_bytes)
        response = problems.render(request, problems.ProblemError(413, detail))
        await response(scope, receive, send)


def create_app(settings: Settings | None = None, *, start_workers: bool = True) -> FastAPI:
    """Build the app; its lifespan migrates the database and runs the local worker pool."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.init(settings, owner=True)  # before workers start: they inherit its location
        db = database.Database(settings)
        database.upgrade(db.engine)
        # Runs left `running` by a previous server whose workers are gone go back to the queue.
        lifecycle.reap_stale(
            db,
            timeout_s=settings.heartbeat_timeout_s,
            max_requeues=settings.max_requeues,
            is_dead=local_worker_is_dead,
        )
        # Inference in the API process stays on one thread; the cores belong to the workers.
        torch.set_num_threads(1)
        app.state.db = db
        app.state.settings = settings
        app.state.model_cache = ModelCache(settings.model_cache_size)
        app.state.queue = queue = queue_for(settings)
        # Compile the prediction kernels off the request path; a first /predict waits for it.
        threading.Thread(target=warm_up_models, name="warm-up", daemon=True).start()
        queue.start(db, start_workers=start_workers)
        log.info("rnnlab ready: %s, %s", settings.database_url, queue.describe())
        try:
            yield
        finally:
            queue.stop()
            db.dispose()

    app = FastAPI(
        title="rnnlab",
        version=__version__,
        summary="Train small recurrent networks on the dynamic adding problem; predict per step.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        # Operation ids are the route functions' names (create_run, list_runs, predict, …),
        # so that generated clients read well.
        generate_unique_id_function=lambda route: route.name,
    )
    problems.install(app)
    app.include_router(runs.router)
    app.include_router(sweeps.router)
    app.include_router(predict.router)
    app.include_router(reports.router)
    app.include_router(reports.compare_router)
    app.include_router(health.router)
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        """The dashboard page (plain HTML, CSS and JavaScript shipped in the package)."""
        return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="rnnlab – Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )

    openapi.install(app, settings)
    # Outermost last: CORS (answers preflights, decorates every answer, 401s included),
    # request metrics, the key check, then the body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(security.APIKeyMiddleware, keys=settings.keys)
    app.add_middleware(metrics.RequestMetricsMiddleware)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Last-Event-ID",
                "Inference-Header-Content-Length",  # the OIP's binary tensors
            ],
            expose_headers=[
                "Location",
                "Retry-After",
                "WWW-Authenticate",
                "Inference-Header-Content-Length",
            ],
            max_age=600,
        )
    # The Open Inference Protocol: its routes and its error shape (outermost).
    oip_endpoints.install(app)
    return app
