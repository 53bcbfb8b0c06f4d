"""schemathesis against a live server's own /openapi.json: every phase, every check, seeded.

The server runs with API keys and small limits (published in its schema, so the fuzzer
respects them and the runs it starts train in a blink), one local worker, and one trained run
whose id /predict, the plots and the /v2 models are given, so those operations get past 404.
What must hold: no 5xx, every response as the schema says (status, headers, body, content
type), no schema-valid request rejected (but for the 422s, and the 400 of /v2's inference, that
the schema documents in words: see fuzz/hooks.py), invalid requests rejected, every error
problem+json (under /v2 the Open Inference Protocol's {"error": ...}, as the schema says), the
key required where the schema says, deleted runs gone (use_after_free), created runs readable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.processes import CLI, clean_env, serve

pytestmark = pytest.mark.subprocess

KEY = "fuzz-key"
SEED = 20261129
MAX_EXAMPLES = int(os.environ.get("RNNLAB_FUZZ_EXAMPLES", "25"))
# As small as a server may go: a run with every field at its default must still fit.
LIMITS = {
    "RNNLAB_MAX_EPOCHS": "300",
    "RNNLAB_MAX_HIDDEN_SIZE": "4",
    "RNNLAB_MAX_BATCH_SIZE": "8",
    "RNNLAB_MAX_N_SEQUENCES": "9",
    "RNNLAB_MAX_SEQ_LEN": "3000",
    "RNNLAB_MAX_DATA_STEPS": "27000",
    "RNNLAB_MAX_TRAIN_ACTIVATIONS": "72000",
    "RNNLAB_MAX_PREDICT_STEPS": "3000",
    "RNNLAB_MAX_PREDICT_SEQUENCES": "20",
    "RNNLAB_MAX_BODY_BYTES": "1048576",
    "RNNLAB_API_KEYS": KEY,
    # No local workers: the runs the fuzzer starts stay queued (cancel, delete, read them);
    # the one trained run comes from a `rnnlab worker --burst` before the fuzzing.
    "RNNLAB_WORKERS": "0",
}
HOOKS = Path(__file__).parent / "fuzz" / "hooks.py"


def config(run_id: str) -> str:
    return f"""
seed = {SEED}
workers = 1
request-timeout = 60
max-stream-events = 1  # a queued run's stream only ever sends its first status
hooks = "{HOOKS}"
headers = {{ Authorization = "Bearer {KEY}" }}

[generation]
max-examples = {MAX_EXAMPLES}
database = "none"

[phases.examples]
enabled = true
[phases.coverage]
enabled = true
[phases.fuzzing]
enabled = true
[phases.stateful]
enabled = true

[checks]
enabled = true
positive_data_acceptance.enabled = false

[[operations]]
include-operation-id = "read_events"
request-timeout = 5

[[operations]]
include-operation-id = "predict"
parameters = {{ "body.run_id" = "{run_id}" }}

[[operations]]
include-path-regex = "^/runs/[{{]run_id[}}]/plots/"
parameters = {{ "path.run_id" = "{run_id}" }}

[[operations]]
include-path-regex = "^/v2/models/"
parameters = {{ "path.run_id" = "{run_id}" }}

[[operations]]
include-path-regex = "compare"
parameters = {{ "query.runs" = "{run_id}" }}
"""


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    st = shutil.which("schemathesis", path=str(bin_dir))
    assert st, "schemathesis is a dev dependency: pip install -e .[dev]"
    with serve(tmp_path / "data", RNNLAB_LOG_LEVEL="error", **LIMITS) as server:
        url = server.url
        auth = {"Authorization": f"Bearer {KEY}"}
        body = {"model": "lstm", "epochs": 2, "population": 1, "seed": 1}
        body["data"] = {"n_sequences": 3, "seq_len": 40}
        run = httpx.post(f"{url}/runs", json=body, headers=auth).raise_for_status().json()
        env = clean_env(**LIMITS, RNNLAB_DATA_DIR=str(tmp_path / "data"))
        subprocess.run([*CLI, "worker", "--burst"], env=env, check=True)
        assert httpx.get(f"{url}/runs/{run['id']}", headers=auth).json()["status"] == "succeeded"
        n_ops = sum(len(item) for item in httpx.get(f"{url}/openapi.json").json()["paths"].values())
        (tmp_path / "schemathesis.toml").write_text(config(run["id"]))
        command = [st, "--config-file", str(tmp_path / "schemathesis.toml"), "--no-color", "run"]
        command += [f"{url}/openapi.json", "--report", "junit", "--report-dir", str(tmp_path)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-15000:]
    # It really ran every phase, on every operation.
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in out, out[-5000:]
    assert f"Selected: {n_ops}/{n_ops}" in out and f"Tested: {n_ops}" in out, out[-3000:]
