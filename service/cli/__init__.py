"""The `rnnlab` command: serve (API + local workers), worker, migrate; train, predict, export
and runs watch."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli import server, train, watch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rnnlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="start the API and its local worker processes")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=server.serve)
    p = sub.add_parser("worker", help="run a worker alone against the same database")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.set_defaults(func=server.worker)
    p = sub.add_parser("migrate", help="upgrade the database schema (default: to head)")
    p.add_argument("revision", nargs="?", default="head", help="head, base, or a revision id")
    p.set_defaults(func=server.migrate)
    p = sub.add_parser(
        "train",
        help="train in the foreground, no server (the options and defaults of POST /runs)",
        description="Train a network here, with a progress bar; Ctrl+C stops at the end of "
        "the epoch and still writes what was asked. Exit status: 0 trained, 1 failed, "
        "2 invalid options, 130 stopped early.",
    )
    train.add_train_options(p)
    p.set_defaults(func=train.train)
    p = sub.add_parser(
        "predict",
        help="outputs for sequences (JSON on stdin or --input) from a checkpoint file",
        description='Reads {"sequences": [[[value, marker], ...], ...]} (or the bare list) and '
        'writes {"outputs": [[...], ...]}, one output per step: the numbers POST /predict gives.',
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="safetensors file of a run")
    p.add_argument("--input", type=Path, help="read the sequences here instead of stdin")
    p.set_defaults(func=train.predict)
    p = sub.add_parser(
        "export",
        help="write a checkpoint file's network as an ONNX model",
        description="Writes the ONNX model GET /runs/{id}/model.onnx serves (opset 17; input x "
        "[batch, time, 2], output y [batch, time, 1]) for a checkpoint file of rnnlab train "
        "or GET /runs/{id}/checkpoint. Exit status: 0 written, 2 unreadable checkpoint or output.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="safetensors file of a run")
    p.add_argument("--onnx", type=Path, required=True, help="write the ONNX model here")
    p.set_defaults(func=train.export)
    p = sub.add_parser("runs", help="runs on a server")
    runs_sub = p.add_subparsers(dest="runs_command", required=True)
    p = runs_sub.add_parser(
        "watch",
        help="follow a run's progress live; exit 0 if it succeeds, 1 if not",
    )
    p.add_argument("run_id")
    p.add_argument("--server", default="http://127.0.0.1:8000", help="(default: %(default)s)")
    p.add_argument(
        "--api-key", help="bearer key for a server with keys (default: RNNLAB_API_KEY's)"
    )
    p.set_defaults(func=watch.watch)
    args = parser.parse_args(argv)
    return args.func(args)
