"""Section 5, the store alone: task lifecycles through :class:`SqliteStore` against plain ``sqlite3``.

One lifecycle = create one task, claim it, complete it: three store methods, three transactions. Measured
three ways on fresh database files with the same schema and pragmas (WAL, ``synchronous=NORMAL``):

* ``store``: the real async ``SqliteStore`` as the broker runs it (``durability="normal"``: each method's
  transaction runs on the event loop's thread, pydantic models out);
* ``store_threaded``: the same store with every transaction handed to its database thread (one executor hop
  per method), as it runs with ``durability="full"`` and as every method ran before: the price of the hop;
* ``plain``: hand-written ``sqlite3`` doing the same statements (look up the agent, insert, claim, attempt
  rows, agent status, complete, unblock check) with no models.

``statements`` counts what each variant sent to SQLite per lifecycle (``set_trace_callback``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from aiswarm_server.models import NewTask
from aiswarm_server.store import sqlite as sqlite_store
from aiswarm_server.store.sqlite import SqliteStore

LEASE = 300.0
AGENT = "bench-agent"


async def _store_async(
    path: Path, budget: float, max_count: int, *, threaded: bool = False
) -> dict[str, Any]:
    store = SqliteStore(path)
    store.inline = not threaded
    await store.open()
    try:
        await store.register_agent(AGENT, "bench", None, [], None, time.time())
        count = 0
        start = time.perf_counter()
        while count < max_count and time.perf_counter() - start < budget:
            now = time.time()
            change = await store.create_tasks([NewTask(title="t", prompt="p")], now)
            task_id = change.created[0].id
            outcome = await store.claim(AGENT, None, now, LEASE)
            assert outcome.claim is not None and outcome.claim.task.id == task_id, outcome.reason
            await store.complete(
                AGENT,
                task_id,
                outcome.claim.fence_token,
                success=True,
                retryable=True,
                result="ok",
                data=None,
                error=None,
                now=now,
            )
            count += 1
        elapsed = time.perf_counter() - start
    finally:
        await store.close()
    return _rate(count, elapsed)


_INSERT = """INSERT INTO tasks (title, prompt, priority, persona, capabilities, working_dir, max_attempts,
    timeout_seconds, status, error, submitted_by, created_at, updated_at, finished_at)
    VALUES (?, ?, 0, NULL, '[]', NULL, 3, 1800, 'pending', NULL, '', ?, ?, NULL) RETURNING *"""
_TOUCH = "SELECT * FROM agents WHERE name = :name"  # seen within SEEN_RESOLUTION_SECONDS: not rewritten


def _plain_lifecycle(db: sqlite3.Connection, now: float) -> None:
    db.execute("BEGIN IMMEDIATE")
    task_id = db.execute(_INSERT, ("t", "p", now, now)).fetchone()[0]
    db.execute("COMMIT")

    db.execute("BEGIN IMMEDIATE")
    me = db.execute(_TOUCH, {"name": AGENT}).fetchone()
    params = {"agent": AGENT, "now": now, "lease": LEASE, "persona": me[2], "capabilities": me[3]}
    row = db.execute(sqlite_store._CLAIM_NEXT, params).fetchone()
    assert row[0] == task_id
    number = db.execute(
        "SELECT COALESCE(MAX(number), 0) + 1 FROM attempts WHERE task_id = ?", (task_id,)
    ).fetchone()[0]
    fence = row[11]
    db.execute(
        "INSERT INTO attempts (task_id, number, agent, fence_token, claimed_at, outcome) "
        "VALUES (?, ?, ?, ?, ?, 'running')",
        (task_id, number, AGENT, fence, now),
    )
    db.execute("UPDATE agents SET status = 'busy', current_task_id = ? WHERE name = ?", (task_id, AGENT))
    db.execute("COMMIT")

    db.execute("BEGIN IMMEDIATE")
    db.execute(_TOUCH, {"name": AGENT}).fetchone()
    held = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    assert held[9] == "claimed" and held[10] == AGENT
    db.execute(
        "UPDATE attempts SET outcome = 'completed', error = NULL, finished_at = ? "
        "WHERE task_id = ? AND fence_token = ?",
        (now, task_id, fence),
    )
    db.execute(
        "UPDATE agents SET current_task_id = NULL, status = CASE WHEN status = 'lost' THEN 'lost' ELSE 'idle' END "
        "WHERE name = ? AND current_task_id = ?",
        (AGENT, task_id),
    )
    db.execute(
        "UPDATE tasks SET status = 'completed', result = ?, data = NULL, error = NULL, lease_expires_at = NULL, "
        "updated_at = ?, finished_at = ? WHERE id = ? RETURNING *",
        ("ok", now, now, task_id),
    ).fetchone()
    db.execute(
        """UPDATE tasks SET status = 'pending', updated_at = :now
           WHERE status = 'blocked' AND id IN (SELECT task_id FROM task_deps WHERE depends_on = :id)
             AND NOT EXISTS (SELECT 1 FROM task_deps AS d JOIN tasks AS dep ON dep.id = d.depends_on
                             WHERE d.task_id = tasks.id AND dep.status != 'completed')
           RETURNING *""",
        {"now": now, "id": task_id},
    ).fetchall()
    db.execute("COMMIT")


async def _prepare(path: Path) -> None:
    """A database with the broker's schema and one registered agent, then closed."""
    store = SqliteStore(path)
    await store.open()
    await store.register_agent(AGENT, "bench", None, [], None, time.time())
    await store.close()


def _connect_plain(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=5000"):
        db.execute(f"PRAGMA {pragma}")
    return db


def _plain(path: Path, budget: float, max_count: int) -> dict[str, Any]:
    db = _connect_plain(path)
    try:
        count = 0
        start = time.perf_counter()
        while count < max_count and time.perf_counter() - start < budget:
            _plain_lifecycle(db, time.time())
            count += 1
        elapsed = time.perf_counter() - start
    finally:
        db.close()
    return _rate(count, elapsed)


async def _statements_per_lifecycle(store_path: Path, plain_path: Path) -> dict[str, int]:
    """How many statements each variant sends for one lifecycle (BEGIN/COMMIT included)."""
    store = SqliteStore(store_path)
    counted: dict[str, int] = {}
    db = _connect_plain(store_path)
    db.row_factory = sqlite3.Row
    trace: list[str] = []
    db.set_trace_callback(trace.append)
    store._db = db  # the store's own methods (inline, as the broker runs them) on a traced connection
    now = time.time()
    change = await store.create_tasks([NewTask(title="t", prompt="p")], now)
    outcome = await store.claim(AGENT, None, now, LEASE)
    assert outcome.claim is not None
    await store.complete(
        AGENT,
        change.created[0].id,
        outcome.claim.fence_token,
        success=True,
        retryable=True,
        result="ok",
        data=None,
        error=None,
        now=now,
    )
    counted["store"] = len(trace)
    store._db = None
    db.close()
    store._executor.shutdown()
    plain = _connect_plain(plain_path)
    trace.clear()
    plain.set_trace_callback(trace.append)
    _plain_lifecycle(plain, time.time())
    counted["plain"] = len(trace)
    plain.close()
    return counted


def _rate(count: int, elapsed: float) -> dict[str, Any]:
    return {
        "lifecycles": count,
        "seconds": round(elapsed, 3),
        "lifecycles_per_s": round(count / elapsed, 1) if elapsed > 0 else 0.0,
    }


async def measure_store(workdir: Path, budget: float, max_count: int) -> dict[str, Any]:
    """All three variants, alternated twice so a noisy neighbour hurts each about equally; best run kept."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {"store": [], "store_threaded": [], "plain": []}
    for round_number in range(2):
        paths = {name: workdir / f"{name}-{round_number}.db" for name in runs}
        for path in paths.values():
            await _prepare(path)
        runs["plain"].append(_plain(paths["plain"], budget / 2, max_count))
        runs["store"].append(await _store_async(paths["store"], budget / 2, max_count))
        runs["store_threaded"].append(
            await _store_async(paths["store_threaded"], budget / 2, max_count, threaded=True)
        )
    best = {name: max(results, key=lambda r: r["lifecycles_per_s"]) for name, results in runs.items()}
    check_store, check_plain = workdir / "trace-store.db", workdir / "trace-plain.db"
    await _prepare(check_store)
    await _prepare(check_plain)
    best["statements_per_lifecycle"] = await _statements_per_lifecycle(check_store, check_plain)
    best["store_vs_plain"] = round(best["store"]["lifecycles_per_s"] / best["plain"]["lifecycles_per_s"], 3)
    best["runs"] = runs
    return best
