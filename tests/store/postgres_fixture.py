"""A fresh PostgreSQL schema per test (or per module): created, handed out as a URL, dropped afterwards.

The server is ``$AISWARM_TEST_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``). When it cannot
be reached the PostgreSQL tests are skipped, unless ``CI`` is set: then they fail, as the CLI tests do.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import urlsplit

import asyncpg
import pytest

SERVER_URL = os.environ.get("AISWARM_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI is set, so the PostgreSQL tests must run)")
    pytest.skip(reason)


def _with_search_path(url: str, schema: str) -> str:
    separator = "&" if urlsplit(url).query else "?"
    return f"{url}{separator}search_path={schema}"


async def _admin(sql: str) -> None:
    con = await asyncpg.connect(SERVER_URL, timeout=5)
    try:
        await con.execute(sql)
    finally:
        await con.close()


def _new_schema_name() -> str:
    return f"aiswarm_test_{uuid.uuid4().hex[:16]}"


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A URL whose connections live in a new, empty schema (unique name: parallel runs never collide)."""
    schema = _new_schema_name()
    try:
        await _admin(f'CREATE SCHEMA "{schema}"')
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        _missing(f"PostgreSQL is not reachable at {SERVER_URL} ({error})")
    try:
        yield _with_search_path(SERVER_URL, schema)
    finally:
        await _admin(f'DROP SCHEMA "{schema}" CASCADE')


@contextmanager
def fresh_schema_sync() -> Iterator[str]:
    """:func:`fresh_schema` for synchronous fixtures (outside any event loop)."""
    schema = _new_schema_name()
    try:
        asyncio.run(_admin(f'CREATE SCHEMA "{schema}"'))
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        _missing(f"PostgreSQL is not reachable at {SERVER_URL} ({error})")
    try:
        yield _with_search_path(SERVER_URL, schema)
    finally:
        asyncio.run(_admin(f'DROP SCHEMA "{schema}" CASCADE'))
