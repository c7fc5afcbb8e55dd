"""Workers asking the primary, over the wire: a real ``aiswarm serve`` on loopback, a worker and a plain primary
client (real MCP clients with their own tokens), both protocol generations."""

from __future__ import annotations

import asyncio

import pytest

from aiswarm_server.broker_client import BrokerCallError, BrokerClient, Mode
from aiswarm_server.models import QuestionStatus
from aiswarm_server.replies import AnswerReply
from tests.broker_harness import BrokerProcess
from tests.mcp.test_mcp_http import MODES, agent_token

pytestmark = pytest.mark.anyio


async def holding(primary: BrokerClient, worker: BrokerClient, title: str) -> tuple[int, int]:
    """The primary submits a task and the worker claims it: its id and fence token."""
    await worker.register_agent(cli="test")
    task_id = (await primary.submit_task(title, "ask the primary first")).tasks[0].id
    claim = await worker.claim_task(task_id)
    assert claim.claimed and claim.fence_token is not None, claim.message
    return task_id, claim.fence_token


@pytest.mark.parametrize("mode", MODES)
async def test_a_question_wakes_wait_for_tasks_and_the_answer_ends_the_workers_ask(
    live_broker: BrokerProcess, mode: Mode
) -> None:
    token = await agent_token(live_broker, f"asker-{mode}")
    async with (
        BrokerClient(live_broker.url, live_broker.primary_token, mode=mode) as primary,
        BrokerClient(live_broker.url, token, mode=mode) as worker,
    ):
        task_id, fence = await holding(primary, worker, f"decide {mode}")
        asking = asyncio.create_task(
            worker.ask_primary(
                task_id, fence, "Keep the old API?", options=["keep", "break"], wait_seconds=120
            )
        )
        waited = await primary.wait_for_tasks([task_id], timeout_seconds=120)
        assert not waited.done and [q.question for q in waited.questions] == ["Keep the old API?"]
        assert waited.questions[0].options == ["keep", "break"]
        assert (await primary.get_task(task_id)).task.question is not None

        with pytest.raises(BrokerCallError):  # a worker is not even offered the primary's tool
            await worker.call("answer_question", AnswerReply, task_id=task_id, answer="break")
        await primary.answer_question(task_id, "keep")
        reply = await asyncio.wait_for(asking, 120)

        assert reply.status is QuestionStatus.ANSWERED and reply.answer == "keep"
        await worker.report_task_completion(task_id, fence, success=True, result=f"kept it ({reply.answer})")
        done = await primary.wait_for_tasks([task_id], timeout_seconds=120)
        assert done.done and done.tasks[0].result == "kept it (keep)"


async def test_an_answer_given_after_the_ask_returned_reaches_the_workers_next_wait(
    live_broker: BrokerProcess,
) -> None:
    token = await agent_token(live_broker, "asker-later")
    async with (
        BrokerClient(live_broker.url, live_broker.primary_token) as primary,
        BrokerClient(live_broker.url, token) as worker,
    ):
        task_id, fence = await holding(primary, worker, "decide later")
        asked = await worker.ask_primary(task_id, fence, "Which port?", wait_seconds=0)
        assert asked.status is QuestionStatus.OPEN and asked.cursor is not None

        waiting = asyncio.create_task(worker.wait_for_next_event(asked.cursor, 120))
        await asyncio.sleep(0.2)
        await primary.answer_question(task_id, "8080")
        event = await asyncio.wait_for(waiting, 120)

        assert [(e.kind, e.task_id, e.detail) for e in event.events] == [
            ("question_answered", task_id, "8080")
        ]


async def test_an_unanswered_question_lets_the_waiting_worker_continue_at_its_deadline(
    live_broker: BrokerProcess,
) -> None:
    token = await agent_token(live_broker, "asker-alone")
    async with (
        BrokerClient(live_broker.url, live_broker.primary_token) as primary,
        BrokerClient(live_broker.url, token) as worker,
    ):
        task_id, fence = await holding(primary, worker, "nobody answers")
        reply = await worker.ask_primary(
            task_id, fence, "Anyone there?", answer_within_seconds=1, wait_seconds=120
        )
        assert reply.status is QuestionStatus.EXPIRED and "own judgement" in reply.message
        task = (await primary.get_task(task_id)).task
        assert task.status == "claimed" and task.question is None
