"""The PostgreSQL database under the store: a connection pool, the migrations, and how a transaction runs.

Every store method is one transaction at READ COMMITTED on a pooled connection (read-only ones at REPEATABLE READ);
a deadlock or serialization failure the server detects rolls it back and it runs again. A write that returns a
TaskChange NOTIFYs the other brokers inside the transaction (:mod:`.postgres_notify`), so they hear of it on commit.
``@writes`` / ``@reads`` make a transaction's body a store method.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import time
from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import asyncpg
import asyncpg.exceptions

from aiswarm_server.config import redact_database_url
from aiswarm_server.errors import SchemaTooNew, StoreUnavailable
from aiswarm_server.models import TaskChange
from aiswarm_server.store import rows
from aiswarm_server.store.base import QuestionResult
from aiswarm_server.store.postgres_notify import ChangeListener, announce, channel_for

T = TypeVar("T")
P = ParamSpec("P")
D = TypeVar("D", bound="PostgresDatabase")
Db = Any  # an asyncpg.Connection inside a transaction (asyncpg ships no type information)
Row = Any  # asyncpg.Record

MIGRATIONS_PACKAGE = "aiswarm_server.store.migrations.postgres"
#: Deadlocks PostgreSQL detects (and serialization failures) roll the transaction back: run it again.
RETRIES = 5

_RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
_UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def migrations() -> list[tuple[int, str]]:
    """The numbered PostgreSQL migrations shipped with the package, in order."""
    return rows.migrations(MIGRATIONS_PACKAGE)


if TYPE_CHECKING:  # types.CoroutineType is subscriptable for type checkers only (Python 3.11)
    Body = Callable[Concatenate[D, Db, P], Awaitable[T]]
    Method = Callable[Concatenate[D, P], CoroutineType[Any, Any, T]]


def _transaction_method(body: Body[D, P, T], readonly: bool) -> Method[D, P, T]:
    @functools.wraps(body)
    async def method(self: D, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(functools.partial(body, self), readonly, args, kwargs)

    return method


def writes(body: Body[D, P, T]) -> Method[D, P, T]:
    """Make ``body(store, db, ...)`` the store method that runs it as one write transaction, announced on commit."""
    return _transaction_method(body, readonly=False)


def reads(body: Body[D, P, T]) -> Method[D, P, T]:
    """Make ``body(store, db, ...)`` the store method that runs it as one read-only, repeatable-read transaction."""
    return _transaction_method(body, readonly=True)


class PostgresDatabase:
    """An asyncpg pool on ``url``, this schema's NOTIFY channel, and the transaction runner of :class:`PostgresStore`.

    ``origin`` tells this process's notifications from other brokers' (each broker skips its own).
    """

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.where = redact_database_url(url)
        self.pool_size = pool_size
        #: Tells this process's notifications from other brokers' (each broker skips its own).
        self.origin = f"{os.getpid():x}-{os.urandom(4).hex()}"
        self.channel = "aiswarm.public"
        self._pool: Any = None
        self._listener: ChangeListener | None = None

    def unreachable(self, error: BaseException) -> StoreUnavailable:
        """The refusal for a database that cannot be used, naming it (without its password)."""
        return StoreUnavailable(
            f"PostgreSQL at {self.where} could not be used ({type(error).__name__}: {error}). "
            "Check that the server is running and AISWARM_DATABASE_URL is right, then retry."
        )

    async def open(self) -> None:
        """Open the pool, name this schema's NOTIFY channel, apply the migrations (under an advisory lock)."""
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self.pool_size, command_timeout=60
            )
        except _UNREACHABLE as error:
            raise self.unreachable(error) from error
        try:
            async with self._pool.acquire() as con:
                self.channel = channel_for(await con.fetchval("SELECT current_schema()") or "public")
                await self._migrate(con)
        except _UNREACHABLE as error:
            await self._pool.close()
            self._pool = None
            raise self.unreachable(error) from error
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise

    async def _migrate(self, con: Db) -> None:
        available = migrations()
        latest = available[-1][0] if available else 0
        async with con.transaction():
            # Two brokers starting at once on an empty database: one migrates, the other waits and finds it done.
            await con.execute(
                "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.aiswarm-migrations'))"
            )
            await con.execute(
                """CREATE TABLE IF NOT EXISTS aiswarm_schema_version (
                       version integer PRIMARY KEY, applied_at double precision NOT NULL)"""
            )
            current = await con.fetchval("SELECT COALESCE(MAX(version), 0) FROM aiswarm_schema_version")
            if current > latest:
                raise SchemaTooNew(
                    f"the database {self.where} was written by a newer aiswarm (schema {current}, this one knows "
                    f"{latest}). Upgrade aiswarm, or point AISWARM_DATABASE_URL at another database."
                )
            for number, sql in available:
                if number > current:
                    await con.execute(sql)
                    await con.execute(
                        "INSERT INTO aiswarm_schema_version (version, applied_at) VALUES ($1, $2)",
                        number,
                        time.time(),
                    )

    async def close(self) -> None:
        """Stop listening and close the pool."""
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _run(
        self, body: Callable[..., Awaitable[T]], readonly: bool, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        """Run ``body(connection, ...)`` as one transaction; announce the TaskChange it returns, on commit."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("the store is closed; restart the broker with `aiswarm serve`")
        for attempt in range(RETRIES):
            try:
                async with pool.acquire() as con:
                    if readonly:
                        async with con.transaction(isolation="repeatable_read", readonly=True):
                            return await body(con, *args, **kwargs)
                    async with con.transaction():
                        value = await body(con, *args, **kwargs)
                        if isinstance(value, TaskChange):
                            await announce(con, self.channel, self.origin, value)
                        elif isinstance(value, QuestionResult):
                            await announce(con, self.channel, self.origin, value.change)
                    return value
            except _RETRYABLE:
                if attempt == RETRIES - 1:
                    raise StoreUnavailable(
                        "the database kept refusing this change under concurrent updates; nothing was changed. "
                        "Retry the call."
                    ) from None
                await asyncio.sleep(random.uniform(0.001, 0.01 * (attempt + 1)))
            except _UNREACHABLE as error:
                raise self.unreachable(error) from error
        raise AssertionError("unreachable")
