"""A parked wait whose caller is gone (``EXCHANGE_OVER`` resolved by the HTTP layer) stops taking tasks at once."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable

import pytest

from aiswarm_server.broker import Broker
from aiswarm_server.limits import JSON_REPLY_WAIT_MAX_SECONDS
from aiswarm_server.models import TaskRequest
from aiswarm_server.replies import WaitReply
from aiswarm_server.waiters import EXCHANGE_OVER
from tests.conftest import PRIMARY, worker

pytestmark = pytest.mark.anyio


def wait_in_exchange(
    broker: Broker, agent: str, exchange_over: asyncio.Future[None] | None
) -> asyncio.Task[WaitReply]:
    """``agent``'s wait, run as the HTTP layer runs a 2025-11-25 call: with its exchange's future in its context."""
    context = contextvars.copy_context()
    context.run(EXCHANGE_OVER.set, exchange_over)
    return asyncio.get_running_loop().create_task(
        broker.wait_for_next_event(worker(agent), None, 60), context=context
    )


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def test_a_wait_whose_caller_left_unparks_and_the_next_parked_agent_gets_the_task(
    abroker: Broker,
) -> None:
    for name in ("gone-1", "live-1"):
        await abroker.register_agent(worker(name), cli="gemini")
    exchange_over: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    gone = wait_in_exchange(abroker, "gone-1", exchange_over)
    await until(lambda: abroker.agent_waiters.parked_agents() == ["gone-1"])
    live = wait_in_exchange(abroker, "live-1", asyncio.get_running_loop().create_future())
    await until(lambda: abroker.agent_waiters.parked_agents() == ["gone-1", "live-1"])

    exchange_over.set_result(None)
    left = await asyncio.wait_for(gone, 10)
    assert left.events == [] and abroker.agent_waiters.parked_agents() == ["live-1"]

    task = (await abroker.submit_tasks(PRIMARY, [TaskRequest(title="t", prompt="do t")])).tasks[0]
    reply = await asyncio.wait_for(live, 10)
    assert [(e.kind, e.task_id) for e in reply.events] == [("task_available", task.id)]


async def test_a_wait_whose_caller_left_before_it_parked_takes_nothing(abroker: Broker) -> None:
    await abroker.register_agent(worker("gone-2"), cli="qwen")
    task = (await abroker.submit_tasks(PRIMARY, [TaskRequest(title="t", prompt="do t")])).tasks[0]
    exchange_over: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    exchange_over.set_result(None)
    reply = await asyncio.wait_for(wait_in_exchange(abroker, "gone-2", exchange_over), 10)
    assert reply.events == [] and not abroker.agent_waiters.has_parked()
    answered = await abroker.wait_for_next_event(worker("gone-2"), None, 0)  # the agent's next call sees it
    assert [(e.kind, e.task_id) for e in answered.events] == [("task_available", task.id)]


async def test_a_2025_11_25_call_waits_at_most_what_nodes_fetch_waits_for_its_reply(abroker: Broker) -> None:
    abroker.settings.max_wait_seconds = 590
    longest = abroker._longest_wait  # pyright: ignore[reportPrivateUsage]
    assert longest() == 590  # the 2026-07-28 path streams: no bound of its own
    in_exchange = contextvars.copy_context()
    in_exchange.run(EXCHANGE_OVER.set, asyncio.get_running_loop().create_future())
    assert in_exchange.run(longest) == JSON_REPLY_WAIT_MAX_SECONDS < 300
    abroker.settings.max_wait_seconds = 60
    assert in_exchange.run(longest) == 60
