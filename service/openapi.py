"""/openapi.json as this server enforces it: problem bodies, its limits, its access rules.

FastAPI builds the schema from the pydantic models, which cannot know this server's settings.
`install` wraps `app.openapi` so that the published schema also carries:

- every per-field bound the server enforces from its settings (RNNLAB_MAX_EPOCHS → the
  `maximum` of `epochs`, …), so a body the schema calls valid is never refused for one field;
- the bounds across fields (n_sequences × seq_len, the activation memory of a run, the steps
  of a whole /predict request) in the descriptions, as the 422 they cause;
- one documented answer for bodies that are not JSON: 422, declared on every operation that
  takes a body;
- the bearer security scheme and a 401 on every operation that needs a key, when keys are
  set (and none when the API is open: a schema must not ask for what is not checked).
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI

from service import security
from service.schemas import PredictRequest
from service.settings import Settings

RAW_BODY_MODELS = (PredictRequest,)
_PROBLEM_CONTENT = {
    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
}
BODY_422 = (
    "Invalid request: the offending fields are in `errors`. Also the answer to a body that "
    "is not JSON (malformed, not UTF-8: error type `json_invalid`) or not sent as "
    "`Content-Type: application/json` (type `content_type`)."
)


def install(app: FastAPI, settings: Settings) -> None:
    """Make `app.openapi()` publish the schema as this server, with these settings, enforces it."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = copy.deepcopy(original())
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in RAW_BODY_MODELS:  # bodies routes parse themselves (declared by $ref)
            comps.setdefault(
                model.__name__, model.model_json_schema(ref_template="#/components/schemas/{model}")
            )
        _problem_bodies(schema)
        publish_limits(schema, settings)
        if settings.keys:
            _security(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in schema.get("paths", {}).items()
        for method, op in item.items()
        if isinstance(op, dict) and "responses" in op
    ]


def _problem_bodies(schema: dict[str, Any]) -> None:
    """422s point at the problem schema (not FastAPI's default); body-taking ones say more."""
    for _path, _method, op in _operations(schema):
        resp = op["responses"].get("422")
        if resp is not None:
            resp["description"] = (
                BODY_422
                if "requestBody" in op
                else "Invalid request: the offending fields are in `errors`"
            )
            resp["content"] = copy.deepcopy(_PROBLEM_CONTENT)
    components = schema.get("components", {}).get("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)


def _bound(prop: dict[str, Any], key: str, value: int) -> None:
    """Set a bound on a property, also inside `anyOf: [<type>, null]`."""
    targets = [prop] if "type" in prop else [p for p in prop.get("anyOf", []) if "type" in p]
    for t in targets:
        if t.get("type") != "null":
            t[key] = min(value, t.get(key, value))


def publish_limits(schema: dict[str, Any], settings: Settings) -> None:
    """Write the settings' per-field limits into the schema, the cross-field ones into text."""
    comps = schema["components"]["schemas"]
    run = comps["RunCreate"]["properties"]
    _bound(run["epochs"], "maximum", settings.max_epochs)
    _bound(run["hidden_size"], "maximum", settings.max_hidden_size)
    _bound(run["batch_size"], "maximum", settings.max_batch_size)
    data = comps["DataSpec"]["properties"]
    _bound(data["n_sequences"], "maximum", settings.max_n_sequences)
    _bound(data["seq_len"], "maximum", settings.max_seq_len)
    comps["RunCreate"]["description"] = (
        "A training run. Besides each field's own bounds, this server refuses (422, error "
        "type `combined_limit_exceeded`) a run whose data.n_sequences × data.seq_len exceeds "
        f"{settings.max_data_steps} (per split), or whose activation memory "
        "min(batch_size, data.n_sequences) × data.seq_len × hidden_size × population exceeds "
        f"{settings.max_train_activations}."
    )
    predict = comps["PredictRequest"]["properties"]["sequences"]
    predict["maxItems"] = settings.max_predict_sequences
    predict["items"]["maxItems"] = settings.max_predict_steps
    predict["description"] = (
        "each sequence is a list of [value, marker] steps; at most "
        f"{settings.max_predict_steps} steps in all sequences together (else 422, error type "
        "`combined_limit_exceeded`)"
    )
    # A sweep's base and grid take the same fields, so the same bounds.
    bounds = {
        "epochs": settings.max_epochs,
        "hidden_size": settings.max_hidden_size,
        "batch_size": settings.max_batch_size,
        "n_sequences": settings.max_n_sequences,
        "seq_len": settings.max_seq_len,
    }
    for name, limit in bounds.items():
        holder = comps["SweepData"] if name in ("n_sequences", "seq_len") else comps["SweepBase"]
        _bound(holder["properties"][name], "maximum", limit)
        key = f"data.{name}" if holder is comps["SweepData"] else name
        _bound(comps["SweepGrid"]["properties"][key]["items"], "maximum", limit)
    for prop in comps["SweepGrid"]["properties"].values():
        prop["maxItems"] = settings.max_sweep_runs
    scalar = comps["ScalarRNNRequest"]["properties"]["x"]
    scalar["maxItems"] = settings.max_predict_steps
    for _path, _method, op in _operations(schema):
        if "413" in op["responses"]:
            op["responses"]["413"]["description"] = (
                f"Request body over {settings.max_body_bytes} bytes (RNNLAB_MAX_BODY_BYTES)"
            )


def _security(schema: dict[str, Any]) -> None:
    """Bearer auth on every operation outside the open paths, with its 401."""
    comps = schema.setdefault("components", {})
    comps.setdefault("securitySchemes", {})[security.SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "one of the server's API keys (RNNLAB_API_KEYS)",
    }
    for path, _method, op in _operations(schema):
        if security.is_open(path):
            continue
        op["security"] = [{security.SCHEME: []}]
        op["responses"]["401"] = {
            "description": "Missing or invalid API key (send Authorization: Bearer <key>)",
            "headers": {
                "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}
            },
            "content": copy.deepcopy(_PROBLEM_CONTENT),
        }
