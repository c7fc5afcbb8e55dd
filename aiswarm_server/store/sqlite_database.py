"""The SQLite database under the store: one connection, and how a transaction runs on it.

Why not a statement-at-a-time async driver: every statement would be its own hop to the database
thread (~70-85 µs each here); running a whole store method in one hop doubled lifecycle throughput
in the measurements in docs/DESIGN.md.

Where the transactions run depends on the durability (see :class:`SqliteDatabase`): with the default
``synchronous=NORMAL`` a commit never waits for the disk, so a transaction (tens of µs) runs right on
the event loop's thread, and checkpoints (the only step that syncs) run on a background thread with
their own connection; with ``FULL`` every commit syncs, so transactions go to the store's own thread.
``@writes`` / ``@reads`` make a transaction's body a store method.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar

from aiswarm_server.errors import SchemaTooNew, StoreUnavailable
from aiswarm_server.store import rows

T = TypeVar("T")
P = ParamSpec("P")
D = TypeVar("D", bound="SqliteDatabase")
Db = sqlite3.Connection
INLINE_BUSY_TIMEOUT_MS = 250
log = logging.getLogger("aiswarm.store")

MIGRATIONS_PACKAGE = "aiswarm_server.store.migrations.sqlite"


def migrations() -> list[tuple[int, str]]:
    """The numbered SQLite migrations shipped with the package, in order."""
    return rows.migrations(MIGRATIONS_PACKAGE)


if TYPE_CHECKING:  # types.CoroutineType is subscriptable for type checkers only (Python 3.11)
    Body = Callable[Concatenate[D, Db, P], T]
    Method = Callable[Concatenate[D, P], CoroutineType[Any, Any, T]]


def writes(body: Body[D, P, T]) -> Method[D, P, T]:
    """Make ``body(store, db, ...)`` the store method that runs it as one write transaction."""
    return _in_transaction(body, "BEGIN IMMEDIATE")


def reads(body: Body[D, P, T]) -> Method[D, P, T]:
    """Make ``body(store, db, ...)`` the store method that runs it as one read transaction."""
    return _in_transaction(body, "BEGIN")


def _in_transaction(body: Body[D, P, T], begin: str) -> Method[D, P, T]:
    @functools.wraps(body)
    async def method(self: D, *args: P.args, **kwargs: P.kwargs) -> T:
        if self.inline:
            return self._transaction(body, begin, args, kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._transaction, body, begin, args, kwargs)

    return method


class SqliteDatabase:
    """SQLite in WAL mode; ``durability`` picks ``synchronous=NORMAL`` (default) or ``FULL``.

    NORMAL: transactions run inline on the event loop (measured 2.4x the lifecycle rate of a hop to a
    thread per transaction: ``aiswarm bench``, store section), automatic checkpoints are off and a
    background thread checkpoints the WAL every ``checkpoint_seconds`` after writes. A process crash loses
    nothing either way; NORMAL can lose the last commits on power loss, as SQLite documents.
    FULL: every commit is synced to disk, on the store's own thread, so the loop never waits for the disk.
    """

    def __init__(
        self,
        path: Path,
        durability: Literal["normal", "full"] = "normal",
        *,
        checkpoint_seconds: float = 1.0,
    ) -> None:
        self.path = path
        self.durability = durability
        self.inline = durability == "normal"
        self.checkpoint_seconds = checkpoint_seconds
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aiswarm-sqlite")
        self._db: sqlite3.Connection | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpointed_changes = 0

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The file holds prompts and token hashes: private, like the token files. SQLite gives the -wal and -shm
        # files the database file's mode.
        self.path.touch(mode=0o600, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.durability == 'full' else 'NORMAL'}")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            if self.inline:
                db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints sync: see _checkpoint_forever
            self._migrate(db)
            if self.inline:
                # Nothing in this process contends for the write lock, so a wait for it means another process
                # holds it; on the loop's thread a long wait would stall every call, so refuse soon instead.
                db.execute(f"PRAGMA busy_timeout={INLINE_BUSY_TIMEOUT_MS}")
        except sqlite3.DatabaseError as error:
            db.close()
            if (
                isinstance(error, sqlite3.OperationalError)
                or "not a database" in str(error)
                or "malformed" in str(error)
            ):
                raise StoreUnavailable(_describe(error, self.path)) from error
            raise
        self._db = db

    def _migrate(self, db: Db) -> None:
        available = migrations()
        latest = available[-1][0] if available else 0
        current = db.execute("PRAGMA user_version").fetchone()[0]
        if current > latest:
            raise SchemaTooNew(
                f"{self.path} was written by a newer aiswarm (schema {current}, this one knows {latest}). "
                "Upgrade aiswarm, or point AISWARM_HOME at another directory."
            )
        for number, sql in available:
            if number <= current:
                continue
            db.execute("BEGIN IMMEDIATE")
            try:
                # executescript would COMMIT first; run the statements one by one inside our transaction.
                for statement in _split_sql(sql):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={number}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _transaction(
        self, body: Callable[..., T], begin: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        db = self._db
        if db is None:
            raise StoreUnavailable("the store is closed; restart the broker with `aiswarm serve`")
        try:
            db.execute(begin)
            try:
                value = body(self, db, *args, **kwargs)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return value
        except sqlite3.DatabaseError as error:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise StoreUnavailable(_describe(error, self.path)) from error

    async def open(self) -> None:
        """Open the file (WAL, the durability's pragmas), apply the migrations, start checkpointing."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._connect)
        if self.inline:
            self._checkpointer = asyncio.create_task(self._checkpoint_forever(), name="aiswarm-checkpoint")

    async def _checkpoint_forever(self) -> None:
        """Copy the WAL back into the database (and sync) off the loop, whenever there were writes."""
        loop = asyncio.get_running_loop()
        checkpoint_db: sqlite3.Connection | None = None

        def checkpoint() -> None:
            nonlocal checkpoint_db
            if checkpoint_db is None:
                checkpoint_db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                checkpoint_db.execute("PRAGMA busy_timeout=5000")
            checkpoint_db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

        try:
            while True:
                await asyncio.sleep(self.checkpoint_seconds)
                db = self._db
                if db is None or db.total_changes == self._checkpointed_changes:
                    continue
                self._checkpointed_changes = db.total_changes
                try:
                    await loop.run_in_executor(self._executor, checkpoint)
                except sqlite3.Error as error:  # the next commit reports a real fault; keep trying
                    log.warning("checkpoint of %s failed: %s", self.path, error)
        finally:
            if checkpoint_db is not None:
                await loop.run_in_executor(self._executor, checkpoint_db.close)

    async def close(self) -> None:
        """Stop checkpointing and close the connection (the last one to close removes the WAL)."""
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None

        def _close() -> None:
            if self._db is not None:
                self._db.close()  # the last connection to close checkpoints and removes the WAL
                self._db = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=True)


def _split_sql(script: str) -> list[str]:
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


def _describe(error: sqlite3.DatabaseError, path: Path) -> str:
    text = str(error).lower()
    if "readonly" in text or "read-only" in text:
        return f"the database {path} is read-only; nothing was changed. Make it writable and retry."
    if "full" in text:
        return f"the disk holding {path} is full; nothing was changed. Free some space and retry."
    if "locked" in text or "busy" in text:
        return (
            f"the database {path} is locked by another process; nothing was changed. "
            "Only one `aiswarm serve` may own it: stop the other one, then retry."
        )
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return (
            f"the database {path} is corrupt ({error}); nothing was changed. "
            "Move it aside (keep it for recovery) and restart the broker."
        )
    return f"the database {path} refused the operation ({error}); nothing was changed."
