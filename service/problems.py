"""RFC 9457 problem details: one exception type and the handlers that render every error."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("rnnlab.api")
MEDIA_TYPE = "application/problem+json"


class ProblemError(Exception):
    """Raised by service functions; rendered as application/problem+json.

    With the default type "about:blank", RFC 9457 asks for the HTTP status phrase as title,
    which is the default here; `detail` says what happened.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        type_: str = "about:blank",
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.type = type_
        self.errors = errors
        self.headers = headers


def not_found(what: str, ident: str) -> ProblemError:
    return ProblemError(404, f"{what} {ident!r} does not exist")


def conflict(detail: str) -> ProblemError:
    return ProblemError(409, detail)


def invalid(errors: list[dict[str, Any]], detail: str | None = None) -> ProblemError:
    """A 422 listing offending fields as {"loc": [...], "msg": ..., "type": ...}."""
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    return ProblemError(422, detail or summary, errors=errors)


def problem_response(
    request: Request,
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _clean_validation_errors(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in raw:
        item = {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        if "input" in e:
            # Echo small inputs only; a rejected 1M-step sequence must not come back.
            text = repr(e["input"])
            if len(text) <= 200:
                item["input"] = jsonable_encoder(e["input"], custom_encoder={float: repr})
        out.append(item)
    return out


def install(app: FastAPI) -> None:
    """Render every error the app can raise as problem+json; never a stack trace."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            request,
            exc.status,
            exc.detail,
            title=exc.title,
            type_=exc.type,
            errors=exc.errors,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _clean_validation_errors(list(exc.errors()))
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        if len(errors) > 5:
            summary += f"; and {len(errors) - 5} more"
        return problem_response(request, 422, summary, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return problem_response(
            request, exc.status_code, detail, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            request, 500, "the server hit an unexpected error; it has been logged"
        )
