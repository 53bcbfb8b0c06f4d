"""RFC 9457 problem details: one exception type and the handlers that render every error."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("rnnlab.api")
MEDIA_TYPE = "application/problem+json"
M = TypeVar("M", bound=BaseModel)


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


def _summary(errors: list[dict[str, Any]], most: int = 5) -> str:
    text = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:most])
    return text + (f"; and {len(errors) - most} more" if len(errors) > most else "")


def invalid(errors: list[dict[str, Any]], detail: str | None = None) -> ProblemError:
    """A 422 listing offending fields as {"loc": [...], "msg": ..., "type": ...}."""
    return ProblemError(422, detail or _summary(errors), errors=errors)


def render(request: Request, exc: ProblemError) -> JSONResponse:
    """The problem+json response for `exc`; `instance` is the request's path."""
    body: dict[str, Any] = {
        "type": exc.type,
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "instance": request.url.path,
    }
    if exc.errors is not None:
        body["errors"] = exc.errors
    return JSONResponse(body, status_code=exc.status, media_type=MEDIA_TYPE, headers=exc.headers)


UNDECODABLE = {
    "loc": ["body"],
    "msg": "not valid JSON: the body must be UTF-8 encoded JSON",
    "type": "json_invalid",
}


def _is_json_type(content_type: str | None) -> bool:
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


def _is_json(request: Request) -> bool:
    return _is_json_type(request.headers.get("content-type"))


def content_type_error(content_type: str | None) -> dict[str, Any]:
    got = f"got {content_type!r}" if content_type else "none was sent"
    return {
        "loc": ["body"],
        "msg": f"send the body as Content-Type: application/json ({got})",
        "type": "content_type",
    }


def parse_body(model: type[M], raw: bytes, content_type: str | None) -> M:
    """`model` from a JSON request body, with the same 422s FastAPI's own parsing gives."""
    if not _is_json_type(content_type):
        raise invalid([content_type_error(content_type)])
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors()]
        raise invalid(_clean_validation_errors(errors)) from e


def _clean_validation_errors(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in raw:
        if e.get("type") == "json_invalid":
            where = e.get("loc", ())[-1:]
            reason = (e.get("ctx") or {}).get("error", "JSON decode error")
            at = f" at character {where[0]}" if where and isinstance(where[0], int) else ""
            out.append(
                {"loc": ["body"], "msg": f"not valid JSON: {reason}{at}", "type": "json_invalid"}
            )
            continue
        item = {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        if "input" in e:
            # Echo small inputs only; a rejected 1M-step sequence must not come back.
            text = repr(e["input"])
            if len(text) <= 200:
                item["input"] = jsonable_encoder(e["input"], custom_encoder={float: repr})
        out.append(item)
    return out


def _leaf_routes(routes: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(prefix, route) for every route, looking inside included routers."""
    out: list[tuple[str, Any]] = []
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's included routers
        if inner is not None:
            extra = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            out += _leaf_routes(list(inner.routes), prefix + extra)
        else:
            out.append((prefix, route))
    return out


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route of `app` serves at `path`."""
    methods: set[str] = set()
    for prefix, route in _leaf_routes(list(app.router.routes)):
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is None or not route_methods or not path.startswith(prefix):
            continue
        if regex.match(path[len(prefix) :]):
            methods |= set(route_methods)
    return sorted(methods)


def install(app: FastAPI) -> None:
    """Render every error the app can raise as problem+json; never a stack trace."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return render(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _clean_validation_errors(list(exc.errors()))
        if any(e["loc"] == ["body"] for e in errors) and not _is_json(request):
            # FastAPI hands a non-JSON body to the model as bytes; say what really went wrong.
            errors = [content_type_error(request.headers.get("content-type"))]
        return render(request, invalid(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's only 400: a JSON body it could not decode (not UTF-8, …). One answer
            # for every body that is not JSON: 422, as the schema declares.
            return render(request, invalid([UNDECODABLE]))
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names only the first matching route's methods; a path served by
            # several routes (GET and POST /runs) must list them all.
            allowed = allowed_methods(app, request.url.path)
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
        return render(request, ProblemError(exc.status_code, detail, headers=headers or None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        detail = "the server hit an unexpected error; it has been logged"
        return render(request, ProblemError(500, detail))
