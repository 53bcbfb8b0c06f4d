"""Request and response bodies (pydantic v2), apart from the tables."""

from __future__ import annotations

from datetime import datetime
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, create_model
from pydantic.fields import FieldInfo

from models.data import DEFAULT_MARKER_PROBS
from models.training import (
    LR_SCHEDULES,
    MAX_POPULATION,
    VERDICT_LEARNED,
    VERDICT_PARTLY,
    TrainConfig,
)
from service.tables import RunStatus

_DEFAULTS = TrainConfig()
# 2⁵³ - 1: the largest integer every JSON client (JavaScript's numbers) carries exactly.
MAX_SEED = 2**53 - 1

# Finite JSON numbers only: NaN/Infinity tokens, numeric strings and booleans are refused.
Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]


def _json_integer(value: Any) -> Any:
    # JSON Schema's integer is any number without a fractional part (5 and 5.0 alike); a
    # string ("5") or a boolean is not one.
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON integer, not a string or a boolean")
    return value


Count = Annotated[int, BeforeValidator(_json_integer)]  # 5 or 5.0; not 5.5, "5" or true
Probability = Annotated[Finite, Field(ge=0, le=1)]
# Networks compute in float32: a step's numbers must be float32 numbers (|x| ≤ 3.4028235e38).
FLOAT32_MAX = 3.4028234663852886e38
Float32 = Annotated[float, Strict(), Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
Step = Annotated[list[Float32], Field(min_length=2, max_length=2)]
ModelKind = Literal["elman", "lstm"]
Device = Literal["auto", "cpu", "cuda"]
LRSchedule = Literal["constant", "cosine"]
Verdict = Literal["learned", "partly", "not learned"]
assert set(LR_SCHEDULES) == {"constant", "cosine"}

POPULATION_DESCRIPTION = (
    "initialisations (members) trained side by side on the same batches; successive halving "
    "by validation loss stops the worse half at fixed fractions of the epochs, down to one "
    "member, which becomes the run's model"
)
VERDICT_DESCRIPTION = (
    f"did the network learn the task? From error_ratio: 'learned' at most "
    f"{VERDICT_LEARNED:g} ({VERDICT_LEARNED:.0%} of the zero predictor's error remains), "
    f"'partly' at most {VERDICT_PARTLY:g}, else 'not learned'"
)


def _config_example(seed: int) -> dict[str, Any]:
    """The default run config as the API shows it (data fields nested), with this seed."""
    flat = {**_DEFAULTS.to_dict(), "seed": seed}
    data = {k: flat.pop(k) for k in ("n_sequences", "seq_len", "marker_probs")}
    return {**flat, "data": data}


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(Body):
    n_sequences: Count = Field(default=_DEFAULTS.n_sequences, ge=1, description="per split")
    seq_len: Count = Field(default=_DEFAULTS.seq_len, ge=1)
    marker_probs: tuple[Probability, Probability, Probability] = Field(
        default=DEFAULT_MARKER_PROBS,
        description="probabilities of the markers -1, 0 and 1, summing to 1 (within 1e-6; "
        "else 422 with error type `marker_probs_sum`)",
    )


class RunCreate(Body):
    model: ModelKind
    hidden_size: Count = Field(default=_DEFAULTS.hidden_size, ge=1)
    epochs: Count = Field(default=_DEFAULTS.epochs, ge=1)
    learning_rate: Finite = Field(default=_DEFAULTS.learning_rate, gt=0)
    batch_size: Count = Field(default=_DEFAULTS.batch_size, ge=1)
    # The bounds before the validator, or pydantic cannot publish them (inside `| None`).
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(_json_integer)] | None = Field(
        default=None, description="omitted: the server picks and records one (below 2³¹)"
    )
    device: Device = "auto"
    population: Count = Field(
        default=_DEFAULTS.population, ge=1, le=MAX_POPULATION, description=POPULATION_DESCRIPTION
    )
    clip_grad_norm: Finite = Field(
        default=_DEFAULTS.clip_grad_norm,
        ge=0,
        description="clip each member's gradient to this norm before every step; 0: off",
    )
    lr_schedule: LRSchedule = Field(
        default=_DEFAULTS.lr_schedule,  # type: ignore[arg-type]
        description="constant, or cosine: decays from learning_rate to 0 over the epochs",
    )
    restore_best: Annotated[bool, Strict()] = Field(
        default=_DEFAULTS.restore_best,
        description="the run's model is the kept member's weights at its lowest validation "
        "loss (its best_epoch in /members), not at the last epoch",
    )
    data: DataSpec = Field(default_factory=DataSpec)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [_config_example(seed=0)]},
    )


def _not_none(t: Any) -> Any:
    """`T` for `T | None`; other types unchanged."""
    if get_origin(t) in (Union, UnionType):
        (t,) = [a for a in get_args(t) if a is not type(None)]
    return t


def _resolved(field: FieldInfo) -> Any:
    """A run field as a stored run reports it: its plain type, never None (`seed`)."""
    t = _not_none(field.annotation)
    return get_args(t)[0] if get_origin(t) is Annotated else t


if TYPE_CHECKING:
    RunConfig = BaseModel
else:
    # RunCreate's fields, each required: the server filled in the defaults and the seed.
    RunConfig = create_model(
        "RunConfig",
        __module__=__name__,
        __doc__="A run's fully resolved configuration, seed included.",
        **{name: (_resolved(f), ...) for name, f in RunCreate.model_fields.items()},
    )


class RunMetrics(BaseModel):
    train_loss: float | None = Field(description="last epoch's mean training loss")
    valid_loss: float | None = Field(description="last epoch's validation MSE")
    test_mse: float | None
    baseline_mse: float | None = Field(description="test MSE of always predicting 0")
    marker_mse: float | None = Field(description="test MSE on marker-1 steps only")
    marker_baseline_mse: float | None = Field(
        description="the zero predictor's test MSE on marker-1 steps"
    )
    error_ratio: float | None = Field(
        description="test_mse / baseline_mse: the fraction of the zero predictor's error left"
    )
    marker_error_ratio: float | None = Field(
        description="marker_mse / marker_baseline_mse: the same on marker-1 steps only"
    )
    verdict: Verdict | None = Field(description=VERDICT_DESCRIPTION)


# A real default LSTM run (seed 1), as GET /runs/{id} showed it.
RUN_EXAMPLE: dict[str, Any] = {
    "id": "6d527ffaf81942d0a90e7632a9652e1c",
    "status": "succeeded",
    "model": "lstm",
    "config": _config_example(seed=1),
    "created_at": "2026-11-29T05:34:01.853315Z",
    "started_at": "2026-11-29T05:34:03.324272Z",
    "finished_at": "2026-11-29T05:34:19.276529Z",
    "epochs_completed": 300,
    "attempt": 1,
    "device": "cpu",
    "train_path": "fused",
    "error": None,
    "metrics": {
        "train_loss": 0.0007333060881743828,
        "valid_loss": 0.0006873801902488426,
        "test_mse": 0.0006754286431844231,
        "baseline_mse": 0.3309493744398422,
        "marker_mse": 0.0012351750908900032,
        "marker_baseline_mse": 0.6669378347421808,
        "error_ratio": 0.0020408820664116352,
        "marker_error_ratio": 0.0018520093276271944,
        "verdict": "learned",
    },
    "sweep_id": None,
}


class RunRead(BaseModel):
    id: str
    status: RunStatus
    model: ModelKind
    config: RunConfig
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    epochs_completed: int
    attempt: int
    device: str | None
    train_path: str | None = Field(
        default=None,
        description="how the run trains: 'fused' (rnnlab's compiled kernels, CPU) or 'torch' "
        "(torch's own recurrent layers), chosen per shape unless RNNLAB_TRAIN_PATH forces one; "
        "null until a worker starts it",
    )
    error: str | None
    metrics: RunMetrics
    sweep_id: str | None = Field(default=None, description="the sweep that created it, if any")

    model_config = ConfigDict(json_schema_extra={"examples": [RUN_EXAMPLE]})


class MemberRead(BaseModel):
    """One initialisation of a run's population."""

    index: int = Field(description="0 … population-1")
    seed: int | None = Field(description="its initial-weight seed")
    epochs: int = Field(description="epochs it trained before it was stopped or the run ended")
    train_loss: float | None = Field(description="its last epoch's mean training loss")
    valid_loss: float | None = Field(description="its last epoch's validation MSE")
    kept: bool = Field(description="true for the member that became the run's model")
    diverged: bool = Field(description="stopped because its loss became non-finite")
    best_epoch: int | None = Field(
        default=None, description="the epoch of its lowest validation loss"
    )
    best_valid_loss: float | None = Field(default=None, description="that validation loss")


class RunList(BaseModel):
    items: list[RunRead]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at end")


class Losses(BaseModel):
    run_id: str
    epochs: list[int]
    train_loss: list[float]
    valid_loss: list[float]


class PredictRequest(Body):
    run_id: str = Field(min_length=1, max_length=64)
    sequences: list[Annotated[list[Step], Field(min_length=1)]] = Field(
        min_length=1, description="each sequence is a list of [value, marker] steps"
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "run_id": "<id of a succeeded run>",
                    "sequences": [
                        [[0.5, 1], [0.2, 0], [-0.3, 1], [0.9, -1]],
                        [[0.1, 1], [0.4, 1]],
                    ],
                }
            ]
        },
    )


class PredictResponse(BaseModel):
    run_id: str
    outputs: list[list[float]] = Field(description="one output per time step of each sequence")


class ScalarRNNRequest(Body):
    x: list[Finite] = Field(min_length=1)
    w_i: Finite
    w_h: Finite
    w_o: Finite
    h_bias: Finite
    y_bias: Finite

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"x": [9, 4, -2], "w_i": 0.5, "w_h": -1, "w_o": -0.7, "h_bias": -1, "y_bias": 0}
            ]
        },
    )


class ScalarRNNResponse(BaseModel):
    h: list[float]
    y: list[float]


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="validation errors: where (loc) and what (msg) each one is"
    )


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, Any] = Field(default_factory=dict)


class CompareItem(BaseModel):
    """One run's figures next to the zero predictor's."""

    run_id: str
    status: RunStatus
    model: ModelKind
    hidden_size: int
    population: int
    epochs: int = Field(description="epochs completed")
    test_mse: float | None
    baseline_mse: float | None = Field(description="test MSE of always predicting 0")
    marker_mse: float | None
    error_ratio: float | None = Field(
        description="test_mse / baseline_mse: the fraction of the zero predictor's error left"
    )
    verdict: Verdict | None = Field(description=VERDICT_DESCRIPTION)


class Comparison(BaseModel):
    runs: list[CompareItem]
    best: str | None = Field(
        description="the succeeded run with the lowest error_ratio; null when none succeeded"
    )
    summary: str = Field(description="the answer in one sentence")


# --- sweeps ---------------------------------------------------------------------------------

# The sweep schemas are derived from RunCreate (and DataSpec): each run field, with its type
# and bounds, is optional in the base and a non-empty list of values in the grid. A field
# added to RunCreate is sweepable with nothing else to write.


def _optional_fields(schema: dict[str, Any]) -> None:
    """Omitted fields are absent, not null: publish no `default: null` for them."""
    for prop in schema.get("properties", {}).values():
        if prop.get("default", 0) is None:
            del prop["default"]


def _grid_schema_extra(schema: dict[str, Any]) -> None:
    """`_optional_fields`, and a grid must name at least one field."""
    _optional_fields(schema)
    schema.update(minProperties=1)


def _value_type(field: FieldInfo) -> Any:
    """A run field's type with its bounds and validators, without `| None` (`seed`). The
    bounds come before the validators in pydantic's metadata, so the schema publishes them."""
    t = _not_none(field.annotation)
    return Annotated[t, *field.metadata] if field.metadata else t


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    return {name: _value_type(f) for name, f in model.model_fields.items()}


class _Optional(Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_optional_fields)


class _Grid(Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_grid_schema_extra)


def _values(t: Any) -> Any:
    """A grid field's values: a non-empty list, never null (an omitted field is None, its
    default, which pydantic does not validate)."""
    return Annotated[list[t], Field(min_length=1)]


if TYPE_CHECKING:  # what the code sees: bodies read through model_dump
    SweepData = Body
    SweepBase = Body
    SweepGrid = Body
else:
    SweepData = create_model(
        "SweepData",
        __base__=_Optional,
        __module__=__name__,
        **{name: (t, None) for name, t in _fields(DataSpec).items()},
    )
    SweepBase = create_model(
        "SweepBase",
        __base__=_Optional,
        __module__=__name__,
        __doc__="Fields of POST /runs that every run of the sweep shares; all optional here.",
        **{
            name: (SweepData if name == "data" else t, None)
            for name, t in _fields(RunCreate).items()
        },
    )
    SweepGrid = create_model(
        "SweepGrid",
        __base__=_Grid,
        __module__=__name__,
        __doc__="Run field → the values to try. Nested data fields are `data.<name>`.",
        **{name: (_values(t), None) for name, t in _fields(RunCreate).items() if name != "data"},
        **{
            f"data_{name}": (_values(t), Field(default=None, alias=f"data.{name}"))
            for name, t in _fields(DataSpec).items()
        },
    )


SWEEP_KEYS = tuple(f.alias or name for name, f in SweepGrid.model_fields.items())
SWEEP_RULES = (
    "Rules the schema states in words (422, with these error types): `model` must be given, "
    "in base or in the grid (`sweep_model_missing`); a field is given once, in base or in the "
    "grid (`sweep_field_twice`); the number of combinations and each combination's run are "
    "within this server's limits (`combined_limit_exceeded`; also `marker_probs_sum`)."
)


class SweepCreate(Body):
    base: SweepBase = Field(
        default_factory=SweepBase,
        description="fields of POST /runs shared by every run",
    )
    grid: SweepGrid = Field(
        description="run field → the values to try; one run per combination (the cartesian "
        "product, varying the last field of this schema's order fastest). " + SWEEP_RULES
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "base": {"epochs": 300},
                    "grid": {"model": ["elman", "lstm"], "seed": [1, 2, 3]},
                }
            ]
        },
    )


class SweepRun(BaseModel):
    id: str
    status: RunStatus
    values: dict[str, Any] = Field(description="this run's grid values")
    error_ratio: float | None
    verdict: Verdict | None


class SweepRow(BaseModel):
    """One configuration: a combination of the grid's values other than the seed."""

    values: dict[str, Any]
    runs: int = Field(description="runs of this configuration (one per seed)")
    succeeded: int
    median_error_ratio: float | None = Field(
        description="median over its succeeded runs of test MSE / the zero predictor's MSE"
    )
    min_error_ratio: float | None
    max_error_ratio: float | None
    median_test_mse: float | None
    learned: int = Field(description="succeeded runs whose verdict is 'learned'")


class SweepRead(BaseModel):
    id: str
    created_at: datetime
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    n_runs: int
    status: Literal["queued", "running", "ended"] = Field(
        description="queued: no run started; running: some run not ended; ended: all ended"
    )
    counts: dict[str, int] = Field(description="runs per status")
    runs: list[SweepRun]
    table: list[SweepRow] = Field(description="per configuration, best first")
    best: dict[str, Any] | None = Field(
        description="the configuration with the lowest median error ratio so far"
    )


class SweepList(BaseModel):
    items: list[SweepRead]
    next_cursor: str | None
