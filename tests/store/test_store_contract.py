"""The contract every Store backend keeps: each test runs on every backend (the ``store`` fixture, tests/conftest.py)."""

from __future__ import annotations

import functools
import multiprocessing
import queue
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TypeVar, cast

import pytest

from aiswarm_server.errors import NotFound, SchemaTooNew, StaleClaim, StoreUnavailable
from aiswarm_server.models import AgentStatus, AttemptOutcome, EventKind, Identity, NewTask, Role, TaskStatus
from aiswarm_server.store import Store, open_store
from aiswarm_server.store.postgres import PostgresStore
from aiswarm_server.store.sqlite import SqliteStore, migrations

pytestmark = pytest.mark.anyio
NOW = 1_000_000.0
T = TypeVar("T")


def new(title: str = "t", **kwargs: object) -> NewTask:
    return NewTask(title=title, prompt=f"do {title}", **kwargs)  # type: ignore[arg-type]


async def test_create_claim_complete_round_trip(store: Store) -> None:
    change = await store.create_tasks([new("a", priority=1), new("b", priority=5)], NOW)
    assert [t.status for t in change.created] == [TaskStatus.PENDING, TaskStatus.PENDING]
    claim = (await store.claim("w", None, NOW, 30)).claim
    assert claim is not None and claim.task.title == "b"  # higher priority first
    assert claim.lease_expires_at == NOW + 30
    done = await store.complete(
        "w",
        claim.task.id,
        claim.fence_token,
        success=True,
        retryable=True,
        result="ok",
        data={"n": 1},
        error=None,
        now=NOW,
    )
    assert done.finished == [claim.task.id]
    task = await store.get_task(claim.task.id)
    assert task is not None and task.status is TaskStatus.COMPLETED and task.data == {"n": 1}
    assert [a.outcome for a in task.attempts] == [AttemptOutcome.COMPLETED]


async def test_stale_fence_and_foreign_agent_are_refused(store: Store) -> None:
    (task,) = (await store.create_tasks([new()], NOW)).created
    claim = (await store.claim("w", None, NOW, 30)).claim
    assert claim is not None
    with pytest.raises(StaleClaim):
        await store.renew("w", task.id, claim.fence_token + 1, NOW, 30, None)
    with pytest.raises(StaleClaim):
        await store.complete(
            "x",
            task.id,
            claim.fence_token,
            success=True,
            retryable=True,
            result=None,
            data=None,
            error=None,
            now=NOW,
        )
    with pytest.raises(NotFound):
        await store.renew("w", 9999, 1, NOW, 30, None)


async def test_sweep_requeues_expired_leases_and_logs_an_event(store: Store) -> None:
    (task,) = (await store.create_tasks([new(max_attempts=5)], NOW)).created
    await store.claim("w", None, NOW, 30)
    assert await store.next_lease_expiry() == NOW + 30
    change = await store.sweep(NOW + 31, NOW - 1000)
    assert [t.id for t in change.claimable] == [task.id]
    poll = await store.poll_agent("w", None, NOW + 32)
    assert [e.kind for e in poll.events] == [EventKind.LEASE_LOST]
    assert [t.id for t in poll.claimable] == [task.id]


async def test_poll_acknowledges_events_durably(store: Store) -> None:
    (task,) = (await store.create_tasks([new()], NOW)).created
    await store.claim("w", None, NOW, 30)
    await store.cancel(task.id, "stop", NOW)
    first = await store.poll_agent("w", None, NOW)
    assert len(first.events) == 1
    acked = await store.poll_agent("w", first.events[-1].id, NOW)
    assert acked.events == [] and (await store.get_agent("w")).cursor == first.events[-1].id  # type: ignore[union-attr]
    huge = await store.poll_agent("w", 10**15, NOW)  # a cursor past the newest event is clamped
    assert huge.cursor == first.events[-1].id


async def test_stopped_agents_are_offline_until_they_call_again(store: Store) -> None:
    for name in ("stopped-1", "stopped-2", "running-1"):
        await store.register_agent(name, "qwen", None, [], None, NOW)
    marked = await store.mark_agents_offline(["stopped-1", "stopped-2", "never-seen"])
    assert [(a.name, a.status) for a in marked] == [
        ("stopped-1", AgentStatus.OFFLINE),
        ("stopped-2", AgentStatus.OFFLINE),
    ]
    await store.sweep(NOW + 10_000, NOW + 5_000)  # every agent silent past the cut-off
    statuses = {a.name: a.status for a in await store.list_agents()}
    assert statuses == {
        "stopped-1": AgentStatus.OFFLINE,  # an offline agent stays offline, not lost
        "stopped-2": AgentStatus.OFFLINE,
        "running-1": AgentStatus.LOST,
    }
    poll = await store.poll_agent("stopped-1", None, NOW + 10_001)
    assert poll.agent.status is AgentStatus.IDLE  # it called: live again


async def test_tokens_are_stored_as_hashes_and_can_be_revoked(store: Store) -> None:
    await store.add_token("h1", Identity(role=Role.WORKER, agent="a"), NOW)
    assert (await store.find_token("h1")) == Identity(role=Role.WORKER, agent="a")
    assert await store.revoke_tokens(agent="a", now=NOW) == 1
    assert await store.find_token("h1") is None


async def test_refused_write_changes_nothing(store: Store) -> None:
    (task,) = (await store.create_tasks([new()], NOW)).created
    before = await store.get_task(task.id)
    with pytest.raises(StaleClaim):
        await store.complete(
            "nobody", task.id, 1, success=True, retryable=True, result="x", data=None, error=None, now=NOW
        )
    assert await store.get_task(task.id) == before


# --- SQLite specifics ------------------------------------------------------------------------------------


async def test_a_database_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={migrations()[-1][0] + 1}")
    db.close()
    with pytest.raises(SchemaTooNew, match="newer aiswarm"):
        await SqliteStore(path).open()


async def test_a_corrupt_file_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable, match="corrupt"):
        await SqliteStore(path).open()


def _claim_all(where: str, agent: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """A child process: claim and complete until nothing is left; answer with the ids, or with the error."""
    import asyncio
    import traceback

    async def retried(call: Callable[[], Awaitable[T]]) -> T:
        # Four processes share one SQLite file, which the store does not expect (one broker owns it): a write may
        # find the lock held past the store's 250 ms wait on a loaded machine, and is refused with nothing changed.
        # A caller retries such a refusal, as an agent would; so does opening, which reads the schema version.
        deadline = time.monotonic() + 60
        while True:
            try:
                return await call()
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.01)

    async def run() -> list[int]:
        store = open_store(Path(where) if where.endswith(".db") else where)
        await retried(store.open)
        got = []
        try:
            while True:
                claim = (await retried(lambda: store.claim(agent, None, NOW, 30))).claim
                if claim is None:
                    return got
                got.append(claim.task.id)
                report = dict(success=True, retryable=True, result=None, data=None, error=None, now=NOW)
                await retried(
                    functools.partial(store.complete, agent, claim.task.id, claim.fence_token, **report)
                )
        finally:
            await store.close()

    try:
        results.put(("claimed", asyncio.run(run())))
    except BaseException:
        results.put(("failed", f"{agent}: {traceback.format_exc()}"))


def _answers(workers: Sequence[BaseProcess], results: multiprocessing.Queue, within: float) -> list[int]:  # type: ignore[type-arg]
    """Every child's claimed ids; a child's error (or a child gone without answering) fails the test at once."""
    claimed: list[int] = []
    answered = 0
    deadline = time.monotonic() + within
    while answered < len(workers):
        try:
            kind, value = results.get(timeout=0.5)
        except queue.Empty:
            gone = [w.name for w in workers if w.exitcode not in (None, 0)]
            assert not gone, f"{gone} died without answering"
            assert time.monotonic() < deadline, f"only {answered} of {len(workers)} children answered"
            continue
        assert kind == "claimed", value
        claimed += value
        answered += 1
    return claimed


async def test_never_claimed_twice_across_processes(store: Store) -> None:
    created = (await store.create_tasks([new(f"t{i}") for i in range(400)], NOW)).created
    where = str(store.path) if isinstance(store, SqliteStore) else cast("PostgresStore", store).url
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_claim_all, args=(where, f"p{i}", results)) for i in range(4)]
    for worker in workers:
        worker.start()
    try:
        claimed = _answers(workers, results, within=300)
    finally:
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
    assert sorted(claimed) == sorted(t.id for t in created)
