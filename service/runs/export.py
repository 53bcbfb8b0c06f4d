"""Succeeded runs' models as ONNX files (`GET /runs/{id}/model.onnx`), built once per checkpoint.

The file is `models.export.onnx_bytes` of the run's checkpoint: deterministic from the
weights, so it is cached by the checkpoint's digest (bounded in bytes, least recently used
out first). A deleted run's entry needs no forgetting: the route reads the checkpoint (and
answers 404 without one) before it looks in the cache, and an entry can only ever be the
right answer to its key.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from sqlalchemy.orm import Session

from service.predict.inference import load_model
from service.runs.store import get_run_or_404, read_checkpoint

# ONNX files kept by the API process: the largest a server allows by default (an LSTM of
# hidden size 256) is about 1 MiB, a default run's under 1 KiB.
CACHE_BYTES = 32 * 2**20


class OnnxCache:
    """ONNX files by checkpoint digest, at most `max_bytes` of them; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._files: OrderedDict[tuple[str, int, str], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.builds = 0  # how many files were built (not found here)

    def get(self, data: bytes, *, kind: str, hidden_size: int) -> bytes:
        """The ONNX file of a `kind` network's safetensors checkpoint `data`."""
        from models.export import onnx_bytes  # onnx is imported by the first export only

        key = (kind, hidden_size, hashlib.sha256(data).hexdigest())
        with self._lock:
            hit = self._files.get(key)
            if hit is not None:
                self._files.move_to_end(key)
                return hit
        onnx = onnx_bytes(load_model(data, kind=kind, hidden_size=hidden_size))
        with self._lock:
            self.builds += 1
            if key not in self._files:
                self._files[key] = onnx
                self._bytes += len(onnx)
            while self._bytes > self.max_bytes and len(self._files) > 1:
                self._bytes -= len(self._files.popitem(last=False)[1])
        return onnx


cache = OnnxCache(CACHE_BYTES)


def run_onnx(*, session: Session, run_id: str) -> bytes:
    """A succeeded run's model as an ONNX file; 404 for an unknown run, 409 until it succeeded."""
    data = read_checkpoint(session=session, run_id=run_id)
    run = get_run_or_404(session=session, run_id=run_id)
    return cache.get(data, kind=run.model, hidden_size=int(run.config["hidden_size"]))
