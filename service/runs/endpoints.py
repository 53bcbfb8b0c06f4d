"""/runs: start training runs, follow them, fetch their losses and weights, cancel them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from service import pagination
from service.deps import CacheDep, DbDep, QueueDep, SessionDep, SettingsDep
from service.openapi import accepted_responses, error_responses, file_responses
from service.problems import not_found
from service.reports import plots
from service.runs import events, export
from service.runs import store as runs
from service.schemas import Losses, MemberRead, ModelKind, RunCreate, RunList, RunRead
from service.tables import RunStatus

router = APIRouter(prefix="/runs", tags=["runs"])

# One Server-Sent Event of GET /runs/{id}/events, as OpenAPI 3.2's itemSchema describes it.
EVENT_ITEM_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["status", "epoch"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "status: the run as GET /runs/{id} shows it; epoch: "
            '{"epoch", "train_loss", "valid_loss", "attempt"}',
        },
        "id": {"type": "string", "description": "epoch events: the epoch"},
        "retry": {"type": "integer", "minimum": 0},
    },
}


@router.post(
    "",
    status_code=202,
    response_model=RunRead,
    responses=accepted_responses("Accepted: queued for a worker", "/runs/{id}"),
)
def create_run(
    spec: RunCreate, db: DbDep, settings: SettingsDep, queue: QueueDep, response: Response
) -> RunRead:
    """Queue a training run; a worker trains it in the background."""
    with db.writing() as session:
        run = runs.create_run(session=session, spec=spec, settings=settings)
        read = runs.to_read(run)
    queue.submitted(db)  # after the commit: a Celery worker can read what it receives
    response.headers["Location"] = f"/runs/{read.id}"
    return read


@router.get("", response_model=RunList, responses=error_responses(422))
def list_runs(
    session: SessionDep,
    status: RunStatus | None = None,
    model: ModelKind | None = None,
    sweep: Annotated[str | None, Query(description="only the runs of this sweep")] = None,
    limit: Annotated[int, Query(ge=1, le=pagination.MAX_LIST_LIMIT)] = 20,
    cursor: Annotated[
        str | None,
        Query(
            pattern=pagination.CURSOR_PATTERN,
            description="a next_cursor from an earlier page: the runs after that position",
        ),
    ] = None,
) -> RunList:
    """List runs, newest first, one page at a time."""
    items, next_cursor = runs.list_runs(
        session=session, status=status, model=model, sweep=sweep, limit=limit, cursor=cursor
    )
    return RunList(items=[runs.to_read(r) for r in items], next_cursor=next_cursor)


@router.get("/{run_id}", response_model=RunRead, responses=error_responses(404))
def read_run(session: SessionDep, run_id: str) -> RunRead:
    """Get one run: its status, config, progress and metrics."""
    return runs.to_read(runs.get_run_or_404(session=session, run_id=run_id))


@router.get("/{run_id}/losses", response_model=Losses, responses=error_responses(404))
def read_losses(session: SessionDep, run_id: str) -> Losses:
    """Per-epoch training and validation loss of that epoch's best member; grows while it trains."""
    return runs.read_losses(session=session, run_id=run_id)


@router.get("/{run_id}/members", response_model=list[MemberRead], responses=error_responses(404))
def read_members(session: SessionDep, run_id: str) -> list[MemberRead]:
    """The run's population: each member's seed, epochs trained, last losses and which was kept."""
    return runs.read_members(session=session, run_id=run_id)


async def _existing_run_id(db: DbDep, run_id: str) -> str:
    """The path's run id, or 404 before any response (a stream cannot turn into an error)."""
    if await anyio.to_thread.run_sync(events.read_snapshot, db, run_id, 10**12) is None:
        raise not_found("run", run_id)
    return run_id


@router.get(
    "/{run_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "text/event-stream: `status` events (the run as GET /runs/{id} "
            "shows it) at the start and at every change, one `epoch` event per epoch "
            '(`{"epoch", "train_loss", "valid_loss", "attempt"}`, id: the epoch), keep-alive '
            "comments; an ended status is always the last event, after which the stream ends. "
            "Reconnect with Last-Event-ID to get only the "
            "epochs after it.",
            "content": {"text/event-stream": {"itemSchema": EVENT_ITEM_SCHEMA}},
        },
        **error_responses(404),
    },
)
async def read_events(
    db: DbDep,
    settings: SettingsDep,
    run_id: Annotated[str, Depends(_existing_run_id)],
    last_event_id: Annotated[str | None, Header()] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Follow a run live: its status changes and each epoch's losses as Server-Sent Events."""
    async for event in events.run_events(
        db, run_id, last_event_id=last_event_id, poll_s=settings.events_poll_s
    ):
        yield event


@router.delete(
    "/{run_id}", status_code=204, response_class=Response, responses=error_responses(404, 409)
)
def delete_run(db: DbDep, cache: CacheDep, run_id: str) -> Response:
    """Delete an ended run with its losses and weights (a queued or running one: 409)."""
    with db.writing() as session:
        runs.delete_run(session=session, run_id=run_id)
    cache.forget(run_id)
    plots.forget(run_id)
    return Response(status_code=204)


@router.post(
    "/{run_id}/cancel", status_code=202, response_model=RunRead, responses=error_responses(404, 409)
)
def cancel_run(db: DbDep, run_id: str) -> RunRead:
    """Cancel a run: a queued one at once, a running one at the end of its current epoch."""
    with db.writing() as session:
        return runs.to_read(runs.cancel_run(session=session, run_id=run_id))


def _attachment(data: bytes, filename: str) -> Response:
    return Response(
        content=data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get(
    "/{run_id}/checkpoint",
    response_class=Response,
    responses=file_responses(
        "safetensors file; tensor names are the model's state_dict names", 404, 409
    ),
)
def read_checkpoint(session: SessionDep, run_id: str) -> Response:
    """Download a succeeded run's trained weights (safetensors)."""
    data = runs.read_checkpoint(session=session, run_id=run_id)
    return _attachment(data, f"{run_id}.safetensors")


@router.get(
    "/{run_id}/model.onnx",
    response_class=Response,
    responses=file_responses(
        "ONNX model (opset 17): input `x` float32 [batch, time, 2] (value, marker), output "
        "`y` float32 [batch, time, 1], the output at every step; no lengths input "
        "(docs/export.md)",
        404,
        409,
    ),
)
def read_onnx(session: SessionDep, run_id: str) -> Response:
    """Download a succeeded run's trained network as an ONNX model, for any ONNX runtime."""
    return _attachment(export.run_onnx(session=session, run_id=run_id), f"{run_id}.onnx")
