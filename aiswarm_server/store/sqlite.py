"""The SQLite store: one connection, one transaction per method, no statement-at-a-time hops.

Why not a statement-at-a-time async driver: every statement would be its own hop to the database
thread (~70-85 µs each here); running a whole store method in one hop doubled lifecycle throughput
in the measurements in ``shared/reference/storage.md``.

Where the transactions run depends on the durability (see :class:`SqliteStore`): with the default
``synchronous=NORMAL`` a commit never waits for the disk, so a transaction (tens of µs) runs right on
the event loop's thread, and checkpoints (the only step that syncs) run on a background thread with
their own connection; with ``FULL`` every commit syncs, so transactions go to the store's own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

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
SEEN_RESOLUTION_SECONDS = 2.0
INLINE_BUSY_TIMEOUT_MS = 250
log = logging.getLogger("aiswarm.store")

MIGRATIONS_PACKAGE = "aiswarm_server.store.migrations.sqlite"

# A task fits an agent when its persona is unset or the agent's, and its capabilities are a subset of the agent's.
_FITS = """
    (t.persona IS NULL OR t.persona = :persona)
    AND (t.capabilities = '[]' OR NOT EXISTS (
        SELECT 1 FROM json_each(t.capabilities) AS need
        WHERE need.value NOT IN (SELECT value FROM json_each(:capabilities))))
"""

# Pending tasks in claim order come from the partial index: left to itself, the planner picks
# tasks_by_status and sorts every pending task on each claim (262 µs against 49 µs per claim with
# 1,000 pending, measured).
_PENDING = "tasks AS t INDEXED BY tasks_pending"

_CLAIM_SET = """
    status = 'claimed', claimed_by = :agent, fence_token = fence_token + 1, claimed_at = :now,
    deadline_at = :now + timeout_seconds, lease_expires_at = MIN(:now + :lease, :now + timeout_seconds),
    progress = NULL, updated_at = :now
"""

_CLAIM_NEXT = f"""
UPDATE tasks SET {_CLAIM_SET}
WHERE id = (SELECT t.id FROM {_PENDING} WHERE t.status = 'pending' AND {_FITS} ORDER BY t.priority DESC, t.id LIMIT 1)
RETURNING *
"""

_CLAIM_ONE = f"UPDATE tasks SET {_CLAIM_SET} WHERE id = :task_id AND status = 'pending' RETURNING *"

_CLAIMABLE_FOR = f"""
SELECT t.* FROM {_PENDING} WHERE t.status = 'pending' AND {_FITS} ORDER BY t.priority DESC, t.id LIMIT :limit
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _row_to_task(
    row: sqlite3.Row, depends_on: list[int] | None = None, attempts: list[Attempt] | None = None
) -> Task:
    return Task(
        id=row["id"],
        title=row["title"],
        prompt=row["prompt"],
        priority=row["priority"],
        persona=row["persona"],
        capabilities=json.loads(row["capabilities"]),
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
        **isolation_fields(row, json.loads),
    )


def _row_to_agent(row: sqlite3.Row) -> Agent:
    return Agent(
        name=row["name"],
        cli=row["cli"],
        persona=row["persona"],
        capabilities=json.loads(row["capabilities"]),
        pid=row["pid"],
        status=AgentStatus(row["status"]),
        current_task_id=row["current_task_id"],
        cursor=row["cursor"],
        registered_at=row["registered_at"],
        last_seen_at=row["last_seen_at"],
    )


def _row_to_event(row: sqlite3.Row) -> Event:
    return Event(
        id=row["id"],
        kind=EventKind(row["kind"]),
        agent=row["agent"],
        task_id=row["task_id"],
        detail=row["detail"],
        created_at=row["created_at"],
    )


def migrations() -> list[tuple[int, str]]:
    """The numbered migrations shipped with the package, in order."""
    found: list[tuple[int, str]] = []
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        if entry.name.endswith(".sql") and entry.name[:4].isdigit():
            found.append((int(entry.name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(found)


class SqliteStore(Store):
    """SQLite in WAL mode; ``durability`` picks ``synchronous=NORMAL`` (default) or ``FULL``.

    NORMAL: transactions run inline on the event loop (measured 2.4x the lifecycle rate of a hop to a
    thread per transaction: ``aiswarm bench``, store section), automatic checkpoints are off and a
    background thread checkpoints the WAL every ``checkpoint_seconds`` after writes. A process crash loses
    nothing either way; NORMAL can lose the last commits on power loss, as SQLite documents.
    FULL: every commit is synced to disk, on the store's own thread, so the loop never waits for the disk.
    """

    shared_between_processes = False

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

    # plumbing ------------------------------------------------------------------------------------
    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
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

    def _migrate(self, db: sqlite3.Connection) -> None:
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

    def _transaction(self, fn: Callable[..., T], write: bool, args: tuple[Any, ...]) -> T:
        db = self._db
        if db is None:
            raise StoreUnavailable("the store is closed; restart the broker with `aiswarm serve`")
        try:
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                value = fn(db, *args)
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

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        if self.inline:
            return self._transaction(fn, True, args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._transaction, fn, True, args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if self.inline:
            return self._transaction(fn, False, args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._transaction, fn, False, args)

    async def open(self) -> None:
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
        return await self._read(
            lambda db: [_row_to_agent(r) for r in db.execute("SELECT * FROM agents ORDER BY name")]
        )

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
        def _missing(db: sqlite3.Connection, ids: list[int]) -> list[int]:
            if not ids:
                return []
            found = {
                r[0]
                for r in db.execute(
                    "SELECT id FROM tasks WHERE id IN (SELECT value FROM json_each(?))", (_dumps(ids),)
                )
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
        return await self._read(
            lambda db: db.execute(
                "SELECT MIN(lease_expires_at) FROM tasks WHERE status = 'claimed'"
            ).fetchone()[0]
        )

    async def pending_tasks(self, limit: int) -> list[Task]:
        return await self._read(
            lambda db: [
                _row_to_task(r)
                for r in db.execute(
                    f"SELECT t.* FROM {_PENDING} WHERE t.status = 'pending' ORDER BY t.priority DESC, t.id LIMIT ?",
                    (limit,),
                )
            ]
        )

    # tokens --------------------------------------------------------------------------------------
    async def add_token(self, token_hash: str, identity: Identity, now: float) -> None:
        def _add(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO tokens (token_hash, role, agent, label, created_at) VALUES (?, ?, ?, ?, ?)",
                (token_hash, identity.role.value, identity.agent, identity.label, now),
            )

        await self._write(_add)

    async def find_token(self, token_hash: str) -> Identity | None:
        def _find(db: sqlite3.Connection) -> Identity | None:
            row = db.execute(
                "SELECT role, agent, label FROM tokens WHERE token_hash = ? AND revoked_at IS NULL",
                (token_hash,),
            ).fetchone()
            return Identity(role=Role(row["role"]), agent=row["agent"], label=row["label"]) if row else None

        return await self._read(_find)

    async def revoke_tokens(
        self, *, agent: str | None = None, token_hash: str | None = None, now: float
    ) -> int:
        def _revoke(db: sqlite3.Connection) -> int:
            if token_hash is not None:
                cur = db.execute(
                    "UPDATE tokens SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
                    (now, token_hash),
                )
            else:
                cur = db.execute(
                    "UPDATE tokens SET revoked_at = ? WHERE agent = ? AND revoked_at IS NULL", (now, agent)
                )
            return cur.rowcount

        return await self._write(_revoke)

    async def list_tokens(self) -> list[tuple[str, Identity, float, float | None]]:
        def _list(db: sqlite3.Connection) -> list[tuple[str, Identity, float, float | None]]:
            return [
                (
                    r["token_hash"],
                    Identity(role=Role(r["role"]), agent=r["agent"], label=r["label"]),
                    r["created_at"],
                    r["revoked_at"],
                )
                for r in db.execute("SELECT * FROM tokens ORDER BY created_at")
            ]

        return await self._read(_list)

    async def stats(self) -> StoreStats:
        def _stats(db: sqlite3.Connection) -> StoreStats:
            tasks = {r[0]: r[1] for r in db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status")}
            agents = {r[0]: r[1] for r in db.execute("SELECT status, COUNT(*) FROM agents GROUP BY status")}
            events = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            return StoreStats(tasks=tasks, agents=agents, events=events)

        return await self._read(_stats)


# ------------------------------------------------------------------------------------------------
# Transaction bodies. Each runs on the database thread inside BEGIN ... COMMIT.
# ------------------------------------------------------------------------------------------------


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


def _get_agent(db: sqlite3.Connection, name: str) -> Agent | None:
    row = db.execute("SELECT * FROM agents WHERE name = ?", (name,)).fetchone()
    return _row_to_agent(row) if row else None


def _touch_agent(db: sqlite3.Connection, name: str, now: float) -> sqlite3.Row:
    """Mark the agent seen (creating it on first contact); a lost agent that speaks again is back.

    ``last_seen_at`` is kept to ``SEEN_RESOLUTION_SECONDS``: an agent that calls again within that is not
    rewritten, so a wait that finds nothing new commits no write at all (liveness is judged in minutes).
    """
    row = db.execute("SELECT * FROM agents WHERE name = ?", (name,)).fetchone()
    if row is not None and row["status"] != "lost" and now - row["last_seen_at"] < SEEN_RESOLUTION_SECONDS:
        return row
    row = db.execute(
        """UPDATE agents SET last_seen_at = :now,
               status = CASE WHEN status = 'lost' THEN
                   (CASE WHEN current_task_id IS NULL THEN 'idle' ELSE 'busy' END) ELSE status END
           WHERE name = :name RETURNING *""",
        {"now": now, "name": name},
    ).fetchone()
    if row is None:
        row = db.execute(
            "INSERT INTO agents (name, registered_at, last_seen_at) VALUES (?, ?, ?) RETURNING *",
            (name, now, now),
        ).fetchone()
    return row


def _register_agent(
    db: sqlite3.Connection,
    name: str,
    cli: str,
    persona: str | None,
    capabilities: list[str],
    pid: int | None,
    now: float,
) -> Agent:
    _touch_agent(db, name, now)
    row = db.execute(
        "UPDATE agents SET cli = ?, persona = ?, capabilities = ?, pid = ? WHERE name = ? RETURNING *",
        (cli, persona, _dumps(capabilities), pid, name),
    ).fetchone()
    return _row_to_agent(row)


def _append_event(
    db: sqlite3.Connection, agent: str, kind: EventKind, task_id: int | None, detail: str, now: float
) -> None:
    db.execute(
        "INSERT INTO events (agent, kind, task_id, detail, created_at) VALUES (?, ?, ?, ?, ?)",
        (agent, kind.value, task_id, detail, now),
    )


def _poll_agent(
    db: sqlite3.Connection, name: str, ack_cursor: int | None, now: float, limit: int
) -> AgentPoll:
    row = _touch_agent(db, name, now)
    cursor = max(0, row["cursor"] if ack_cursor is None else ack_cursor)
    if cursor > row["cursor"]:
        # A cursor past the newest event would hide future events: clamp it.
        newest = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        cursor = min(cursor, newest)
    if cursor > row["cursor"]:
        row = db.execute("UPDATE agents SET cursor = ? WHERE name = ? RETURNING *", (cursor, name)).fetchone()
    agent = _row_to_agent(row)
    events = [
        _row_to_event(r)
        for r in db.execute(
            "SELECT * FROM events WHERE agent = ? AND id > ? ORDER BY id LIMIT 50", (name, cursor)
        )
    ]
    claimable: list[Task] = []
    if agent.current_task_id is None:
        claimable = [
            _row_to_task(r)
            for r in db.execute(
                _CLAIMABLE_FOR,
                {"persona": agent.persona, "capabilities": _dumps(agent.capabilities), "limit": limit},
            )
        ]
    return AgentPoll(agent=agent, cursor=cursor, events=events, claimable=claimable)


def _renew_current(db: sqlite3.Connection, agent: str, now: float, lease: float) -> Task | None:
    row = db.execute(
        """UPDATE tasks SET lease_expires_at = MIN(:now + :lease, deadline_at), updated_at = :now
           WHERE status = 'claimed' AND claimed_by = :agent AND deadline_at > :now RETURNING *""",
        {"now": now, "lease": lease, "agent": agent},
    ).fetchone()
    return _row_to_task(row) if row else None


def _heartbeat(db: sqlite3.Connection, name: str, now: float, lease: float) -> tuple[Agent, Task | None]:
    row = _touch_agent(db, name, now)
    task = _renew_current(db, name, now, lease)
    return _row_to_agent(row), task


def _create_tasks(db: sqlite3.Connection, tasks: list[NewTask], now: float) -> TaskChange:
    change = TaskChange()
    for spec in tasks:
        deps = sorted({*spec.depends_on, *(change.created[i].id for i in spec.depends_on_batch)})
        dep_rows = []
        if deps:
            dep_rows = db.execute(
                "SELECT id, status, error FROM tasks WHERE id IN (SELECT value FROM json_each(?))",
                (_dumps(deps),),
            ).fetchall()
        broken = [r for r in dep_rows if r["status"] in ("failed", "cancelled", "dead")]
        waiting = [r for r in dep_rows if r["status"] != "completed"]
        status = TaskStatus.FAILED if broken else TaskStatus.BLOCKED if waiting else TaskStatus.PENDING
        error = f"dependency #{broken[0]['id']} ended as {broken[0]['status']}" if broken else None
        row = db.execute(
            """INSERT INTO tasks (title, prompt, priority, persona, capabilities, working_dir, max_attempts,
                   timeout_seconds, status, error, submitted_by, created_at, updated_at, finished_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *""",
            (
                spec.title,
                spec.prompt,
                spec.priority,
                spec.persona,
                _dumps(sorted(set(spec.capabilities))),
                spec.working_dir,
                spec.max_attempts,
                spec.timeout_seconds,
                status.value,
                error,
                spec.submitted_by,
                now,
                now,
                now if broken else None,
            ),
        ).fetchone()
        if spec.records_isolation:
            isolation, files, base_commit, target_branch = submitted_values(spec)
            row = db.execute(
                "UPDATE tasks SET isolation = ?, files = ?, base_commit = ?, target_branch = ? WHERE id = ? "
                "RETURNING *",
                (isolation, _dumps(files), base_commit, target_branch, row["id"]),
            ).fetchone()
        db.executemany(
            "INSERT INTO task_deps (task_id, depends_on) VALUES (?, ?)", [(row["id"], d) for d in deps]
        )
        task = _row_to_task(row, depends_on=deps)
        change.created.append(task)
        if status is TaskStatus.PENDING:
            change.claimable.append(task)
        elif status is TaskStatus.FAILED:
            change.finished.append(task.id)
    return change


def _task_attempts(db: sqlite3.Connection, task_id: int) -> list[Attempt]:
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
        for r in db.execute("SELECT * FROM attempts WHERE task_id = ? ORDER BY number", (task_id,))
    ]


def _task_deps(db: sqlite3.Connection, task_id: int) -> list[int]:
    return [
        r[0]
        for r in db.execute(
            "SELECT depends_on FROM task_deps WHERE task_id = ? ORDER BY depends_on", (task_id,)
        )
    ]


def _get_task(db: sqlite3.Connection, task_id: int, with_attempts: bool) -> Task | None:
    row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        return None
    return _row_to_task(row, _task_deps(db, task_id), _task_attempts(db, task_id) if with_attempts else None)


def _get_tasks(db: sqlite3.Connection, task_ids: list[int]) -> list[Task]:
    rows = {
        r["id"]: r
        for r in db.execute(
            "SELECT * FROM tasks WHERE id IN (SELECT value FROM json_each(?))", (_dumps(task_ids),)
        )
    }
    return [_row_to_task(rows[i], _task_deps(db, i)) for i in task_ids if i in rows]


def _list_tasks(db: sqlite3.Connection, status: TaskStatus | None, limit: int, offset: int) -> list[Task]:
    if status is None:
        rows = db.execute("SELECT * FROM tasks ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset))
    else:
        rows = db.execute(
            "SELECT * FROM tasks WHERE status = ? ORDER BY id DESC LIMIT ? OFFSET ?",
            (status.value, limit, offset),
        )
    return [_row_to_task(r) for r in rows]


def _start_attempt(db: sqlite3.Connection, task: sqlite3.Row, agent: str, now: float) -> None:
    number = db.execute(
        "SELECT COALESCE(MAX(number), 0) + 1 FROM attempts WHERE task_id = ?", (task["id"],)
    ).fetchone()[0]
    db.execute(
        "INSERT INTO attempts (task_id, number, agent, fence_token, claimed_at, outcome) VALUES (?, ?, ?, ?, ?, 'running')",
        (task["id"], number, agent, task["fence_token"], now),
    )
    db.execute("UPDATE agents SET status = 'busy', current_task_id = ? WHERE name = ?", (task["id"], agent))


def _end_attempt(
    db: sqlite3.Connection, task_id: int, fence: int, outcome: AttemptOutcome, error: str | None, now: float
) -> None:
    db.execute(
        "UPDATE attempts SET outcome = ?, error = ?, finished_at = ? WHERE task_id = ? AND fence_token = ?",
        (outcome.value, error, now, task_id, fence),
    )


def _free_agent(db: sqlite3.Connection, agent: str, task_id: int) -> None:
    db.execute(
        """UPDATE agents SET current_task_id = NULL, status = CASE WHEN status = 'lost' THEN 'lost' ELSE 'idle' END
           WHERE name = ? AND current_task_id = ?""",
        (agent, task_id),
    )


def _claim(db: sqlite3.Connection, agent: str, task_id: int | None, now: float, lease: float) -> ClaimResult:
    me = _touch_agent(db, agent, now)
    held_id = me["current_task_id"]
    if held_id is not None:
        held = db.execute("SELECT * FROM tasks WHERE id = ?", (held_id,)).fetchone()
        if held is not None and held["status"] == "claimed" and held["claimed_by"] == agent:
            if task_id is not None and task_id != held_id:
                return ClaimResult(
                    None,
                    f"You already hold task #{held_id} ({held['title']!r}). Finish it and call "
                    f"report_task_completion(task_id={held_id}, ...) before claiming another task.",
                )
            renewed = _renew_current(db, agent, now, lease)
            task = renewed or _row_to_task(held)
            return ClaimResult(
                Claim(
                    task=task,
                    fence_token=task.fence_token,
                    lease_expires_at=task.lease_expires_at or now,
                    reclaimed=True,
                )
            )
        _free_agent(db, agent, held_id)  # stale pointer (e.g. the task was cancelled or requeued)
    params = {
        "agent": agent,
        "now": now,
        "lease": lease,
        "persona": me["persona"],
        "capabilities": me["capabilities"],
        "task_id": task_id,
    }
    if task_id is None:
        row = db.execute(_CLAIM_NEXT, params).fetchone()
        if row is None:
            return ClaimResult(
                None, "No task is available for you right now. Call wait_for_next_event to wait for one."
            )
    else:
        current = db.execute(
            f"SELECT t.*, ({_FITS}) AS fits FROM tasks AS t WHERE t.id = :task_id", params
        ).fetchone()
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
                f"{json.loads(current['capabilities'])}, which you do not have. Call claim_task without task_id.",
            )
        row = db.execute(_CLAIM_ONE, params).fetchone()
    _start_attempt(db, row, agent, now)
    task = _row_to_task(row)
    return ClaimResult(
        Claim(task=task, fence_token=task.fence_token, lease_expires_at=task.lease_expires_at or now)
    )


def _not_claimable(row: sqlite3.Row, agent: str) -> str:
    status = row["status"]
    if status == "claimed":
        return (
            f"Task #{row['id']} was already claimed by {row['claimed_by']}. Do not work on it; "
            "call wait_for_next_event (or claim_task without task_id) for other work."
        )
    if status == "blocked":
        return f"Task #{row['id']} is waiting for its dependencies to complete; it cannot be claimed yet."
    return f"Task #{row['id']} is already {status}; there is nothing to do for it. Call wait_for_next_event."


def _held(db: sqlite3.Connection, agent: str, task_id: int, fence: int) -> sqlite3.Row:
    """The task row if ``agent`` holds it under ``fence``; otherwise raise a refusal that says what happened."""
    row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        raise NotFound(f"Task #{task_id} does not exist. Check the task_id you received from claim_task.")
    if row["status"] == "claimed" and row["claimed_by"] == agent and row["fence_token"] == fence:
        return row
    attempt = db.execute(
        "SELECT * FROM attempts WHERE task_id = ? AND fence_token = ? AND agent = ?", (task_id, fence, agent)
    ).fetchone()
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


def _renew(
    db: sqlite3.Connection,
    agent: str,
    task_id: int,
    fence: int,
    now: float,
    lease: float,
    progress: str | None,
) -> Task:
    _touch_agent(db, agent, now)
    _held(db, agent, task_id, fence)
    row = db.execute(
        """UPDATE tasks SET lease_expires_at = MIN(:now + :lease, deadline_at), updated_at = :now,
               progress = COALESCE(:progress, progress)
           WHERE id = :id RETURNING *""",
        {"now": now, "lease": lease, "id": task_id, "progress": progress},
    ).fetchone()
    return _row_to_task(row)


def _unblock_dependents(db: sqlite3.Connection, task_id: int, now: float, change: TaskChange) -> None:
    rows = db.execute(
        """UPDATE tasks SET status = 'pending', updated_at = :now
           WHERE status = 'blocked' AND id IN (SELECT task_id FROM task_deps WHERE depends_on = :id)
             AND NOT EXISTS (SELECT 1 FROM task_deps AS d JOIN tasks AS dep ON dep.id = d.depends_on
                             WHERE d.task_id = tasks.id AND dep.status != 'completed')
           RETURNING *""",
        {"now": now, "id": task_id},
    ).fetchall()
    change.claimable.extend(_row_to_task(r) for r in rows)


def _fail_dependents(
    db: sqlite3.Connection, task_id: int, status: str, now: float, change: TaskChange
) -> None:
    """A failed, dead or cancelled task fails everything waiting on it, transitively."""
    frontier = [(task_id, status)]
    while frontier:
        failed_id, failed_status = frontier.pop()
        rows = db.execute(
            """UPDATE tasks SET status = 'failed', error = :error, updated_at = :now, finished_at = :now
               WHERE status = 'blocked' AND id IN (SELECT task_id FROM task_deps WHERE depends_on = :id)
               RETURNING id""",
            {"error": f"dependency #{failed_id} ended as {failed_status}", "now": now, "id": failed_id},
        ).fetchall()
        for r in rows:
            change.finished.append(r["id"])
            frontier.append((r["id"], "failed"))


def _requeue_or_bury(
    db: sqlite3.Connection,
    row: sqlite3.Row,
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
    _end_attempt(db, task_id, row["fence_token"], outcome, error, now)
    if agent:
        _free_agent(db, agent, task_id)
    failures = row["failures"] + (1 if count_failure else 0)
    if not retryable:
        status = TaskStatus.FAILED
    elif failures >= row["max_attempts"]:
        status = TaskStatus.DEAD
        error = f"{error} (gave up after {failures} failed attempt(s))"
    else:
        status = TaskStatus.PENDING
    updated = db.execute(
        """UPDATE tasks SET status = ?, failures = ?, error = ?, claimed_by = NULL, lease_expires_at = NULL,
               claimed_at = NULL, deadline_at = NULL, updated_at = ?, finished_at = ?
           WHERE id = ? RETURNING *""",
        (status.value, failures, error, now, now if status.is_terminal else None, task_id),
    ).fetchone()
    task = _row_to_task(updated)
    change.task = task
    if status is TaskStatus.PENDING:
        change.claimable.append(task)
    else:
        change.finished.append(task_id)
        _fail_dependents(db, task_id, status.value, now, change)


def _complete(
    db: sqlite3.Connection,
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
    _touch_agent(db, agent, now)
    change = TaskChange()
    try:
        row = _held(db, agent, task_id, fence)
    except StaleClaim:
        # The same report arriving twice (a retry after a lost response) is answered, not refused.
        done = db.execute(
            "SELECT outcome FROM attempts WHERE task_id = ? AND fence_token = ? AND agent = ?",
            (task_id, fence, agent),
        ).fetchone()
        if done is not None and done["outcome"] == ("completed" if success else "failed"):
            change.task = _get_task(db, task_id, False)
            return change
        raise
    if success:
        _end_attempt(db, task_id, fence, AttemptOutcome.COMPLETED, None, now)
        _free_agent(db, agent, task_id)
        updated = db.execute(
            """UPDATE tasks SET status = 'completed', result = ?, data = ?, error = NULL, lease_expires_at = NULL,
                   updated_at = ?, finished_at = ? WHERE id = ? RETURNING *""",
            (result, _dumps(data) if data is not None else None, now, now, task_id),
        ).fetchone()
        change.task = _row_to_task(updated)
        change.finished.append(task_id)
        _unblock_dependents(db, task_id, now, change)
    else:
        if result is not None:
            db.execute("UPDATE tasks SET result = ? WHERE id = ?", (result, task_id))
        _requeue_or_bury(
            db,
            row,
            AttemptOutcome.FAILED,
            error or "the agent reported failure",
            now,
            change,
            retryable=retryable,
        )
    return change


def _release(
    db: sqlite3.Connection, agent: str, task_id: int, fence: int | None, reason: str, now: float
) -> TaskChange:
    row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        raise NotFound(f"Task #{task_id} does not exist.")
    row = _held(db, agent, task_id, row["fence_token"] if fence is None else fence)
    change = TaskChange()
    _requeue_or_bury(db, row, AttemptOutcome.RELEASED, reason, now, change, count_failure=False)
    return change


def _update_isolation(
    db: sqlite3.Connection, task_id: int, fence: int | None, update: IsolationUpdate, now: float
) -> Task | None:
    pairs = update_assignments(update)
    sets = "".join(f"{column} = ?, " for column, _ in pairs)  # column names are IsolationUpdate's fields
    values = [_dumps(v) if isinstance(v, list) else v for _, v in pairs]
    updated = db.execute(
        f"UPDATE tasks SET {sets}updated_at = ? WHERE id = ? AND (? IS NULL OR fence_token = ?) RETURNING id",
        (*values, now, task_id, fence, fence),
    ).fetchone()
    return _get_task(db, task_id, True) if updated else None


def _cancel(db: sqlite3.Connection, task_id: int, reason: str, now: float) -> TaskChange:
    row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        raise NotFound(f"Task #{task_id} does not exist. Use list_tasks to see task ids.")
    change = TaskChange()
    status = TaskStatus(row["status"])
    if status.is_terminal:
        change.task = _row_to_task(row, _task_deps(db, task_id))
        return change
    holder = row["claimed_by"] if status is TaskStatus.CLAIMED else None
    if holder:
        _end_attempt(db, task_id, row["fence_token"], AttemptOutcome.CANCELLED, reason, now)
        _free_agent(db, holder, task_id)
        _append_event(db, holder, EventKind.TASK_CANCELLED, task_id, reason, now)
        change.notified_agents.append(holder)
    updated = db.execute(
        """UPDATE tasks SET status = 'cancelled', error = ?, lease_expires_at = NULL, updated_at = ?, finished_at = ?
           WHERE id = ? RETURNING *""",
        (reason, now, now, task_id),
    ).fetchone()
    change.task = _row_to_task(updated, _task_deps(db, task_id))
    change.finished.append(task_id)
    _fail_dependents(db, task_id, "cancelled", now, change)
    return change


def _sweep(db: sqlite3.Connection, now: float, lost_before: float, keep_alive: list[str]) -> TaskChange:
    change = TaskChange()
    # Agents parked in a wait are alive without being written to every second (1,000 parked agents made
    # that a 1,000-row write per sweep); only the silent ones are looked at.
    silent = db.execute(
        "SELECT name FROM agents WHERE status != 'lost' AND last_seen_at < ?", (lost_before,)
    ).fetchall()
    alive = set(keep_alive)
    lost_names = [r["name"] for r in silent if r["name"] not in alive]
    if lost_names:
        db.execute(
            "UPDATE agents SET status = 'lost' WHERE name IN (SELECT value FROM json_each(?))",
            (_dumps(lost_names),),
        )
    for name in lost_names:
        for row in db.execute(
            "SELECT * FROM tasks WHERE status = 'claimed' AND claimed_by = ?", (name,)
        ).fetchall():
            message = f"agent {name} was lost (not heard from since before the cut-off)"
            _append_event(db, name, EventKind.LEASE_LOST, row["id"], message, now)
            _requeue_or_bury(db, row, AttemptOutcome.AGENT_LOST, message, now, change)
    expired = db.execute(
        "SELECT * FROM tasks WHERE status = 'claimed' AND lease_expires_at <= ? ORDER BY lease_expires_at",
        (now,),
    ).fetchall()
    for row in expired:
        if row["deadline_at"] is not None and row["deadline_at"] <= now:
            message = f"timed out: not completed within its {row['timeout_seconds']} s timeout"
        else:
            message = f"lease expired: {row['claimed_by']} sent no progress report or heartbeat in time"
        _append_event(db, row["claimed_by"], EventKind.LEASE_LOST, row["id"], message, now)
        change.notified_agents.append(row["claimed_by"])
        _requeue_or_bury(db, row, AttemptOutcome.EXPIRED, message, now, change)
    return change
