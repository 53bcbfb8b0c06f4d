"""Which run learned the task best: several runs' test figures side by side."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from service.reports.plots import load_runs
from service.schemas import CompareItem, Comparison
from service.tables import RunStatus


def compare_runs(*, session: Session, ids: Sequence[str]) -> Comparison:
    """Each run's stored metrics (the verdict as the run recorded it) and the best of them."""
    items = [
        CompareItem(
            run_id=r.id,
            status=r.status,
            model=r.model,  # type: ignore[arg-type]
            hidden_size=r.config["hidden_size"],
            population=r.config.get("population", 1),
            epochs=r.epochs_completed,
            test_mse=r.test_mse,
            baseline_mse=r.baseline_mse,
            marker_mse=r.marker_mse,
            error_ratio=r.error_ratio,
            verdict=r.verdict,  # type: ignore[arg-type]
        )
        for r in load_runs(session, ids)
    ]
    done = [i for i in items if i.status == RunStatus.succeeded and i.error_ratio is not None]
    best = min(done, key=lambda i: (i.error_ratio, i.run_id)) if done else None
    if best is None:
        summary = "no run has succeeded yet: nothing to compare"
    else:
        summary = (
            f"{best.model} (hidden {best.hidden_size}, run {best.run_id[:8]}) did best: "
            f"{best.error_ratio:.2%} of the zero predictor's error left, {best.verdict}"
        )
        others = [i for i in done if i is not best]
        if others:
            summary += "; " + ", ".join(
                f"{i.model} (hidden {i.hidden_size}, run {i.run_id[:8]}) {i.error_ratio:.2%}"
                f", {i.verdict}"
                for i in others
            )
    return Comparison(runs=items, best=best.run_id if best else None, summary=summary)
