"""`rnnlab train`, `rnnlab predict` and `rnnlab runs watch`, as a user runs them."""

from __future__ import annotations

import json
import signal
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load as load_safetensors

from tests.support.app import held_at, hold_runs, run_body, train_now, wait_for
from tests.support.processes import CLI, START_TIMEOUT, clean_env, serve

pytestmark = pytest.mark.subprocess

SMALL = ["--epochs", "4", "--seq-len", "60", "--n-sequences", "3", "--seed", "5"]


def rnnlab(*args: str, stdin: str | None = None, cwd: Path | None = None, timeout: float = 300):
    env = clean_env()
    return subprocess.run(
        [*CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def test_train_writes_checkpoint_plot_and_metrics(tmp_path: Path) -> None:
    ckpt, plot = tmp_path / "w.safetensors", tmp_path / "losses.svg"
    done = rnnlab("train", "--model", "lstm", *SMALL, "--population", "2", "--json",
                  "--checkpoint", str(ckpt), "--plot", str(plot))  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["epochs_completed"] == 4 and result["stopped"] is False
    assert result["config"]["seed"] == 5 and result["config"]["population"] == 2
    m = result["metrics"]
    assert m["error_ratio"] == m["test_mse"] / m["baseline_mse"]
    assert m["verdict"] in ("learned", "partly", "not learned")
    weights = load_safetensors(ckpt.read_bytes())
    assert set(weights) == {
        "lstm.weight_ih_l0",
        "lstm.weight_hh_l0",
        "lstm.bias_ih_l0",
        "lstm.bias_hh_l0",
        "fc.weight",
        "fc.bias",
    }
    text = " ".join(ET.fromstring(plot.read_bytes()).itertext())
    assert "LSTM, hidden size 2" in text and "4 of 4 epochs" in text


def test_train_matches_the_service(client: TestClient, tmp_path: Path) -> None:
    """Same options, same defaults: the CLI's run equals the API's run of the same body."""
    body = run_body(epochs=4, seed=5, data={"n_sequences": 3, "seq_len": 60})
    run_id = client.post("/runs", json=body).json()["id"]
    train_now(client)
    run = client.get(f"/runs/{run_id}").json()
    done = rnnlab("train", "--model", "lstm", *SMALL, "--population", "2", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["config"] == run["config"]
    assert result["metrics"] == run["metrics"]


def test_train_refuses_what_post_runs_refuses(tmp_path: Path) -> None:
    done = rnnlab("train", "--model", "lstm", "--epochs", "0")
    assert done.returncode == 2 and "--epochs" in done.stderr
    done = rnnlab("train", "--model", "lstm", "--population", "65")
    assert done.returncode == 2 and "--population" in done.stderr and "64" in done.stderr
    done = rnnlab("train", "--model", "gru")
    assert done.returncode == 2 and "invalid choice" in done.stderr
    done = rnnlab("train", "--model", "lstm", "--seq-len", "2000000")  # RNNLAB_MAX_SEQ_LEN
    assert done.returncode == 2 and "--seq-len" in done.stderr and "1000000" in done.stderr
    done = rnnlab("train", "--model", "lstm", "--plot", str(tmp_path / "p.jpg"))
    assert done.returncode == 2 and "--plot" in done.stderr


def test_ctrl_c_stops_at_an_epoch_and_still_writes(tmp_path: Path) -> None:
    ckpt, plot = tmp_path / "w.safetensors", tmp_path / "losses.png"
    # Held after its third epoch (RNNLAB_HOLD_FILE) until Ctrl+C: pressed mid-training,
    # however long the imports take and however fast the epochs are.
    hold = hold_runs(tmp_path, after=3)
    proc = subprocess.Popen(
        [*CLI, "train", "--model", "elman", "--epochs", "50", "--seq-len", "50",
         "--n-sequences", "3", "--json", "--checkpoint", str(ckpt), "--plot", str(plot)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=clean_env(RNNLAB_HOLD_FILE=str(hold)),
    )  # fmt: skip
    try:
        wait_for(lambda: held_at(tmp_path), lambda epoch: epoch is not None, START_TIMEOUT)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    assert "stopping at the end of this epoch" in err
    result = json.loads(out)
    assert result["stopped"] is True and result["epochs_completed"] == 3
    assert load_safetensors(ckpt.read_bytes())["l1.weight"].shape == (2, 2)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_equals_the_api(client: TestClient, tmp_path: Path) -> None:
    run_id = client.post("/runs", json=run_body(epochs=3)).json()["id"]
    train_now(client)
    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(client.get(f"/runs/{run_id}/checkpoint").content)
    sequences = [[[0.5, 1], [0.3, 0], [-0.2, 1], [0.9, -1], [0.4, 1]], [[0.1, 1]]]
    api = client.post("/predict", json={"run_id": run_id, "sequences": sequences}).json()
    done = rnnlab("predict", "--checkpoint", str(ckpt), stdin=json.dumps({"sequences": sequences}))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outputs"] == api["outputs"]
    (tmp_path / "in.json").write_text(json.dumps(sequences))
    done = rnnlab("predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "in.json"))
    assert json.loads(done.stdout)["outputs"] == api["outputs"]
    bad = rnnlab("predict", "--checkpoint", str(ckpt), stdin="[[[NaN, 1]]]")
    assert bad.returncode == 2 and "finite" in bad.stderr
    bad = rnnlab("predict", "--checkpoint", str(ckpt), stdin="{not json")
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    (tmp_path / "junk").write_bytes(b"junk")
    bad = rnnlab("predict", "--checkpoint", str(tmp_path / "junk"), stdin="[[[0, 1]]]")
    assert bad.returncode == 2 and "not an rnnlab checkpoint" in bad.stderr


def test_watch_follows_a_run_on_a_server(tmp_path: Path) -> None:
    with serve(tmp_path) as server:
        run_id = server.submit(epochs=200)
        url = server.url
        done = rnnlab("runs", "watch", run_id, "--server", url, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"run {run_id}: succeeded after 200 epochs" in done.stdout
        assert server.run(run_id)["status"] == "succeeded"
        hold_runs(tmp_path)  # the cancel finds it queued or held, never ended
        cancelled = server.submit(epochs=40)
        assert server.http.post(f"/runs/{cancelled}/cancel").status_code == 202
        done = rnnlab("runs", "watch", cancelled, "--server", url, timeout=120)
        assert done.returncode == 1 and "cancelled" in done.stdout
        done = rnnlab("runs", "watch", "nope", "--server", url, timeout=60)
        assert done.returncode == 2 and "404" in done.stderr
