"""Tokens: the broker issues them, stores only their hashes, and resolves each request's identity."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from aiswarm_server.errors import Forbidden, InvalidRequest
from aiswarm_server.files import write_private
from aiswarm_server.home import ADMIN_TOKEN_FILE, PRIMARY_TOKEN_FILE, read_token_file
from aiswarm_server.models import Identity, Role
from aiswarm_server.store import Store

AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def hash_token(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored (the token itself never is)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(role: Role) -> str:
    """A fresh random token whose prefix shows its role (``asw_w_`` worker, ``asw_p_`` primary, ``asw_a_`` admin)."""
    return f"asw_{role.value[0]}_{secrets.token_urlsafe(32)}"


def validate_agent_name(name: str) -> str:
    """Return ``name`` if it is a valid agent name, else raise :class:`InvalidRequest` saying what is allowed."""
    if not AGENT_NAME.fullmatch(name):
        raise InvalidRequest(
            f"{name!r} is not a valid agent name: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. qwen-1)."
        )
    return name


def answerer_of(identity: Identity) -> str:
    """Who answers a worker's question, as recorded with the answer: the primary (or the local admin), never a
    worker (a worker deciding another's question would be the swarm talking to itself). Raises :class:`Forbidden`."""
    if identity.role is Role.WORKER:
        raise Forbidden(
            "Only the primary answers workers' questions. If you need a decision yourself, call ask_primary."
        )
    return identity.label or identity.role.value


class TokenRegistry:
    """Resolves bearer tokens to identities; cached in memory, the store is the truth.

    A store shared between broker processes (PostgreSQL) can have a token revoked by another broker, so there
    a cached identity is re-read from the store after ``SHARED_CACHE_SECONDS``; with a store this process owns
    alone, every revocation passes through :meth:`revoke` / :meth:`revoke_agent` and the cache never goes stale.
    """

    SHARED_CACHE_SECONDS = 5.0

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._ttl = self.SHARED_CACHE_SECONDS if store.shared_between_processes else None
        self._cache: dict[str, tuple[Identity, float]] = {}  # digest -> (identity, read at)

    async def authenticate(self, token: str | None) -> Identity | None:
        """The identity a token proves, from the cache or the store; None for a missing, unknown or revoked token."""
        if not token:
            return None
        digest = hash_token(token)
        cached = self._cache.get(digest)
        now = self._clock()
        if cached is not None and (self._ttl is None or now - cached[1] < self._ttl):
            return cached[0]
        identity = await self._store.find_token(digest)
        if identity is None:
            self._cache.pop(digest, None)
        else:
            self._cache[digest] = (identity, now)
        return identity

    def authenticate_cached(self, token: str | None) -> Identity | None:
        """The identity for a token already seen by :meth:`authenticate` (every HTTP request passes there first)."""
        cached = self._cache.get(hash_token(token)) if token else None
        return cached[0] if cached is not None else None

    async def issue(self, identity: Identity) -> str:
        """Issue and store (as its hash) a new token for ``identity``; raise :class:`InvalidRequest` for a worker without a
        valid agent name."""
        if identity.role is Role.WORKER:
            if identity.agent is None:
                raise InvalidRequest("a worker token must name its agent")
            validate_agent_name(identity.agent)
        token = new_token(identity.role)
        await self._store.add_token(hash_token(token), identity, time.time())
        return token

    async def revoke_agent(self, agent: str) -> int:
        """Revoke every token of ``agent`` and forget them here at once; return how many were revoked."""
        count = await self._store.revoke_tokens(agent=agent, now=time.time())
        self._cache = {h: entry for h, entry in self._cache.items() if entry[0].agent != agent}
        return count

    async def revoke(self, token: str) -> int:
        """Revoke one token and forget it here at once; return how many were revoked (0 or 1)."""
        digest = hash_token(token)
        self._cache.pop(digest, None)
        return await self._store.revoke_tokens(token_hash=digest, now=time.time())

    async def ensure_local_token(self, home: Path, role: Role) -> str:
        """The admin or primary token kept in the aiswarm home (0600); created on first start."""
        path = home / (ADMIN_TOKEN_FILE if role is Role.ADMIN else PRIMARY_TOKEN_FILE)
        token = read_token_file(path)
        if token is not None:
            identity = await self.authenticate(token)
            if identity is not None and identity.role is role:
                return token
        token = await self.issue(Identity(role=role, label=f"local {role.value}"))
        write_private(path, token + "\n")
        return token
