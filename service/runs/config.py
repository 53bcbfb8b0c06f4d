"""A run's training config as stored and returned: the API's nested shape to and from
`models.training.TrainConfig`, the server's seed, the members of a run not trained yet."""

from __future__ import annotations

import secrets
from typing import Any

from models.population import member_seed
from models.training import Member, TrainConfig
from service.problems import invalid
from service.schemas import RunCreate

DATA_FIELDS = ("n_sequences", "seq_len", "marker_probs")  # nested under "data" in the API


def config_to_json(cfg: TrainConfig) -> dict[str, Any]:
    """The stored (and returned) form of a config: the API's nested shape."""
    flat = cfg.to_dict()
    return {
        **{k: v for k, v in flat.items() if k not in DATA_FIELDS},
        "data": {k: flat[k] for k in DATA_FIELDS},
    }


# Fields added after runs were first stored, with the values those runs were trained with.
LEGACY_FIELDS: dict[str, Any] = {
    "population": 1,
    "clip_grad_norm": 0.0,
    "lr_schedule": "constant",
    "restore_best": False,
}


def config_from_json(d: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from the API's nested shape; ValueError names a field that is wrong."""
    flat = {**LEGACY_FIELDS, **{k: v for k, v in d.items() if k != "data"}, **d["data"]}
    return TrainConfig.from_dict(flat)


def initial_members(cfg: TrainConfig) -> list[dict[str, Any]]:
    """The members of a run that has not trained yet: their indices and seeds."""
    return [Member(index=i, seed=member_seed(cfg.seed, i)).to_dict() for i in range(cfg.population)]


def resolve_config(spec: RunCreate) -> TrainConfig:
    """The run's full training config; the server picks a seed when none was given."""
    d = spec.model_dump()
    if d["seed"] is None:
        d["seed"] = secrets.randbelow(2**31)
    try:
        return config_from_json(d)
    except ValueError as e:
        field = str(e).split(" ", 1)[0]
        loc = ["body", "data", field] if field in DATA_FIELDS else ["body", field]
        # Each probability's bounds are in the schema; their sum is a rule it states in words.
        kind = "marker_probs_sum" if "must sum to 1" in str(e) else "value_error"
        raise invalid([{"loc": loc, "msg": str(e), "type": kind}]) from e
