"""A 2025-11-25 client (gemini-cli, qwen-code) that goes away while parked stops taking tasks at once.

Its session's ``wait_for_next_event`` must unpark as soon as the client drops the connection carrying it, or ends
the session with ``DELETE``, as a 2026-07-28 call does when its connection drops: otherwise the next task is
offered to the dead wait first and a live agent gets it only after the ``offer_seconds`` re-offer (5 s here).
Both on SQLite and on PostgreSQL, on the real broker over loopback, with the raw client the benchmark uses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from aiswarm_server.bench.load import parked_waits
from aiswarm_server.bench.rawmcp import LEGACY_PROTOCOL_VERSION, RawMcpConnection
from aiswarm_server.broker_client import BrokerClient
from tests.broker_harness import BrokerProcess
from tests.reliability.swarm import START_TIMEOUT
from tests.store.postgres_fixture import fresh_schema_sync

pytestmark = pytest.mark.anyio

HOST = "127.0.0.1"
OFFER_SECONDS = 5.0  # the broker's default re-offer: a live agent must get the task well before it
REACHED_WITHIN = 3.0


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    """A real broker with the default re-offer delay, on SQLite or on a fresh PostgreSQL schema."""
    home = tmp_path_factory.mktemp(f"parked-{request.param}") / "home"
    env = {"AISWARM_OFFER_SECONDS": str(OFFER_SECONDS), "AISWARM_SWEEP_INTERVAL_SECONDS": "0.5"}
    if request.param == "sqlite":
        process = BrokerProcess(home, env).start(START_TIMEOUT)
        yield process
        process.stop()
        return
    with fresh_schema_sync() as url:
        process = BrokerProcess(home, {**env, "AISWARM_DATABASE_URL": url}).start(START_TIMEOUT)
        yield process
        process.stop()


async def legacy_agent(broker: BrokerProcess, admin: BrokerClient, name: str) -> tuple[RawMcpConnection, str]:
    """A registered 2025-11-25 worker with its standalone GET stream open, as gemini-cli's transport has."""
    token = (await admin.issue_agent_token(name)).token
    connection = await RawMcpConnection.open(HOST, broker.port, token, LEGACY_PROTOCOL_VERSION)
    cursor: str = (await connection.call_tool("register_agent", {"cli": "gemini"}))["cursor"]
    return connection, cursor


async def until(condition: Callable[[], Awaitable[bool]], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.02)
    return False


async def park(
    broker: BrokerProcess, connection: RawMcpConnection, cursor: str, parked: int
) -> asyncio.Task[Any]:
    """Start ``connection``'s wait and return once the broker counts ``parked`` waits."""
    wait = asyncio.create_task(
        connection.call_tool("wait_for_next_event", {"cursor": cursor, "timeout_seconds": 60})
    )
    assert await until(lambda: _parked_is(broker, parked), 30), "the wait never parked"
    return wait


async def _parked_is(broker: BrokerProcess, count: int) -> bool:
    return await parked_waits(broker.port) == count


async def next_task_reaches_the_live_agent(
    broker: BrokerProcess,
    admin: BrokerClient,
    tag: str,
    leave: Callable[[RawMcpConnection, asyncio.Task[Any]], Awaitable[None]],
) -> None:
    """The agent parked first leaves by ``leave``; the next task must reach the agent parked second, at once."""
    dead, dead_cursor = await legacy_agent(broker, admin, f"dead-{tag}")
    live, live_cursor = await legacy_agent(broker, admin, f"live-{tag}")
    dead_wait = await park(broker, dead, dead_cursor, 1)
    live_wait = await park(
        broker, live, live_cursor, 2
    )  # longest-waiting first: the dead agent is offered first
    try:
        left_at = time.monotonic()
        await leave(dead, dead_wait)
        assert await until(lambda: _parked_is(broker, 1), REACHED_WITHIN), (
            "the gone client's wait stayed parked"
        )
        task_id = (await admin.submit_task(f"after {tag} left", "p")).tasks[0].id
        reply = await asyncio.wait_for(live_wait, OFFER_SECONDS + 10)
        reached = time.monotonic() - left_at
        offered = [e["task_id"] for e in reply["events"] if e["kind"] == "task_available"]
        assert task_id in offered, reply
        assert reached < REACHED_WITHIN, f"the live agent got the task {reached:.2f} s after the other left"
        claim = await live.call_tool("claim_task", {"task_id": task_id})
        assert claim["claimed"], claim
        task = (await admin.get_task(task_id)).task
        assert task.claimed_by == f"live-{tag}" and [a.agent for a in task.attempts] == [f"live-{tag}"]
    finally:
        live_wait.cancel()
        dead_wait.cancel()
        await asyncio.gather(live_wait, dead_wait, return_exceptions=True)
        await live.close()
        await dead.close()


async def test_a_parked_client_that_drops_its_connection_gets_no_more_tasks(
    broker: BrokerProcess, admin: BrokerClient
) -> None:
    async def drop(connection: RawMcpConnection, wait: asyncio.Task[Any]) -> None:
        wait.cancel()
        await connection.close()  # the CLI died: its connections close, no DELETE

    await next_task_reaches_the_live_agent(broker, admin, "drop", drop)


async def test_a_parked_client_that_ends_its_session_gets_no_more_tasks(
    broker: BrokerProcess, admin: BrokerClient
) -> None:
    async def end_session(connection: RawMcpConnection, wait: asyncio.Task[Any]) -> None:
        assert await connection.end_session() == 200  # the parked call's own connection stays open
        with pytest.raises(Exception):  # noqa: B017 - the session's streams end; how the answer looks is the SDK's
            await asyncio.wait_for(wait, REACHED_WITHIN)

    await next_task_reaches_the_live_agent(broker, admin, "delete", end_session)
