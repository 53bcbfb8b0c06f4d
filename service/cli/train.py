"""`rnnlab train`, `rnnlab predict` and `rnnlab export`: the service's work in a terminal,
without a server.

`train` takes the options of `POST /runs`, generated from the same schema (`RunCreate`), with
the same defaults and the same validation (the schema, then this machine's limits from
`RNNLAB_*` settings), and trains in the foreground with a progress bar.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from service.problems import ProblemError
from service.schemas import DataSpec, PredictRequest, RunCreate

if TYPE_CHECKING:
    import torch

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def epoch_progress(console: Console) -> Progress:
    """The progress bar of `train` and `runs watch`: epoch, losses, time spent and left."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("epoch {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("train {task.fields[train]}  valid {task.fields[valid]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "yes", "no", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "yes", "1")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_options(parser: argparse.ArgumentParser, model: type[Any], dest_prefix: str) -> None:
    """One option per schema field: its type, choices and description from the schema."""
    for name, field in model.model_fields.items():
        if name == "data":
            continue
        annotation = field.annotation
        args = tuple(
            typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
            for a in typing.get_args(annotation)
        )
        kwargs: dict[str, Any] = {"dest": dest_prefix + name, "default": None}
        if typing.get_origin(annotation) is typing.Literal:
            kwargs.update(choices=list(args), metavar="{" + ",".join(args) + "}")
        elif typing.get_origin(annotation) is tuple:
            kwargs.update(type=float, nargs=len(args), metavar=("P",) * len(args))
        elif annotation is int or (
            typing.get_origin(annotation) in (typing.Union, types.UnionType) and int in args
        ):
            kwargs["type"] = int
        elif annotation is float:
            kwargs["type"] = float
        elif annotation is bool:
            kwargs.update(type=_boolean, metavar="{true,false}")
        kwargs.setdefault("metavar", name.upper())
        help_text = (field.description or "").replace("%", "%%")
        if field.is_required():
            kwargs["required"] = True
        else:
            default = field.get_default(call_default_factory=True)
            shown = "chosen and recorded" if default is None else default
            help_text = f"{help_text} (default: {shown})".strip()
        kwargs["help"] = help_text
        parser.add_argument(_option(name), **kwargs)


def add_train_options(parser: argparse.ArgumentParser) -> None:
    _field_options(parser, RunCreate, "run.")
    _field_options(parser, DataSpec, "data.")
    parser.add_argument("--checkpoint", type=Path, help="write the weights here (safetensors)")
    parser.add_argument("--plot", type=Path, help="write the loss plot here (.svg or .png)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /runs body the options describe (options not given are left to defaults)."""
    body: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if value is None:
            continue
        if dest.startswith("run."):
            body[dest[4:]] = value
        elif dest.startswith("data."):
            data[dest[5:]] = value
    if data:
        body["data"] = data
    return body


def _complain(console: Console, errors: list[dict[str, Any]]) -> int:
    for e in errors:
        loc = [str(x) for x in e.get("loc", []) if x != "body"]
        where = _option(loc[-1]) if loc else "options"
        console.print(f"[red]error:[/red] {where}: {e.get('msg')}")
    return EXIT_USAGE


def train(args: argparse.Namespace) -> int:
    """Validate as POST /runs does, train in the foreground, report, write what was asked."""
    import torch

    import models
    from service import limits
    from service.queue.execution import checkpoint_bytes, hold
    from service.reports import plots
    from service.runs import config as run_config
    from service.settings import get_settings

    console = Console(stderr=True, soft_wrap=True)
    if args.plot is not None and args.plot.suffix not in (".svg", ".png"):
        return _complain(console, [{"loc": ["plot"], "msg": "must end in .svg or .png"}])
    try:
        spec = RunCreate.model_validate(run_spec(args))
        limits.check_run(spec, get_settings())
        cfg = run_config.resolve_config(spec)
    except ValidationError as e:
        return _complain(console, [dict(err) for err in e.errors()])
    except ProblemError as e:
        return _complain(console, list(e.errors or [{"msg": e.detail}]))

    stop = {"asked": False}

    def on_sigint(signum: int, frame: object) -> None:
        if stop["asked"]:  # a second Ctrl+C: give up at once
            raise KeyboardInterrupt
        stop["asked"] = True
        console.print("[yellow]stopping at the end of this epoch (Ctrl+C again to abort)[/yellow]")

    hold_file = get_settings().hold_file
    reported = [0]

    def should_stop() -> bool:
        if hold_file is not None:  # tests only (RNNLAB_HOLD_FILE)
            hold(hold_file, reported[0], lambda: stop["asked"], lambda: False)
        return stop["asked"]

    previous = signal.signal(signal.SIGINT, on_sigint)
    # The kernels' sequence groups on every core, as a worker does; torch's own thread pool
    # would only compete with them.
    models.kernels.set_threads(torch.get_num_threads())
    torch.set_num_threads(1)
    run = models.prepare(cfg)
    progress = epoch_progress(console)
    start = time.perf_counter()
    try:
        with progress:
            task = progress.add_task(
                f"{cfg.model} H={cfg.hidden_size} K={cfg.population}",
                total=cfg.epochs,
                train="-",
                valid="-",
            )

            def on_report(r: models.EpochReport) -> None:
                reported[0] = r.epoch
                progress.update(
                    task,
                    completed=r.epoch,
                    train=f"{r.train_loss:.3g}",
                    valid=f"{r.valid_loss:.3g}",
                )

            result = models.fit(run, on_report=on_report, should_stop=should_stop)
    except FloatingPointError as e:
        console.print(f"[red]failed:[/red] {e}")
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGINT, previous)
    seconds = time.perf_counter() - start
    history = result.history
    if history.epochs_completed == 0:
        console.print("[yellow]stopped before the first epoch ended: nothing to write[/yellow]")
        return EXIT_INTERRUPTED
    model, metrics = result.model, result.metrics  # interrupted: the best member so far
    report: dict[str, Any] = {
        "config": run_config.config_to_json(cfg),
        "epochs_completed": history.epochs_completed,
        "stopped": history.stopped,
        "seconds": round(seconds, 3),
        "kept_member": result.kept,
        "metrics": {
            "train_loss": history.train_loss[-1],
            "valid_loss": history.valid_loss[-1],
            **metrics.to_dict(),
        },
    }
    if args.checkpoint is not None:
        args.checkpoint.write_bytes(checkpoint_bytes(model, kind=cfg.model, run_id="cli"))
    if args.plot is not None:
        title = plots.losses_title(
            cfg.model,
            cfg.hidden_size,
            "(rnnlab train)",
            "stopped" if history.stopped else "finished",
            history.epochs_completed,
            cfg.epochs,
        )
        epochs = list(range(1, history.epochs_completed + 1))
        fmt = args.plot.suffix[1:]
        data = plots.draw_losses(epochs, history.train_loss, history.valid_loss, title, fmt)
        args.plot.write_bytes(data)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        m = report["metrics"]
        out = Console(soft_wrap=True)
        out.print(
            f"{'stopped' if history.stopped else 'trained'} {history.epochs_completed} epochs "
            f"in {seconds:.1f} s (seed {cfg.seed}, kept member {report['kept_member']})"
        )
        out.print(
            f"test MSE {m['test_mse']:.4g}, zero predictor {m['baseline_mse']:.4g}: "
            f"error ratio {m['error_ratio']:.2%} → {m['verdict']}"
        )
        if m["marker_error_ratio"] is not None:
            out.print(f"marker-1 steps: error ratio {m['marker_error_ratio']:.2%}")
        for label, path in (("weights", args.checkpoint), ("loss plot", args.plot)):
            if path is not None:
                out.print(f"{label}: {path}")
    return EXIT_INTERRUPTED if history.stopped else EXIT_OK


def predict(args: argparse.Namespace) -> int:
    """Outputs for sequences read as JSON, from a checkpoint file: the numbers /predict gives."""
    from service.predict.inference import predict_outputs

    console = Console(stderr=True, soft_wrap=True)
    try:
        raw = args.input.read_text() if args.input else sys.stdin.read()
        payload = json.loads(raw)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        console.print(f"[red]error:[/red] input is not JSON: {e}")
        return EXIT_USAGE
    sequences = payload.get("sequences") if isinstance(payload, dict) else payload
    try:
        req = PredictRequest.model_validate({"run_id": "cli", "sequences": sequences})
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            console.print(f"[red]error:[/red] {loc}: {err['msg']}")
        return EXIT_USAGE
    model = _load_checkpoint(args.checkpoint, console)
    if model is None:
        return EXIT_USAGE
    try:
        outputs = predict_outputs(model, req.sequences)
    except ProblemError as e:  # non-finite outputs: the 422 /predict would answer
        for problem in e.errors or [{"msg": e.detail}]:
            console.print(f"[red]error:[/red] {problem['msg']}")
        return EXIT_USAGE
    sys.stdout.write(json.dumps({"outputs": outputs}) + "\n")
    return EXIT_OK


def _load_checkpoint(path: Path, console: Console) -> torch.nn.Module | None:
    """The network in a checkpoint file (`rnnlab train --checkpoint`, GET /runs/{id}/checkpoint),
    or None once the reason it cannot be read was printed."""
    from safetensors import safe_open

    from service.predict.inference import load_model

    try:
        data = path.read_bytes()
    except OSError as e:
        console.print(f"[red]error:[/red] cannot read {path}: {e.strerror or e}")
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_model(data, kind=meta["model"], hidden_size=int(meta["n_hidden"]))
    except Exception as e:  # safetensors' own errors, a missing key, a shape mismatch
        console.print(f"[red]error:[/red] {path}: not an rnnlab checkpoint ({e})")
        return None


def export(args: argparse.Namespace) -> int:
    """An ONNX file from a checkpoint file: the bytes GET /runs/{id}/model.onnx gives."""
    from models.export import onnx_bytes

    console = Console(stderr=True, soft_wrap=True)
    model = _load_checkpoint(args.checkpoint, console)
    if model is None:
        return EXIT_USAGE
    try:
        args.onnx.write_bytes(onnx_bytes(model))
    except OSError as e:
        console.print(f"[red]error:[/red] cannot write {args.onnx}: {e.strerror or e}")
        return EXIT_USAGE
    Console(soft_wrap=True).print(f"ONNX model: {args.onnx}")
    return EXIT_OK
