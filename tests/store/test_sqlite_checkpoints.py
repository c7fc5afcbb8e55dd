"""The SQLite store's own checkpoints: with transactions on the loop, automatic checkpoints are off and a
background thread copies the WAL back into the database file."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from aiswarm_server.models import NewTask
from aiswarm_server.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio


async def test_the_wal_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "aiswarm.db"
    store = SqliteStore(path, checkpoint_seconds=0.05)
    await store.open()
    try:
        assert store.inline
        size_before = path.stat().st_size
        await store.create_tasks([NewTask(title=f"t{i}", prompt="x" * 2000) for i in range(200)], time.time())
        for _ in range(200):  # polling a file's size: there is no event to wait on
            if path.stat().st_size > size_before:
                break
            await asyncio.sleep(0.05)
        # The rows reached the database file itself, not only the WAL, while the store stayed open.
        assert path.stat().st_size > size_before + 200 * 2000
        with contextlib.closing(sqlite3.connect(path)) as other:  # another reader sees every committed task
            assert other.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 200
    finally:
        await store.close()
    assert not Path(f"{path}-wal").exists()  # the last connection to close checkpoints and removes it


async def test_full_durability_keeps_transactions_off_the_loop(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "aiswarm.db", "full")
    await store.open()
    try:
        assert not store.inline
        created = await store.create_tasks([NewTask(title="t", prompt="p")], time.time())
        task = await store.get_task(created.created[0].id)
        assert task is not None and task.title == "t"
    finally:
        await store.close()
