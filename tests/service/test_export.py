"""GET /runs/{id}/model.onnx and `rnnlab export`: the ONNX file of a run, what it computes
(POST /predict's numbers), its cache, its errors, a population's kept member."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient
from onnx import numpy_helper
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from service.runs import export
from tests.support.app import problem, submit, train_now
from tests.support.processes import CLI, clean_env

ATOL = 1e-5


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> export.OnnxCache:
    """An empty ONNX cache per test, so that its builds can be counted."""
    cache = export.OnnxCache(export.CACHE_BYTES)
    monkeypatch.setattr(export, "cache", cache)
    return cache


def session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def sequences(seed: int, lengths: tuple[int, ...]) -> list[list[list[float]]]:
    rng = np.random.default_rng(seed)
    return [
        np.stack(
            [rng.uniform(-1, 1, n), rng.choice([-1.0, 0.0, 1.0], n, p=[0.25, 0.25, 0.5])], axis=1
        )
        .astype(np.float32)
        .tolist()
        for n in lengths
    ]


def onnx_outputs(sess: ort.InferenceSession, seqs: list[list[list[float]]]) -> list[np.ndarray]:
    """Outputs per step of ragged sequences, as the docs say: one padded batch, each row's
    outputs past its own length ignored."""
    longest = max(len(s) for s in seqs)
    x = np.zeros((len(seqs), longest, 2), dtype=np.float32)
    for row, s in enumerate(seqs):
        x[row, : len(s)] = s
    (y,) = sess.run(["y"], {"x": x})
    return [y[row, : len(s), 0] for row, s in enumerate(seqs)]


def assert_matches_predict(client: TestClient, run_id: str, data: bytes, seed: int) -> None:
    seqs = sequences(seed, (1, 17, 60, 5))
    r = client.post("/predict", json={"run_id": run_id, "sequences": seqs})
    assert r.status_code == 200, r.text
    sess = session(data)
    for got, want in zip(onnx_outputs(sess, seqs), r.json()["outputs"], strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    # One sequence at a time gives the same numbers as the padded batch.
    for s, want in zip(seqs, r.json()["outputs"], strict=True):
        (y,) = sess.run(["y"], {"x": np.array([s], dtype=np.float32)})
        np.testing.assert_allclose(y[0, :, 0], want, rtol=0, atol=ATOL)


@pytest.mark.parametrize(("kind", "hidden_size"), [("elman", 3), ("lstm", 2), ("lstm", 8)])
def test_route_serves_a_cached_onnx_file_that_predicts_as_the_api(
    client: TestClient, fresh_cache: export.OnnxCache, kind: str, hidden_size: int
) -> None:
    run_id = submit(client, model=kind, hidden_size=hidden_size, epochs=3)
    train_now(client)
    r = client.get(f"/runs/{run_id}/model.onnx")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == f'attachment; filename="{run_id}.onnx"'
    again = client.get(f"/runs/{run_id}/model.onnx")
    assert again.status_code == 200 and again.content == r.content
    assert fresh_cache.builds == 1  # the second answer came from the cache

    model = onnx.load_from_string(r.content)
    onnx.checker.check_model(model, full_check=True)
    assert {p.key: p.value for p in model.metadata_props} == {
        "rnnlab.model": kind,
        "rnnlab.hidden_size": str(hidden_size),
    }
    assert_matches_predict(client, run_id, r.content, seed=hidden_size)


def test_route_errors_are_problems(client: TestClient) -> None:
    body = problem(client.get("/runs/nope/model.onnx"), 404)
    assert "nope" in body["detail"]
    run_id = submit(client)  # queued
    body = problem(client.get(f"/runs/{run_id}/model.onnx"), 409)
    assert "queued" in body["detail"]
    assert client.post(f"/runs/{run_id}/cancel").status_code == 202
    problem(client.get(f"/runs/{run_id}/model.onnx"), 409)  # cancelled: no weights
    assert client.delete(f"/runs/{run_id}").status_code == 204
    problem(client.get(f"/runs/{run_id}/model.onnx"), 404)


def test_a_deleted_run_has_no_onnx_file(client: TestClient) -> None:
    run_id = submit(client, model="elman")
    train_now(client)
    assert client.get(f"/runs/{run_id}/model.onnx").status_code == 200  # now cached
    assert client.delete(f"/runs/{run_id}").status_code == 204
    problem(client.get(f"/runs/{run_id}/model.onnx"), 404)


def test_the_schema_describes_the_route(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"]["/runs/{run_id}/model.onnx"]["get"]
    assert op["operationId"] == "read_onnx"
    assert {"200", "404", "409"} <= set(op["responses"])
    assert "application/octet-stream" in op["responses"]["200"]["content"]


def test_a_population_run_exports_its_kept_member(client: TestClient) -> None:
    run_id = submit(client, epochs=8, population=4, seed=21, learning_rate=0.05)
    train_now(client)
    kept = [m for m in client.get(f"/runs/{run_id}/members").json() if m["kept"]]
    assert len(kept) == 1
    data = client.get(f"/runs/{run_id}/model.onnx").content
    # The file's recurrent weights are the checkpoint's (the kept member's), gates reordered.
    stored = load_safetensors(client.get(f"/runs/{run_id}/checkpoint").content)
    graph = onnx.load_from_string(data).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    h = 2
    w_ih = stored["lstm.weight_ih_l0"].numpy()
    i, f, g, o = (w_ih[k * h : (k + 1) * h] for k in range(4))
    np.testing.assert_array_equal(weights["lstm_W"][0], np.concatenate([i, o, f, g]))
    np.testing.assert_array_equal(weights["readout_W"], stored["fc.weight"].numpy().T)
    assert_matches_predict(client, run_id, data, seed=21)


# --- rnnlab export ----------------------------------------------------------------------


def rnnlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=300, env=clean_env()
    )


@pytest.mark.subprocess
def test_cli_writes_the_routes_file_and_refuses_bad_checkpoints(
    client: TestClient, tmp_path: Path
) -> None:
    run_id = submit(client, model="elman", hidden_size=4)
    train_now(client)
    ckpt, out = tmp_path / "w.safetensors", tmp_path / "m.onnx"
    ckpt.write_bytes(client.get(f"/runs/{run_id}/checkpoint").content)
    done = rnnlab("export", "--checkpoint", str(ckpt), "--onnx", str(out))
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    assert out.read_bytes() == client.get(f"/runs/{run_id}/model.onnx").content

    (tmp_path / "junk").write_bytes(b"junk")
    notes = tmp_path / "notes.safetensors"  # safetensors, but not an rnnlab network
    save_file({"w": torch.zeros(2)}, str(notes))
    for path, says in (
        (tmp_path / "missing.safetensors", "cannot read"),
        (tmp_path / "junk", "not an rnnlab checkpoint"),
        (notes, "not an rnnlab checkpoint"),
    ):
        bad = rnnlab("export", "--checkpoint", str(path), "--onnx", str(tmp_path / "x.onnx"))
        assert bad.returncode == 2, bad.stderr
        assert says in bad.stderr and str(path) in bad.stderr
        assert "Traceback" not in bad.stderr
        assert not (tmp_path / "x.onnx").exists()
    bad = rnnlab("export", "--checkpoint", str(ckpt), "--onnx", str(tmp_path / "no" / "m.onnx"))
    assert bad.returncode == 2 and "cannot write" in bad.stderr
    assert "Traceback" not in bad.stderr
