"""GET /runs/{id}/events: Server-Sent Events of a run's status and epochs."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.queue import lifecycle
from service.runs.events import parse_last_event_id
from tests.support.app import run_body, train_now, wait_for


def parse(lines: list[str]) -> list[dict[str, Any]]:
    """SSE lines → [{"event", "data", "id"}], comments dropped."""
    events, current = [], {}
    for line in lines:
        if not line:
            if current:
                events.append(current)
            current = {}
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(": ")
            current[field] = json.loads(value) if field == "data" else value
    if current:
        events.append(current)
    return events


def stream(
    client: TestClient, run_id: str, out: list[dict[str, Any]] | None = None, **headers: str
) -> list[dict[str, Any]]:
    """Read the stream to its end; each event is appended to `out` as soon as it is whole."""
    out = [] if out is None else out
    with client.stream("GET", f"/runs/{run_id}/events", headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        block: list[str] = []
        for line in r.iter_lines():
            block.append(line)
            if not line:
                out.extend(parse(block))
                block = []
        out.extend(parse(block))
    return out


def follow(client: TestClient, run_id: str) -> tuple[threading.Thread, list[dict[str, Any]]]:
    got: list[dict[str, Any]] = []
    reader = threading.Thread(target=stream, args=(client, run_id, got), daemon=True)
    reader.start()
    wait_for(lambda: {"n": len(got)}, lambda v: v["n"] >= 1)
    return reader, got


def summary(events: list[dict[str, Any]]) -> list[tuple]:
    return [
        ("epoch", e["data"]["epoch"])
        if e["event"] == "epoch"
        else ("status", e["data"]["status"], e["data"]["attempt"])
        for e in events
    ]


def test_events_follow_a_live_run_to_its_end(client: TestClient) -> None:
    run_id = client.post("/runs", json=run_body(epochs=60)).json()["id"]
    reader, got = follow(client, run_id)  # it has seen the run queued
    train_now(client)
    reader.join(30)
    assert not reader.is_alive(), "the stream did not end after the run's final status"
    s = summary(got)
    assert s[0] == ("status", "queued", 0)
    assert s[-1] == ("status", "succeeded", 1)
    assert [x for x in s if x[0] == "epoch"] == [("epoch", e) for e in range(1, 61)]
    assert [e["id"] for e in got if e["event"] == "epoch"] == [str(e) for e in range(1, 61)]
    # The epochs are the rows /losses reads.
    losses = client.get(f"/runs/{run_id}/losses").json()
    assert [e["data"]["train_loss"] for e in got if e["event"] == "epoch"] == losses["train_loss"]
    assert [e["data"]["valid_loss"] for e in got if e["event"] == "epoch"] == losses["valid_loss"]
    # The final status event is the run as GET /runs/{id} shows it.
    assert got[-1]["data"] == client.get(f"/runs/{run_id}").json()


def test_reconnecting_with_last_event_id_gets_only_the_missed_epochs(client: TestClient) -> None:
    run_id = client.post("/runs", json=run_body(epochs=8)).json()["id"]
    train_now(client)
    s = summary(stream(client, run_id, **{"Last-Event-ID": "5"}))
    assert s == [("epoch", 6), ("epoch", 7), ("epoch", 8), ("status", "succeeded", 1)]
    assert summary(stream(client, run_id, **{"Last-Event-ID": "8"})) == [("status", "succeeded", 1)]
    assert len(summary(stream(client, run_id, **{"Last-Event-ID": "junk"}))) == 9


def test_a_requeued_run_is_announced_before_its_new_epochs(client: TestClient) -> None:
    db = client.app.state.db
    run_id = client.post("/runs", json=run_body(epochs=40)).json()["id"]
    claim = lifecycle.claim(db, worker_id="test/1/gone")
    assert claim is not None
    for epoch in (1, 2, 3):
        lifecycle.record_epoch(db, claim, epoch, 1.0, 1.0)
    reader, got = follow(client, run_id)
    wait_for(lambda: {"n": len(got)}, lambda v: v["n"] >= 4)  # status + 3 epochs
    lifecycle.lose_worker_runs(db, "test/1/gone", max_requeues=3)  # its worker died
    wait_for(lambda: {"n": len(got)}, lambda v: v["n"] >= 5)  # saw it queued
    train_now(client)
    reader.join(30)
    assert not reader.is_alive()
    s = summary(got)
    assert s[:5] == [
        ("status", "running", 1),
        ("epoch", 1),
        ("epoch", 2),
        ("epoch", 3),
        ("status", "queued", 1),
    ]
    # The new attempt is announced before its first epoch as running, unless the whole attempt
    # fit between two polls of the stream: an ended status only ever comes last. Either way
    # its epochs say which attempt they belong to.
    if s[5][0] == "status":
        assert s[5] == ("status", "running", 2)
        s = s[:5] + s[6:]
    assert s[5:] == [("epoch", e) for e in range(1, 41)] + [("status", "succeeded", 2)]
    attempts = [e["data"]["attempt"] for e in got if e["event"] == "epoch"]
    assert attempts == [1, 1, 1] + [2] * 40


def test_events_of_an_unknown_run_is_404(client: TestClient) -> None:
    r = client.get("/runs/nope/events")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("header", "expected"), [(None, 0), ("7", 7), (" 12 ", 12), ("-3", 0), ("x", 0), ("", 0)]
)
def test_last_event_id_parsing(header: str | None, expected: int) -> None:
    assert parse_last_event_id(header) == expected
