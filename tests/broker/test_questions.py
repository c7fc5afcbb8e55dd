"""Workers ask the primary: a fenced question on the task, the primary's answer delivered to the worker's wait, and
the deadline that lets the worker go on or fails the attempt. Every test runs on each store (``abroker``)."""

from __future__ import annotations

import asyncio

import pytest

from aiswarm_server.broker import Broker
from aiswarm_server.errors import Forbidden, InvalidRequest, StaleClaim
from aiswarm_server.models import (
    AttemptOutcome,
    OnUnanswered,
    QuestionStatus,
    TaskRequest,
    TaskStatus,
)
from tests.broker_harness import FakeClock
from tests.conftest import PRIMARY, worker

pytestmark = pytest.mark.anyio

QUESTION = "Keep the old API or break it?"


async def claimed(broker: Broker, agent: str, **task: object) -> tuple[int, int]:
    """Submit one task and let ``agent`` claim it; its id and fence token."""
    submitted = await broker.submit_tasks(PRIMARY, [TaskRequest(title="t", prompt="do it", **task)])  # type: ignore[arg-type]
    claim = await broker.claim_task(worker(agent), submitted.tasks[0].id)
    assert claim.task is not None and claim.fence_token is not None
    return claim.task.id, claim.fence_token


async def test_an_answer_reaches_the_worker_waiting_in_ask_primary_and_its_next_wait(abroker: Broker) -> None:
    task_id, fence = await claimed(abroker, "a")
    asking = asyncio.create_task(
        abroker.ask_primary(worker("a"), task_id, fence, QUESTION, options=["keep", "break"], wait_seconds=30)
    )
    task = (await abroker.get_task(task_id)).task
    for _ in range(500):  # the question is on the task, for the primary to see
        if task.question is not None:
            break
        await asyncio.sleep(0.01)
        task = (await abroker.get_task(task_id)).task
    assert task.question is not None and task.question.options == ["keep", "break"]
    assert [t.question.question for t in (await abroker.list_tasks(None, 10)).tasks if t.question] == [
        QUESTION
    ]

    answered = await abroker.answer_question(PRIMARY, task_id, "keep")
    reply = await asyncio.wait_for(asking, 10)

    assert reply.status is QuestionStatus.ANSWERED and reply.answer == "keep" and "keep" in reply.message
    assert answered.question.answered_by == PRIMARY.label
    task = (await abroker.get_task(task_id)).task
    assert task.question is None and [q.status for q in task.questions] == [QuestionStatus.ANSWERED]
    event = await abroker.wait_for_next_event(worker("a"), None, 0)
    assert [(e.kind, e.task_id, e.detail) for e in event.events] == [("question_answered", task_id, "keep")]


async def test_wait_for_tasks_returns_when_a_worker_asks(abroker: Broker) -> None:
    task_id, fence = await claimed(abroker, "a")
    waiting = asyncio.create_task(abroker.wait_for_tasks([task_id], "all", 30))
    await asyncio.sleep(0.05)
    assert not waiting.done()

    open_reply = await abroker.ask_primary(worker("a"), task_id, fence, QUESTION, wait_seconds=0)
    reply = await asyncio.wait_for(waiting, 10)

    assert open_reply.status is QuestionStatus.OPEN and open_reply.cursor is not None
    assert not reply.done and [q.question for q in reply.questions] == [QUESTION]
    assert f"answer_question(task_id={task_id}" in reply.message
    ignoring = await abroker.wait_for_tasks([task_id], "all", 0, questions=False)
    assert ignoring.questions == [] and "Timed out" in ignoring.message


async def test_asking_again_keeps_waiting_on_the_same_question_and_one_is_open_at_a_time(
    abroker: Broker,
) -> None:
    task_id, fence = await claimed(abroker, "a")
    first = await abroker.ask_primary(worker("a"), task_id, fence, QUESTION, wait_seconds=0)
    again = await abroker.ask_primary(worker("a"), task_id, fence, QUESTION, wait_seconds=0)
    assert again.question_id == first.question_id
    with pytest.raises(InvalidRequest, match=f"#{first.question_id} .* is still open"):
        await abroker.ask_primary(worker("a"), task_id, fence, "Another thing?", wait_seconds=0)

    await abroker.answer_question(PRIMARY, task_id, "break it")
    repeated = await abroker.ask_primary(worker("a"), task_id, fence, QUESTION, wait_seconds=0)
    assert repeated.status is QuestionStatus.ANSWERED and repeated.answer == "break it"
    assert len((await abroker.get_task(task_id)).task.questions) == 1


async def test_the_lease_holds_while_the_worker_waits_for_an_answer(
    abroker: Broker, clock: FakeClock
) -> None:
    task_id, fence = await claimed(abroker, "a")  # lease 60 s in the test settings
    await abroker.ask_primary(
        worker("a"), task_id, fence, QUESTION, answer_within_seconds=600, wait_seconds=0
    )
    clock.advance(300)
    await abroker.sweep()
    task = (await abroker.get_task(task_id)).task
    assert task.status is TaskStatus.CLAIMED and task.fence_token == fence and task.question is not None


async def test_an_unanswered_question_that_says_continue_lets_the_worker_go_on(
    abroker: Broker, clock: FakeClock
) -> None:
    task_id, fence = await claimed(abroker, "a")
    await abroker.ask_primary(
        worker("a"), task_id, fence, QUESTION, answer_within_seconds=120, wait_seconds=0
    )
    clock.advance(121)
    await abroker.sweep()

    task = (await abroker.get_task(task_id)).task
    assert task.status is TaskStatus.CLAIMED and task.question is None
    assert task.lease_expires_at is not None and task.lease_expires_at > clock.now
    assert [q.status for q in task.questions] == [QuestionStatus.EXPIRED]
    event = await abroker.wait_for_next_event(worker("a"), None, 0)
    assert [e.kind for e in event.events] == ["question_expired"]
    assert "continue with your own judgement" in event.events[0].detail
    again = await abroker.ask_primary(worker("a"), task_id, fence, QUESTION, wait_seconds=0)
    assert again.status is QuestionStatus.EXPIRED and "own judgement" in again.message
    with pytest.raises(InvalidRequest, match="went unanswered past its deadline"):
        await abroker.answer_question(PRIMARY, task_id, "too late")
    done = await abroker.report_task_completion(
        worker("a"), task_id, fence, success=True, result="chose keep"
    )
    assert done.status is TaskStatus.COMPLETED


async def test_an_unanswered_question_that_says_fail_fails_the_task_without_retrying(
    abroker: Broker, clock: FakeClock
) -> None:
    task_id, fence = await claimed(abroker, "a", max_attempts=3)
    await abroker.ask_primary(
        worker("a"),
        task_id,
        fence,
        QUESTION,
        on_timeout=OnUnanswered.FAIL,
        answer_within_seconds=30,
        wait_seconds=0,
    )
    clock.advance(31)
    await abroker.sweep()

    task = (await abroker.get_task(task_id)).task
    assert task.status is TaskStatus.FAILED and "not answered by its deadline" in (task.error or "")
    assert [a.outcome for a in task.attempts] == [AttemptOutcome.UNANSWERED]
    event = await abroker.wait_for_next_event(worker("a"), None, 0)
    assert [e.kind for e in event.events] == []  # about a task it no longer holds: passed over
    with pytest.raises(StaleClaim, match="your question was not answered by its deadline"):
        await abroker.report_task_completion(worker("a"), task_id, fence, success=True, result="late")


async def test_the_question_deadline_never_outlives_the_task_timeout(
    abroker: Broker, clock: FakeClock
) -> None:
    task_id, fence = await claimed(abroker, "a", timeout_seconds=100)
    reply = await abroker.ask_primary(
        worker("a"), task_id, fence, QUESTION, answer_within_seconds=3600, wait_seconds=0
    )
    assert reply.deadline_at == clock.now + 100


async def test_a_stale_fence_cannot_ask(abroker: Broker, clock: FakeClock) -> None:
    task_id, fence = await claimed(abroker, "a")
    clock.advance(61)
    await abroker.sweep()  # a's lease ran out; b takes the task
    second = await abroker.claim_task(worker("b"), task_id)
    assert second.claimed
    with pytest.raises(StaleClaim, match="no longer valid"):
        await abroker.ask_primary(worker("a"), task_id, fence, QUESTION, wait_seconds=0)
    with pytest.raises(StaleClaim, match="never claimed by you"):
        await abroker.ask_primary(worker("c"), task_id, second.fence_token or 0, QUESTION, wait_seconds=0)
    assert (await abroker.get_task(task_id)).task.questions == []


async def test_a_worker_cannot_answer_and_a_task_without_a_question_refuses_an_answer(
    abroker: Broker,
) -> None:
    task_id, fence = await claimed(abroker, "a")
    with pytest.raises(InvalidRequest, match="asked none"):
        await abroker.answer_question(PRIMARY, task_id, "yes")
    await abroker.ask_primary(worker("a"), task_id, fence, QUESTION, wait_seconds=0)
    with pytest.raises(Forbidden, match="Only the primary answers"):
        await abroker.answer_question(worker("b"), task_id, "yes")
    assert (await abroker.get_task(task_id)).task.question is not None


async def test_a_question_left_open_is_withdrawn_when_its_attempt_ends(abroker: Broker) -> None:
    task_id, fence = await claimed(abroker, "a")
    asking = asyncio.create_task(abroker.ask_primary(worker("a"), task_id, fence, QUESTION, wait_seconds=30))
    await asyncio.sleep(0.05)
    await abroker.cancel_task(task_id, "changed my mind")
    reply = await asyncio.wait_for(asking, 10)
    assert reply.status is QuestionStatus.WITHDRAWN and "Stop working on it" in reply.message
    with pytest.raises(InvalidRequest, match="withdrawn when its attempt ended"):
        await abroker.answer_question(PRIMARY, task_id, "keep")


async def test_the_tasks_policy_applies_to_a_question_that_sets_none_and_the_questions_own_wins(
    abroker: Broker, clock: FakeClock
) -> None:
    policy = {"answer_within_seconds": 30, "on_unanswered": OnUnanswered.FAIL}
    task_id, fence = await claimed(abroker, "a", **policy)
    assert (await abroker.get_task(task_id)).task.on_unanswered is OnUnanswered.FAIL
    asked = await abroker.ask_primary(worker("a"), task_id, fence, QUESTION, wait_seconds=0)
    assert asked.on_timeout is OnUnanswered.FAIL and asked.deadline_at == clock.now + 30

    other_id, other_fence = await claimed(abroker, "b", **policy)
    own = await abroker.ask_primary(
        worker("b"), other_id, other_fence, QUESTION, on_timeout=OnUnanswered.CONTINUE, wait_seconds=0
    )
    assert own.on_timeout is OnUnanswered.CONTINUE and own.deadline_at == clock.now + 30

    clock.advance(31)
    await abroker.sweep()
    assert (await abroker.get_task(task_id)).task.status is TaskStatus.FAILED
    assert (await abroker.get_task(other_id)).task.status is TaskStatus.CLAIMED
