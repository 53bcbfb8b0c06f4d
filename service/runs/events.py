"""A run's live progress as Server-Sent Events, read from the same rows as /losses.

Each poll opens a read session, reads the run and its epochs past the last one sent, and
closes it again; between polls a stream holds no connection and no thread (the stream is an
async generator; the read itself runs briefly in the thread pool).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from fastapi.sse import ServerSentEvent

from service.db import Database
from service.runs import store as runs
from service.schemas import RunRead
from service.tables import ENDED, Run


@dataclass(frozen=True)
class Snapshot:
    run: RunRead
    epochs: list[tuple[int, float, float]]  # (epoch, train_loss, valid_loss) after the cursor


def read_snapshot(db: Database, run_id: str, after_epoch: int) -> Snapshot | None:
    """The run and its epochs after `after_epoch`, in one read transaction (None: gone)."""
    with db.reading() as session:
        run = session.get(Run, run_id)
        if run is None:
            return None
        return Snapshot(runs.to_read(run), runs.epoch_losses(session, run_id, after_epoch))


def parse_last_event_id(value: str | None) -> int:
    """The epoch a reconnecting client saw last; anything but a non-negative integer: none."""
    if value is None or not value.strip().isdigit():
        return 0
    return int(value.strip())


async def run_events(
    db: Database, run_id: str, *, last_event_id: str | None, poll_s: float
) -> AsyncIterator[ServerSentEvent]:
    """`status` at the start and at every change (status or attempt), `epoch` per epoch
    (id: the epoch number), until the run has ended and everything was sent.

    A re-queued run restarts at epoch 1 under a new attempt: every epoch event carries its
    attempt, the `status` event of a new attempt comes before its first epoch (unless the
    attempt had already ended: then its status comes last, as always), and the epoch cursor
    starts again from 0.
    """
    sent_epoch = parse_last_event_id(last_event_id)
    seen: tuple[str, int] | None = None
    while True:
        snap = await anyio.to_thread.run_sync(read_snapshot, db, run_id, sent_epoch)
        if snap is None:  # deleted while watched
            return
        state = (snap.run.status.value, snap.run.attempt)
        new_attempt = seen is not None and state[1] != seen[1]
        if new_attempt:
            sent_epoch = 0  # a new attempt: its epochs start again from 1
            snap = await anyio.to_thread.run_sync(read_snapshot, db, run_id, 0)
            if snap is None:
                return
            state = (snap.run.status.value, snap.run.attempt)
        ended = snap.run.status in ENDED
        status = ServerSentEvent(event="status", data=snap.run.model_dump(mode="json"))
        # A change is announced before the epochs it starts; an ended run's status only
        # last, so that a client may stop at the first ended status it sees.
        if state != seen and not ended:
            yield status
        seen = state
        for epoch, train_loss, valid_loss in snap.epochs:
            yield ServerSentEvent(
                event="epoch",
                id=str(epoch),
                data={
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "valid_loss": valid_loss,
                    "attempt": snap.run.attempt,
                },
            )
            sent_epoch = epoch
        if ended:  # the final status is the last event
            yield status
            return
        await anyio.sleep(poll_s)
