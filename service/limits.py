"""Every request limit of this server, in one table: the checks, the published schema and the
settings validator all read it.

A limit is a setting (`RNNLAB_MAX_…`, see `service.settings`) and what it bounds. A
single-field limit is published as that field's `maximum` (or `maxItems`) in /openapi.json, so
a body the schema calls valid is never refused for one field; a combined limit spans fields and
is published in the component's description. Either, exceeded, is a 422 naming the field
(error type `limit_exceeded` or `combined_limit_exceeded`). The queue's bound is a 429 with
Retry-After (the request is fine, the server is busy); the body size a 413 (in `service.app`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.problems import ProblemError, invalid
from service.settings import Settings

if TYPE_CHECKING:
    from models.training import TrainConfig
    from service.schemas import RunCreate


@dataclass(frozen=True)
class Limit:
    setting: str  # the Settings field (environment variable RNNLAB_<SETTING>)
    loc: tuple[str, ...]  # where in the request body a 422 points
    formula: str = ""  # a combined limit: what it bounds (a single field: "")
    published: str = ""  # a combined limit: its clause in the component's description


def train_activations(
    *, batch_size: int, n_sequences: int, seq_len: int, hidden_size: int, population: int
) -> int:
    """A run's activation memory in units × steps: backpropagation through time keeps a few
    floats per unit and step of each batch (an LSTM ~6), so this bounds a worker's memory."""
    return min(batch_size, n_sequences) * seq_len * hidden_size * population


# A training run (POST /runs, each run of a sweep, `rnnlab train`).
RUN_LIMITS = (
    Limit("max_epochs", ("epochs",)),
    Limit("max_hidden_size", ("hidden_size",)),
    Limit("max_batch_size", ("batch_size",)),
    Limit("max_n_sequences", ("data", "n_sequences")),
    Limit("max_seq_len", ("data", "seq_len")),
    Limit(
        "max_data_steps",
        ("data",),
        "n_sequences × seq_len",
        "data.n_sequences × data.seq_len exceeds {} (per split)",
    ),
    Limit(
        "max_train_activations",
        ("batch_size",),
        "min(batch_size, n_sequences) × seq_len × hidden_size × population",
        "activation memory min(batch_size, data.n_sequences) × data.seq_len × hidden_size × "
        "population exceeds {}",
    ),
)


def run_sizes(
    *,
    epochs: int,
    hidden_size: int,
    batch_size: int,
    population: int,
    n_sequences: int,
    seq_len: int,
) -> dict[str, int]:
    """What a run of this shape measures against each of RUN_LIMITS, by setting."""
    return {
        "max_epochs": epochs,
        "max_hidden_size": hidden_size,
        "max_batch_size": batch_size,
        "max_n_sequences": n_sequences,
        "max_seq_len": seq_len,
        "max_data_steps": n_sequences * seq_len,
        "max_train_activations": train_activations(
            batch_size=batch_size,
            n_sequences=n_sequences,
            seq_len=seq_len,
            hidden_size=hidden_size,
            population=population,
        ),
    }


def config_sizes(cfg: TrainConfig) -> dict[str, int]:
    """`run_sizes` of a training config (the settings validator's: defaults must pass)."""
    return run_sizes(
        epochs=cfg.epochs,
        hidden_size=cfg.hidden_size,
        batch_size=cfg.batch_size,
        population=cfg.population,
        n_sequences=cfg.n_sequences,
        seq_len=cfg.seq_len,
    )


def _error(loc: Sequence[str], msg: str, combined: bool) -> dict[str, Any]:
    kind = "combined_limit_exceeded" if combined else "limit_exceeded"
    return {"loc": ["body", *loc], "msg": msg, "type": kind}


def check_run(spec: RunCreate, settings: Settings) -> None:
    """Refuse (422) a run larger than this server's limits, naming every field over one."""
    sizes = run_sizes(
        epochs=spec.epochs,
        hidden_size=spec.hidden_size,
        batch_size=spec.batch_size,
        population=spec.population,
        n_sequences=spec.data.n_sequences,
        seq_len=spec.data.seq_len,
    )
    errors = []
    for limit in RUN_LIMITS:
        bound = getattr(settings, limit.setting)
        if sizes[limit.setting] > bound:
            what = f" ({limit.formula})" if limit.formula else ""
            msg = f"must be at most {bound} on this server{what}"
            errors.append(_error(limit.loc, msg, bool(limit.formula)))
    if errors:
        raise invalid(errors)


def check_predict(sequences: Sequence[Sequence[object]], settings: Settings) -> None:
    """Refuse (422) a /predict request over the sequences or the steps (all together) bound."""
    if len(sequences) > settings.max_predict_sequences:
        msg = f"at most {settings.max_predict_sequences} sequences per request"
        raise invalid([_error(("sequences",), msg, False)])
    steps = sum(len(s) for s in sequences)
    if steps > settings.max_predict_steps:
        msg = f"{steps} steps in all; at most {settings.max_predict_steps} per request"
        raise invalid([_error(("sequences",), msg, True)])


def check_scalar_steps(n_steps: int, settings: Settings) -> None:
    """Refuse (422) a scalar-RNN request over the steps bound."""
    if n_steps > settings.max_predict_steps:
        msg = f"at most {settings.max_predict_steps} steps on this server"
        raise invalid([_error(("x",), msg, False)])


def check_sweep_size(n_runs: int, settings: Settings) -> None:
    """Refuse (422) a sweep whose grid has more combinations than RNNLAB_MAX_SWEEP_RUNS."""
    if n_runs > settings.max_sweep_runs:
        msg = (
            f"{n_runs} combinations; at most {settings.max_sweep_runs} runs per sweep "
            "on this server (RNNLAB_MAX_SWEEP_RUNS)"
        )
        raise invalid([_error(("grid",), msg, True)])


def check_queue_room(queued: int, adding: int, settings: Settings) -> None:
    """429 with Retry-After when `adding` more runs would pass RNNLAB_MAX_QUEUED (the caller
    counts `queued` under the queue lock)."""
    if queued + adding <= settings.max_queued:
        return
    if adding == 1:
        detail = (
            f"{queued} runs are already queued (limit {settings.max_queued} on this server); "
            "try again later"
        )
    else:
        detail = (
            f"{queued} runs are queued; {adding} more would pass this server's limit of "
            f"{settings.max_queued}. Try again later, or sweep fewer combinations"
        )
    raise ProblemError(429, detail, headers={"Retry-After": str(settings.queue_retry_after_s)})


def body_too_large(max_bytes: int) -> str:
    """The 413's detail (and its published description)."""
    return f"request body over {max_bytes} bytes (RNNLAB_MAX_BODY_BYTES)"


# Publishing ----------------------------------------------------------------------------------


def _bound(prop: dict[str, Any], key: str, value: int) -> None:
    """Set a bound on a property, also inside `anyOf: [<type>, null]`."""
    targets = [prop] if "type" in prop else [p for p in prop.get("anyOf", []) if "type" in p]
    for t in targets:
        if t.get("type") != "null":
            t[key] = min(value, t.get(key, value))


def publish(
    schema: dict[str, Any], settings: Settings, operations: Sequence[dict[str, Any]]
) -> None:
    """Write the limits into an OpenAPI schema: single-field ones as bounds (on a run's fields,
    a sweep's base and each grid value alike), combined ones into descriptions; `operations`
    are the schema's operation objects (their 413s get the body limit)."""
    comps = schema["components"]["schemas"]
    combined = []
    for limit in RUN_LIMITS:
        bound = getattr(settings, limit.setting)
        if limit.formula:
            combined.append(limit.published.format(bound))
            continue
        *parent, name = limit.loc
        run_holder, sweep_holder = (
            ("DataSpec", "SweepData") if parent else ("RunCreate", "SweepBase")
        )
        _bound(comps[run_holder]["properties"][name], "maximum", bound)
        _bound(comps[sweep_holder]["properties"][name], "maximum", bound)
        grid_key = ".".join(limit.loc)
        _bound(comps["SweepGrid"]["properties"][grid_key]["items"], "maximum", bound)
    comps["RunCreate"]["description"] = (
        "A training run. Besides each field's own bounds, this server refuses (422, error "
        "type `combined_limit_exceeded`) a run whose " + ", or whose ".join(combined) + "."
    )
    for prop in comps["SweepGrid"]["properties"].values():
        prop["maxItems"] = settings.max_sweep_runs
    predict = comps["PredictRequest"]["properties"]["sequences"]
    predict["maxItems"] = settings.max_predict_sequences
    predict["items"]["maxItems"] = settings.max_predict_steps
    predict["description"] = (
        "each sequence is a list of [value, marker] steps; at most "
        f"{settings.max_predict_steps} steps in all sequences together (else 422, error type "
        "`combined_limit_exceeded`)"
    )
    comps["ScalarRNNRequest"]["properties"]["x"]["maxItems"] = settings.max_predict_steps
    for op in operations:
        if "413" in op["responses"]:
            detail = body_too_large(settings.max_body_bytes)
            op["responses"]["413"]["description"] = detail[0].upper() + detail[1:]
