"""A failed task waits its retry delay (growing by its backoff) before another agent may claim it."""

from __future__ import annotations

import pytest

from aiswarm_server.broker import Broker
from aiswarm_server.errors import InvalidRequest
from aiswarm_server.models import AttemptOutcome, NewTask, TaskRequest, TaskStatus
from aiswarm_server.store import Store
from aiswarm_server.store.rules import MAX_RETRY_DELAY_SECONDS, RetryDelay, after_attempt
from tests.broker_harness import FakeClock
from tests.conftest import PRIMARY, worker

pytestmark = pytest.mark.anyio
NOW = 1_000_000.0


async def fail_once(broker: Broker, agent: str) -> None:
    claim = await broker.claim_task(worker(agent), None)
    assert claim.task is not None and claim.fence_token is not None
    await broker.report_task_completion(
        worker(agent), claim.task.id, claim.fence_token, success=False, result=None, error="flaky"
    )  # type: ignore[arg-type]


async def test_retry_delays_grow_by_the_backoff_and_are_honoured(abroker: Broker, clock: FakeClock) -> None:
    reply = await abroker.submit_tasks(
        PRIMARY,
        [TaskRequest(title="flaky", prompt="do it", max_attempts=4, retry_delay_seconds=10, retry_backoff=3)],
    )
    task_id = reply.tasks[0].id

    await fail_once(abroker, "a")
    task = (await abroker.get_task(task_id)).task
    assert task.status is TaskStatus.BLOCKED and task.retry_at == clock.now + 10 and task.failures == 1
    clock.advance(9.5)
    await abroker.sweep()
    assert not (await abroker.claim_task(worker("b"), None)).claimed
    clock.advance(0.5)
    await abroker.sweep()
    assert (await abroker.get_task(task_id)).task.status is TaskStatus.PENDING

    await fail_once(abroker, "b")
    retried = (await abroker.get_task(task_id)).task
    assert retried.retry_at == clock.now + 30  # 10 * 3 ** 1
    clock.advance(29)
    await abroker.sweep()
    assert not (await abroker.claim_task(worker("c"), None)).claimed
    clock.advance(1)
    await abroker.sweep()
    assert (await abroker.claim_task(worker("c"), None)).claimed


async def test_a_task_without_a_retry_delay_is_requeued_at_once(abroker: Broker) -> None:
    reply = await abroker.submit_tasks(PRIMARY, [TaskRequest(title="plain", prompt="do it")])
    await fail_once(abroker, "a")
    task = (await abroker.get_task(reply.tasks[0].id)).task
    assert task.status is TaskStatus.PENDING and task.retry_at is None


async def test_a_waiting_retry_can_be_cancelled(abroker: Broker, clock: FakeClock) -> None:
    reply = await abroker.submit_tasks(
        PRIMARY, [TaskRequest(title="flaky", prompt="do it", retry_delay_seconds=60)]
    )
    await fail_once(abroker, "a")
    await abroker.cancel_task(reply.tasks[0].id, "no longer needed")
    clock.advance(61)
    await abroker.sweep()
    assert (await abroker.get_task(reply.tasks[0].id)).task.status is TaskStatus.CANCELLED


async def test_retry_settings_out_of_range_are_refused_with_the_range(abroker: Broker) -> None:
    with pytest.raises(InvalidRequest, match="retry_backoff must be between 1 and 10"):
        await abroker.submit_tasks(
            PRIMARY, [TaskRequest.model_construct(title="t", prompt="p", retry_backoff=0.5)]
        )
    with pytest.raises(InvalidRequest, match="retry_delay_seconds must be between 0 and 86400"):
        await abroker.submit_tasks(
            PRIMARY, [TaskRequest.model_construct(title="t", prompt="p", retry_delay_seconds=100_000)]
        )


def test_the_retry_rule_grows_by_the_backoff_and_caps_the_wait() -> None:
    assert RetryDelay(0, 2).retry_at(NOW, 1) is None
    assert RetryDelay(5, 2).retry_at(NOW, 3) == NOW + 20
    assert RetryDelay(10, 10).retry_at(NOW, 500) == NOW + MAX_RETRY_DELAY_SECONDS


async def test_every_store_holds_a_failed_task_until_its_retry_time(store: Store) -> None:
    change = await store.create_tasks(
        [NewTask(title="t", prompt="p", retry_delay_seconds=5, retry_backoff=2)], NOW
    )
    task_id = change.created[0].id
    claim = (await store.claim("w", None, NOW, 30)).claim
    assert claim is not None
    failed = await store.complete(
        "w",
        task_id,
        claim.fence_token,
        success=False,
        retryable=True,
        result=None,
        data=None,
        error="x",
        now=NOW,
    )
    assert failed.claimable == [] and failed.finished == []
    assert (await store.claim("w", None, NOW + 4, 30)).claim is None
    assert (await store.sweep(NOW + 4, 0)).claimable == []
    due = await store.sweep(NOW + 5, 0)
    assert [t.id for t in due.claimable] == [task_id]
    task = await store.get_task(task_id)
    assert task is not None and task.status is TaskStatus.PENDING and task.retry_at is None
    assert (await store.claim("w", None, NOW + 5, 30)).claim is not None


def test_after_attempt_holds_a_failed_task_but_requeues_a_released_one_at_once() -> None:
    delay = RetryDelay(30, 2)
    failed = after_attempt(AttemptOutcome.FAILED, 1, 5, "flaky", delay=delay, now=NOW)
    assert (failed.status, failed.failures, failed.retry_at) == (TaskStatus.BLOCKED, 2, NOW + 60)
    released = after_attempt(AttemptOutcome.RELEASED, 1, 5, "stopping", delay=delay, now=NOW)
    assert (released.status, released.retry_at) == (TaskStatus.PENDING, None)
    last = after_attempt(AttemptOutcome.FAILED, 4, 5, "flaky", delay=delay, now=NOW)
    assert last.status is TaskStatus.DEAD and last.retry_at is None
