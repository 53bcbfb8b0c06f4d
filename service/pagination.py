"""Keyset pagination, newest first, for every list of the API (runs, sweeps).

A cursor is a keyset position: the created_at (µs since the epoch, 8 bytes) and id (16 bytes)
of the last row on a page, base64url without padding. Any string of this pattern is a
position, so it is never refused: an unknown one gives the rows older than it (maybe none).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

MAX_LIST_LIMIT = 100
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{32}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_US = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)

Row = TypeVar("Row")


def encode_cursor(created_at: datetime, ident: str) -> str:
    """The cursor of a row: its keyset position."""
    us = (created_at - _EPOCH) // timedelta(microseconds=1)
    raw = us.to_bytes(8, "big") + bytes.fromhex(ident)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of a cursor that matches CURSOR_PATTERN."""
    raw = base64.urlsafe_b64decode(cursor)  # 32 characters (the pattern): exactly 24 bytes
    us = min(int.from_bytes(raw[:8], "big"), _MAX_US)
    return _EPOCH + timedelta(microseconds=us), raw[8:].hex()


def page(
    session: Session,
    query: Select[Row],
    table: Any,
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[Row], str | None]:
    """One page of `query`'s rows of `table` (a mapped class with created_at and a hex id),
    newest first, after `cursor`; and the cursor of the next page (None on the last)."""
    if cursor:
        created, ident = decode_cursor(cursor)
        query = query.where(
            or_(table.created_at < created, and_(table.created_at == created, table.id < ident))
        )
    order = (table.created_at.desc(), table.id.desc())
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    last: Any = rows[limit - 1] if len(rows) > limit else None
    return rows[:limit], encode_cursor(last.created_at, last.id) if last else None
