"""`rnnlab runs watch`: follow a run on a server through its event stream."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from service.cli.train import EXIT_FAILED, EXIT_OK, EXIT_USAGE, epoch_progress


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str, str | None]]:
    """(event, data, id) from text/event-stream lines; comments skipped."""
    data: list[str]
    event, data, ident = "message", [], None
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data), ident
            event, data, ident = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                ident = value


def watch(args: argparse.Namespace) -> int:
    """Follow a run on a server through its event stream; exit with its final status."""
    import httpx

    from service.settings import get_settings

    console = Console(stderr=True, soft_wrap=True)
    base = args.server.rstrip("/")
    keys = get_settings().keys
    key = args.api_key or (keys[0] if keys else None)
    last_id: str | None = None
    final: dict[str, Any] | None = None
    progress = epoch_progress(console)
    task = None
    failures = 0
    with progress, httpx.Client(timeout=httpx.Timeout(30.0, read=60.0)) as http:
        while final is None:
            headers = {"Accept": "text/event-stream"}
            if key:
                headers["Authorization"] = f"Bearer {key}"
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                with http.stream("GET", f"{base}/runs/{args.run_id}/events", headers=headers) as r:
                    if r.status_code != 200:
                        r.read()
                        try:
                            detail = r.json().get("detail", r.text)
                        except ValueError:
                            detail = r.text
                        console.print(f"[red]error:[/red] {r.status_code}: {detail}")
                        return EXIT_USAGE if r.status_code in (401, 403, 404) else EXIT_FAILED
                    failures = 0
                    for event, data, ident in _sse_events(r.iter_lines()):
                        body = json.loads(data)
                        if event == "status":
                            total = body["config"]["epochs"]
                            label = f"{body['model']} {args.run_id[:8]} {body['status']}"
                            if task is None:
                                task = progress.add_task(label, total=total, train="-", valid="-")
                            progress.update(task, description=label)
                            if body["status"] == "running" and body["epochs_completed"] == 0:
                                progress.update(task, completed=0)  # (re)started
                            if body["status"] in ("succeeded", "failed", "cancelled"):
                                final = body
                        elif event == "epoch" and task is not None:
                            last_id = ident
                            progress.update(
                                task,
                                completed=body["epoch"],
                                train=f"{body['train_loss']:.3g}",
                                valid=f"{body['valid_loss']:.3g}",
                            )
            except httpx.TransportError as e:
                failures += 1
                if failures > 5:
                    console.print(f"[red]error:[/red] cannot reach {base}: {e}")
                    return EXIT_FAILED
                time.sleep(min(5.0, 0.5 * failures))
    status = final["status"]
    m = final["metrics"]
    out = Console(soft_wrap=True)
    out.print(f"run {args.run_id}: {status} after {final['epochs_completed']} epochs")
    if status == "succeeded" and m.get("error_ratio") is not None:
        out.print(f"error ratio {m['error_ratio']:.2%} → {m['verdict']}")
    if final.get("error"):
        out.print(f"error: {final['error']}")
    return EXIT_OK if status == "succeeded" else EXIT_FAILED
