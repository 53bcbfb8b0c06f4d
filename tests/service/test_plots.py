"""Plots (SVG parses as XML, PNG has its signature and size) and /compare."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET

import pytest
from fastapi.testclient import TestClient

from tests.support.app import problem, run_body, train_now

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def svg_text(data: bytes) -> str:
    root = ET.fromstring(data)  # valid XML, or this raises
    assert root.tag.endswith("svg")
    return " ".join(t.strip() for t in root.itertext() if t.strip())


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    return width, height


@pytest.fixture
def runs(client: TestClient) -> dict[str, str]:
    ids = {
        "lstm": client.post("/runs", json=run_body(epochs=6)).json()["id"],
        "elman": client.post("/runs", json=run_body(model="elman", hidden_size=3, epochs=4)).json()[
            "id"
        ],
    }
    train_now(client)
    ids["queued"] = client.post("/runs", json=run_body()).json()["id"]
    return ids


def test_losses_plot_svg_and_png(client: TestClient, runs: dict[str, str]) -> None:
    rid = runs["lstm"]
    r = client.get(f"/runs/{rid}/plots/losses.svg")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    text = svg_text(r.content)
    assert f"LSTM, hidden size 2 — run {rid}" in text
    for label in ("epoch", "MSE (log scale)", "training loss", "validation loss", "6 of 6 epochs"):
        assert label in text
    r = client.get(f"/runs/{rid}/plots/losses.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    w, h = png_size(r.content)
    assert w > 300 and h > 200
    # Still works for a run that has not trained yet (an empty curve), and is not cached.
    assert client.get(f"/runs/{runs['queued']}/plots/losses.svg").status_code == 200


def test_prediction_and_scatter_plots(client: TestClient, runs: dict[str, str]) -> None:
    rid = runs["lstm"]
    expected = {
        "predictions.svg?index=1&start=5&steps=20": ["test sequence 1, steps 5 … 24", "target"],
        "scatter.svg?index=0": ["test sequence 0", "identity", "prediction"],
        "scatter.svg": ["all test sequences", "identity"],
    }
    for path, labels in expected.items():
        r = client.get(f"/runs/{rid}/plots/{path}")
        assert r.status_code == 200, r.text
        text = svg_text(r.content)
        assert f"run {rid}" in text
        for label in labels:
            assert label in text, (path, label)
    r = client.get(f"/runs/{rid}/plots/predictions.png")
    assert r.status_code == 200 and png_size(r.content)[0] > 300


def test_plot_errors(client: TestClient, runs: dict[str, str]) -> None:
    rid = runs["lstm"]
    problem(client.get("/runs/nope/plots/losses.svg"), 404)
    problem(client.get("/runs/nope/plots/scatter.png"), 404)
    problem(client.get(f"/runs/{runs['queued']}/plots/predictions.svg"), 409)
    problem(client.get(f"/runs/{runs['queued']}/plots/scatter.svg"), 409)
    # Which sequences and steps exist depends on the run: past them is a 404, not a 422 for
    # a request the schema calls valid.
    body = problem(client.get(f"/runs/{rid}/plots/predictions.svg?index=3"), 404)
    assert "has no test sequence 3; it has 3 (0 … 2)" in body["detail"]
    body = problem(client.get(f"/runs/{rid}/plots/scatter.svg?index=5"), 404)
    assert "no test sequence 5" in body["detail"]
    body = problem(client.get(f"/runs/{rid}/plots/predictions.svg?start=40"), 404)
    assert "no time step 40: its sequences have 40 steps" in body["detail"]
    problem(client.get(f"/runs/{rid}/plots/predictions.svg?steps=0"), 422)
    problem(client.get(f"/runs/{rid}/plots/predictions.svg?index=-1"), 422)
    problem(client.get(f"/runs/{rid}/plots/scatter.svg?index=x"), 422)
    problem(client.get(f"/runs/{rid}/plots/losses.gif"), 422)


def test_compare_plot(client: TestClient, runs: dict[str, str]) -> None:
    ids = f"{runs['lstm']},{runs['elman']}"
    r = client.get(f"/plots/compare.svg?runs={ids}")
    assert r.status_code == 200
    text = svg_text(r.content)
    assert f"lstm H=2 ({runs['lstm'][:8]})" in text
    assert f"elman H=3 ({runs['elman'][:8]})" in text
    assert "validation loss of 2 runs" in text
    assert png_size(client.get(f"/plots/compare.png?runs={ids}").content)[0] > 300
    problem(client.get(f"/plots/compare.svg?runs={runs['lstm']},nope"), 404)
    for bad in ("", ",", f"{runs['lstm']}, x", ",".join(["a"] * 21)):
        problem(client.get(f"/plots/compare.svg?runs={bad}"), 422)
    # A run named twice is drawn once.
    twice = client.get(f"/plots/compare.svg?runs={runs['lstm']},{runs['lstm']}")
    assert "validation loss of 1 run" in svg_text(twice.content)


def test_compare_json_matches_the_runs(client: TestClient, runs: dict[str, str]) -> None:
    ids = [runs["lstm"], runs["elman"], runs["queued"]]
    r = client.get("/compare", params={"runs": ",".join(ids)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["run_id"] for i in body["runs"]] == ids
    for item in body["runs"]:
        run = client.get(f"/runs/{item['run_id']}").json()
        m = run["metrics"]
        assert item["model"] == run["model"]
        assert item["hidden_size"] == run["config"]["hidden_size"]
        assert item["epochs"] == run["epochs_completed"]
        for key in ("test_mse", "baseline_mse", "marker_mse", "error_ratio", "verdict"):
            assert item[key] == m[key], key
    done = [i for i in body["runs"] if i["status"] == "succeeded"]
    best = min(done, key=lambda i: i["error_ratio"])
    assert body["best"] == best["run_id"]
    assert best["model"] in body["summary"] and "did best" in body["summary"]
    only_queued = client.get("/compare", params={"runs": runs["queued"]}).json()
    assert only_queued["best"] is None
    problem(client.get("/compare", params={"runs": "nope"}), 404)
    problem(client.get("/compare", params={"runs": ""}), 422)


# ECMA-262's WhiteSpace and LineTerminator (what `\s` means to a client validating the schema).
ECMA_BLANKS = set("\t\n\v\f\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff") | {
    chr(c) for c in range(0x2000, 0x200B)
}


def test_the_run_ids_pattern_names_its_blanks_and_every_engine_agrees(client: TestClient) -> None:
    import re

    spec = client.get("/openapi.json").json()
    published = {
        p["schema"]["pattern"]
        for path in ("/compare", "/plots/compare.{fmt}")
        for p in spec["paths"][path]["get"]["parameters"]
        if p["name"] == "runs"
    }
    assert len(published) == 1
    pattern = published.pop()
    assert "\\s" not in pattern  # its meaning differs between Python, Rust and ECMA-262
    # A blank to Python (str.isspace) or to ECMA-262 is refused inside an id; nothing else is.
    one_id = re.compile(pattern)
    blanks = {chr(c) for c in range(0x110000) if chr(c).isspace()} | ECMA_BLANKS
    for c in map(chr, range(0x110000)):
        if 0xD800 <= ord(c) <= 0xDFFF:
            continue  # surrogates: not characters a client can send
        assert bool(one_id.match(f"a{c}b")) == (c not in blanks), hex(ord(c))  # "," splits
    # And the server (pydantic's own regex engine) agrees on every blank: 422, never a 404.
    for c in sorted(blanks):
        problem(client.get("/compare", params={"runs": f"x{c}y"}), 422)
        problem(client.get("/plots/compare.svg", params={"runs": f"x{c}y"}), 422)
    problem(client.get("/compare", params={"runs": "x\u200by"}), 404)  # zero-width: not a blank
