"""The report endpoints: the notebook's figures as SVG or PNG (losses, predictions over time,
scatter, comparison) and /compare (did the networks learn the task, and which did better?)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from service.deps import CacheDep, DbDep, SessionDep
from service.openapi import error_responses
from service.reports import comparison, plots
from service.schemas import Comparison

router = APIRouter(tags=["plots"])
compare_router = APIRouter(tags=["compare"])
Fmt = Literal["svg", "png"]


def _image(data: bytes, fmt: Fmt) -> Response:
    return Response(content=data, media_type=plots.MEDIA_TYPES[fmt])


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "the figure: SVG or PNG by the path's suffix",
            "content": {
                "image/svg+xml": {"schema": {"type": "string"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **error_responses(*codes),
    }


@router.get(
    "/runs/{run_id}/plots/losses.{fmt}", response_class=Response, responses=_responses(404, 422)
)
def read_losses_plot(db: DbDep, run_id: str, fmt: Fmt) -> Response:
    """Training and validation loss per epoch (log scale); works while the run trains."""
    return _image(plots.losses_plot(db=db, run_id=run_id, fmt=fmt), fmt)


@router.get(
    "/runs/{run_id}/plots/predictions.{fmt}",
    response_class=Response,
    responses=_responses(404, 409, 422),
)
def read_predictions_plot(
    db: DbDep,
    cache: CacheDep,
    run_id: str,
    fmt: Fmt,
    index: Annotated[
        int, Query(ge=0, description="test sequence (404 past the run's last one)")
    ] = 0,
    start: Annotated[
        int, Query(ge=0, description="first time step drawn (404 past the sequence's end)")
    ] = 0,
    steps: Annotated[int, Query(ge=1, le=plots.MAX_PREDICTION_STEPS)] = 300,
) -> Response:
    """A test sequence's target and predicted series over time, marker-1 steps marked."""
    data = plots.predictions_plot(
        db=db, cache=cache, run_id=run_id, index=index, start=start, steps=steps, fmt=fmt
    )
    return _image(data, fmt)


@router.get(
    "/runs/{run_id}/plots/scatter.{fmt}",
    response_class=Response,
    responses=_responses(404, 409, 422),
)
def read_scatter_plot(
    db: DbDep,
    cache: CacheDep,
    run_id: str,
    fmt: Fmt,
    index: Annotated[
        int | None,
        Query(ge=0, description="one test sequence (404 past the last); omitted: all of them"),
    ] = None,
) -> Response:
    """Predicted against target over the test split, with the identity line."""
    return _image(plots.scatter_plot(db=db, cache=cache, run_id=run_id, index=index, fmt=fmt), fmt)


@router.get("/plots/compare.{fmt}", response_class=Response, responses=_responses(404, 422))
def read_compare_plot(
    db: DbDep,
    fmt: Fmt,
    runs: Annotated[
        str,
        Query(
            description=plots.RUN_IDS_DESCRIPTION, max_length=2000, pattern=plots.RUN_IDS_PATTERN
        ),
    ],
) -> Response:
    """Several runs' validation losses overlaid, labelled by model kind and hidden size."""
    return _image(plots.compare_plot(db=db, ids=plots.parse_run_ids(runs), fmt=fmt), fmt)


@compare_router.get("/compare", response_model=Comparison, responses=error_responses(404, 422))
def read_comparison(
    session: SessionDep,
    runs: Annotated[
        str,
        Query(
            description=plots.RUN_IDS_DESCRIPTION, max_length=2000, pattern=plots.RUN_IDS_PATTERN
        ),
    ],
) -> Comparison:
    """Several runs' test error against the zero predictor's, their verdicts, and the best."""
    return comparison.compare_runs(session=session, ids=plots.parse_run_ids(runs))
