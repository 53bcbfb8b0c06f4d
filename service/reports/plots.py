"""The notebook's figures, rendered on the server with matplotlib's Agg backend (SVG or PNG).

No pyplot: each figure is its own `Figure` on a `FigureCanvasAgg`, so renderings in the thread
pool share no global state. A semaphore bounds how many render at once, the points drawn are
capped, and a finished run's plots are cached (its data can no longer change).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import make_splits, predict
from service.db import Database
from service.predict.inference import ModelCache
from service.problems import ProblemError, not_found
from service.runs.config import config_from_json
from service.runs.store import epoch_losses, get_run_or_404, require_succeeded
from service.tables import ENDED, Run

Format = Literal["svg", "png"]
MEDIA_TYPES = {"svg": "image/svg+xml", "png": "image/png"}
MAX_LINE_POINTS = 4000  # per curve: longer series are thinned evenly (ends kept)
MAX_SCATTER_POINTS = 20_000
MAX_COMPARE_RUNS = 20
MAX_PREDICTION_STEPS = 5000

# SVG text stays text (<text> elements, searchable and small) instead of glyph paths.
matplotlib.rcParams["svg.fonttype"] = "none"

_render_slots = threading.BoundedSemaphore(2)
_cache: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
_cache_lock = threading.Lock()
CACHE_SIZE = 256


def _thin(n: int, cap: int) -> np.ndarray:
    """Indices of at most `cap` of n points, evenly spread, first and last included."""
    if n <= cap:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, cap).round().astype(np.int64))


def _render(fig: Figure, fmt: Format) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=100, bbox_inches="tight", metadata=_metadata(fmt))
    return buf.getvalue()


def _metadata(fmt: Format) -> dict[str, Any]:
    # No creation date in SVGs: the same plot renders to the same bytes.
    return {"Date": None} if fmt == "svg" else {}


def _cached(key: tuple[Any, ...], cacheable: bool, draw: Any) -> bytes:
    if cacheable:
        with _cache_lock:
            hit = _cache.get(key)
            if hit is not None:
                _cache.move_to_end(key)
                return hit
    with _render_slots:
        data = draw()
    if cacheable:
        with _cache_lock:
            _cache[key] = data
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return data


def forget(run_id: str) -> None:
    """Drop a run's cached plots (when it is deleted)."""
    with _cache_lock:
        for key in [k for k in _cache if run_id in str(k[1]).split(",")]:
            del _cache[key]


def _label(run: Run) -> str:
    return f"{run.model} H={run.config['hidden_size']} ({run.id[:8]})"


def _losses(session: Session, run_id: str) -> tuple[list[int], list[float], list[float]]:
    rows = epoch_losses(session, run_id)
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def _loss_axes(fig: Figure) -> Any:
    ax = fig.add_subplot()
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    return ax


def draw_losses(
    epochs: Sequence[int], train: Sequence[float], valid: Sequence[float], title: str, fmt: Format
) -> bytes:
    """The loss-curve figure from plain lists (the API and `rnnlab train --plot` share it)."""
    fig = Figure(figsize=(8, 4.5))
    ax = _loss_axes(fig)
    keep = _thin(len(epochs), MAX_LINE_POINTS)
    x = np.asarray(epochs)[keep] if len(epochs) else []
    ax.plot(x, np.asarray(train)[keep] if len(train) else [], label="training loss")
    ax.plot(x, np.asarray(valid)[keep] if len(valid) else [], label="validation loss")
    if not len(epochs):
        ax.text(0.5, 0.5, "no epoch yet", transform=ax.transAxes, ha="center")
    ax.set_title(title, fontsize=10)
    ax.legend()
    return _render(fig, fmt)


def losses_title(
    model: str, hidden_size: int, run_id: str, status: str, done: int, epochs: int
) -> str:
    return (
        f"{model.upper()}, hidden size {hidden_size} — run {run_id}\n"
        f"{status}, {done} of {epochs} epochs"
    )


def losses_plot(*, db: Database, run_id: str, fmt: Format) -> bytes:
    """Training and validation loss per epoch, log scale; works while the run trains."""
    with db.reading() as session:
        run = get_run_or_404(session=session, run_id=run_id)
        epochs, train, valid = _losses(session, run_id)
        title = losses_title(
            run.model,
            run.config["hidden_size"],
            run.id,
            run.status.value,
            len(epochs),
            run.config["epochs"],
        )
        ended, attempt = run.status in ENDED, run.attempt
    key = ("losses", run_id, attempt, fmt)
    return _cached(key, ended, lambda: draw_losses(epochs, train, valid, title, fmt))


def _test_split(run: Run) -> Any:
    cfg = config_from_json(run.config)
    return make_splits(cfg.seed, cfg.n_sequences, cfg.seq_len, cfg.marker_probs).test


def _check_index(run_id: str, index: int | None, n: int) -> None:
    if index is not None and not 0 <= index < n:
        # Which sequences exist depends on the run, so the schema cannot bound it: the asked
        # sequence is a resource this run does not have.
        raise ProblemError(
            404, f"run {run_id!r} has no test sequence {index}; it has {n} (0 … {n - 1})"
        )


def _succeeded_run(db: Database, run_id: str) -> Run:
    with db.reading() as session:
        run = get_run_or_404(session=session, run_id=run_id)
        require_succeeded(run)  # 409: no weights yet
        session.expunge(run)
    return run


def predictions_plot(
    *,
    db: Database,
    cache: ModelCache,
    run_id: str,
    index: int,
    start: int,
    steps: int,
    fmt: Format,
) -> bytes:
    """A test sequence's targets and the model's outputs over time, marker-1 steps shown."""
    run = _succeeded_run(db, run_id)
    cfg = config_from_json(run.config)
    _check_index(run_id, index, cfg.n_sequences)
    if not 0 <= start < cfg.seq_len:
        raise ProblemError(
            404,
            f"run {run_id!r} has no time step {start}: its sequences have {cfg.seq_len} steps "
            f"(start 0 … {cfg.seq_len - 1})",
        )

    def draw() -> bytes:
        split = _test_split(run)
        model = cache.get(db, run_id)
        end = min(cfg.seq_len, start + steps)
        x = split.X[index]
        (y,) = predict(model, [x[:end]])
        t = np.arange(start, end)
        target = split.T[index, start:end, 0]
        output = y[start:end, 0]
        marker = x[start:end, 1] == 1.0
        fig = Figure(figsize=(10, 4))
        ax = fig.add_subplot()
        ax.plot(t, target, label="target", color="tab:blue", linewidth=1.2)
        ax.plot(t, output, label="prediction", color="tab:orange", linewidth=1.0)
        ax.scatter(
            t[marker], target[marker], s=12, color="tab:red", zorder=3, label="marker-1 steps"
        )
        ax.set_xlabel("time step")
        ax.set_ylabel("output")
        ax.set_title(
            f"{run.model.upper()}, hidden size {cfg.hidden_size} — run {run.id}\n"
            f"test sequence {index}, steps {start} … {end - 1}",
            fontsize=10,
        )
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        return _render(fig, fmt)

    return _cached(("predictions", run_id, index, start, steps, fmt), True, draw)


def scatter_plot(
    *, db: Database, cache: ModelCache, run_id: str, index: int | None, fmt: Format
) -> bytes:
    """Predicted against target over the test split (or one sequence), with the identity."""
    run = _succeeded_run(db, run_id)
    cfg = config_from_json(run.config)
    _check_index(run_id, index, cfg.n_sequences)

    def draw() -> bytes:
        split = _test_split(run)
        model = cache.get(db, run_id)
        rows = range(cfg.n_sequences) if index is None else [index]
        outputs = predict(model, [split.X[i] for i in rows])
        target = np.concatenate([split.T[i, :, 0] for i in rows])
        output = np.concatenate([o[:, 0] for o in outputs])
        keep = _thin(len(target), MAX_SCATTER_POINTS)
        fig = Figure(figsize=(5.5, 5.5))
        ax = fig.add_subplot()
        ax.scatter(target[keep], output[keep], s=4, alpha=0.4, label="time steps")
        lo = float(min(target.min(), output.min()))
        hi = float(max(target.max(), output.max()))
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="identity")
        ax.set_xlabel("target")
        ax.set_ylabel("prediction")
        where = "all test sequences" if index is None else f"test sequence {index}"
        ax.set_title(
            f"{run.model.upper()}, hidden size {cfg.hidden_size} — run {run.id}\n{where}",
            fontsize=9,
        )
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        return _render(fig, fmt)

    return _cached(("scatter", run_id, index, fmt), True, draw)


# `runs=<id>,<id>,…`: 1 to MAX_COMPARE_RUNS ids, no blanks (published as the parameter's pattern).
# Blanks are spelled out: `\s` means different characters to Python's `re`, to the Rust regex
# pydantic checks with and to ECMA-262 (the schema's dialect, used by clients); this class is
# the union of the three (Python adds U+001C-U+001F, ECMA-262 U+FEFF), with escapes all read alike.
BLANKS = (
    r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a"
    r"\u2028\u2029\u202f\u205f\u3000\ufeff"
)
RUN_ID = rf"[^,{BLANKS}]+"
RUN_IDS_PATTERN = rf"^{RUN_ID}(,{RUN_ID}){{0,{MAX_COMPARE_RUNS - 1}}}$"
RUN_IDS_DESCRIPTION = (
    f"comma-separated run ids, 1 to {MAX_COMPARE_RUNS}; a run named twice is compared once"
)


def parse_run_ids(value: str) -> list[str]:
    """`runs=<id>,<id>,…` (already matched against RUN_IDS_PATTERN) → distinct ids in order."""
    return list(dict.fromkeys(value.split(",")))


def load_runs(session: Session, ids: Sequence[str]) -> list[Run]:
    """The runs in the order asked; 404 naming the first unknown one."""
    found = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(ids)))}
    for i in ids:
        if i not in found:
            raise not_found("run", i)
    return [found[i] for i in ids]


def compare_plot(*, db: Database, ids: Sequence[str], fmt: Format) -> bytes:
    """Several runs' validation losses overlaid, labelled by model kind and hidden size."""
    with db.reading() as session:
        runs = load_runs(session, ids)
        curves = [(_label(r), *_losses(session, r.id)[::2]) for r in runs]
        key = ("compare", ",".join(ids), tuple((r.attempt, r.epochs_completed) for r in runs), fmt)
        ended = all(r.status in ENDED for r in runs)

    def draw() -> bytes:
        fig = Figure(figsize=(8, 4.5))
        ax = _loss_axes(fig)
        for label, epochs, valid in curves:
            keep = _thin(len(epochs), MAX_LINE_POINTS)
            ax.plot(np.asarray(epochs)[keep], np.asarray(valid)[keep], label=label)
        ax.set_ylabel("validation MSE (log scale)")
        noun = "run" if len(curves) == 1 else "runs"
        ax.set_title(f"validation loss of {len(curves)} {noun}", fontsize=10)
        ax.legend(fontsize=8)
        return _render(fig, fmt)

    return _cached(key, ended, draw)
