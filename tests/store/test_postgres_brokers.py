"""Two real ``aiswarm serve`` processes, each with its own home, sharing one PostgreSQL database.

What sharing must give: a task submitted on one broker wakes agents parked on the other (LISTEN/NOTIFY), a
primary waiting on one broker hears of completions on the other, and however the agents are spread over the
brokers every task is claimed and completed exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from aiswarm_server.broker_client import BrokerClient
from tests.broker_harness import BrokerProcess
from tests.store.postgres_fixture import fresh_schema_sync

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, BrokerProcess]]:
    with fresh_schema_sync() as url:
        env = {"AISWARM_DATABASE_URL": url, "AISWARM_LEASE_SECONDS": "30"}
        a = BrokerProcess(tmp_path_factory.mktemp("broker-a") / "home", env).start()
        try:
            b = BrokerProcess(tmp_path_factory.mktemp("broker-b") / "home", env).start()
            try:
                yield a, b
            finally:
                b.stop()
        finally:
            a.stop()


async def agent_token(broker: BrokerProcess, name: str) -> str:
    async with BrokerClient(broker.url, broker.admin_token) as admin:
        return (await admin.issue_agent_token(name)).token


async def parked(worker: BrokerClient, cursor: str) -> tuple[list[int], float]:
    """Wait for the next event; the tasks it offers and when it returned."""
    reply = await worker.wait_for_next_event(cursor, 20)
    return [e.task_id for e in reply.events if e.kind == "task_available" and e.task_id], time.monotonic()


async def test_a_task_submitted_on_one_broker_wakes_an_agent_parked_on_the_other(
    brokers: tuple[BrokerProcess, BrokerProcess],
) -> None:
    a, b = brokers
    on_a, on_b = await agent_token(a, "wake-a"), await agent_token(a, "wake-b")  # tokens live in the database
    async with (
        BrokerClient(a.url, a.primary_token) as primary,
        BrokerClient(a.url, on_a) as worker_a,
        BrokerClient(b.url, on_b) as worker_b,
    ):
        cursor_a = (await worker_a.register_agent(cli="test")).cursor
        cursor_b = (await worker_b.register_agent(cli="test")).cursor
        wait_a = asyncio.create_task(parked(worker_a, cursor_a))
        wait_b = asyncio.create_task(parked(worker_b, cursor_b))
        await asyncio.sleep(0.5)  # both parked
        submitted_at = time.monotonic()
        (task,) = (await primary.submit_task("shared", "do the shared thing")).tasks
        (offered_a, _), (offered_b, woke_b) = await asyncio.gather(wait_a, wait_b)
        assert (
            offered_b == [task.id] and woke_b - submitted_at < 3.0
        )  # woken by the notification, not the timeout
        assert offered_a == [task.id]
        claims = await asyncio.gather(worker_a.claim_task(task.id), worker_b.claim_task(task.id))
        assert sorted(c.claimed for c in claims) == [False, True]
        winner = worker_a if claims[0].claimed else worker_b
        won = claims[0] if claims[0].claimed else claims[1]
        await winner.report_task_completion(task.id, won.fence_token or 0, success=True, result="done")
        got = (await primary.get_task(task.id)).task
        assert got.status == "completed" and len(got.attempts) == 1


async def test_a_primary_waiting_on_one_broker_hears_a_completion_on_the_other(
    brokers: tuple[BrokerProcess, BrokerProcess],
) -> None:
    a, b = brokers
    token = await agent_token(a, "finisher")
    async with (
        BrokerClient(b.url, b.primary_token) as primary_b,
        BrokerClient(a.url, token) as worker_a,
    ):
        await worker_a.register_agent(cli="test", capabilities=["finish"])
        (task,) = (await primary_b.submit_task("finish me", "finish", capabilities=["finish"])).tasks
        waiting = asyncio.create_task(primary_b.wait_for_tasks([task.id], "all", 20))
        await asyncio.sleep(0.3)
        claim = await worker_a.claim_task(task.id)
        assert claim.claimed
        await worker_a.report_task_completion(
            task.id, claim.fence_token or 0, success=True, result="finished"
        )
        finished_at = time.monotonic()
        reply = await waiting
        assert reply.done and reply.tasks[0].result == "finished"
        assert time.monotonic() - finished_at < 3.0


async def test_agents_spread_over_both_brokers_complete_every_task_exactly_once(
    brokers: tuple[BrokerProcess, BrokerProcess],
) -> None:
    a, b = brokers
    agents = [(f"drain-{i}", a if i % 2 == 0 else b) for i in range(6)]
    tokens = [await agent_token(a, name) for name, _ in agents]
    expected: set[int] = set()
    submitted = asyncio.Event()
    completed: list[int] = []

    async def work(broker: BrokerProcess, token: str) -> None:
        async with BrokerClient(broker.url, token) as worker:
            cursor = (await worker.register_agent(cli="test", capabilities=["drain"])).cursor
            while not (submitted.is_set() and expected <= set(completed)):
                cursor = (await worker.wait_for_next_event(cursor, 2)).cursor
                claim = await worker.claim_task()
                while claim.claimed and claim.task is not None:
                    await worker.report_task_completion(claim.task.id, claim.fence_token or 0, success=True)
                    completed.append(claim.task.id)
                    claim = await worker.claim_task()

    async with (
        BrokerClient(a.url, a.primary_token) as primary_a,
        BrokerClient(b.url, b.primary_token) as primary_b,
    ):
        workers = [
            asyncio.create_task(work(broker, token))
            for (_, broker), token in zip(agents, tokens, strict=True)
        ]
        await asyncio.sleep(0.5)  # parked
        specs = [{"title": f"drain {i}", "prompt": "drain", "capabilities": ["drain"]} for i in range(40)]
        ids = [t.id for t in (await primary_a.submit_tasks(specs[:20])).tasks]
        ids += [t.id for t in (await primary_b.submit_tasks(specs[20:])).tasks]
        expected.update(ids)
        submitted.set()
        await asyncio.wait_for(asyncio.gather(*workers), 60)
        assert sorted(completed) == sorted(ids)  # every task once, none twice
        done = await primary_b.wait_for_tasks(ids, "all", 5)
        assert done.done and all(t.status == "completed" for t in done.tasks)
