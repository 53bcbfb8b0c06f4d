"""Sweeps: one run per combination of a grid of run fields, created in one transaction.

A sweep's runs are ordinary runs (`/runs?sweep=<id>`), trained by whatever workers take runs.
Reading a sweep groups its runs by configuration (every grid value but the seed) and sums up
each group's test error as a fraction of the zero predictor's: median and spread over seeds.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import statistics
import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import limits, pagination
from service.problems import ProblemError, conflict, invalid, not_found
from service.queue import lifecycle
from service.runs import store as runs
from service.schemas import (
    RunCreate,
    SweepCreate,
    SweepList,
    SweepRead,
    SweepRow,
    SweepRun,
)
from service.settings import Settings
from service.tables import ENDED, Run, RunStatus, Sweep, utcnow


def _set(body: dict[str, Any], key: str, value: Any) -> None:
    if key.startswith("data."):
        body.setdefault("data", {})[key[5:]] = copy.deepcopy(value)
    else:
        body[key] = copy.deepcopy(value)


def _where(loc: tuple[Any, ...], grid: dict[str, Any]) -> list[Any]:
    """The API location of a run-body error: the grid key it came from, or the base."""
    name = ".".join(str(p) for p in loc[:2]) if loc[:1] == ("data",) else str(loc[0] if loc else "")
    return ["body", "grid", name] if name in grid else ["body", "base", *loc]


def given(spec: SweepCreate) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The base fields and grid values the client gave (omitted ones left out)."""
    base = spec.base.model_dump(exclude_unset=True)
    grid = spec.grid.model_dump(exclude_unset=True, by_alias=True)
    return base, {k: v for k, v in grid.items() if v is not None}


def expand(spec: SweepCreate, settings: Settings) -> list[tuple[dict[str, Any], RunCreate]]:
    """Every combination's grid values and its validated run body; 422 on the first bad one."""
    base, grid = given(spec)
    in_base = set(base) | {f"data.{k}" for k in base.get("data") or {}}
    errors = [
        {"loc": ["body", "grid", k], "msg": "given in base as well; give it in one place",
         "type": "sweep_field_twice"} for k in grid if k in in_base
    ]  # fmt: skip
    if "model" not in base and "model" not in grid:
        errors.append(
            {
                "loc": ["body", "base", "model"],
                "msg": "give the model in base or in the grid",
                "type": "sweep_model_missing",
            }
        )
    if not grid:
        errors.append(
            {"loc": ["body", "grid"], "msg": "give at least one field", "type": "value_error"}
        )
    if errors:
        raise invalid(errors)
    n = math.prod(len(v) for v in grid.values())
    limits.check_sweep_size(n, settings)
    out = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        body = copy.deepcopy(base)
        for key, value in values.items():
            _set(body, key, value)
        try:
            run_spec = RunCreate.model_validate(body)
            limits.check_run(run_spec, settings)
        except ValidationError as e:  # cannot happen for single fields: the models agree
            raise invalid(
                [
                    {
                        "loc": _where(tuple(err["loc"]), grid),
                        "msg": f"{err['msg']} (in the combination {json.dumps(values)})",
                        "type": err["type"],
                    }
                    for err in e.errors()
                ]
            ) from e
        except ProblemError as e:  # the server's limits
            raise invalid(
                [
                    {
                        **err,
                        "loc": _where(tuple(err["loc"][1:]), grid),
                        "msg": f"{err['msg']} (in the combination {json.dumps(values)})",
                    }
                    for err in e.errors or []
                ]
            ) from e
        out.append((values, run_spec))
    return out


def create_sweep(*, session: Session, spec: SweepCreate, settings: Settings) -> Sweep:
    """The sweep and all its runs, queued, in the caller's transaction (all or nothing)."""
    combos = expand(spec, settings)
    sweep = Sweep(
        id=uuid.uuid4().hex,
        created_at=utcnow(),
        base=given(spec)[0],
        grid=given(spec)[1],
        n_runs=len(combos),
    )
    session.add(sweep)
    session.flush()
    runs.lock_queue(session)
    limits.check_queue_room(runs.queued_count(session), len(combos), settings)
    for _values, run_spec in combos:
        runs.create_run(
            session=session, spec=run_spec, settings=settings, sweep_id=sweep.id, check_queue=False
        )
    return sweep


def _value(config: dict[str, Any], key: str) -> Any:
    if key.startswith("data."):
        return config.get("data", {}).get(key[5:])
    return config.get(key)


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def to_read(session: Session, sweep: Sweep) -> SweepRead:
    members = list(
        session.scalars(
            select(Run).where(Run.sweep_id == sweep.id).order_by(Run.created_at, Run.id)
        )
    )
    keys = list(sweep.grid)
    sweep_runs = [
        SweepRun(
            id=r.id,
            status=r.status,
            values={k: _value(r.config, k) for k in keys},
            error_ratio=r.error_ratio,
            verdict=r.verdict,  # type: ignore[arg-type]
        )
        for r in members
    ]
    counts = {s.value: 0 for s in RunStatus}
    for r in members:
        counts[r.status.value] += 1
    groups: dict[str, list[Run]] = {}
    shown: dict[str, dict[str, Any]] = {}
    for r, sr in zip(members, sweep_runs, strict=True):
        config_values = {k: v for k, v in sr.values.items() if k != "seed"}
        key = json.dumps(config_values, sort_keys=True)
        groups.setdefault(key, []).append(r)
        shown[key] = config_values
    table = []
    for key, group in groups.items():
        done = [r for r in group if r.status == RunStatus.succeeded and r.error_ratio is not None]
        ratios = [r.error_ratio for r in done if r.error_ratio is not None]
        mses = [r.test_mse for r in done if r.test_mse is not None]
        table.append(
            SweepRow(
                values=shown[key],
                runs=len(group),
                succeeded=len(done),
                median_error_ratio=_median(ratios),
                min_error_ratio=min(ratios) if ratios else None,
                max_error_ratio=max(ratios) if ratios else None,
                median_test_mse=_median(mses),
                learned=sum(r.verdict == "learned" for r in done),
            )
        )
    table.sort(key=lambda row: (row.median_error_ratio is None, row.median_error_ratio or 0.0))
    best = table[0] if table and table[0].median_error_ratio is not None else None
    if counts["queued"] == len(members):
        status = "queued"
    elif all(r.status in ENDED for r in members):
        status = "ended"
    else:
        status = "running"
    return SweepRead(
        id=sweep.id,
        created_at=sweep.created_at,
        base=sweep.base,
        grid=sweep.grid,
        n_runs=sweep.n_runs,
        status=status,  # type: ignore[arg-type]
        counts=counts,
        runs=sweep_runs,
        table=table,
        best=None
        if best is None
        else {"values": best.values, "median_error_ratio": best.median_error_ratio},
    )


def get_sweep_or_404(*, session: Session, sweep_id: str) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise not_found("sweep", sweep_id)
    return sweep


def list_sweeps(*, session: Session, limit: int, cursor: str | None) -> SweepList:
    rows, next_cursor = pagination.page(session, select(Sweep), Sweep, limit=limit, cursor=cursor)
    return SweepList(items=[to_read(session, s) for s in rows], next_cursor=next_cursor)


def cancel_sweep(*, session: Session, sweep_id: str) -> Sweep:
    """Cancel every run of the sweep that has not ended (queued now, running at its epoch)."""
    sweep = get_sweep_or_404(session=session, sweep_id=sweep_id)
    queued, running = lifecycle.cancel_where(session, Run.sweep_id == sweep_id)
    if not queued and not running:
        raise conflict(f"every run of sweep {sweep_id!r} has already ended; nothing to cancel")
    return sweep
