"""A submit that wakes a parked agent lets that agent's wait answer first: the worker is the one waiting."""

from __future__ import annotations

import asyncio

import pytest

from aiswarm_server.broker import Broker
from aiswarm_server.models import TaskRequest
from tests.conftest import PRIMARY, worker

# The order is the in-process one (SQLite's transactions run on the loop); on PostgreSQL the woken wait re-reads
# over the network, so which answer leaves first is up to the I/O.
pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("unopened_store", ["sqlite_store"], indirect=True)]


async def test_the_woken_wait_answers_before_the_submit_that_woke_it(abroker: Broker) -> None:
    await abroker.register_agent(worker("qwen-1"), cli="qwen")
    order: list[str] = []

    async def wait() -> None:
        reply = await abroker.wait_for_next_event(worker("qwen-1"), None, 30)
        order.append(f"wait:{reply.events[0].kind}")

    waiting = asyncio.create_task(wait())
    for _ in range(500):  # until parked: the wait has read the store and found nothing (no event to await)
        if abroker.agent_waiters.has_parked():
            break
        await asyncio.sleep(0.01)
    reply = await abroker.submit_tasks(PRIMARY, [TaskRequest(title="t", prompt="do t")])
    order.append("submit")
    await asyncio.wait_for(waiting, 5)
    assert order == ["wait:task_available", "submit"]
    assert reply.tasks[0].status == "pending"
