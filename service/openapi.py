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

from service import limits, security
from service.schemas import PredictRequest, Problem
from service.settings import Settings

_PROBLEM_CONTENT = {
    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these error codes, each an RFC 9457 problem."""
    text = {
        404: "No such run",
        409: "The run is not in a state that allows this",
        413: "Request body too large",
        422: "Invalid request: the offending fields are listed in `errors`",
        429: "Too many runs queued: retry after the `Retry-After` header's seconds",
        503: "Not ready",
    }
    return {
        code: {
            "model": Problem,
            "description": text.get(code, "Error"),
            "content": _PROBLEM_CONTENT,
        }
        for code in codes
    }


def accepted_responses(description: str, location: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a POST that queues work: 202 with its Location, 413, 422, and 429 with
    Retry-After when the queue is full."""
    return {
        202: {
            "description": description,
            "headers": {"Location": {"description": location, "schema": {"type": "string"}}},
        },
        **error_responses(413, 422),
        429: {
            **error_responses(429)[429],
            "headers": {
                "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
            },
        },
    }


def file_responses(description: str, *codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a file download (application/octet-stream) and its error codes."""
    return {
        200: {
            "description": description,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        **error_responses(*codes),
    }


RAW_BODY_MODELS = (PredictRequest,)
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
        limits.publish(schema, settings, [op for _p, _m, op in _operations(schema)])
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
