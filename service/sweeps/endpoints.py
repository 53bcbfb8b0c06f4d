"""/sweeps: a grid of runs created together, summed up per configuration as they finish."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from service import pagination
from service.deps import DbDep, QueueDep, SessionDep, SettingsDep
from service.openapi import accepted_responses, error_responses
from service.schemas import SweepCreate, SweepList, SweepRead
from service.sweeps import store as sweeps

router = APIRouter(prefix="/sweeps", tags=["sweeps"])


@router.post(
    "",
    status_code=202,
    response_model=SweepRead,
    responses=accepted_responses("Accepted: every run queued", "/sweeps/{id}"),
)
def create_sweep(
    spec: SweepCreate, db: DbDep, settings: SettingsDep, queue: QueueDep, response: Response
) -> SweepRead:
    """Queue one run per combination of the grid's values (all or none), as one sweep."""
    with db.writing() as session:
        sweep = sweeps.create_sweep(session=session, spec=spec, settings=settings)
        read = sweeps.to_read(session, sweep)
    queue.submitted(db)  # after the commit: a Celery worker can read what it receives
    response.headers["Location"] = f"/sweeps/{read.id}"
    return read


@router.get("", response_model=SweepList, responses=error_responses(422))
def list_sweeps(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=pagination.MAX_LIST_LIMIT)] = 20,
    cursor: Annotated[
        str | None,
        Query(pattern=pagination.CURSOR_PATTERN, description="a next_cursor from an earlier page"),
    ] = None,
) -> SweepList:
    """Sweeps, newest first, one page at a time."""
    return sweeps.list_sweeps(session=session, limit=limit, cursor=cursor)


@router.get("/{sweep_id}", response_model=SweepRead, responses=error_responses(404))
def read_sweep(session: SessionDep, sweep_id: str) -> SweepRead:
    """A sweep's runs and, per configuration, the error over seeds; the best so far."""
    return sweeps.to_read(session, sweeps.get_sweep_or_404(session=session, sweep_id=sweep_id))


@router.post(
    "/{sweep_id}/cancel",
    status_code=202,
    response_model=SweepRead,
    responses=error_responses(404, 409),
)
def cancel_sweep(db: DbDep, sweep_id: str) -> SweepRead:
    """Cancel every run of the sweep that has not ended."""
    with db.writing() as session:
        sweep = sweeps.cancel_sweep(session=session, sweep_id=sweep_id)
        return sweeps.to_read(session, sweep)
