"""Stores: where the broker's state lives. Pick one by URL; backends are imported lazily."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from aiswarm_server.store.base import AgentPoll, ClaimResult, Store, StoreStats

__all__ = ["AgentPoll", "ClaimResult", "Store", "StoreStats", "open_store"]


def open_store(path: Path, durability: Literal["normal", "full"] = "normal") -> Store:
    """The embedded default: a SQLite file owned by this process."""
    from aiswarm_server.store.sqlite import SqliteStore

    return SqliteStore(path, durability)
