"""The PostgreSQL store: the scale-out backend that several broker processes (or hosts) can share.

Same operations and the same semantics as :mod:`aiswarm_server.store.sqlite`; what differs is how concurrent
writers are kept apart. SQLite runs one writer at a time; here every store method is one transaction at READ
COMMITTED on a pooled connection, and the rows a transition depends on are locked explicitly:

* claims take the next pending task with ``FOR UPDATE SKIP LOCKED`` (claimers queue on nothing);
* an agent's row is locked before the task it holds (``agent → task`` everywhere), so a report, a claim and a
  sweep of the same agent run one after another; the sweeper skips an agent that is busy right now;
* an agent's events are appended under its row lock, so its event ids are committed in order and a cursor
  never steps over an event that commits later;
* dependency cascades lock the dependent rows before re-checking them, so two dependencies completing at once
  cannot both decide "the other one is not done yet".

A deadlock the server detects anyway is retried. Every broker LISTENs on one channel; a commit that makes tasks
claimable, finishes tasks or gives agents events NOTIFYs it (see :meth:`PostgresStore.watch_changes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeVar

import asyncpg
import asyncpg.exceptions

from aiswarm_server.config import redact_database_url
from aiswarm_server.errors import NotFound, SchemaTooNew, StaleClaim, StoreUnavailable, TaskCancelled
from aiswarm_server.models import (
    Agent,
    AgentStatus,
    Attempt,
    AttemptOutcome,
    Claim,
    Event,
    EventKind,
    Identity,
    IsolationUpdate,
    NewTask,
    Role,
    Task,
    TaskChange,
    TaskStatus,
)
from aiswarm_server.store.base import AgentPoll, ClaimResult, Store, StoreStats
from aiswarm_server.store.isolation import isolation_fields, submitted_values, update_assignments

T = TypeVar("T")
Connection = Any  # asyncpg.Connection (asyncpg ships no type information)
Row = Any  # asyncpg.Record

SEEN_RESOLUTION_SECONDS = 2.0
MIGRATIONS_PACKAGE = "aiswarm_server.store.migrations.postgres"
#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
NOTIFY_LIMIT = 7900
#: Deadlocks PostgreSQL detects (and serialization failures) roll the transaction back: run it again.
RETRIES = 5
#: How often the listening connection is checked when nothing arrives.
LISTENER_CHECK_SECONDS = 10.0
log = logging.getLogger("aiswarm.store")

_RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)

# A task fits an agent when its persona is unset or the agent's, and its capabilities are a subset of the agent's.
# $persona / $capabilities are numbered per statement: see each use.
_CLAIM_SET = """
    status = 'claimed', claimed_by = $1::text, fence_token = fence_token + 1, claimed_at = $2::float8,
    deadline_at = $2::float8 + timeout_seconds,
    lease_expires_at = LEAST($2::float8 + $3::float8, $2::float8 + timeout_seconds),
    progress = NULL, updated_at = $2::float8
"""


def _claim_and_start(where: str) -> str:
    """One statement: claim the task ``where`` picks, open its attempt, mark the agent busy with it."""
    return f"""
WITH claimed AS (UPDATE tasks SET {_CLAIM_SET} WHERE {where} RETURNING *),
     attempt AS (
         INSERT INTO attempts (task_id, number, agent, fence_token, claimed_at, outcome)
         SELECT c.id, COALESCE((SELECT MAX(a.number) FROM attempts AS a WHERE a.task_id = c.id), 0) + 1,
                $1::text, c.fence_token, $2::float8, 'running'
         FROM claimed AS c),
     busy AS (UPDATE agents SET status = 'busy', current_task_id = c.id FROM claimed AS c WHERE agents.name = $1::text)
SELECT * FROM claimed
"""


# A claimer passes over pending rows another transaction is claiming instead of queueing behind it.
_CLAIM_NEXT = _claim_and_start(
    """status = 'pending' AND id = (
    SELECT t.id FROM tasks AS t
    WHERE t.status = 'pending' AND (t.persona IS NULL OR t.persona = $4::text) AND t.capabilities <@ $5::text[]
    ORDER BY t.priority DESC, t.id LIMIT 1 FOR UPDATE SKIP LOCKED)"""
)

_CLAIM_ONE = _claim_and_start("id = $4::bigint AND status = 'pending'")

_CLAIMABLE_FOR = """
SELECT t.* FROM tasks AS t
WHERE t.status = 'pending' AND (t.persona IS NULL OR t.persona = $1::text) AND t.capabilities <@ $2::text[]
ORDER BY t.priority DESC, t.id LIMIT $3::int
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _row_to_task(
    row: Row, depends_on: list[int] | None = None, attempts: list[Attempt] | None = None
) -> Task:
    return Task(
        id=row["id"],
        title=row["title"],
        prompt=row["prompt"],
        priority=row["priority"],
        persona=row["persona"],
        capabilities=list(row["capabilities"]),
        depends_on=depends_on or [],
        working_dir=row["working_dir"],
        max_attempts=row["max_attempts"],
        timeout_seconds=row["timeout_seconds"],
        status=TaskStatus(row["status"]),
        claimed_by=row["claimed_by"],
        fence_token=row["fence_token"],
        lease_expires_at=row["lease_expires_at"],
        claimed_at=row["claimed_at"],
        failures=row["failures"],
        progress=row["progress"],
        result=row["result"],
        data=json.loads(row["data"]) if row["data"] is not None else None,
        error=row["error"],
        submitted_by=row["submitted_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        attempts=attempts or [],
        **isolation_fields(row, list),
    )


def _row_to_agent(row: Row) -> Agent:
    return Agent(
        name=row["name"],
        cli=row["cli"],
        persona=row["persona"],
        capabilities=list(row["capabilities"]),
        pid=row["pid"],
        status=AgentStatus(row["status"]),
        current_task_id=row["current_task_id"],
        cursor=row["cursor"],
        registered_at=row["registered_at"],
        last_seen_at=row["last_seen_at"],
    )


def _row_to_event(row: Row) -> Event:
    return Event(
        id=row["id"],
        kind=EventKind(row["kind"]),
        agent=row["agent"],
        task_id=row["task_id"],
        detail=row["detail"],
        created_at=row["created_at"],
    )


def migrations() -> list[tuple[int, str]]:
    """The numbered PostgreSQL migrations shipped with the package, in order."""
    found: list[tuple[int, str]] = []
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        if entry.name.endswith(".sql") and entry.name[:4].isdigit():
            found.append((int(entry.name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def _channel_for(schema: str) -> str:
    """The NOTIFY channel of one aiswarm schema (several may share a database; channel names stop at 63 bytes)."""
    channel = f"aiswarm.{schema}"
    if len(channel.encode()) > 63:
        channel = "aiswarm." + hashlib.sha256(schema.encode()).hexdigest()[:32]
    return channel


def change_payloads(origin: str, change: TaskChange, limit: int = NOTIFY_LIMIT) -> list[str]:
    """The NOTIFY payloads announcing ``change``: ids and agent names, never whole tasks.

    ``{"o": origin, "c": [claimable ids], "f": [finished ids], "a": [agents with new events]}``. When that does not
    fit one payload, ``"c": true`` asks listeners to re-read the pending queue instead, and the finished ids and
    agent names are spread over as many payloads as they need (watchers of a finished task must still hear of it).
    """
    claimable = [t.id for t in change.claimable]
    finished = list(dict.fromkeys([*change.finished, *([change.task.id] if change.task else [])]))
    agents = list(dict.fromkeys(change.notified_agents))
    whole = _dumps({"o": origin, "c": claimable, "f": finished, "a": agents})
    if len(whole.encode()) <= limit:
        return [whole]
    payloads: list[str] = []
    current: dict[str, Any] = {"o": origin, "c": bool(claimable), "f": [], "a": []}
    size = len(_dumps(current).encode())
    for key, item in [*(("f", i) for i in finished), *(("a", a) for a in agents)]:
        cost = len(_dumps(item).encode()) + 1
        if size + cost > limit:
            payloads.append(_dumps(current))
            current = {"o": origin, "c": False, "f": [], "a": []}
            size = len(_dumps(current).encode())
        current[key].append(item)
        size += cost
    payloads.append(_dumps(current))
    return payloads


class PostgresStore(Store):
    """PostgreSQL through an asyncpg pool; several broker processes may share one database (or one schema).

    ``url`` is a ``postgresql://`` URL; query parameters that are not connection options become server settings,
    so ``?search_path=team_a`` keeps one swarm's tables in schema ``team_a``. Commits are durable
    (``synchronous_commit`` is the server's: on by default).
    """

    shared_between_processes = True

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.where = redact_database_url(url)
        self.pool_size = pool_size
        #: Tells this process's notifications from other brokers' (each broker skips its own).
        self.origin = f"{os.getpid():x}-{os.urandom(4).hex()}"
        self.channel = "aiswarm.public"
        self._pool: Any = None
        self._apply: Callable[[TaskChange], None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._notifications: asyncio.Queue[str] = asyncio.Queue()
        self._heard_at = time.time()

    # plumbing ------------------------------------------------------------------------------------
    def _unreachable(self, error: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"PostgreSQL at {self.where} could not be used ({type(error).__name__}: {error}). "
            "Check that the server is running and AISWARM_DATABASE_URL is right, then retry."
        )

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self.pool_size, command_timeout=60
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise self._unreachable(error) from error
        try:
            async with self._pool.acquire() as con:
                self.channel = _channel_for(await con.fetchval("SELECT current_schema()") or "public")
                await self._migrate(con)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            await self._pool.close()
            self._pool = None
            raise self._unreachable(error) from error
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise

    async def _migrate(self, con: Connection) -> None:
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
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _run(self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], readonly: bool) -> T:
        """Run ``fn(connection, *args)`` as one transaction; announce the TaskChange it returns, on commit."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("the store is closed; restart the broker with `aiswarm serve`")
        for attempt in range(RETRIES):
            try:
                async with pool.acquire() as con:
                    if readonly:
                        async with con.transaction(isolation="repeatable_read", readonly=True):
                            return await fn(con, *args)
                    async with con.transaction():
                        value = await fn(con, *args)
                        if isinstance(value, TaskChange):
                            await self._announce(con, value)
                    return value
            except _RETRYABLE:
                if attempt == RETRIES - 1:
                    raise StoreUnavailable(
                        "the database kept refusing this change under concurrent updates; nothing was changed. "
                        "Retry the call."
                    ) from None
                await asyncio.sleep(random.uniform(0.001, 0.01 * (attempt + 1)))
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                raise self._unreachable(error) from error
        raise AssertionError("unreachable")

    async def _write(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await self._run(fn, args, readonly=False)

    async def _read(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await self._run(fn, args, readonly=True)

    # changes across broker processes ----------------------------------------------------------------
    async def _announce(self, con: Connection, change: TaskChange) -> None:
        """NOTIFY the other brokers, inside the transaction: PostgreSQL delivers it on commit, never before."""
        if not (change.claimable or change.finished or change.notified_agents):
            return
        for payload in change_payloads(self.origin, change):
            await con.execute("SELECT pg_notify($1, $2)", self.channel, payload)

    async def watch_changes(self, apply: Callable[[TaskChange], None]) -> None:
        """LISTEN on a dedicated connection and hand other brokers' changes to ``apply``.

        Returns once listening, so nothing committed afterwards is missed. A notification carries ids; the tasks
        are re-read here (the database is the truth) and only those still pending are offered. If the listening
        connection drops, it is re-opened and everything that may have been missed meanwhile is re-announced:
        the pending queue, tasks finished and agents given events since shortly before the drop.
        """
        if self._pool is None:
            raise StoreUnavailable("open the store before watching it")
        self._apply = apply
        con = await self._listen()
        self._heard_at = time.time()
        self._listener = asyncio.create_task(self._listen_forever(con), name="aiswarm-pg-listener")

    async def _listen(self) -> Connection:
        try:
            con = await asyncpg.connect(self.url)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise self._unreachable(error) from error
        await con.add_listener(self.channel, self._on_notification)
        return con

    def _on_notification(self, _con: object, _pid: int, _channel: str, payload: str) -> None:
        self._notifications.put_nowait(payload)

    async def _listen_forever(self, con: Connection | None) -> None:
        backoff = 0.1
        consumer = asyncio.create_task(self._consume_notifications(), name="aiswarm-pg-notifications")
        try:
            while True:
                if con is None:
                    try:
                        missed_since = self._heard_at - 2.0
                        con = await self._listen()
                        backoff = 0.1
                        log.warning("listening for other brokers' changes again at %s", self.where)
                        await self._catch_up(missed_since)
                        self._heard_at = time.time()
                    except Exception as error:
                        log.warning(
                            "cannot listen at %s (%s); retrying in %.1f s", self.where, error, backoff
                        )
                        if con is not None:
                            await _close_quietly(con)
                            con = None
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                await self._until_lost(con)
                log.warning("lost the listening connection to %s; reconnecting", self.where)
                await _close_quietly(con)
                con = None
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            if con is not None:
                await _close_quietly(con)

    async def _until_lost(self, con: Connection) -> None:
        """Return when the listening connection is gone: closed by the server, or not answering a check."""
        lost = asyncio.Event()
        con.add_termination_listener(lambda _con: lost.set())
        while not con.is_closed():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), LISTENER_CHECK_SECONDS)
                return
            try:
                await asyncio.wait_for(con.fetchval("SELECT 1"), LISTENER_CHECK_SECONDS)
                self._heard_at = time.time()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return

    async def _consume_notifications(self) -> None:
        """Turn notifications into TaskChanges, a burst at a time (one re-read for many commits)."""
        while True:
            payloads = [await self._notifications.get()]
            while not self._notifications.empty():
                payloads.append(self._notifications.get_nowait())
            try:
                change = await self._rebuild(payloads)
            except (
                Exception
            ) as error:  # the database is away: the next notification or the sweeper catches up
                log.warning("could not read the changes other brokers announced: %s", error)
                continue
            if change is not None and self._apply is not None:
                self._apply(change)

    async def _rebuild(self, payloads: Sequence[str]) -> TaskChange | None:
        reread_pending = False
        claimable: list[int] = []
        finished: list[int] = []
        agents: list[str] = []
        for payload in payloads:
            try:
                note = json.loads(payload)
                if note.get("o") == self.origin:
                    continue
                if note.get("c") is True:
                    reread_pending = True
                else:
                    claimable += [int(i) for i in note.get("c", [])]
                finished += [int(i) for i in note.get("f", [])]
                agents += [str(a) for a in note.get("a", [])]
            except (ValueError, TypeError, AttributeError):
                log.warning("ignoring a malformed notification on %s: %.200s", self.channel, payload)
        if not (reread_pending or claimable or finished or agents):
            return None
        if reread_pending:
            pending = await self.pending_tasks(limit=100)
        elif claimable:
            pending = [
                t
                for t in await self.get_tasks(list(dict.fromkeys(claimable)))
                if t.status is TaskStatus.PENDING
            ]
        else:
            pending = []
        return TaskChange(
            claimable=pending,
            finished=list(dict.fromkeys(finished)),
            notified_agents=list(dict.fromkeys(agents)),
        )

    async def _catch_up(self, since: float) -> None:
        """After a gap in listening: announce locally what other brokers may have announced meanwhile."""

        async def _missed(con: Connection) -> tuple[list[int], list[str]]:
            finished = await con.fetch(
                "SELECT id FROM tasks WHERE finished_at >= $1::float8 ORDER BY id LIMIT 10000", since
            )
            agents = await con.fetch(
                "SELECT DISTINCT agent FROM events WHERE created_at >= $1::float8", since
            )
            return [r["id"] for r in finished], [r["agent"] for r in agents]

        finished, agents = await self._read(_missed)
        change = TaskChange(
            claimable=await self.pending_tasks(limit=100), finished=finished, notified_agents=agents
        )
        if self._apply is not None:
            self._apply(change)

    # agents --------------------------------------------------------------------------------------
    async def register_agent(
        self,
        name: str,
        cli: str,
        persona: str | None,
        capabilities: Sequence[str],
        pid: int | None,
        now: float,
    ) -> Agent:
        return await self._write(_register_agent, name, cli, persona, sorted(set(capabilities)), pid, now)

    async def get_agent(self, name: str) -> Agent | None:
        return await self._read(_get_agent, name)

    async def list_agents(self) -> list[Agent]:
        async def _list(con: Connection) -> list[Agent]:
            return [_row_to_agent(r) for r in await con.fetch("SELECT * FROM agents ORDER BY name")]

        return await self._read(_list)

    async def poll_agent(
        self, name: str, ack_cursor: int | None, now: float, claimable_limit: int = 3
    ) -> AgentPoll:
        return await self._write(_poll_agent, name, ack_cursor, now, claimable_limit)

    async def heartbeat(self, name: str, now: float, lease_seconds: float) -> tuple[Agent, Task | None]:
        return await self._write(_heartbeat, name, now, lease_seconds)

    # tasks ---------------------------------------------------------------------------------------
    async def create_tasks(self, tasks: Sequence[NewTask], now: float) -> TaskChange:
        return await self._write(_create_tasks, list(tasks), now)

    async def get_task(self, task_id: int, with_attempts: bool = True) -> Task | None:
        return await self._read(_get_task, task_id, with_attempts)

    async def get_tasks(self, task_ids: Sequence[int]) -> list[Task]:
        return await self._read(_get_tasks, list(task_ids))

    async def list_tasks(self, status: TaskStatus | None, limit: int, offset: int = 0) -> list[Task]:
        return await self._read(_list_tasks, status, limit, offset)

    async def missing_tasks(self, task_ids: Sequence[int]) -> list[int]:
        async def _missing(con: Connection, ids: list[int]) -> list[int]:
            if not ids:
                return []
            found = {
                r["id"] for r in await con.fetch("SELECT id FROM tasks WHERE id = ANY($1::bigint[])", ids)
            }
            return [i for i in ids if i not in found]

        return await self._read(_missing, list(task_ids))

    async def claim(self, agent: str, task_id: int | None, now: float, lease_seconds: float) -> ClaimResult:
        return await self._write(_claim, agent, task_id, now, lease_seconds)

    async def renew(
        self,
        agent: str,
        task_id: int,
        fence_token: int,
        now: float,
        lease_seconds: float,
        progress: str | None,
    ) -> Task:
        return await self._write(_renew, agent, task_id, fence_token, now, lease_seconds, progress)

    async def complete(
        self,
        agent: str,
        task_id: int,
        fence_token: int,
        *,
        success: bool,
        retryable: bool,
        result: str | None,
        data: dict[str, Any] | None,
        error: str | None,
        now: float,
    ) -> TaskChange:
        return await self._write(
            _complete, agent, task_id, fence_token, success, retryable, result, data, error, now
        )

    async def release(
        self, agent: str, task_id: int, fence_token: int | None, reason: str, now: float
    ) -> TaskChange:
        return await self._write(_release, agent, task_id, fence_token, reason, now)

    async def update_isolation(
        self, task_id: int, fence: int | None, update: IsolationUpdate, now: float
    ) -> Task | None:
        """Record an isolated attempt's or a merge's fields on the task (see :class:`Store`)."""
        return await self._write(_update_isolation, task_id, fence, update, now)

    async def cancel(self, task_id: int, reason: str, now: float) -> TaskChange:
        return await self._write(_cancel, task_id, reason, now)

    async def sweep(self, now: float, agent_lost_before: float, keep_alive: Sequence[str] = ()) -> TaskChange:
        return await self._write(_sweep, now, agent_lost_before, list(keep_alive))

    async def next_lease_expiry(self) -> float | None:
        async def _next(con: Connection) -> float | None:
            return await con.fetchval("SELECT MIN(lease_expires_at) FROM tasks WHERE status = 'claimed'")

        return await self._read(_next)

    async def pending_tasks(self, limit: int) -> list[Task]:
        async def _pending(con: Connection) -> list[Task]:
            rows = await con.fetch(
                "SELECT * FROM tasks WHERE status = 'pending' ORDER BY priority DESC, id LIMIT $1::int", limit
            )
            return [_row_to_task(r) for r in rows]

        return await self._read(_pending)

    # tokens --------------------------------------------------------------------------------------
    async def add_token(self, token_hash: str, identity: Identity, now: float) -> None:
        async def _add(con: Connection) -> None:
            await con.execute(
                "INSERT INTO tokens (token_hash, role, agent, label, created_at) VALUES ($1, $2, $3, $4, $5)",
                token_hash,
                identity.role.value,
                identity.agent,
                identity.label,
                now,
            )

        await self._write(_add)

    async def find_token(self, token_hash: str) -> Identity | None:
        async def _find(con: Connection) -> Identity | None:
            row = await con.fetchrow(
                "SELECT role, agent, label FROM tokens WHERE token_hash = $1 AND revoked_at IS NULL",
                token_hash,
            )
            return Identity(role=Role(row["role"]), agent=row["agent"], label=row["label"]) if row else None

        return await self._read(_find)

    async def revoke_tokens(
        self, *, agent: str | None = None, token_hash: str | None = None, now: float
    ) -> int:
        async def _revoke(con: Connection) -> int:
            if token_hash is not None:
                status = await con.execute(
                    "UPDATE tokens SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL",
                    now,
                    token_hash,
                )
            else:
                status = await con.execute(
                    "UPDATE tokens SET revoked_at = $1 WHERE agent = $2 AND revoked_at IS NULL", now, agent
                )
            return int(status.split()[-1])  # "UPDATE <count>"

        return await self._write(_revoke)

    async def list_tokens(self) -> list[tuple[str, Identity, float, float | None]]:
        async def _list(con: Connection) -> list[tuple[str, Identity, float, float | None]]:
            return [
                (
                    r["token_hash"],
                    Identity(role=Role(r["role"]), agent=r["agent"], label=r["label"]),
                    r["created_at"],
                    r["revoked_at"],
                )
                for r in await con.fetch("SELECT * FROM tokens ORDER BY created_at")
            ]

        return await self._read(_list)

    async def stats(self) -> StoreStats:
        async def _stats(con: Connection) -> StoreStats:
            tasks = {
                r[0]: r[1] for r in await con.fetch("SELECT status, COUNT(*) FROM tasks GROUP BY status")
            }
            agents = {
                r[0]: r[1] for r in await con.fetch("SELECT status, COUNT(*) FROM agents GROUP BY status")
            }
            events = await con.fetchval("SELECT COALESCE(MAX(id), 0) FROM events")
            return StoreStats(tasks=tasks, agents=agents, events=events)

        return await self._read(_stats)


async def _close_quietly(con: Connection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(con.close(), 2.0)
    if not con.is_closed():
        con.terminate()


# ------------------------------------------------------------------------------------------------
# Transaction bodies. Each runs inside one transaction on one pooled connection.
# ------------------------------------------------------------------------------------------------


async def _get_agent(con: Connection, name: str) -> Agent | None:
    row = await con.fetchrow("SELECT * FROM agents WHERE name = $1", name)
    return _row_to_agent(row) if row else None


async def _touch_agent(con: Connection, name: str, now: float) -> Row:
    """Lock the agent's row and mark it seen (creating it on first contact); a lost agent that speaks is back.

    ``last_seen_at`` is kept to ``SEEN_RESOLUTION_SECONDS``, as in the SQLite store. The lock orders this call
    after any other transaction about the same agent (a report, a claim, an event appended for it).
    """
    row = await con.fetchrow("SELECT * FROM agents WHERE name = $1 FOR UPDATE", name)
    if row is not None and row["status"] != "lost" and now - row["last_seen_at"] < SEEN_RESOLUTION_SECONDS:
        return row
    if row is None:
        row = await con.fetchrow(
            """INSERT INTO agents (name, registered_at, last_seen_at) VALUES ($1, $2::float8, $2::float8)
               ON CONFLICT (name) DO NOTHING RETURNING *""",
            name,
            now,
        )
        if row is not None:
            return row
        # Another broker created it a moment ago: update that row instead (the UPDATE waits for its lock).
    return await con.fetchrow(
        """UPDATE agents SET last_seen_at = $2::float8,
               status = CASE WHEN status = 'lost' THEN
                   (CASE WHEN current_task_id IS NULL THEN 'idle' ELSE 'busy' END) ELSE status END
           WHERE name = $1 RETURNING *""",
        name,
        now,
    )


async def _lock_agent(con: Connection, name: str, *, skip_locked: bool = False) -> bool:
    """Lock an agent's row (before any task it holds: the lock order is agent, then task)."""
    suffix = " SKIP LOCKED" if skip_locked else ""
    return await con.fetchval(f"SELECT true FROM agents WHERE name = $1 FOR UPDATE{suffix}", name) is not None


async def _register_agent(
    con: Connection,
    name: str,
    cli: str,
    persona: str | None,
    capabilities: list[str],
    pid: int | None,
    now: float,
) -> Agent:
    await _touch_agent(con, name, now)
    row = await con.fetchrow(
        "UPDATE agents SET cli = $2, persona = $3, capabilities = $4::text[], pid = $5 WHERE name = $1 RETURNING *",
        name,
        cli,
        persona,
        capabilities,
        pid,
    )
    return _row_to_agent(row)


async def _append_event(
    con: Connection, agent: str, kind: EventKind, task_id: int | None, detail: str, now: float
) -> None:
    # Under the agent's row lock: its events then commit in id order, so a cursor never passes one still in flight.
    await _lock_agent(con, agent)
    await con.execute(
        "INSERT INTO events (agent, kind, task_id, detail, created_at) VALUES ($1, $2, $3, $4, $5)",
        agent,
        kind.value,
        task_id,
        detail,
        now,
    )


async def _poll_agent(
    con: Connection, name: str, ack_cursor: int | None, now: float, limit: int
) -> AgentPoll:
    row = await _touch_agent(con, name, now)
    cursor = max(0, row["cursor"] if ack_cursor is None else ack_cursor)
    if cursor > row["cursor"]:
        # A cursor past the newest event would hide future events: clamp it.
        newest = await con.fetchval("SELECT COALESCE(MAX(id), 0) FROM events")
        cursor = min(cursor, newest)
    if cursor > row["cursor"]:
        row = await con.fetchrow("UPDATE agents SET cursor = $2 WHERE name = $1 RETURNING *", name, cursor)
    agent = _row_to_agent(row)
    events = [
        _row_to_event(r)
        for r in await con.fetch(
            "SELECT * FROM events WHERE agent = $1 AND id > $2 ORDER BY id LIMIT 50", name, cursor
        )
    ]
    claimable: list[Task] = []
    if agent.current_task_id is None:
        claimable = [
            _row_to_task(r) for r in await con.fetch(_CLAIMABLE_FOR, agent.persona, agent.capabilities, limit)
        ]
    return AgentPoll(agent=agent, cursor=cursor, events=events, claimable=claimable)


async def _renew_current(con: Connection, agent: str, now: float, lease: float) -> Task | None:
    row = await con.fetchrow(
        """UPDATE tasks SET lease_expires_at = LEAST($2::float8 + $3::float8, deadline_at), updated_at = $2::float8
           WHERE status = 'claimed' AND claimed_by = $1 AND deadline_at > $2::float8 RETURNING *""",
        agent,
        now,
        lease,
    )
    return _row_to_task(row) if row else None


async def _heartbeat(con: Connection, name: str, now: float, lease: float) -> tuple[Agent, Task | None]:
    row = await _touch_agent(con, name, now)
    task = await _renew_current(con, name, now, lease)
    return _row_to_agent(row), task


async def _create_tasks(con: Connection, tasks: list[NewTask], now: float) -> TaskChange:
    change = TaskChange()
    for spec in tasks:
        deps = sorted({*spec.depends_on, *(change.created[i].id for i in spec.depends_on_batch)})
        dep_rows: list[Row] = []
        if deps:
            # FOR SHARE: a dependency completing right now commits first (and is read as completed), or waits
            # for this insert, so its cascade sees the new dependent. Either way the task is not left blocked.
            dep_rows = await con.fetch(
                "SELECT id, status FROM tasks WHERE id = ANY($1::bigint[]) ORDER BY id FOR SHARE", deps
            )
        broken = [r for r in dep_rows if r["status"] in ("failed", "cancelled", "dead")]
        waiting = [r for r in dep_rows if r["status"] != "completed"]
        status = TaskStatus.FAILED if broken else TaskStatus.BLOCKED if waiting else TaskStatus.PENDING
        error = f"dependency #{broken[0]['id']} ended as {broken[0]['status']}" if broken else None
        row = await con.fetchrow(
            """INSERT INTO tasks (title, prompt, priority, persona, capabilities, working_dir, max_attempts,
                   timeout_seconds, status, error, submitted_by, created_at, updated_at, finished_at)
               VALUES ($1, $2, $3, $4, $5::text[], $6, $7, $8, $9, $10, $11, $12, $12, $13) RETURNING *""",
            spec.title,
            spec.prompt,
            spec.priority,
            spec.persona,
            sorted(set(spec.capabilities)),
            spec.working_dir,
            spec.max_attempts,
            spec.timeout_seconds,
            status.value,
            error,
            spec.submitted_by,
            now,
            now if broken else None,
        )
        if spec.records_isolation:
            row = await con.fetchrow(
                "UPDATE tasks SET isolation = $1, files = $2::text[], base_commit = $3, target_branch = $4 "
                "WHERE id = $5 RETURNING *",
                *submitted_values(spec),
                row["id"],
            )
        if deps:
            await con.execute(
                "INSERT INTO task_deps (task_id, depends_on) SELECT $1, unnest($2::bigint[])", row["id"], deps
            )
        task = _row_to_task(row, depends_on=deps)
        change.created.append(task)
        if status is TaskStatus.PENDING:
            change.claimable.append(task)
        elif status is TaskStatus.FAILED:
            change.finished.append(task.id)
    return change


async def _task_attempts(con: Connection, task_id: int) -> list[Attempt]:
    return [
        Attempt(
            number=r["number"],
            agent=r["agent"],
            fence_token=r["fence_token"],
            claimed_at=r["claimed_at"],
            finished_at=r["finished_at"],
            outcome=AttemptOutcome(r["outcome"]),
            error=r["error"],
        )
        for r in await con.fetch("SELECT * FROM attempts WHERE task_id = $1 ORDER BY number", task_id)
    ]


async def _task_deps(con: Connection, task_id: int) -> list[int]:
    rows = await con.fetch("SELECT depends_on FROM task_deps WHERE task_id = $1 ORDER BY depends_on", task_id)
    return [r[0] for r in rows]


async def _get_task(con: Connection, task_id: int, with_attempts: bool) -> Task | None:
    row = await con.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    if row is None:
        return None
    attempts = await _task_attempts(con, task_id) if with_attempts else None
    return _row_to_task(row, await _task_deps(con, task_id), attempts)


async def _get_tasks(con: Connection, task_ids: list[int]) -> list[Task]:
    rows = {r["id"]: r for r in await con.fetch("SELECT * FROM tasks WHERE id = ANY($1::bigint[])", task_ids)}
    deps: dict[int, list[int]] = {}
    for r in await con.fetch(
        "SELECT task_id, depends_on FROM task_deps WHERE task_id = ANY($1::bigint[]) ORDER BY depends_on",
        list(rows),
    ):
        deps.setdefault(r["task_id"], []).append(r["depends_on"])
    return [_row_to_task(rows[i], deps.get(i, [])) for i in task_ids if i in rows]


async def _list_tasks(con: Connection, status: TaskStatus | None, limit: int, offset: int) -> list[Task]:
    if status is None:
        rows = await con.fetch("SELECT * FROM tasks ORDER BY id DESC LIMIT $1 OFFSET $2", limit, offset)
    else:
        rows = await con.fetch(
            "SELECT * FROM tasks WHERE status = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
            status.value,
            limit,
            offset,
        )
    return [_row_to_task(r) for r in rows]


async def _end_attempt(
    con: Connection, task_id: int, fence: int, outcome: AttemptOutcome, error: str | None, now: float
) -> None:
    await con.execute(
        "UPDATE attempts SET outcome = $1, error = $2, finished_at = $3 WHERE task_id = $4 AND fence_token = $5",
        outcome.value,
        error,
        now,
        task_id,
        fence,
    )


async def _free_agent(con: Connection, agent: str, task_id: int) -> None:
    await con.execute(
        """UPDATE agents SET current_task_id = NULL, status = CASE WHEN status = 'lost' THEN 'lost' ELSE 'idle' END
           WHERE name = $1 AND current_task_id = $2""",
        agent,
        task_id,
    )


async def _claim(con: Connection, agent: str, task_id: int | None, now: float, lease: float) -> ClaimResult:
    me = await _touch_agent(con, agent, now)
    held_id = me["current_task_id"]
    if held_id is not None:
        held = await con.fetchrow("SELECT * FROM tasks WHERE id = $1 FOR UPDATE", held_id)
        if held is not None and held["status"] == "claimed" and held["claimed_by"] == agent:
            if task_id is not None and task_id != held_id:
                return ClaimResult(
                    None,
                    f"You already hold task #{held_id} ({held['title']!r}). Finish it and call "
                    f"report_task_completion(task_id={held_id}, ...) before claiming another task.",
                )
            renewed = await _renew_current(con, agent, now, lease)
            task = renewed or _row_to_task(held)
            return ClaimResult(
                Claim(
                    task=task,
                    fence_token=task.fence_token,
                    lease_expires_at=task.lease_expires_at or now,
                    reclaimed=True,
                )
            )
        await _free_agent(con, agent, held_id)  # stale pointer (e.g. the task was cancelled or requeued)
    if task_id is None:
        row = await con.fetchrow(_CLAIM_NEXT, agent, now, lease, me["persona"], me["capabilities"])
        if row is None:
            return ClaimResult(
                None, "No task is available for you right now. Call wait_for_next_event to wait for one."
            )
    else:
        current = await con.fetchrow(
            """SELECT t.*, ((t.persona IS NULL OR t.persona = $2::text) AND t.capabilities <@ $3::text[]) AS fits
               FROM tasks AS t WHERE t.id = $1 FOR UPDATE""",
            task_id,
            me["persona"],
            me["capabilities"],
        )
        if current is None:
            raise NotFound(
                f"Task #{task_id} does not exist. Call claim_task without task_id to take any task you fit."
            )
        if current["status"] != "pending":
            return ClaimResult(None, _not_claimable(current, agent))
        if not current["fits"]:
            return ClaimResult(
                None,
                f"Task #{task_id} needs persona {current['persona']!r} and capabilities "
                f"{list(current['capabilities'])}, which you do not have. Call claim_task without task_id.",
            )
        row = await con.fetchrow(_CLAIM_ONE, agent, now, lease, task_id)
    task = _row_to_task(row)
    return ClaimResult(
        Claim(task=task, fence_token=task.fence_token, lease_expires_at=task.lease_expires_at or now)
    )


def _not_claimable(row: Row, agent: str) -> str:
    status = row["status"]
    if status == "claimed":
        return (
            f"Task #{row['id']} was already claimed by {row['claimed_by']}. Do not work on it; "
            "call wait_for_next_event (or claim_task without task_id) for other work."
        )
    if status == "blocked":
        return f"Task #{row['id']} is waiting for its dependencies to complete; it cannot be claimed yet."
    return f"Task #{row['id']} is already {status}; there is nothing to do for it. Call wait_for_next_event."


async def _held(con: Connection, agent: str, task_id: int, fence: int) -> Row:
    """The task row, locked, if ``agent`` holds it under ``fence``; otherwise raise a refusal that says what happened."""
    row = await con.fetchrow("SELECT * FROM tasks WHERE id = $1 FOR UPDATE", task_id)
    if row is None:
        raise NotFound(f"Task #{task_id} does not exist. Check the task_id you received from claim_task.")
    if row["status"] == "claimed" and row["claimed_by"] == agent and row["fence_token"] == fence:
        return row
    attempt = await con.fetchrow(
        "SELECT * FROM attempts WHERE task_id = $1 AND fence_token = $2 AND agent = $3", task_id, fence, agent
    )
    if attempt is None:
        if row["claimed_by"] == agent and row["status"] == "claimed":
            raise StaleClaim(
                f"fence_token {fence} is not your current claim on task #{task_id} (it is {row['fence_token']}). "
                "Use the fence_token returned by your latest claim_task."
            )
        raise StaleClaim(
            f"You do not hold task #{task_id}: it was never claimed by you with fence_token {fence}. "
            "Only report tasks that claim_task gave you."
        )
    if row["status"] == "cancelled":
        raise TaskCancelled(
            f"Task #{task_id} was cancelled ({row['error'] or 'no reason given'}). Stop working on it, "
            "discard its changes if they are unwanted, and call wait_for_next_event for new work."
        )
    outcome = attempt["outcome"]
    why = {
        "expired": "your lease expired (no progress report or heartbeat in time, or the task's timeout passed)",
        "agent_lost": "you were marked lost after a long silence",
        "released": "it was released back to the queue",
        "failed": "you already reported it as failed",
        "completed": "you already reported it as completed",
    }.get(outcome, f"your attempt ended as {outcome}")
    now_with = f"; it is now {row['status']}" + (
        f" and held by {row['claimed_by']}" if row["status"] == "claimed" else ""
    )
    raise StaleClaim(
        f"Your claim on task #{task_id} (fence_token {fence}) is no longer valid: {why}{now_with}. "
        "Your report was not recorded. Discard this work and call wait_for_next_event."
    )


async def _renew(
    con: Connection, agent: str, task_id: int, fence: int, now: float, lease: float, progress: str | None
) -> Task:
    await _touch_agent(con, agent, now)
    await _held(con, agent, task_id, fence)
    row = await con.fetchrow(
        """UPDATE tasks SET lease_expires_at = LEAST($2::float8 + $3::float8, deadline_at), updated_at = $2::float8,
               progress = COALESCE($4, progress)
           WHERE id = $1 RETURNING *""",
        task_id,
        now,
        lease,
        progress,
    )
    return _row_to_task(row)


async def _unblock_dependents(con: Connection, task_id: int, now: float, change: TaskChange) -> None:
    # Lock the dependents first, then re-check them in a new statement (a fresh snapshot at READ COMMITTED): of two
    # dependencies completing at once, the second to lock sees the first committed, so one of them unblocks.
    waiting = await con.fetch(
        """SELECT id FROM tasks WHERE status = 'blocked'
               AND id IN (SELECT task_id FROM task_deps WHERE depends_on = $1) ORDER BY id FOR UPDATE""",
        task_id,
    )
    if not waiting:
        return
    rows = await con.fetch(
        """UPDATE tasks SET status = 'pending', updated_at = $2::float8
           WHERE status = 'blocked' AND id IN (SELECT task_id FROM task_deps WHERE depends_on = $1)
             AND NOT EXISTS (SELECT 1 FROM task_deps AS d JOIN tasks AS dep ON dep.id = d.depends_on
                             WHERE d.task_id = tasks.id AND dep.status != 'completed')
           RETURNING *""",
        task_id,
        now,
    )
    change.claimable.extend(_row_to_task(r) for r in rows)


async def _fail_dependents(
    con: Connection, task_id: int, status: str, now: float, change: TaskChange
) -> None:
    """A failed, dead or cancelled task fails everything waiting on it, transitively."""
    frontier = [(task_id, status)]
    while frontier:
        failed_id, failed_status = frontier.pop()
        rows = await con.fetch(
            """UPDATE tasks SET status = 'failed', error = $1, updated_at = $2::float8, finished_at = $2::float8
               WHERE status = 'blocked' AND id IN (SELECT task_id FROM task_deps WHERE depends_on = $3)
               RETURNING id""",
            f"dependency #{failed_id} ended as {failed_status}",
            now,
            failed_id,
        )
        for r in rows:
            change.finished.append(r["id"])
            frontier.append((r["id"], "failed"))


async def _requeue_or_bury(
    con: Connection,
    row: Row,
    outcome: AttemptOutcome,
    error: str,
    now: float,
    change: TaskChange,
    *,
    count_failure: bool = True,
    retryable: bool = True,
) -> None:
    """End the running attempt and put the task back in the queue, or dead-letter it when attempts are used up."""
    task_id, agent = row["id"], row["claimed_by"]
    await _end_attempt(con, task_id, row["fence_token"], outcome, error, now)
    if agent:
        await _free_agent(con, agent, task_id)
    failures = row["failures"] + (1 if count_failure else 0)
    if not retryable:
        status = TaskStatus.FAILED
    elif failures >= row["max_attempts"]:
        status = TaskStatus.DEAD
        error = f"{error} (gave up after {failures} failed attempt(s))"
    else:
        status = TaskStatus.PENDING
    updated = await con.fetchrow(
        """UPDATE tasks SET status = $1, failures = $2, error = $3, claimed_by = NULL, lease_expires_at = NULL,
               claimed_at = NULL, deadline_at = NULL, updated_at = $4, finished_at = $5
           WHERE id = $6 RETURNING *""",
        status.value,
        failures,
        error,
        now,
        now if status.is_terminal else None,
        task_id,
    )
    task = _row_to_task(updated)
    change.task = task
    if status is TaskStatus.PENDING:
        change.claimable.append(task)
    else:
        change.finished.append(task_id)
        await _fail_dependents(con, task_id, status.value, now, change)


async def _complete(
    con: Connection,
    agent: str,
    task_id: int,
    fence: int,
    success: bool,
    retryable: bool,
    result: str | None,
    data: dict[str, Any] | None,
    error: str | None,
    now: float,
) -> TaskChange:
    await _touch_agent(con, agent, now)
    change = TaskChange()
    try:
        row = await _held(con, agent, task_id, fence)
    except StaleClaim:
        # The same report arriving twice (a retry after a lost response) is answered, not refused.
        done = await con.fetchrow(
            "SELECT outcome FROM attempts WHERE task_id = $1 AND fence_token = $2 AND agent = $3",
            task_id,
            fence,
            agent,
        )
        if done is not None and done["outcome"] == ("completed" if success else "failed"):
            change.task = await _get_task(con, task_id, False)
            return change
        raise
    if success:
        # One statement: end the attempt, free the agent, record the result.
        updated = await con.fetchrow(
            """WITH ended AS (
                   UPDATE attempts SET outcome = 'completed', error = NULL, finished_at = $3::float8
                   WHERE task_id = $4 AND fence_token = $5),
               freed AS (
                   UPDATE agents SET current_task_id = NULL,
                       status = CASE WHEN status = 'lost' THEN 'lost' ELSE 'idle' END
                   WHERE name = $6 AND current_task_id = $4)
               UPDATE tasks SET status = 'completed', result = $1, data = $2::json, error = NULL,
                   lease_expires_at = NULL, updated_at = $3::float8, finished_at = $3::float8
               WHERE id = $4 RETURNING *""",
            result,
            _dumps(data) if data is not None else None,
            now,
            task_id,
            fence,
            agent,
        )
        change.task = _row_to_task(updated)
        change.finished.append(task_id)
        await _unblock_dependents(con, task_id, now, change)
    else:
        if result is not None:
            await con.execute("UPDATE tasks SET result = $1 WHERE id = $2", result, task_id)
        await _requeue_or_bury(
            con,
            row,
            AttemptOutcome.FAILED,
            error or "the agent reported failure",
            now,
            change,
            retryable=retryable,
        )
    return change


async def _release(
    con: Connection, agent: str, task_id: int, fence: int | None, reason: str, now: float
) -> TaskChange:
    await _lock_agent(con, agent)
    row = await con.fetchrow("SELECT fence_token FROM tasks WHERE id = $1", task_id)
    if row is None:
        raise NotFound(f"Task #{task_id} does not exist.")
    held = await _held(con, agent, task_id, row["fence_token"] if fence is None else fence)
    change = TaskChange()
    await _requeue_or_bury(con, held, AttemptOutcome.RELEASED, reason, now, change, count_failure=False)
    return change


async def _update_isolation(
    con: Connection, task_id: int, fence: int | None, update: IsolationUpdate, now: float
) -> Task | None:
    pairs = update_assignments(update)
    # column names are IsolationUpdate's fields; list values are the text[] columns
    sets = "".join(
        f"{column} = ${i}{'::text[]' if isinstance(value, list) else ''}, "
        for i, (column, value) in enumerate(pairs, start=4)
    )
    updated = await con.fetchval(
        f"UPDATE tasks SET {sets}updated_at = $1 WHERE id = $2 AND ($3::bigint IS NULL OR fence_token = $3) "
        "RETURNING id",
        now,
        task_id,
        fence,
        *(value for _, value in pairs),
    )
    return await _get_task(con, task_id, True) if updated is not None else None


async def _cancel(con: Connection, task_id: int, reason: str, now: float) -> TaskChange:
    # Lock the holder before the task (agent, then task, as everywhere); if the task changed hands in between,
    # look again.
    while True:
        peek = await con.fetchrow("SELECT status, claimed_by FROM tasks WHERE id = $1", task_id)
        if peek is None:
            raise NotFound(f"Task #{task_id} does not exist. Use list_tasks to see task ids.")
        expected = peek["claimed_by"] if peek["status"] == "claimed" else None
        if expected is not None:
            await _lock_agent(con, expected)
        row = await con.fetchrow("SELECT * FROM tasks WHERE id = $1 FOR UPDATE", task_id)
        if (row["claimed_by"] if row["status"] == "claimed" else None) == expected:
            break
    change = TaskChange()
    status = TaskStatus(row["status"])
    if status.is_terminal:
        change.task = _row_to_task(row, await _task_deps(con, task_id))
        return change
    holder = row["claimed_by"] if status is TaskStatus.CLAIMED else None
    if holder:
        await _end_attempt(con, task_id, row["fence_token"], AttemptOutcome.CANCELLED, reason, now)
        await _free_agent(con, holder, task_id)
        await _append_event(con, holder, EventKind.TASK_CANCELLED, task_id, reason, now)
        change.notified_agents.append(holder)
    updated = await con.fetchrow(
        """UPDATE tasks SET status = 'cancelled', error = $1, lease_expires_at = NULL, updated_at = $2,
               finished_at = $2 WHERE id = $3 RETURNING *""",
        reason,
        now,
        task_id,
    )
    change.task = _row_to_task(updated, await _task_deps(con, task_id))
    change.finished.append(task_id)
    await _fail_dependents(con, task_id, "cancelled", now, change)
    return change


async def _sweep(con: Connection, now: float, lost_before: float, keep_alive: list[str]) -> TaskChange:
    """Several brokers may sweep at once: each lost agent and each expired lease is handled by exactly one of them."""
    change = TaskChange()
    if keep_alive:
        # Agents parked on this broker are alive, but other brokers judge them by last_seen_at: refresh it once they
        # are halfway to the cut-off (one write per agent per half period, not one per sweep).
        await con.execute(
            """UPDATE agents SET last_seen_at = $1::float8
               WHERE name = ANY($2::text[]) AND status != 'lost' AND last_seen_at < $3::float8""",
            now,
            keep_alive,
            (now + lost_before) / 2,
        )
    # A concurrent sweep waits on these rows, re-checks status != 'lost', and leaves them to this one.
    lost = await con.fetch(
        """UPDATE agents SET status = 'lost'
           WHERE status != 'lost' AND last_seen_at < $1::float8 AND NOT (name = ANY($2::text[]))
           RETURNING name""",
        lost_before,
        keep_alive,
    )
    for name in sorted(r["name"] for r in lost):
        for row in await con.fetch(
            "SELECT * FROM tasks WHERE status = 'claimed' AND claimed_by = $1 FOR UPDATE SKIP LOCKED", name
        ):
            message = f"agent {name} was lost (not heard from since before the cut-off)"
            await _append_event(con, name, EventKind.LEASE_LOST, row["id"], message, now)
            await _requeue_or_bury(con, row, AttemptOutcome.AGENT_LOST, message, now, change)
    expired = await con.fetch(
        """SELECT * FROM tasks WHERE status = 'claimed' AND lease_expires_at <= $1::float8
           ORDER BY lease_expires_at FOR UPDATE SKIP LOCKED""",
        now,
    )
    for row in expired:
        holder = row["claimed_by"]
        # Its agent is in the middle of a call (a report may be about to land): leave it to the next sweep rather
        # than wait on the agent's lock while holding the task's (the reverse of everyone else's order).
        if holder is None or not await _lock_agent(con, holder, skip_locked=True):
            continue
        if row["deadline_at"] is not None and row["deadline_at"] <= now:
            message = f"timed out: not completed within its {row['timeout_seconds']} s timeout"
        else:
            message = f"lease expired: {holder} sent no progress report or heartbeat in time"
        await _append_event(con, holder, EventKind.LEASE_LOST, row["id"], message, now)
        change.notified_agents.append(holder)
        await _requeue_or_bury(con, row, AttemptOutcome.EXPIRED, message, now, change)
    return change
