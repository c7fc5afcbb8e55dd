"""What only the PostgreSQL store has to do: share one database between broker processes safely, announce changes
to the other brokers, and refuse a schema from a newer aiswarm. (The common contract is test_store_contract.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import ValidationError

from aiswarm_server.config import BrokerSettings
from aiswarm_server.errors import SchemaTooNew
from aiswarm_server.models import NewTask, Task, TaskChange, TaskStatus
from aiswarm_server.store import open_store
from aiswarm_server.store.postgres import PostgresStore, migrations
from aiswarm_server.store.postgres_notify import change_payloads
from aiswarm_server.store.sqlite import SqliteStore
from tests.store.postgres_fixture import fresh_schema

pytestmark = pytest.mark.anyio
NOW = 1_000_000.0


def new(title: str = "t", **kwargs: object) -> NewTask:
    return NewTask(title=title, prompt=f"do {title}", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with fresh_schema() as schema_url:
        yield schema_url


@contextlib.asynccontextmanager
async def brokers(url: str, count: int) -> AsyncIterator[list[PostgresStore]]:
    """``count`` stores on one database, opened as that many broker processes would, closed afterwards."""
    stores = [PostgresStore(url) for _ in range(count)]
    async with contextlib.AsyncExitStack() as stack:
        for store in stores:
            await store.open()
            stack.push_async_callback(store.close)
        yield stores


class Heard:
    """The changes a store's watcher hands to the service, and a way to wait for the next one."""

    def __init__(self) -> None:
        self.changes: list[TaskChange] = []
        self.arrived = asyncio.Event()

    def __call__(self, change: TaskChange) -> None:
        self.changes.append(change)
        self.arrived.set()

    async def next(self, timeout: float = 3.0) -> TaskChange:
        await asyncio.wait_for(self.arrived.wait(), timeout)
        self.arrived.clear()
        change = TaskChange()
        for heard in self.changes:
            change.claimable += heard.claimable
            change.finished += heard.finished
            change.notified_agents += heard.notified_agents
        self.changes.clear()
        return change


async def test_other_brokers_hear_claimable_finished_and_notified_but_not_their_own(url: str) -> None:
    async with brokers(url, 2) as (a, b):
        heard_a, heard_b = Heard(), Heard()
        await a.watch_changes(heard_a)
        await b.watch_changes(heard_b)
        (task,) = (await a.create_tasks([new()], NOW)).created
        change = await heard_b.next()
        assert [t.id for t in change.claimable] == [task.id]  # re-read from the database: a whole Task
        claim = (await b.claim("w", None, NOW, 30)).claim
        assert claim is not None
        await b.cancel(task.id, "no longer needed", NOW)
        change = await heard_a.next()
        assert task.id in change.finished and change.notified_agents == ["w"]
        await asyncio.sleep(0.2)
        assert not heard_b.changes and not heard_b.arrived.is_set()  # b never hears itself


async def test_a_claimable_task_already_taken_is_not_offered(url: str) -> None:
    async with brokers(url, 2) as (a, b):
        heard = Heard()
        await b.watch_changes(heard)
        # Taken before b re-reads it: b's rebuilt change must not offer it.
        con = await asyncpg.connect(url)
        try:
            await con.execute(
                "INSERT INTO tasks (title, prompt, max_attempts, timeout_seconds, status, created_at, updated_at)"
                " VALUES ('x', 'x', 3, 60, 'claimed', 0, 0)"
            )
            await con.execute("SELECT pg_notify($1, $2)", a.channel, json.dumps({"o": "elsewhere", "c": [1]}))
        finally:
            await con.close()
        change = await heard.next()
        assert change.claimable == []


async def test_the_listener_comes_back_after_its_connection_is_killed(url: str) -> None:
    async with brokers(url, 2) as (a, b):
        heard = Heard()
        await b.watch_changes(heard)
        con = await asyncpg.connect(url)
        try:
            killed = await con.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'LISTEN %' "
                "AND query LIKE $1",
                f"%{b.channel}%",
            )
        finally:
            await con.close()
        assert killed == 1
        await asyncio.sleep(0.5)  # reconnected (the catch-up re-announces what may have been missed)
        heard.changes.clear()
        heard.arrived.clear()
        (task,) = (await a.create_tasks([new()], NOW)).created
        for _ in range(3):
            change = await heard.next(5.0)
            if task.id in [t.id for t in change.claimable]:
                break
        else:
            pytest.fail("the re-opened listener never heard the new task")


def test_an_oversized_change_is_spread_over_payloads_and_asks_for_a_pending_re_read() -> None:
    change = TaskChange(
        claimable=[Task(id=i, title="t", prompt="p", created_at=NOW, updated_at=NOW) for i in range(3000)],
        finished=list(range(10**9, 10**9 + 3000)),
        notified_agents=[f"agent-with-a-long-name-{i:040d}" for i in range(300)],
    )
    payloads = change_payloads("me", change)
    notes = [json.loads(p) for p in payloads]
    assert len(payloads) > 1 and all(len(p.encode()) < 8000 for p in payloads)
    assert notes[0]["c"] is True and all(n["c"] is False for n in notes[1:])
    assert sorted(i for n in notes for i in n["f"]) == change.finished
    assert [a for n in notes for a in n["a"]] == change.notified_agents
    small = change_payloads("me", TaskChange(finished=[7], notified_agents=["w"]))
    assert [json.loads(p) for p in small] == [{"o": "me", "c": [], "f": [7], "a": ["w"]}]


async def test_concurrent_sweeps_requeue_each_expired_lease_once(url: str) -> None:
    async with brokers(url, 3) as stores:
        tasks = (await stores[0].create_tasks([new(f"t{i}", max_attempts=5) for i in range(20)], NOW)).created
        for i in range(20):
            assert (await stores[0].claim(f"w{i}", None, NOW, 30)).claim is not None
        changes = await asyncio.gather(*(s.sweep(NOW + 31, NOW - 1000) for s in stores))
        requeued = sorted(t.id for c in changes for t in c.claimable)
        assert requeued == sorted(t.id for t in tasks)
        for task in await stores[0].get_tasks([t.id for t in tasks]):
            assert task.status is TaskStatus.PENDING and task.failures == 1


async def test_two_dependencies_completing_at_once_unblock_their_dependent(url: str) -> None:
    async with brokers(url, 2) as stores:
        for round_ in range(10):
            first, second = (await stores[0].create_tasks([new("d1"), new("d2")], NOW)).created
            (dependent,) = (
                await stores[0].create_tasks([new("x", depends_on=[first.id, second.id])], NOW)
            ).created
            claims = [
                (await stores[i].claim(f"d{round_}-{i}", t.id, NOW, 30)).claim
                for i, t in enumerate([first, second])
            ]
            await asyncio.gather(
                *(
                    stores[i].complete(
                        f"d{round_}-{i}",
                        c.task.id,
                        c.fence_token,
                        success=True,
                        retryable=True,
                        result=None,
                        data=None,
                        error=None,
                        now=NOW,
                    )
                    for i, c in enumerate(claims)
                    if c is not None
                )
            )
            got = await stores[0].get_task(dependent.id)
            assert got is not None and got.status is TaskStatus.PENDING, f"round {round_}: {got}"


async def test_a_database_from_a_newer_schema_is_refused(url: str) -> None:
    store = PostgresStore(url)
    await store.open()
    await store.close()
    con = await asyncpg.connect(url)
    try:
        await con.execute("INSERT INTO aiswarm_schema_version VALUES ($1, 0)", migrations()[-1][0] + 1)
    finally:
        await con.close()
    with pytest.raises(SchemaTooNew, match="newer aiswarm"):
        await PostgresStore(url).open()


def _claim_all(url: str, agent: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def run() -> list[int]:
        store = PostgresStore(url, pool_size=2)
        await store.open()
        got = []
        try:
            while True:
                claim = (await store.claim(agent, None, NOW, 30)).claim
                if claim is None:
                    return got
                got.append(claim.task.id)
                await store.complete(
                    agent,
                    claim.task.id,
                    claim.fence_token,
                    success=True,
                    retryable=True,
                    result=None,
                    data=None,
                    error=None,
                    now=NOW,
                )
        finally:
            await store.close()

    results.put(asyncio.run(run()))


async def test_never_claimed_twice_across_processes(url: str) -> None:
    store = PostgresStore(url)
    await store.open()
    created = (await store.create_tasks([new(f"t{i}") for i in range(400)], NOW)).created
    await store.close()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_claim_all, args=(url, f"p{i}", results)) for i in range(4)]
    for worker in workers:
        worker.start()
    claimed = [task_id for _ in workers for task_id in await asyncio.to_thread(results.get, timeout=120)]
    for worker in workers:
        worker.join(30)
    assert sorted(claimed) == sorted(t.id for t in created)


async def test_an_agent_parked_on_one_broker_is_not_declared_lost_by_another(url: str) -> None:
    async with brokers(url, 2) as (here, there):
        await here.register_agent("parked", "test", None, [], None, NOW)
        lost_after = 600.0
        later = NOW + 400  # past half the cut-off: this broker's sweep writes the agent's liveness down
        await here.sweep(later, later - lost_after, keep_alive=["parked"])
        elsewhere = NOW + 700  # the other broker knows nothing of the parked wait
        await there.sweep(elsewhere, elsewhere - lost_after)
        agent = await there.get_agent("parked")
        assert agent is not None and agent.status.value == "idle" and agent.last_seen_at == later


def test_the_database_url_must_be_postgresql_and_picks_the_store(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="only PostgreSQL"):
        BrokerSettings(home=tmp_path, database_url="mysql://me:secret@db/aiswarm")
    assert isinstance(open_store(BrokerSettings(home=tmp_path)), SqliteStore)
    assert BrokerSettings(home=tmp_path, database_url=" ").database_url is None
    settings = BrokerSettings(home=tmp_path, database_url="postgres://me:secret@db:5432/aiswarm")
    store = open_store(settings)
    assert isinstance(store, PostgresStore) and store.where == "postgres://me:***@db:5432/aiswarm"
    assert settings.database_label == "postgres://me:***@db:5432/aiswarm"


def test_sqlite_users_never_import_asyncpg() -> None:
    probe = (
        "import sys; from aiswarm_server.config import BrokerSettings; from aiswarm_server.store import open_store; "
        "import aiswarm_server.http_app, aiswarm_server.serve; open_store(BrokerSettings()); "
        "print('asyncpg' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
