"""All configuration, from RNNLAB_* environment variables (nothing else reads os.environ)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_workers() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RNNLAB_", extra="ignore")

    data_dir: Path = Path("./data")
    database_url: str = ""  # default: sqlite file <data_dir>/rnnlab.db
    workers: int = Field(default_factory=_default_workers, ge=0)  # 0: API only, no local workers
    # Where runs go: "local" (worker processes of `rnnlab serve` / `rnnlab worker` polling the
    # database) or "celery" (ids sent through RNNLAB_BROKER_URL to `rnnlab worker`s anywhere).
    queue: Literal["local", "celery"] = "local"
    broker_url: str = "redis://127.0.0.1:6379/0"
    # Redis redelivers an unacknowledged task after this long: longer than any run may take.
    celery_visibility_timeout_s: int = Field(default=7 * 24 * 3600, ge=60)
    # Threads of rnnlab's own work in each worker (the fused kernels' member groups, the torch
    # path's row split, validation beside training; torch's own team stays at one thread);
    # 0 spreads the cores evenly over the workers.
    threads_per_worker: int = Field(default=0, ge=0)
    # How runs train (models.paths): "auto" takes the path models.chooser predicts faster for
    # the run's shape on this machine; "fused" (rnnlab's compiled kernels, CPU only) or
    # "torch" (torch's own recurrent layers) forces one.
    train_path: Literal["auto", "fused", "torch"] = "auto"
    # Tests only: while this file exists, a worker (or `rnnlab train`) holds its run at each
    # epoch boundary once the run has reported as many epochs as the file says (empty: 2),
    # heartbeats going on, until the file is removed, the run is cancelled or the worker is
    # told to stop; meanwhile "<file>.held" names the epoch (execution.hold). Tests interrupt
    # runs there whatever the kernels' speed (tests/support/app.py: hold_runs).
    hold_file: Path | None = None

    # Run lifecycle.
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    heartbeat_timeout_s: float = Field(default=60.0, gt=0)  # a running run older than this is lost
    reap_interval_s: float = Field(default=10.0, gt=0)
    max_requeues: int = Field(default=3, ge=0)  # lost-worker re-queues before a run is failed
    poll_interval_s: float = Field(default=0.25, gt=0)  # idle worker's wait between claims
    shutdown_grace_s: float = Field(default=30.0, gt=0)

    # Input limits (the API refuses larger requests with 422; service.limits says what each
    # bounds, where it is checked and how the schema publishes it).
    max_epochs: int = Field(default=100_000, ge=1)
    max_hidden_size: int = Field(default=256, ge=1)
    max_batch_size: int = Field(default=10_000, ge=1)
    max_n_sequences: int = Field(default=10_000, ge=1)
    max_seq_len: int = Field(default=1_000_000, ge=1)
    max_data_steps: int = Field(default=10_000_000, ge=1)  # n_sequences × seq_len per split
    # A run's activation memory (limits.train_activations): a worker's training memory.
    max_train_activations: int = Field(default=20_000_000, ge=1)
    max_predict_steps: int = Field(default=1_000_000, ge=1)  # all sequences of one request
    max_predict_sequences: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # POST /runs answers 429 (Retry-After) while this many runs are already queued.
    max_queued: int = Field(default=500, ge=1)
    max_sweep_runs: int = Field(default=256, ge=1)  # runs (grid combinations) of one sweep
    queue_retry_after_s: int = Field(default=30, ge=1)
    model_cache_size: int = Field(default=16, ge=1)
    events_poll_s: float = Field(default=0.25, gt=0)  # how often a /events stream looks

    # Access: when any key is set, every request but the health checks and the docs needs
    # `Authorization: Bearer <key>`. RNNLAB_API_KEYS is comma-separated; RNNLAB_API_KEY is one.
    api_keys: str = Field(default="", repr=False)
    api_key: str = Field(default="", repr=False)
    # CORS: off unless origins are listed (comma-separated, e.g. https://lab.example.org).
    cors_origins: str = ""

    log_level: str = "info"
    # Prometheus' multiprocess files of the API and its workers (default: <data dir>/metrics).
    metrics_dir: Path | None = None

    @property
    def metrics_path(self) -> Path:
        return self.metrics_dir or self.data_dir / "metrics"

    @model_validator(mode="after")
    def _fill_database_url(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'rnnlab.db').resolve()}"
        return self

    @model_validator(mode="after")
    def _check_limits_admit_the_defaults(self) -> Settings:
        # A run that leaves every field at its default must be accepted: the schema publishes
        # these limits beside the defaults, and a default beyond its own maximum is a lie.
        from models.training import TrainConfig
        from service.limits import config_sizes

        needs = config_sizes(TrainConfig())
        low = [
            f"RNNLAB_{k.upper()}={getattr(self, k)} (needs {v})"
            for k, v in needs.items()
            if getattr(self, k) < v
        ]
        if low:
            raise ValueError(
                "limits below what a run with default fields needs, which every server must "
                "accept: " + ", ".join(low)
            )
        return self

    @model_validator(mode="after")
    def _check_heartbeats(self) -> Settings:
        # A live run must beat several times within the timeout, or it would look lost.
        if self.heartbeat_interval_s * 3 > self.heartbeat_timeout_s:
            raise ValueError(
                "RNNLAB_HEARTBEAT_TIMEOUT_S must be at least 3 × RNNLAB_HEARTBEAT_INTERVAL_S "
                f"(got {self.heartbeat_timeout_s} and {self.heartbeat_interval_s})"
            )
        return self

    @property
    def keys(self) -> list[str]:
        """The accepted API keys; empty: the API is open."""
        keys = [k.strip() for k in self.api_keys.split(",")] + [self.api_key.strip()]
        return [k for k in dict.fromkeys(keys) if k]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def worker_threads(self) -> int:
        """Threads each worker runs rnnlab's own work in (RNNLAB_THREADS_PER_WORKER, else its
        share of the cores); torch's own thread team stays at one."""
        if self.threads_per_worker:
            return self.threads_per_worker
        return max(1, (os.cpu_count() or 1) // max(1, self.workers))


def get_settings() -> Settings:
    """Read the settings from the environment now (tests change it between apps)."""
    return Settings()
