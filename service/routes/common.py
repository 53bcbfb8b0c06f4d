"""OpenAPI descriptions of the error responses the routes share."""

from __future__ import annotations

from typing import Any

from service.schemas import Problem

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
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
        code: {"model": Problem, "description": text.get(code, "Error"), "content": _PROBLEM}
        for code in codes
    }
