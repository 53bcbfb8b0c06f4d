"""/predict and /scalar-rnn: outputs per time step."""

from __future__ import annotations

import math
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from models import scalar_rnn
from service import limits, metrics
from service.deps import CacheDep, DbDep, SettingsDep
from service.openapi import error_responses
from service.predict.inference import run_predict
from service.problems import invalid, parse_body
from service.schemas import PredictRequest, PredictResponse, ScalarRNNRequest, ScalarRNNResponse

router = APIRouter(tags=["predict"])


async def _raw_body(request: Request) -> tuple[bytes, str | None]:
    return await request.body(), request.headers.get("content-type")


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=error_responses(404, 409, 413, 422),
    # The body is parsed by pydantic-core straight from the bytes (see parse_body), so the
    # schema is declared here rather than through a parameter.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}
            },
        }
    },
)
def predict(
    raw: Annotated[tuple[bytes, str | None], Depends(_raw_body)],
    db: DbDep,
    cache: CacheDep,
    settings: SettingsDep,
) -> Response:
    """Run a succeeded run's network over sequences; one output per time step."""
    start = time.perf_counter()
    # Thousands of [value, marker] pairs: pydantic-core validates them from the JSON bytes in
    # one pass, about twice as fast as json.loads followed by validation of the Python lists.
    body = parse_body(PredictRequest, *raw)
    outputs = run_predict(
        db=db,
        cache=cache,
        settings=settings,
        run_id=body.run_id,
        sequences=body.sequences,
    )
    # pydantic's own JSON encoder writes thousands of floats ~10× faster than json.dumps.
    answer = PredictResponse.model_construct(run_id=body.run_id, outputs=outputs)
    response = Response(answer.model_dump_json(), media_type="application/json")
    metrics.predicted(time.perf_counter() - start)
    return response


@router.post("/scalar-rnn", response_model=ScalarRNNResponse, responses=error_responses(413, 422))
def create_scalar_rnn(body: ScalarRNNRequest, settings: SettingsDep) -> ScalarRNNResponse:
    """The notebook's scalar RNN (one sigmoid hidden unit), step by step."""
    limits.check_scalar_steps(len(body.x), settings)
    h, y = scalar_rnn(body.x, body.w_i, body.w_h, body.w_o, body.h_bias, body.y_bias)
    for name, series in (("h", h), ("y", y)):
        bad = [t for t, v in enumerate(series) if not math.isfinite(v)]
        if bad:  # finite inputs whose products overflow a double: JSON cannot carry the answer
            raise invalid(
                [
                    {
                        "loc": ["body"],
                        "msg": f"{name}[{bad[0]}] is not a finite number (the weights and "
                        f"inputs overflow double precision at {len(bad)} steps)",
                        "type": "non_finite_output",
                    }
                ]
            )
    return ScalarRNNResponse(h=h, y=y)
