"""The Open Inference Protocol on /v2 (service/predict/oip.py, oip_endpoints.py): tritonclient
against a real server, and in process the protocol's answers, forms and errors, compared with
POST /predict."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

import models
import service
from service.app import create_app
from service.predict import oip
from tests.support.app import make_settings, problem, submit, train_now, wait_for
from tests.support.processes import serve

TOL = 1e-6  # /v2 and /predict share their path; the tolerance only covers a re-chosen one


@dataclass
class Lab:
    client: TestClient
    lstm: str
    elman: str
    failed: str
    queued: str
    cancelled: str


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One app for the module: trained LSTM and Elman runs, a failed, a queued and a cancelled
    one; /predict's limits small enough to reach."""
    data = tmp_path_factory.mktemp("oip")
    settings = make_settings(data, max_predict_sequences=8, max_predict_steps=200)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        lstm = submit(client, model="lstm")
        elman = submit(client, model="elman")
        failed = submit(client, learning_rate=1e20)  # its loss overflows: "diverged"
        train_now(client)
        assert client.get(f"/runs/{lstm}").json()["status"] == "succeeded"
        assert client.get(f"/runs/{elman}").json()["status"] == "succeeded"
        assert client.get(f"/runs/{failed}").json()["status"] == "failed"
        queued = submit(client)
        cancelled = submit(client)
        assert client.post(f"/runs/{cancelled}/cancel").status_code == 202
        yield Lab(client, lstm, elman, failed, queued, cancelled)


def sequences(*lengths: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [models.adding_sequence(n, rng)[0].astype(np.float32) for n in lengths]


def padded(seqs: list[np.ndarray], fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """x [batch, longest, 2] (`fill` past each end) and the lengths."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    x = np.full((len(seqs), int(lengths.max()), 2), fill, dtype=np.float32)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return x, lengths


def x_input(x: np.ndarray) -> dict[str, Any]:
    return {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}


def lengths_input(lengths: np.ndarray) -> dict[str, Any]:
    return {
        "name": "lengths",
        "datatype": "INT64",
        "shape": [len(lengths)],
        "data": lengths.tolist(),
    }


def infer(client: TestClient, model: str, body: Any, **kwargs: Any) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(f"/v2/models/{model}/infer", content=content, **kwargs)


def y_of(r: Any) -> np.ndarray:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    (out,) = r.json()["outputs"]
    assert out["name"] == "y" and out["datatype"] == "FP32"
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def predicted(client: TestClient, run_id: str, seqs: list[np.ndarray]) -> list[np.ndarray]:
    r = client.post("/predict", json={"run_id": run_id, "sequences": [s.tolist() for s in seqs]})
    assert r.status_code == 200, r.text
    return [np.array(o, dtype=np.float32) for o in r.json()["outputs"]]


def v2_error(r: Any, status: int) -> str:
    """The protocol's error answer `r`, checked: its message."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and body["error"], body
    return body["error"]


def binary_request(
    inputs: list[tuple[str, str, np.ndarray]], **request: Any
) -> tuple[bytes, dict[str, str]]:
    """A body of the binary tensor data extension and its header."""
    header = {
        **request,
        "inputs": [
            {
                "name": n,
                "datatype": t,
                "shape": list(a.shape),
                "parameters": {"binary_data_size": a.nbytes},
            }
            for n, t, a in inputs
        ],
    }
    head = json.dumps(header).encode()
    blob = b"".join(a.astype(a.dtype.newbyteorder("<")).tobytes() for _n, _t, a in inputs)
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


def binary_y(r: Any) -> tuple[dict[str, Any], np.ndarray]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["inference-header-content-length"])
    header = json.loads(r.content[:n])
    (out,) = header["outputs"]
    assert "data" not in out and out["parameters"]["binary_data_size"] == len(r.content) - n
    return header, np.frombuffer(r.content[n:], dtype="<f4").reshape(out["shape"])


# --- server and models ----------------------------------------------------------------------


def test_server_health_and_metadata(lab: Lab) -> None:
    c = lab.client
    assert c.get("/v2/health/live").json() == {"live": True}
    assert c.get("/v2/health/ready").json() == {"ready": True}
    meta = c.get("/v2").json()
    assert meta == {
        "name": "rnnlab",
        "version": service.__version__,
        "extensions": ["binary_tensor_data"],
    }


def test_model_metadata_and_its_one_version(lab: Lab) -> None:
    c = lab.client
    for run_id, platform in ((lab.lstm, "rnnlab_lstm"), (lab.elman, "rnnlab_elman")):
        meta = c.get(f"/v2/models/{run_id}").json()
        described = {t["name"]: t.pop("parameters") for t in meta["inputs"] + meta["outputs"]}
        assert meta == {
            "name": run_id,
            "versions": ["1"],
            "platform": platform,
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [-1, -1, 2]},
                {"name": "lengths", "datatype": "INT64", "shape": [-1]},
            ],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, -1, 1]}],
        }
        # The metadata says which input may be left out, and what comes past a length.
        assert described["x"]["optional"] is False and described["lengths"]["optional"] is True
        assert "0 past each sequence's length" in described["y"]["description"]
        assert "marker" in described["x"]["description"]
        meta = c.get(f"/v2/models/{run_id}").json()
        assert c.get(f"/v2/models/{run_id}/versions/1").json() == meta
    # A run's interface is known before it has weights.
    assert c.get(f"/v2/models/{lab.queued}").json()["platform"] == "rnnlab_lstm"
    assert "version '2'" in v2_error(c.get(f"/v2/models/{lab.lstm}/versions/2"), 404)
    assert "'nope'" in v2_error(c.get("/v2/models/nope"), 404)
    assert "'nope'" in v2_error(c.get("/v2/models/nope/versions/1"), 404)


def test_model_ready_only_once_the_run_succeeded(lab: Lab) -> None:
    c = lab.client
    for path in (f"/v2/models/{lab.lstm}/ready", f"/v2/models/{lab.lstm}/versions/1/ready"):
        r = c.get(path)
        assert r.status_code == 200 and r.json() == {"name": lab.lstm, "ready": True}
    for run_id, status in (
        (lab.queued, "queued"),
        (lab.failed, "failed"),
        (lab.cancelled, "cancelled"),
    ):
        r = c.get(f"/v2/models/{run_id}/ready")
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["name"] == run_id and body["ready"] is False and status in body["error"]
    v2_error(c.get(f"/v2/models/{lab.lstm}/versions/2/ready"), 404)
    v2_error(c.get("/v2/models/nope/ready"), 404)


# --- inference ------------------------------------------------------------------------------


def test_infer_json_flat_and_nested_give_predicts_numbers(lab: Lab) -> None:
    c = lab.client
    seqs = sequences(12, 12, 12)
    x, _ = padded(seqs)
    for run_id in (lab.lstm, lab.elman):
        want = predicted(c, run_id, seqs)
        flat = infer(c, run_id, {"id": "req-7", "inputs": [x_input(x)]})
        assert flat.json()["id"] == "req-7"
        assert flat.json()["model_name"] == run_id and flat.json()["model_version"] == "1"
        nested = {"inputs": [{**x_input(x), "data": x.tolist()}], "outputs": [{"name": "y"}]}
        nested_r = infer(c, run_id, nested)
        assert "id" not in nested_r.json()
        y = y_of(flat)
        assert y.shape == (3, 12, 1)
        np.testing.assert_array_equal(y, y_of(nested_r))
        for i, w in enumerate(want):
            np.testing.assert_allclose(y[i, :, 0], w, rtol=0, atol=TOL)
        # Half nested (rows of steps) is row-major too.
        half = {"inputs": [{**x_input(x), "data": x.reshape(-1, 2).tolist()}]}
        np.testing.assert_array_equal(y_of(infer(c, run_id, half)), y)


def test_ragged_batch_with_lengths_is_zero_past_each_end(lab: Lab) -> None:
    c = lab.client
    seqs = sequences(5, 17, 1, seed=1)
    x, lengths = padded(seqs, fill=0.75)  # whatever pads a sequence is never read
    r = infer(c, lab.lstm, {"inputs": [x_input(x), lengths_input(lengths)]})
    y = y_of(r)
    assert y.shape == (3, 17, 1)
    together = predicted(c, lab.lstm, seqs)
    for i, n in enumerate(lengths):
        assert np.all(y[i, n:] == 0.0)
        np.testing.assert_allclose(y[i, :n, 0], together[i], rtol=0, atol=TOL)
        (alone,) = predicted(c, lab.lstm, [seqs[i]])
        np.testing.assert_allclose(y[i, :n, 0], alone, rtol=0, atol=TOL)


def test_binary_tensor_data_in_and_out(lab: Lab) -> None:
    c = lab.client
    seqs = sequences(9, 4, seed=2)
    x, lengths = padded(seqs)
    json_y = y_of(infer(c, lab.lstm, {"inputs": [x_input(x), lengths_input(lengths)]}))
    inputs = [("x", "FP32", x), ("lengths", "INT64", lengths)]
    # Binary in, binary out (asked on the request, then on the output); no Content-Type sent.
    for ask in (
        {"parameters": {"binary_data_output": True}},
        {"outputs": [{"name": "y", "parameters": {"binary_data": True}}]},
    ):
        body, headers = binary_request(inputs, id="b1", **ask)
        r = c.post(f"/v2/models/{lab.lstm}/versions/1/infer", content=body, headers=headers)
        header, y = binary_y(r)
        assert header["id"] == "b1" and header["model_version"] == "1"
        np.testing.assert_allclose(y, json_y, rtol=0, atol=TOL)
    # Binary in, JSON out: an output's binary_data overrides the request's binary_data_output.
    body, headers = binary_request(
        inputs,
        parameters={"binary_data_output": True},
        outputs=[{"name": "y", "parameters": {"binary_data": False}}],
    )
    np.testing.assert_allclose(y_of(infer(c, lab.lstm, body, headers=headers)), json_y, atol=TOL)
    # One input binary, the other JSON.
    head = json.dumps(
        {
            "inputs": [
                {"name": "lengths", "datatype": "INT64", "shape": [2], "data": lengths.tolist()},
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                },
            ]
        }
    ).encode()
    r = infer(
        c,
        lab.lstm,
        head + x.astype("<f4").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    np.testing.assert_allclose(y_of(r), json_y, rtol=0, atol=TOL)


def test_a_compressed_body_is_read(lab: Lab) -> None:
    c = lab.client
    x, _ = padded(sequences(6))
    plain = json.dumps({"inputs": [x_input(x)]}).encode()
    want = y_of(infer(c, lab.lstm, plain))
    r = infer(c, lab.lstm, gzip.compress(plain), headers={"Content-Encoding": "gzip"})
    np.testing.assert_array_equal(y_of(r), want)
    assert "gzip" in v2_error(infer(c, lab.lstm, plain, headers={"Content-Encoding": "gzip"}), 400)
    assert "'br'" in v2_error(infer(c, lab.lstm, plain, headers={"Content-Encoding": "br"}), 415)


def test_infer_needs_a_succeeded_run_and_its_version(lab: Lab) -> None:
    c = lab.client
    x, _ = padded(sequences(3))
    body = {"inputs": [x_input(x)]}
    assert "'nope'" in v2_error(infer(c, "nope", body), 404)
    r = c.post(f"/v2/models/{lab.lstm}/versions/2/infer", content=json.dumps(body))
    assert "version '2'" in v2_error(r, 404)
    for run_id, status in ((lab.queued, "queued"), (lab.failed, "failed")):
        assert status in v2_error(infer(c, run_id, body), 409)
    # The model is looked up first: an unknown one is 404 whatever the body.
    v2_error(infer(c, "nope", b"not json"), 404)


def _x(shape: list[int], data: Any, datatype: str = "FP32") -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}


def _with_lengths(
    data: Any, shape: list[int] | None = None, datatype: str = "INT64"
) -> dict[str, Any]:
    body = _x([2, 2, 2], [0.1, 1, 0.2, 0, 0.3, 1, 0.4, 1])
    body["inputs"].append(
        {"name": "lengths", "datatype": datatype, "shape": shape or [2], "data": data}
    )
    return body


JSON_X = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 2], "data": DATA}]}'
X1 = {"name": "x", "datatype": "FP32", "shape": [1, 1, 2], "data": [0.5, 1]}
HLEN = "Inference-Header-Content-Length"
# (body, headers, what the message must say)
BAD: list[tuple[Any, dict[str, str], str]] = [
    (b"{", {}, "not a valid inference request"),
    (b"", {}, "not a valid inference request"),
    (b"\xff\xfe{}", {}, "not a valid inference request"),
    (b"[]", {}, "not a valid inference request"),
    ({"inputs": []}, {}, "inputs"),
    ({"inputs": [X1], "id": 7}, {}, "id"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, -1, 2], "data": []}]}, {}, "shape"),
    ({"inputs": [X1]}, {HLEN: "-1"}, HLEN),
    ({"inputs": [X1]}, {HLEN: "12x"}, HLEN),
    ({"inputs": [X1]}, {HLEN: "1e3"}, HLEN),
    ({"inputs": [X1]}, {HLEN: "99999"}, "99999"),
    ({"inputs": [X1]}, {HLEN: "99999999999999999999999"}, HLEN),
    ({"inputs": [X1, {**X1, "name": "z"}]}, {}, "'z'"),
    ({"inputs": [X1, X1]}, {}, "'x'"),
    ({"inputs": [{**X1, "name": "lengths", "datatype": "INT64"}]}, {}, "'x' is missing"),
    (_x([1, 1, 2], [0.5, 1], "FP64"), {}, "'x': datatype 'FP64'"),
    (_x([1, 2], [0.5, 1]), {}, "'x': shape [1, 2]"),
    (_x([1, 1, 3], [0.5, 1, 2]), {}, "'x': shape"),
    (_x([0, 1, 2], []), {}, "'x': shape"),
    (_x([1, 0, 2], []), {}, "'x': shape"),
    (_x([1, 2, 2], [0.5, 1, 0.2]), {}, "'x': data has 3 elements"),
    (_x([2**40, 2**40, 2], [0.5, 1]), {}, "'x': data has 2 elements"),
    (_x([1, 1, 2], [0.5, "1"]), {}, "'x': element 1"),
    (_x([1, 1, 2], [True, 1]), {}, "'x': element 0"),
    (_x([1, 1, 2], [0.5, None]), {}, "'x': element 1"),
    (_x([1, 1, 2], [[0.5], 1]), {}, "'x': data mixes"),
    (_x([1, 1, 2], [0.5, 1e39]), {}, "'x': element 1"),
    (_x([1, 1, 2], [0.5, 10**400]), {}, "'x'"),
    (
        JSON_X.replace(b"DATA", b"[NaN, 1]"),
        {},
        "'x': element 0",
    ),
    (
        JSON_X.replace(b"DATA", b"[1, -Infinity]"),
        {},
        "'x': element 1",
    ),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 2]}]}, {}, "'x' has no data"),
    (_with_lengths([2, 0]), {}, "'lengths': element 1 is 0"),
    (_with_lengths([3, 1]), {}, "'lengths': element 0 is 3"),
    (_with_lengths([2, -1]), {}, "'lengths': element 1 is -1"),
    (_with_lengths([2, 1.5]), {}, "'lengths': element 1"),
    (_with_lengths([2, 2**70]), {}, "'lengths'"),
    (_with_lengths([2, 1, 1], shape=[3]), {}, "'lengths': shape [3]"),
    (_with_lengths([2, 1], datatype="INT32"), {}, "'lengths': datatype"),
    ({"inputs": [X1], "outputs": [{"name": "z"}]}, {}, "'z'"),
    ({"inputs": [X1], "outputs": [{"name": "y"}, {"name": "y"}]}, {}, "'y'"),
    (
        {"inputs": [X1], "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]},
        {},
        "binary_data",
    ),
    ({"inputs": [X1], "parameters": {"binary_data_output": 1}}, {}, "binary_data_output"),
    ({"inputs": [X1], "parameters": {"sequence_id": 5}}, {}, "sequence_id"),
    ({"inputs": [{**X1, "parameters": {"shared_memory_region": "r"}}]}, {}, "shared memory"),
    ({"inputs": [{**X1, "parameters": {"binary_data_size": 8}}]}, {}, "'x': give either data"),
    (
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, 1, 2],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        },
        {},
        "'x': binary_data_size is 8 bytes, but only 0",
    ),
    ({"inputs": [{**X1, "parameters": {"binary_data_size": -8}}]}, {}, "'x': binary_data_size"),
    ({"inputs": [{**X1, "parameters": {"binary_data_size": 8.0}}]}, {}, "'x': binary_data_size"),
]


def _binary_cases() -> list[tuple[Any, dict[str, str], str]]:
    x = np.array([[[0.5, 1.0]]], dtype=np.float32)
    ok, headers = binary_request([("x", "FP32", x)])
    nan, _ = binary_request([("x", "FP32", np.array([[[np.nan, 1.0]]], dtype=np.float32))])
    both = json.dumps({"inputs": [{**X1, "parameters": {"binary_data_size": 8}}]}).encode()
    two, two_headers = binary_request([("x", "FP32", np.zeros((1, 2, 2), np.float32))])
    return [
        (ok[:-1], headers, "'x': binary_data_size is 8 bytes, but only 7"),
        (ok + b"\x00", headers, "1 bytes of binary data after the JSON header belong to no input"),
        (ok, {}, "not a valid inference request"),  # no header: the whole body is the JSON
        (nan, headers, "'x': element 0"),
        (ok, {HLEN: "1"}, "not a valid inference request"),
        (both + x.tobytes(), {HLEN: str(len(both))}, "'x': give either data or binary_data_size"),
        (two[:-8], two_headers, "'x': binary_data_size is 16 bytes, but only 8"),
    ]


@pytest.mark.parametrize(("body", "headers", "says"), BAD + _binary_cases())
def test_bad_requests_are_400_naming_what(
    lab: Lab, body: Any, headers: dict[str, str], says: str
) -> None:
    message = v2_error(infer(lab.client, lab.lstm, body, headers=headers), 400)
    assert says in message, message


def test_repeated_header_length_is_refused(lab: Lab) -> None:
    body = json.dumps({"inputs": [X1]}).encode()
    n = str(len(body))
    r = lab.client.post(
        f"/v2/models/{lab.lstm}/infer", content=body, headers=[(HLEN, n), (HLEN, n)]
    )
    assert "more than once" in v2_error(r, 400)


def test_predicts_limits_apply_to_the_steps_computed(lab: Lab) -> None:
    c = lab.client  # at most 8 sequences and 200 steps per request
    x, _ = padded(sequences(*[2] * 9))
    assert "at most 8 sequences" in v2_error(infer(c, lab.lstm, {"inputs": [x_input(x)]}), 400)
    x, _ = padded(sequences(150, 60))
    message = v2_error(infer(c, lab.lstm, {"inputs": [x_input(x)]}), 400)
    assert "'x'" in message and "300 steps" in message and "200" in message
    # /predict counts the steps it runs: lengths that cut the padding count, not the padding.
    x, lengths = padded(sequences(150, 50))
    y = y_of(infer(c, lab.lstm, {"inputs": [x_input(x), lengths_input(lengths)]}))
    assert y.shape == (2, 150, 1) and np.all(y[1, 50:] == 0)


def test_a_non_finite_output_is_400(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    def overflowing(model: Any, seqs: list[np.ndarray]) -> list[np.ndarray]:
        out = [np.zeros((len(s), 1), np.float32) for s in seqs]
        out[-1][1, 0] = np.inf
        return out

    monkeypatch.setattr(oip.models, "predict", overflowing)
    x, _ = padded(sequences(3, 3))
    message = v2_error(infer(lab.client, lab.lstm, {"inputs": [x_input(x)]}), 400)
    assert "output 'y'" in message and "sequence 1, step 1" in message


# --- errors elsewhere on /v2, access, metrics, schema --------------------------------------


def test_every_error_under_v2_has_the_protocols_shape(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = lab.client
    v2_error(c.get("/v2/nope"), 404)
    r = c.get(f"/v2/models/{lab.lstm}/infer")
    assert "allowed: POST" in v2_error(r, 405) and r.headers["allow"] == "POST"

    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(oip, "decode_request", broken)
    message = v2_error(infer(c, lab.lstm, {"inputs": [X1]}), 500)
    assert "unexpected" in message and "boom" not in message
    # Everything else keeps RFC 9457 problem details.
    problem(c.get("/runs/nope"), 404)
    problem(c.get("/v2x"), 404)


def test_a_body_over_the_limit_is_413_in_the_protocols_shape(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, max_body_bytes=2048))) as c:
        big = json.dumps(_x([1, 300, 2], [0.123456789] * 600)).encode()
        assert "2048" in v2_error(c.post("/v2/models/any/infer", content=big), 413)
        problem(c.post("/predict", content=big, headers={"content-type": "application/json"}), 413)


def test_keys_guard_v2_but_its_health(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys="k1")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        for r in (c.get("/v2"), c.get("/v2/models/a"), c.post("/v2/models/a/infer", content=b"{}")):
            assert "Authorization: Bearer" in v2_error(r, 401)
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = c.get("/v2/models/a", headers={"Authorization": "Bearer nope"})
        assert "not valid" in v2_error(r, 401)
        assert c.get("/v2", headers={"Authorization": "Bearer k1"}).status_code == 200
        v2_error(c.get("/v2/models/a", headers={"Authorization": "Bearer k1"}), 404)
        spec = c.get("/openapi.json").json()
        for path, item in spec["paths"].items():
            if path.startswith("/v2") and "/health/" not in path:
                for op in item.values():
                    content = op["responses"]["401"]["content"]
                    assert content == {
                        "application/json": {"schema": {"$ref": "#/components/schemas/OIPError"}}
                    }
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert "security" not in spec["paths"][path]["get"]


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_v2_requests_and_predictions(lab: Lab) -> None:
    c = lab.client
    route = "/v2/models/{run_id}/infer"
    before = scrape(c)
    x, _ = padded(sequences(4))
    y_of(infer(c, lab.lstm, {"inputs": [x_input(x)]}))
    v2_error(infer(c, lab.lstm, {"inputs": []}), 400)
    after = scrape(c)
    for status, more in (("200", 1), ("400", 1)):
        name = "rnnlab_http_requests_total"
        labels = {"method": "POST", "route": route, "status": status}
        assert value(after, name, **labels) - value(before, name, **labels) == more
    count = "rnnlab_predict_duration_seconds_count"
    assert value(after, count) - value(before, count) == 1


def test_the_schema_publishes_v2_beside_the_rest(lab: Lab) -> None:
    spec = lab.client.get("/openapi.json").json()
    v2 = {p: item for p, item in spec["paths"].items() if p.startswith("/v2")}
    assert set(v2) == {
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{run_id}",
        "/v2/models/{run_id}/versions/{version}",
        "/v2/models/{run_id}/ready",
        "/v2/models/{run_id}/versions/{version}/ready",
        "/v2/models/{run_id}/infer",
        "/v2/models/{run_id}/versions/{version}/infer",
    }
    comps = spec["components"]["schemas"]
    for item in v2.values():
        for op in item.values():
            assert op["tags"] == ["open inference protocol"]
            assert "422" not in op["responses"]
            for code, response in op["responses"].items():
                if code.startswith("4"):
                    (schema,) = [c["schema"] for c in response["content"].values()]
                    assert schema["$ref"].split("/")[-1] in ("OIPError", "OIPModelReady")
    infer_op = v2["/v2/models/{run_id}/infer"]["post"]
    ref = infer_op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/OIPInferenceRequest"
    assert comps["OIPInferenceRequest"]["properties"]["inputs"]["items"]["$ref"].endswith(
        "/OIPRequestInput"
    )
    assert set(infer_op["responses"]["200"]["content"]) == {
        "application/json",
        "application/octet-stream",
    }
    # The rest of the schema keeps its names.
    assert {"Problem", "PredictRequest", "RunCreate", "RunRead", "Health"} <= set(comps)


# --- tritonclient against a real server ----------------------------------------------------


def _client_of(url: str) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=120)


@pytest.mark.subprocess
def test_tritonclient_against_a_real_server(tmp_path: Path) -> None:
    with serve(tmp_path / "data") as server:
        run_id = server.submit(model="lstm")
        wait_for(lambda: server.run(run_id), lambda r: r["status"] == "succeeded", timeout=300)
        seqs = sequences(7, 3, 11, seed=3)
        x, lengths = padded(seqs)
        r = server.http.post(
            "/predict", json={"run_id": run_id, "sequences": [s.tolist() for s in seqs]}
        )
        assert r.status_code == 200, r.text
        want = [np.array(o, dtype=np.float32) for o in r.json()["outputs"]]

        def check(y: np.ndarray) -> None:
            assert y.dtype == np.float32 and y.shape == (3, 11, 1)
            for i, n in enumerate(lengths):
                np.testing.assert_allclose(y[i, :n, 0], want[i], rtol=0, atol=TOL)
                assert np.all(y[i, n:] == 0)

        with _client_of(server.url) as client:
            assert client.is_server_live() and client.is_server_ready()
            meta = client.get_server_metadata()
            assert meta["name"] == "rnnlab" and meta["version"] == service.__version__
            assert "binary_tensor_data" in meta["extensions"]
            assert client.is_model_ready(run_id) and client.is_model_ready(run_id, "1")
            assert not client.is_model_ready(run_id, "2") and not client.is_model_ready("nope")
            model = client.get_model_metadata(run_id)
            assert model["platform"] == "rnnlab_lstm" and model["versions"] == ["1"]
            assert [t["name"] for t in model["inputs"]] == ["x", "lengths"]

            for binary in (False, True):  # JSON both ways; then binary both ways
                x_in = httpclient.InferInput("x", list(x.shape), "FP32")
                x_in.set_data_from_numpy(x, binary_data=binary)
                n_in = httpclient.InferInput("lengths", [3], "INT64")
                n_in.set_data_from_numpy(lengths, binary_data=binary)
                out = httpclient.InferRequestedOutput("y", binary_data=binary)
                result = client.infer(run_id, [x_in, n_in], outputs=[out], request_id="r1")
                check(result.as_numpy("y"))
                response = result.get_response()
                assert response["id"] == "r1" and response["model_name"] == run_id
                assert ("data" in response["outputs"][0]) is not binary
            # tritonclient's defaults: binary inputs, no outputs named (all, as binary data).
            x_in = httpclient.InferInput("x", list(x.shape), "FP32").set_data_from_numpy(x)
            n_in = httpclient.InferInput("lengths", [3], "INT64").set_data_from_numpy(lengths)
            check(client.infer(run_id, [x_in, n_in], model_version="1").as_numpy("y"))
            check(
                client.infer(run_id, [x_in, n_in], request_compression_algorithm="gzip").as_numpy(
                    "y"
                )
            )

            wrong = httpclient.InferInput("x", list(x.shape), "FP64")
            wrong.set_data_from_numpy(x.astype(np.float64))
            with pytest.raises(InferenceServerException) as refused:
                client.infer(run_id, [wrong])
            assert refused.value.status() == "400" and "'x'" in refused.value.message()
            with pytest.raises(InferenceServerException) as refused:
                client.infer("nope", [x_in])
            assert refused.value.status() == "404"
