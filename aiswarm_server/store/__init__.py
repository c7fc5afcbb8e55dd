"""Stores: where the broker's state lives. Pick one by settings or URL; backends are imported lazily."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from aiswarm_server.config import BrokerSettings
from aiswarm_server.store.base import AgentPoll, ClaimResult, Store, StoreStats

__all__ = ["AgentPoll", "ClaimResult", "Store", "StoreStats", "open_store"]


def open_store(where: BrokerSettings | Path | str, durability: Literal["normal", "full"] = "normal") -> Store:
    """The store the broker keeps its state in (not opened yet: call ``await store.open()``).

    ``where`` is the broker's settings (PostgreSQL when ``database_url`` is set, else the SQLite file in the home,
    with the settings' durability), a ``postgresql://`` URL, or the path of a SQLite file (the embedded default,
    owned by this process). asyncpg is imported only for PostgreSQL.
    """
    if isinstance(where, BrokerSettings):
        if where.database_url is None:
            where, durability = where.database_path, where.durability
        else:
            where = where.database_url
    if isinstance(where, str):
        if not where.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                f"{where.split('://', 1)[0]!r} is not a store this broker knows: pass a postgresql:// URL or a "
                "SQLite file path"
            )
        from aiswarm_server.store.postgres import PostgresStore

        return PostgresStore(where)
    from aiswarm_server.store.sqlite import SqliteStore

    return SqliteStore(where, durability)
