"""/healthz, /readyz and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service import db as database
from service import metrics
from service.deps import DbDep
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def read_health() -> Health:
    """The process answers."""
    return Health(status="ok")


@router.get(
    "/readyz", response_model=Health, responses={503: {"model": Health, "description": "Not ready"}}
)
def read_ready(request: Request) -> JSONResponse:
    """Ready: the database answers and is at the migration head, and the workers are alive."""
    state = request.app.state
    checks: dict[str, object] = {}
    ok = True
    try:
        current = database.current_revision(state.db.engine)
        head = database.head_revision()
        checks["database"] = "ok"
        checks["migration"] = {"current": current, "head": head}
        ok = current == head
    except Exception as e:
        checks["database"] = f"unreachable: {type(e).__name__}"
        ok = False
    checks["workers"], workers_ok = state.queue.workers_check()
    ok = ok and workers_ok
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ok else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format: see the README for every metric",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def read_metrics(db: DbDep) -> Response:
    """Prometheus metrics of the API and its workers: runs, queue, epochs, durations, requests."""
    return Response(metrics.render(db), media_type=metrics.CONTENT_TYPE)
