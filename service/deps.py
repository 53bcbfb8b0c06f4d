"""FastAPI dependencies: settings, sessions, the model cache, the queue."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.db import Database
from service.predict.inference import ModelCache
from service.queue.backend import Queue
from service.settings import Settings


# The trivial getters are async: a sync dependency costs a thread-pool hop per request.
async def get_db(request: Request) -> Database:
    return request.app.state.db


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """A read session. Routes that write open `db.writing()` themselves, so the commit
    happens before the response is sent."""
    with request.app.state.db.reading() as session:
        yield session


async def get_cache(request: Request) -> ModelCache:
    return request.app.state.model_cache


async def get_queue(request: Request) -> Queue:
    return request.app.state.queue


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CacheDep = Annotated[ModelCache, Depends(get_cache)]
DbDep = Annotated[Database, Depends(get_db)]
QueueDep = Annotated[Queue, Depends(get_queue)]
