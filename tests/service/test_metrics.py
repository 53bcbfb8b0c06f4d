"""/metrics: Prometheus text that parses, with counts that move when a worker process trains."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from tests.support.app import make_settings, run_body, wait_for


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def worker_client(tmp_path: Path) -> Iterator[TestClient]:
    """One real worker process: its metrics must reach the API's /metrics."""
    with TestClient(create_app(make_settings(tmp_path, workers=1))) as client:
        yield client


@pytest.mark.subprocess
def test_metrics_count_a_run_trained_in_a_worker_process(worker_client: TestClient) -> None:
    client = worker_client
    before = scrape(client)
    run_id = client.post("/runs", json=run_body(epochs=7)).json()["id"]
    queued = scrape(client)
    assert value(queued, "rnnlab_runs", status="queued") >= 1
    assert value(queued, "rnnlab_queue_length") == value(queued, "rnnlab_runs", status="queued")
    wait_for(
        lambda: client.get(f"/runs/{run_id}").json(),
        lambda v: v["status"] == "succeeded",
        timeout=120,
        interval=0.2,
    )
    after = scrape(client)
    assert value(after, "rnnlab_runs", status="succeeded") == 1 + value(
        before, "rnnlab_runs", status="succeeded"
    )
    assert value(after, "rnnlab_queue_length") == 0
    diff = lambda name, **kw: value(after, name, **kw) - value(before, name, **kw)  # noqa: E731
    assert diff("rnnlab_epochs_trained_total", model="lstm") == 7
    assert diff("rnnlab_epoch_duration_seconds_count", model="lstm") == 7
    assert diff("rnnlab_epoch_duration_seconds_sum", model="lstm") > 0
    assert diff("rnnlab_run_duration_seconds_count", model="lstm", status="succeeded") == 1
    assert (
        value(after, "rnnlab_http_requests_total", method="POST", route="/runs", status="202") >= 1
    )
    # Requests are counted by route template, not by raw path.
    assert (
        value(
            after, "rnnlab_http_requests_total", method="GET", route="/runs/{run_id}", status="200"
        )
        >= 1
    )
    assert not any(run_id in dict(labels).get("route", "") for _, labels in after)

    body = {"run_id": run_id, "sequences": [[[0.5, 1], [0.2, 1]]]}
    assert client.post("/predict", json=body).status_code == 200
    last = scrape(client)
    assert value(last, "rnnlab_predict_duration_seconds_count") == 1 + value(
        after, "rnnlab_predict_duration_seconds_count"
    )
