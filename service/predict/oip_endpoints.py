"""/v2: the Open Inference Protocol (KServe v2 REST, as Triton speaks it) beside /predict.

The wire format, the tensors and the checks are in `oip` beside it; this module serves them and
makes every error under /v2 the protocol's `{"error": "..."}` (application/json), also those
raised outside these routes (the key check's 401, the body limit's 413, an unknown path's 404,
a 405, a 500): `ErrorShapeMiddleware`. Every other path keeps RFC 9457 problem details.

`install(app)` adds all of it: the routes, the middleware (outermost) and the schema's
adjustments (the protocol's error bodies on /v2 operations, the request body's components).
tritonclient sends no Content-Type on infer, so the routes read the raw body whatever it says.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import health, metrics
from service.deps import CacheDep, DbDep, SettingsDep
from service.predict import oip
from service.predict.oip import (
    OIPError,
    OIPInferenceResponse,
    OIPModelMetadata,
    OIPModelReady,
    OIPServerLive,
    OIPServerMetadata,
    OIPServerReady,
    ProtocolError,
)
from service.problems import MEDIA_TYPE as PROBLEM_MEDIA_TYPE

log = logging.getLogger("rnnlab.api")
PREFIX = "/v2"
TAG = "open inference protocol"
router = APIRouter(tags=[TAG])

_JSON = "application/json"
_ERROR = {_JSON: {"schema": {"$ref": "#/components/schemas/OIPError"}}}
_ERRORS = {
    400: "A request the model cannot take: the message names the tensor and what is wrong "
    "(datatype, shape, element count, a number that is not a finite float32, a length "
    "outside 1 … steps, /predict's limits on sequences and steps, a malformed body or "
    "Inference-Header-Content-Length)",
    404: "No run has this id, or the model has no such version (its only version is 1)",
    409: "The run has not succeeded (yet): its model is not ready",
    413: "Request body too large",
    415: "A Content-Encoding other than gzip or deflate",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": OIPError, "description": _ERRORS[c], "content": _ERROR} for c in codes}


def _answer(e: ProtocolError) -> Response:
    return Response(oip.error_body(e.message), status_code=e.status, media_type=_JSON)


def _json(model: Any, status: int = 200) -> Response:
    return Response(model.model_dump_json(exclude_none=True), status_code=status, media_type=_JSON)


# Server -------------------------------------------------------------------------------------


@router.get(PREFIX, response_model=OIPServerMetadata)
async def oip_server_metadata() -> OIPServerMetadata:
    """The server's name ("rnnlab"), version and protocol extensions (binary_tensor_data)."""
    return oip.server_metadata()


@router.get(f"{PREFIX}/health/live", response_model=OIPServerLive)
async def oip_server_live() -> OIPServerLive:
    """The process answers (as /healthz); needs no key."""
    return OIPServerLive(live=True)


@router.get(
    f"{PREFIX}/health/ready",
    response_model=OIPServerReady,
    responses={503: {"model": OIPServerReady, "description": "Not ready (as /readyz says)"}},
)
def oip_server_ready(request: Request) -> Response:
    """Ready when /readyz is: the database answers at the migration head and the workers are
    alive; needs no key."""
    ok = health.read_ready(request).status_code == 200
    return _json(OIPServerReady(ready=ok), 200 if ok else 503)


# Models: one per run, named by the run id, with one version, "1" -------------------------------


def _metadata(db: DbDep, run_id: str, version: str | None) -> Response:
    try:
        return _json(oip.model_metadata(oip.find_model(db, run_id, version)))
    except ProtocolError as e:
        return _answer(e)


_METADATA: dict[str, Any] = {"response_model": OIPModelMetadata, "responses": _errors(404)}


@router.get(f"{PREFIX}/models/{{run_id}}", **_METADATA)
def oip_model_metadata(run_id: str, db: DbDep) -> Response:
    """The model of a run (queued, running or ended alike): platform rnnlab_lstm or
    rnnlab_elman, input x FP32 [-1, -1, 2], input lengths INT64 [-1] (optional), output y FP32
    [-1, -1, 1]."""
    return _metadata(db, run_id, None)


@router.get(f"{PREFIX}/models/{{run_id}}/versions/{{version}}", **_METADATA)
def oip_version_metadata(run_id: str, version: str, db: DbDep) -> Response:
    """As the model's metadata; its only version is "1" (any other: 404)."""
    return _metadata(db, run_id, version)


def _ready(db: DbDep, run_id: str, version: str | None) -> Response:
    try:
        answer = oip.model_ready(oip.find_model(db, run_id, version))
    except ProtocolError as e:
        return _answer(e)
    return _json(answer, 200 if answer.ready else 409)


_READY: dict[str, Any] = {
    "response_model": OIPModelReady,
    "responses": {
        409: {
            "model": OIPModelReady,
            "description": "Not ready: the run has not succeeded (`error` says its status)",
        },
        **_errors(404),
    },
}


@router.get(f"{PREFIX}/models/{{run_id}}/ready", **_READY)
def oip_model_ready(run_id: str, db: DbDep) -> Response:
    """200 when the run has succeeded; 409 (ready: false) before, or when it failed or was
    cancelled."""
    return _ready(db, run_id, None)


@router.get(f"{PREFIX}/models/{{run_id}}/versions/{{version}}/ready", **_READY)
def oip_version_ready(run_id: str, version: str, db: DbDep) -> Response:
    """As the model's readiness; its only version is "1" (any other: 404)."""
    return _ready(db, run_id, version)


# Inference ----------------------------------------------------------------------------------


async def _raw_body(request: Request) -> tuple[bytes, Headers]:
    # Whatever the Content-Type says (tritonclient sends none): JSON, or JSON then binary data.
    return await request.body(), request.headers


RawDep = Annotated[tuple[bytes, Headers], Depends(_raw_body)]

INFER_DESCRIPTION = """Outputs per step of a succeeded run's network: the numbers POST /predict
gives for the same sequences.

Inputs: `x`, FP32 [batch, steps, 2], each step [value, marker] (values in [-1, 1] and markers
in {-1, 0, 1} are what the networks were trained on); optionally `lengths`, INT64 [batch], for
sequences padded to the longest (each from 1 to steps). Output: `y`, FP32 [batch, steps, 1],
exactly 0 past a sequence's length. Tensor data is JSON (row-major, flat or nested) or binary
(little-endian) after the JSON header, whose length the `Inference-Header-Content-Length`
header then gives, each input's `binary_data_size` parameter its bytes. `y` comes as JSON,
unless `binary_data` on the requested output (or `binary_data_output` on the request) is true:
then the answer is application/octet-stream, its JSON header first, whose length the answer's
`Inference-Header-Content-Length` gives, then y's float32s. The Content-Type of the request is
not read. /predict's limits apply to the sequences and their steps (400)."""

_INFER: dict[str, Any] = {
    "response_model": OIPInferenceResponse,
    "description": INFER_DESCRIPTION,
    "responses": {
        200: {
            "description": "y, as JSON or (when asked) as binary data after the JSON header",
            "content": {oip.BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            "headers": {
                "Inference-Header-Content-Length": {
                    "description": "with binary data: the JSON header's length in bytes",
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        },
        **_errors(400, 404, 409, 413, 415),
    },
    "openapi_extra": {
        "parameters": [
            {
                "name": "Inference-Header-Content-Length",
                "in": "header",
                "required": False,
                "description": "with binary tensor data: the JSON header's length in bytes "
                "(the binary data follows it)",
                "schema": {"type": "integer", "minimum": 0},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {_JSON: {"schema": {"$ref": "#/components/schemas/OIPInferenceRequest"}}},
        },
    },
}


def _infer(
    raw: tuple[bytes, Headers],
    db: DbDep,
    cache: CacheDep,
    settings: SettingsDep,
    run_id: str,
    version: str | None,
) -> Response:
    start = time.perf_counter()
    body, headers = raw
    try:
        if version is not None and version != oip.MODEL_VERSION:
            oip.find_model(db, run_id, version)  # 404: an unknown model, or version
        model = oip.load_model(db, cache, run_id)  # 404, 409 before the tensors are read
        body = oip.decompress(body, headers.get("content-encoding", ""), settings.max_body_bytes)
        request = oip.decode_request(body, headers.getlist(oip.HEADER_LENGTH))
        y = oip.infer(model, request, settings)
        content, media_type, extra = oip.encode_response(run_id, request, y)
    except ProtocolError as e:
        return _answer(e)
    response = Response(content, media_type=media_type, headers=extra)
    metrics.predicted(time.perf_counter() - start)
    return response


@router.post(f"{PREFIX}/models/{{run_id}}/infer", **_INFER)
def oip_infer(
    run_id: str, raw: RawDep, db: DbDep, cache: CacheDep, settings: SettingsDep
) -> Response:
    return _infer(raw, db, cache, settings, run_id, None)


@router.post(f"{PREFIX}/models/{{run_id}}/versions/{{version}}/infer", **_INFER)
def oip_version_infer(
    run_id: str, version: str, raw: RawDep, db: DbDep, cache: CacheDep, settings: SettingsDep
) -> Response:
    return _infer(raw, db, cache, settings, run_id, version)


# Errors in the protocol's shape, wherever they come from ------------------------------------


def is_v2(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class ErrorShapeMiddleware:
    """On /v2 paths, a problem+json answer becomes `{"error": <its detail>}` (application/json,
    same status and headers: WWW-Authenticate, Allow, …), and an unhandled exception a 500 in
    that shape (logged). Other paths pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_v2(scope["path"]):
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # a problem's response start, until its body is read
        chunks: list[bytes] = []
        started = False  # whether a response start went out

        async def reshape(message: Message) -> None:
            nonlocal held, started
            if message["type"] == "http.response.start":
                kind = Headers(raw=message["headers"]).get("content-type", "")
                if kind.startswith(PROBLEM_MEDIA_TYPE):
                    held = message
                    return
                started = True
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    started = True
                    await _send_error(send, held, _detail(b"".join(chunks)))
                return
            await send(message)

        try:
            await self.app(scope, receive, reshape)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                raise
            detail = "the server hit an unexpected error; it has been logged"
            await _send_error(send, {"status": 500, "headers": []}, detail)


def _detail(problem: bytes) -> str:
    try:
        body = json.loads(problem)
        return str(body.get("detail") or body.get("title"))
    except (ValueError, AttributeError):
        return "error"


async def _send_error(send: Send, start: Message, message: str) -> None:
    body = oip.error_body(message)
    headers = MutableHeaders(raw=list(start["headers"]))
    headers["content-type"] = _JSON
    headers["content-length"] = str(len(body))
    await send({"type": "http.response.start", "status": start["status"], "headers": headers.raw})
    await send({"type": "http.response.body", "body": body})


# Installing ---------------------------------------------------------------------------------


def install(app: FastAPI) -> None:
    """Serve /v2 on `app`: call after every other middleware is added (this one is outermost)
    and after `service.openapi.install` (its schema is adjusted here)."""
    app.include_router(router)
    app.add_middleware(ErrorShapeMiddleware)
    published = app.openapi

    def openapi() -> dict[str, Any]:
        schema = published()
        _publish(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _publish(schema: dict[str, Any]) -> None:
    """The request body's components; on /v2 operations the protocol's error bodies (the 401
    too) and no 422 (nothing there answers one). Idempotent: the schema is built once."""
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in oip.PUBLISHED:
        if model.__name__ in comps:
            continue
        published = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in published.pop("$defs", {}).items():
            comps.setdefault(name, definition)
        comps[model.__name__] = published
    for path, item in schema.get("paths", {}).items():
        if not is_v2(path):
            continue
        for op in item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            op["responses"].pop("422", None)
            if "401" in op["responses"]:
                op["responses"]["401"]["content"] = copy.deepcopy(_ERROR)
