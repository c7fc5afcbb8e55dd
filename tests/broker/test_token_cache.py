"""Token identities are cached; with a store shared between brokers, a revocation made elsewhere takes hold."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from aiswarm_server.auth import TokenRegistry, hash_token
from aiswarm_server.models import Identity, Role
from aiswarm_server.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("shared", [False, True])
async def test_a_token_revoked_by_another_broker_stops_working(tmp_path: Path, shared: bool) -> None:
    store = SqliteStore(tmp_path / "aiswarm.db")
    store.shared_between_processes = shared  # as PostgreSQL is: other brokers write the same tokens
    await store.open()
    try:
        clock = Clock()
        registry = TokenRegistry(store, clock)
        token = await registry.issue(Identity(role=Role.WORKER, agent="w1"))
        assert (await registry.authenticate(token)) == Identity(role=Role.WORKER, agent="w1")
        # Another broker revokes it, straight in the shared store.
        assert await store.revoke_tokens(token_hash=hash_token(token), now=time.time()) == 1
        clock.now += 1
        assert await registry.authenticate(token) is not None  # within the cache's lifetime
        clock.now += TokenRegistry.SHARED_CACHE_SECONDS
        after = await registry.authenticate(token)
        # A store this process owns alone sees every revocation through the registry itself, so the cache
        # is kept; a shared store's cache expires and the revocation takes hold.
        assert (after is None) is shared
        assert (registry.authenticate_cached(token) is None) is shared
        await registry.revoke(token)
        assert await registry.authenticate(token) is None  # revoking through the registry: at once
    finally:
        await store.close()
