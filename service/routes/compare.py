"""/compare: did the networks learn the task, and which did better?"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service import comparison, plots
from service.deps import SessionDep
from service.routes.common import problems
from service.schemas import Comparison

router = APIRouter(tags=["compare"])


@router.get("/compare", response_model=Comparison, responses=problems(404, 422))
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
