"""The database under stress: corrupt, written by a newer aiswarm, locked by another process, on a full disk,
read-only. The broker refuses with a message that says what is wrong, keeps serving reads where it can, and
never loses what it had committed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aiswarm_server.broker import Broker
from aiswarm_server.broker_client import BrokerCallError, BrokerClient
from aiswarm_server.config import BrokerSettings
from aiswarm_server.errors import StoreUnavailable
from aiswarm_server.models import Role, TaskRequest
from aiswarm_server.store import open_store
from aiswarm_server.store.sqlite import SqliteStore
from tests.broker_harness import BrokerProcess
from tests.conftest import PRIMARY
from tests.reliability.swarm import START_TIMEOUT, read_rows

pytestmark = pytest.mark.anyio

SEEDED = 5


async def seed_home(home: Path) -> BrokerSettings:
    """A home with tokens and five committed tasks, written in-process (no server start needed)."""
    settings = BrokerSettings(home=home)
    home.mkdir(parents=True, exist_ok=True)
    broker = Broker(open_store(settings.database_path), settings)
    await broker.start(sweep=False)
    try:
        await broker.tokens.ensure_local_token(home, Role.ADMIN)
        await broker.tokens.ensure_local_token(home, Role.PRIMARY)
        await broker.submit_tasks(
            PRIMARY, [TaskRequest(title=f"seed {i}", prompt="keep me") for i in range(SEEDED)]
        )
    finally:
        await broker.stop()
    return settings


def seeded_titles(database: Path) -> list[str]:
    return [r["title"] for r in read_rows(database, "SELECT title FROM tasks ORDER BY id")]


async def serve_until_exit(home: Path, timeout: float = 240) -> tuple[int, str]:
    """Run ``aiswarm serve`` on a broken home; it must exit on its own. Returns (exit code, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aiswarm_server",
        "serve",
        "--port",
        "0",
        env={**os.environ, "AISWARM_HOME": str(home)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, err.decode(errors="replace")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_serve_refuses_a_corrupt_a_newer_and_a_locked_database_with_a_clear_message(
    tmp_path: Path,
) -> None:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "aiswarm.db").write_bytes(b"this is not an sqlite database\n" * 200)

    newer = (await seed_home(tmp_path / "newer")).database_path
    with contextlib.closing(sqlite3.connect(newer)) as db:
        db.execute("PRAGMA user_version = 999")
        db.commit()
    newer_digest = digest(newer)

    locked = (await seed_home(tmp_path / "locked")).database_path
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("PRAGMA journal_mode = DELETE")  # a rollback-journal lock blocks readers and writers alike
    holder.execute("BEGIN EXCLUSIVE")
    try:
        # The machine is shared: start all three at once rather than one after another.
        results = await asyncio.gather(
            serve_until_exit(corrupt), serve_until_exit(newer.parent), serve_until_exit(locked.parent)
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    expected = [
        "is corrupt (file is not a database)",
        "was written by a newer aiswarm (schema 999",
        "is locked by another process",
    ]
    for (code, stderr), phrase in zip(results, expected, strict=True):
        assert code != 0, stderr
        assert phrase in stderr, stderr
        assert "Traceback" not in stderr and "╭─" not in stderr, stderr
    assert digest(newer) == newer_digest, "a newer database was touched"
    assert seeded_titles(locked) == [f"seed {i}" for i in range(SEEDED)], "committed tasks were lost"


async def test_a_full_database_refuses_writes_with_a_message_keeps_reads_and_loses_nothing(
    tmp_path: Path,
) -> None:
    settings = await seed_home(tmp_path / "home")
    broker = Broker(open_store(settings.database_path), settings)
    await broker.start(sweep=False)
    try:
        store = broker.store
        assert isinstance(store, SqliteStore)
        pages = read_rows(settings.database_path, "PRAGMA page_count")[0][0]

        def cap(db_pages: int) -> None:
            assert store._db is not None
            store._db.execute(f"PRAGMA max_page_count = {db_pages}")

        await asyncio.get_running_loop().run_in_executor(store._executor, cap, pages)
        with pytest.raises(StoreUnavailable, match="is full; nothing was changed"):
            await broker.submit_tasks(PRIMARY, [TaskRequest(title="too big", prompt="x" * 100_000)])
        listed = await broker.list_tasks(None, 50)
        assert sorted(t.title for t in listed.tasks) == [f"seed {i}" for i in range(SEEDED)]
        await asyncio.get_running_loop().run_in_executor(store._executor, cap, 1 << 30)
        await broker.submit_tasks(PRIMARY, [TaskRequest(title="fits again", prompt="x" * 100_000)])
    finally:
        await broker.stop()
    assert seeded_titles(settings.database_path) == [*(f"seed {i}" for i in range(SEEDED)), "fits again"]


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[Path]:
    """``chattr +i``: not even root may write it (plain permissions do not stop root)."""
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot make {path.name} immutable here ({done.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


async def test_a_read_only_database_serves_reads_and_refuses_writes_with_a_message(tmp_path: Path) -> None:
    settings = await seed_home(tmp_path / "home")
    before = digest(settings.database_path)
    with immutable(settings.database_path):
        broker = BrokerProcess(settings.home)
        try:
            broker.start(START_TIMEOUT)
            async with BrokerClient(broker.url, broker.primary_token) as primary:
                assert len((await primary.list_tasks()).tasks) == SEEDED
                assert (await primary.get_task(1)).task.title == "seed 0"
                with pytest.raises(
                    BrokerCallError, match=r"is read-only; nothing was changed\. Make it writable"
                ):
                    await primary.submit_task("refused", "p")
                with pytest.raises(BrokerCallError, match="is read-only"):
                    await primary.cancel_task(1)
        finally:
            if broker.process is not None:
                broker.stop()
    assert digest(settings.database_path) == before


async def test_a_read_only_home_directory_stops_serve_with_a_message(tmp_path: Path) -> None:
    settings = await seed_home(tmp_path / "home")
    with immutable(settings.home):
        code, stderr = await serve_until_exit(settings.home)
    assert code != 0
    # One message naming what could not be written (the home's lock file comes first); the CLI's console may
    # wrap it at 80 columns when stderr is not a terminal.
    message = " ".join(line.strip() for line in stderr.splitlines())
    assert "error:" in message, stderr
    message = message[message.index("error:") :]
    assert "Operation not permitted" in message and str(settings.home) in message, stderr
    assert "Traceback" not in stderr and "╭─" not in stderr, stderr
    assert seeded_titles(settings.database_path) == [f"seed {i}" for i in range(SEEDED)]


def fill_disk(path: Path) -> None:
    """Write zeros until the file system says no space is left (in ever smaller pieces, to the last block)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 1 << 12, 1 << 9):
            with contextlib.suppress(OSError):
                for _ in range(1 << 16):
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the max_page_count test covers it"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
async def live_on_tmpfs(tmp_path: Path) -> AsyncIterator[BrokerProcess]:
    with tmpfs(tmp_path / "disk", "16m") as disk:
        await seed_home(disk / "home")
        broker = BrokerProcess(disk / "home", {"AISWARM_SWEEP_INTERVAL_SECONDS": "0.5"})
        try:
            broker.start(START_TIMEOUT)
            yield broker
        finally:
            if broker.process is not None:
                broker.stop()


async def test_a_live_broker_on_a_full_disk_or_a_locked_database_refuses_writes_and_keeps_serving_reads(
    live_on_tmpfs: BrokerProcess,
) -> None:
    broker = live_on_tmpfs
    database = broker.home / "aiswarm.db"
    async with BrokerClient(broker.url, broker.primary_token) as primary:
        # Another process takes the write lock: writes are refused after the busy timeout, reads go on.
        holder = sqlite3.connect(database, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(BrokerCallError, match="locked by another process; nothing was changed"):
                await primary.submit_task("while locked", "p")
            assert len((await primary.list_tasks()).tasks) == SEEDED
        finally:
            holder.execute("ROLLBACK")
            holder.close()

        # The disk fills up: writes are refused with what to do, reads go on.
        filler = broker.home.parent / "filler"
        fill_disk(filler)
        try:
            with pytest.raises(BrokerCallError, match=r"is full; nothing was changed\. Free some space"):
                for i in range(
                    20
                ):  # the WAL may have room for a small write or two; keep going until it has not
                    await primary.submit_task(f"disk full {i}", "y" * 150_000)
            assert len((await primary.list_tasks(limit=500)).tasks) >= SEEDED
            assert (await primary.get_task(1)).task.title == "seed 0"
        finally:
            filler.unlink()
        after = await primary.submit_task("space again", "p")
        assert after.tasks[0].status == "pending"
    broker.stop()
    titles = seeded_titles(database)
    assert titles[:SEEDED] == [f"seed {i}" for i in range(SEEDED)] and titles[-1] == "space again"
    assert "while locked" not in titles
