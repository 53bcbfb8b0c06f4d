"""The Open Inference Protocol (KServe's v2 REST protocol, as Triton speaks it): its wire format.

Each succeeded run is a model named by its run id, with one version, "1". It takes

- `x`, FP32 [batch, steps, 2]: per step [value, marker], as the sequences of POST /predict;
- `lengths`, INT64 [batch], optional: each sequence's own length when a ragged batch is padded
  to its longest sequence (without it every sequence has all `steps`);

and gives `y`, FP32 [batch, steps, 1]: the output per step, exactly 0 past a sequence's length.
The numbers are POST /predict's: the same checkpoint from the same cache, `models.predict` on
the same float32 sequences (each cut at its length), the same request limits.

Tensor data comes as JSON (row-major, flat or nested), or as binary data after the JSON header
(Triton's binary tensor data extension: the `Inference-Header-Content-Length` header and each
input's `binary_data_size` parameter). Outputs are JSON unless the request asks for binary
data (`binary_data` on a requested output, or `binary_data_output` on the request): then the
answer is `application/octet-stream`, the JSON header first (its length in the answer's
`Inference-Header-Content-Length`), then the little-endian float32s of `y`.

This module decodes requests, runs them and encodes the answers; `oip_endpoints` serves them.
Every refusal is a `ProtocolError`, answered as the protocol's `{"error": "..."}`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Annotated, Any, Literal, overload

import numpy as np
import pydantic_core
import torch
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
)

import models
from service import __version__, limits
from service.db import Database
from service.predict.inference import ModelCache, first_non_finite
from service.problems import ProblemError
from service.runs.store import get_run_or_404
from service.schemas import FLOAT32_MAX, _json_integer
from service.settings import Settings
from service.tables import RunStatus

SERVER_NAME = "rnnlab"
EXTENSIONS = ["binary_tensor_data"]
MODEL_VERSION = "1"  # each run's model has exactly this one version
HEADER_LENGTH = "inference-header-content-length"
BINARY_MEDIA_TYPE = "application/octet-stream"
INPUT, LENGTHS, OUTPUT = "x", "lengths", "y"


class ProtocolError(Exception):
    """A refused request: its HTTP status and the protocol's error message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# What the protocol publishes (in /openapi.json too) -------------------------------------------


class OIPError(BaseModel):
    """Every refusal on /v2, as the protocol has it."""

    error: str = Field(description="what went wrong")


class OIPServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class OIPServerLive(BaseModel):
    live: bool


class OIPServerReady(BaseModel):
    ready: bool


class OIPTensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size")
    parameters: dict[str, str | bool] = Field(
        description="what the tensor holds (`description`) and whether an input may be left out "
        "(`optional`)"
    )


class OIPModelMetadata(BaseModel):
    name: str = Field(description="the run id")
    versions: list[str] = Field(description='every run\'s model has one version, "1"')
    platform: str = Field(description="rnnlab_lstm or rnnlab_elman: the run's network")
    inputs: list[OIPTensorMetadata]
    outputs: list[OIPTensorMetadata]


class OIPModelReady(BaseModel):
    name: str
    ready: bool
    error: str | None = Field(default=None, description="why not, when it is not ready")


# Parameters: name → string, number or boolean.
Parameters = dict[
    str,
    Annotated[str, Strict()]
    | Annotated[bool, Strict()]
    | Annotated[int, Strict()]
    | Annotated[float, Strict()],
]
# A JSON integer (5 or 5.0; not "5" or true), its bounds before the validator so that the
# schema publishes them.
Dimension = Annotated[int, Field(ge=0, le=2**64 - 1), BeforeValidator(_json_integer)]


class OIPRequestInput(BaseModel):
    name: Annotated[str, Strict()]
    shape: list[Dimension]
    datatype: Annotated[str, Strict()]
    parameters: Parameters | None = Field(
        default=None, description="binary_data_size: its data's bytes after the JSON header"
    )
    data: list[Any] | None = Field(
        default=None,
        description="the elements in row-major order, flat or nested; absent when the "
        "tensor is sent as binary data",
    )


class OIPRequestOutput(BaseModel):
    name: Annotated[str, Strict()]
    parameters: Parameters | None = Field(
        default=None, description="binary_data: true for the tensor as binary data"
    )


class OIPInferenceRequest(BaseModel):
    """An inference request (the JSON header, when binary tensor data follows it)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {
                            "name": "x",
                            "datatype": "FP32",
                            "shape": [1, 3, 2],
                            "data": [[[0.5, 1], [0.3, 0], [-0.2, 1]]],
                        }
                    ],
                }
            ]
        }
    )

    id: Annotated[str, Strict()] | None = Field(default=None, description="echoed in the answer")
    parameters: Parameters | None = Field(
        default=None, description="binary_data_output: true for every output as binary data"
    )
    inputs: list[OIPRequestInput] = Field(min_length=1)
    outputs: list[OIPRequestOutput] | None = Field(
        default=None, description="which outputs, in which form (default: all, as JSON)"
    )


class OIPResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_size: its bytes after the JSON header"
    )
    data: list[float] | None = Field(default=None, description="flat, row-major; absent if binary")


class OIPInferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OIPResponseOutput]


PUBLISHED = (
    OIPError,
    OIPServerMetadata,
    OIPServerLive,
    OIPServerReady,
    OIPTensorMetadata,
    OIPModelMetadata,
    OIPModelReady,
    OIPRequestInput,
    OIPRequestOutput,
    OIPInferenceRequest,
    OIPResponseOutput,
    OIPInferenceResponse,
)


# Metadata -------------------------------------------------------------------------------------


def server_metadata() -> OIPServerMetadata:
    return OIPServerMetadata(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)


@dataclass(frozen=True)
class Model:
    """What the routes need of a run."""

    name: str  # the run id
    kind: str  # "lstm" or "elman"
    status: RunStatus


def model_metadata(model: Model) -> OIPModelMetadata:
    """A run's model, whatever its status (its interface is known from its creation)."""
    return OIPModelMetadata(
        name=model.name,
        versions=[MODEL_VERSION],
        platform=f"rnnlab_{model.kind}",
        inputs=[
            OIPTensorMetadata(
                name=INPUT,
                datatype="FP32",
                shape=[-1, -1, 2],
                parameters={
                    "optional": False,
                    "description": "[batch, steps, 2]: per step a value in [-1, 1] and a "
                    "marker in {-1, 0, 1}",
                },
            ),
            OIPTensorMetadata(
                name=LENGTHS,
                datatype="INT64",
                shape=[-1],
                parameters={
                    "optional": True,
                    "description": "each sequence's length in a batch padded to the longest "
                    "(left out: every sequence has all the steps)",
                },
            ),
        ],
        outputs=[
            OIPTensorMetadata(
                name=OUTPUT,
                datatype="FP32",
                shape=[-1, -1, 1],
                parameters={
                    "description": "the network's output at every step, as POST /predict "
                    "gives it; 0 past each sequence's length",
                },
            )
        ],
    )


def unknown_model(run_id: str) -> ProtocolError:
    return ProtocolError(404, f"unknown model {run_id!r}: no run has this id")


def find_model(db: Database, run_id: str, version: str | None) -> Model:
    """The model of a name and version; 404 for an unknown one of either."""
    with db.reading() as session:
        try:
            run = get_run_or_404(session=session, run_id=run_id)
        except ProblemError as e:
            raise unknown_model(run_id) from e
        model = Model(name=run.id, kind=run.model, status=run.status)
    if version is not None and version != MODEL_VERSION:
        raise ProtocolError(
            404,
            f"model {run_id!r} has no version {version!r}: a run's model has one version, "
            f"{MODEL_VERSION!r}",
        )
    return model


def model_ready(model: Model) -> OIPModelReady:
    if model.status == RunStatus.succeeded:
        return OIPModelReady(name=model.name, ready=True)
    why = f"the run is {model.status.value}; only a succeeded run's model can infer"
    return OIPModelReady(
        name=model.name, ready=False, error=f"model {model.name!r} is not ready: {why}"
    )


# Decoding a request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A decoded, checked inference request."""

    x: np.ndarray  # float32 [batch, steps, 2]
    lengths: np.ndarray  # int64 [batch], each in 1 … steps
    binary_output: bool  # y as binary data
    id: str | None


_REQUEST = TypeAdapter(OIPInferenceRequest)
_FLOATS = TypeAdapter(list[Annotated[float, Strict()]])  # ints too, never bools or strings
_INTS = TypeAdapter(list[Annotated[int, Strict()]])
_DIGITS = re.compile(r"[0-9]{1,19}")


def decompress(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """The body as sent with Content-Encoding gzip or deflate (tritonclient's
    request_compression_algorithm), at most `max_bytes` once inflated (else 413)."""
    kind = encoding.strip().lower()
    if kind in ("", "identity"):
        return body
    if kind not in ("gzip", "deflate"):
        raise ProtocolError(415, f"Content-Encoding {kind[:32]!r}: only gzip and deflate are read")
    inflater = zlib.decompressobj(wbits=31 if kind == "gzip" else 15)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as e:
        raise ProtocolError(400, f"the body is not valid {kind} data: {e}") from e
    if len(out) > max_bytes:
        raise ProtocolError(413, limits.body_too_large(max_bytes) + ", once inflated")
    if not inflater.eof or inflater.unused_data:
        raise ProtocolError(400, f"the body is not one complete {kind} stream")
    return out


def split_body(body: bytes, header_lengths: Sequence[str]) -> tuple[bytes, bytes]:
    """(the JSON header, the binary data after it) by Inference-Header-Content-Length."""
    if not header_lengths:
        return body, b""
    if len(header_lengths) > 1:
        raise ProtocolError(400, "Inference-Header-Content-Length is given more than once")
    text = header_lengths[0].strip()
    if not _DIGITS.fullmatch(text):
        raise ProtocolError(
            400,
            "Inference-Header-Content-Length must be the JSON header's length in bytes, a "
            f"non-negative integer; got {text[:40]!r}",
        )
    n = int(text)
    if n > len(body):
        raise ProtocolError(
            400, f"Inference-Header-Content-Length is {n}, but the body has {len(body)} bytes"
        )
    return body[:n], body[n:]


def _summary(e: ValidationError, most: int = 3) -> str:
    parts = []
    for err in e.errors()[:most]:
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    more = len(e.errors()) - most
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _flag(params: dict[str, Any] | None, key: str, what: str) -> bool | None:
    value = (params or {}).get(key)
    if value is not None and not isinstance(value, bool):
        raise ProtocolError(400, f"{what}: the parameter {key!r} must be true or false")
    return value


def decode_request(body: bytes, header_lengths: Sequence[str]) -> Request:
    """Check and decode an inference request; OIPError (400) names what is wrong."""
    header, binary = split_body(body, header_lengths)
    try:
        request = _REQUEST.validate_json(header)
    except ValidationError as e:
        raise ProtocolError(400, f"not a valid inference request: {_summary(e)}") from e
    params = request.parameters or {}
    for key in ("sequence_id", "sequence_start", "sequence_end"):
        if params.get(key) not in (None, 0, "", False):
            raise ProtocolError(
                400, f"the parameter {key!r}: these models keep no state between requests"
            )
    inputs: dict[str, OIPRequestInput] = {}
    for tensor in request.inputs:
        if tensor.name not in (INPUT, LENGTHS):
            raise ProtocolError(
                400, f"unknown input {tensor.name[:64]!r}: the inputs are 'x' and 'lengths'"
            )
        if tensor.name in inputs:
            raise ProtocolError(400, f"input {tensor.name!r} is given more than once")
        inputs[tensor.name] = tensor
    if INPUT not in inputs:
        raise ProtocolError(400, "input 'x' is missing: FP32 [batch, steps, 2]")

    # Outputs as JSON unless asked otherwise; an empty list is no list (all outputs).
    binary_output = bool(_flag(params, "binary_data_output", "the request"))
    for i, out in enumerate(request.outputs or []):
        if out.name != OUTPUT:
            raise ProtocolError(400, f"unknown output {out.name[:64]!r}: the output is 'y'")
        if i > 0:
            raise ProtocolError(400, "output 'y' is requested more than once")
        if "classification" in (out.parameters or {}):
            raise ProtocolError(400, "output 'y': classification is not supported")
        flag = _flag(out.parameters, "binary_data", "output 'y'")
        binary_output = binary_output if flag is None else flag

    chunks = _binary_chunks(request.inputs, binary)
    shape = inputs[INPUT].shape
    if len(shape) != 3 or shape[2] != 2 or shape[0] < 1 or shape[1] < 1:
        raise ProtocolError(
            400,
            f"input 'x': shape {_short(shape)}; it must be [batch, steps, 2] with at least one "
            "sequence of at least one step",
        )
    batch, steps = shape[0], shape[1]
    x = _decode(inputs[INPUT], chunks.get(INPUT), "FP32").reshape(batch, steps, 2)
    if LENGTHS in inputs:
        if inputs[LENGTHS].shape != [batch]:
            raise ProtocolError(
                400,
                f"input 'lengths': shape {_short(inputs[LENGTHS].shape)}; it must be "
                f"[{batch}], one length per sequence of 'x'",
            )
        lengths = _decode(inputs[LENGTHS], chunks.get(LENGTHS), "INT64")
        bad = np.flatnonzero((lengths < 1) | (lengths > steps))
        if bad.size:
            i = int(bad[0])
            raise ProtocolError(
                400,
                f"input 'lengths': element {i} is {int(lengths[i])}; each length must be "
                f"from 1 to {steps} (the steps of 'x')",
            )
    else:
        lengths = np.full(batch, steps, dtype=np.int64)
    return Request(x=x, lengths=lengths, binary_output=binary_output, id=request.id)


def _short(shape: list[int]) -> str:
    """A shape for a message (a client may send thousands of dimensions)."""
    return str(shape) if len(shape) <= 8 else f"[{', '.join(map(str, shape[:8]))}, …]"


def _binary_chunks(inputs: list[OIPRequestInput], binary: bytes) -> dict[str, bytes]:
    """Each input's binary data, taken in the order the inputs are listed."""
    chunks, offset = {}, 0
    for tensor in inputs:
        params = tensor.parameters or {}
        if "shared_memory_region" in params:
            raise ProtocolError(400, f"input {tensor.name!r}: shared memory is not supported")
        size = params.get("binary_data_size")
        if size is None:
            continue
        if type(size) is not int or size < 0:
            raise ProtocolError(
                400, f"input {tensor.name!r}: binary_data_size must be a non-negative integer"
            )
        if tensor.data is not None:
            raise ProtocolError(
                400, f"input {tensor.name!r}: give either data or binary_data_size, not both"
            )
        if offset + size > len(binary):
            raise ProtocolError(
                400,
                f"input {tensor.name!r}: binary_data_size is {size} bytes, but only "
                f"{len(binary) - offset} bytes of binary data are left after the JSON header "
                "(whose length Inference-Header-Content-Length gives)",
            )
        chunks[tensor.name] = binary[offset : offset + size]
        offset += size
    if offset != len(binary):
        raise ProtocolError(
            400,
            f"{len(binary) - offset} bytes of binary data after the JSON header belong to no "
            "input (binary_data_size)",
        )
    return chunks


def _decode(
    tensor: OIPRequestInput, raw: bytes | None, datatype: Literal["FP32", "INT64"]
) -> np.ndarray:
    """A tensor's elements, flat, checked: its datatype, its element count, finite numbers."""
    name = tensor.name
    if tensor.datatype != datatype:
        raise ProtocolError(
            400, f"input {name!r}: datatype {tensor.datatype[:32]!r}; it must be {datatype}"
        )
    count = 1
    for d in tensor.shape:
        count *= d
    if raw is not None:
        itemsize = 4 if datatype == "FP32" else 8
        if len(raw) != count * itemsize:
            raise ProtocolError(
                400,
                f"input {name!r}: binary_data_size is {len(raw)} bytes; shape "
                f"{_short(tensor.shape)} of {datatype} is {count * itemsize}",
            )
        values = np.frombuffer(raw, dtype="<f4" if datatype == "FP32" else "<i8")
        values = values.astype(np.float32 if datatype == "FP32" else np.int64)  # native, own
    else:
        if tensor.data is None:
            raise ProtocolError(
                400,
                f"input {name!r} has no data: give `data`, or binary data after the JSON "
                "header with the binary_data_size parameter",
            )
        flat = _flatten(tensor.data, name)
        if len(flat) != count:
            raise ProtocolError(
                400,
                f"input {name!r}: data has {len(flat)} elements; shape {_short(tensor.shape)} "
                f"has {count}",
            )
        values = _numbers(flat, name, datatype)
    if datatype == "FP32":
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ProtocolError(
                400,
                f"input {name!r}: element {int(bad[0])} (row-major) is not a finite float32 "
                f"number ({bad.size} elements are not)",
            )
    return values


def _flatten(data: list[Any], name: str) -> list[Any]:
    """Nested lists of one depth everywhere, flattened row-major (a flat list as it is)."""
    flat = data
    while flat and any(type(v) is list for v in flat):
        if not all(type(v) is list for v in flat):
            raise ProtocolError(
                400, f"input {name!r}: data mixes numbers and lists at the same depth"
            )
        flat = list(chain.from_iterable(flat))
    return flat


def _numbers(flat: list[Any], name: str, datatype: Literal["FP32", "INT64"]) -> np.ndarray:
    adapter, kind = (_FLOATS, "a number") if datatype == "FP32" else (_INTS, "an integer")
    try:
        checked = adapter.validate_python(flat)
    except ValidationError as e:
        i = e.errors()[0]["loc"][0]
        raise ProtocolError(
            400, f"input {name!r}: element {i} (row-major) of data is not {kind}"
        ) from e
    if datatype == "INT64":
        try:
            return np.array(checked, dtype=np.int64)
        except OverflowError as e:
            raise ProtocolError(400, f"input {name!r}: an element is beyond INT64's range") from e
    values = np.array(checked, dtype=np.float64)
    # The float32 range, as POST /predict takes it; beyond it, and NaN or infinity: refused.
    bad = np.flatnonzero(~(np.abs(values) <= FLOAT32_MAX))
    if bad.size:
        raise ProtocolError(
            400,
            f"input {name!r}: element {int(bad[0])} (row-major) is not a finite float32 number "
            f"({bad.size} elements are not)",
        )
    return values.astype(np.float32)


# Running it -----------------------------------------------------------------------------------


class _Steps(Sequence[range]):
    """Sequences of these lengths, as `limits.check_predict` counts them (nothing allocated)."""

    def __init__(self, lengths: np.ndarray) -> None:
        self._lengths = lengths

    def __len__(self) -> int:
        return len(self._lengths)

    @overload
    def __getitem__(self, i: int) -> range: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[range]: ...

    def __getitem__(self, i: int | slice) -> range | Sequence[range]:
        if isinstance(i, slice):
            return [range(int(n)) for n in self._lengths[i]]
        return range(int(self._lengths[i]))


def load_model(db: Database, cache: ModelCache, run_id: str) -> torch.nn.Module:
    """The run's network from /predict's cache: 404 for an unknown run, 409 for one that has
    not succeeded."""
    try:
        return cache.get(db, run_id)
    except ProblemError as e:
        if e.status == 404:
            raise unknown_model(run_id) from e
        raise ProtocolError(e.status, f"model {run_id!r} is not ready: {e.detail}") from e


def infer(model: torch.nn.Module, request: Request, settings: Settings) -> np.ndarray:
    """y, float32 [batch, steps, 1]: /predict's outputs for each sequence at its length, zeros
    past it; 400 over /predict's limits or for outputs that are not finite."""
    try:
        limits.check_predict(_Steps(request.lengths), settings)
    except ProblemError as e:
        what = e.errors[0]["msg"] if e.errors else e.detail
        raise ProtocolError(400, f"input 'x': {what} on this server") from e
    x, lengths = request.x, request.lengths
    outputs = models.predict(model, [x[i, :n] for i, n in enumerate(lengths.tolist())])
    bad = first_non_finite(outputs)
    if bad is not None:
        i, step, count = bad
        raise ProtocolError(
            400,
            f"output 'y' is not a finite number at sequence {i}, step {step} "
            f"({count} steps of that sequence); inputs this large overflow the "
            "network's float32 arithmetic",
        )
    y = np.zeros((x.shape[0], x.shape[1], 1), dtype=np.float32)
    for i, (o, n) in enumerate(zip(outputs, lengths.tolist(), strict=True)):
        y[i, :n] = o
    return y


# Encoding the answer --------------------------------------------------------------------------


def encode_response(
    run_id: str, request: Request, y: np.ndarray
) -> tuple[bytes, str, dict[str, str]]:
    """(body, media type, extra headers) of the answer."""
    answer: dict[str, Any] = {"model_name": run_id, "model_version": MODEL_VERSION}
    if request.id is not None:
        answer["id"] = request.id
    output: dict[str, Any] = {"name": OUTPUT, "datatype": "FP32", "shape": list(y.shape)}
    binary = b""
    if request.binary_output:
        binary = y.astype("<f4").tobytes()
        output["parameters"] = {"binary_data_size": len(binary)}
    else:
        # float64 holds every float32 exactly: the same decimal numbers as /predict writes.
        output["data"] = y.reshape(-1).astype(np.float64).tolist()
    answer["outputs"] = [output]
    header = pydantic_core.to_json(answer)
    if not request.binary_output:
        return header, "application/json", {}
    return header + binary, BINARY_MEDIA_TYPE, {"Inference-Header-Content-Length": str(len(header))}


def error_body(message: str) -> bytes:
    return pydantic_core.to_json({"error": message})
