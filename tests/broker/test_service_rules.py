"""The coordination rules, one behaviour per test, on every store backend with the clock in the test's hands."""

from __future__ import annotations

import asyncio

import pytest

from aiswarm_server.broker import Broker
from aiswarm_server.errors import InvalidRequest, NotFound, StaleClaim, TaskCancelled
from aiswarm_server.models import AgentStatus, AttemptOutcome, Identity, TaskRequest, TaskStatus
from tests.broker_harness import FakeClock
from tests.conftest import PRIMARY, worker

pytestmark = pytest.mark.anyio


async def submit(broker: Broker, title: str = "t", **kwargs: object) -> int:
    reply = await broker.submit_tasks(PRIMARY, [TaskRequest(title=title, prompt=f"do {title}", **kwargs)])  # type: ignore[arg-type]
    return reply.tasks[0].id


async def test_registration_is_idempotent_by_name_and_keeps_the_held_task(abroker: Broker) -> None:
    first = await abroker.register_agent(worker("qwen-1"), cli="qwen", capabilities=["Python", "python"])
    task_id = await submit(abroker)
    claim = await abroker.claim_task(worker("qwen-1"), None)
    again = await abroker.register_agent(worker("qwen-1"), cli="qwen", persona="tester")

    assert first.agent.capabilities == ["python"]
    assert again.agent.name == "qwen-1" and again.agent.registered_at == first.agent.registered_at
    assert again.agent.current_task_id == task_id == claim.task.id  # type: ignore[union-attr]
    assert "still hold task" in again.message
    assert [a.name for a in (await abroker.list_agents()).agents] == ["qwen-1"]


async def test_a_claim_goes_to_exactly_one_agent_under_concurrency(abroker: Broker) -> None:
    ids = [await submit(abroker, f"t{i}") for i in range(20)]
    agents = [worker(f"a{i}") for i in range(8)]

    async def drain(agent: Identity) -> list[int]:
        got = []
        while True:
            reply = await abroker.claim_task(agent, None)
            if not reply.claimed:
                return got
            assert reply.task is not None and reply.fence_token is not None
            got.append(reply.task.id)
            await abroker.report_task_completion(
                agent, reply.task.id, reply.fence_token, success=True, result="ok"
            )  # type: ignore[arg-type]

    claimed = [i for got in await asyncio.gather(*(drain(a) for a in agents)) for i in got]
    assert sorted(claimed) == ids


async def test_claim_returns_the_task_already_held_with_the_same_fence(abroker: Broker) -> None:
    task_id = await submit(abroker)
    first = await abroker.claim_task(worker("a"), task_id)
    second = await abroker.claim_task(worker("a"), task_id)
    assert first.fence_token == second.fence_token
    assert "already held it" in second.message
    refused = await abroker.claim_task(worker("b"), task_id)
    assert not refused.claimed and "already claimed by a" in refused.message


async def test_expired_lease_is_requeued_and_stale_report_rejected(abroker: Broker, clock: FakeClock) -> None:
    task_id = await submit(abroker)
    late = await abroker.claim_task(worker("slow"), None)
    clock.advance(abroker.settings.lease_seconds + 1)
    await abroker.sweep()

    task = (await abroker.get_task(task_id)).task
    assert task.status is TaskStatus.PENDING and task.failures == 1
    assert task.attempts[0].outcome is AttemptOutcome.EXPIRED

    fresh = await abroker.claim_task(worker("fast"), None)
    assert fresh.task is not None and fresh.fence_token == (late.fence_token or 0) + 1
    with pytest.raises(StaleClaim, match=r"lease expired.*held by fast"):
        await abroker.report_task_completion(
            worker("slow"), task_id, late.fence_token or 0, success=True, result="late"
        )
    await abroker.report_task_completion(
        worker("fast"), task_id, fresh.fence_token or 0, success=True, result="on time"
    )
    done = (await abroker.get_task(task_id)).task
    assert done.status is TaskStatus.COMPLETED and done.result == "on time"
    events = await abroker.wait_for_next_event(worker("slow"), None, 0)
    assert [e.kind for e in events.events] == ["lease_lost"]


async def test_progress_renews_the_lease(abroker: Broker, clock: FakeClock) -> None:
    task_id = await submit(abroker)
    claim = await abroker.claim_task(worker("a"), None)
    for _ in range(3):
        clock.advance(abroker.settings.lease_seconds * 0.8)
        await abroker.report_progress(worker("a"), task_id, claim.fence_token or 0, "halfway", 50)
        await abroker.sweep()
    task = (await abroker.get_task(task_id)).task
    assert task.status is TaskStatus.CLAIMED and task.progress == "50% halfway"


async def test_task_timeout_caps_renewals(abroker: Broker, clock: FakeClock) -> None:
    task_id = await submit(abroker, timeout_seconds=100)
    claim = await abroker.claim_task(worker("a"), None)
    clock.advance(90)
    await abroker.heartbeat(worker("a"))
    clock.advance(11)
    await abroker.sweep()
    task = (await abroker.get_task(task_id)).task
    assert task.status is TaskStatus.PENDING and "timed out" in (task.error or "")
    with pytest.raises(StaleClaim):
        await abroker.report_progress(worker("a"), task_id, claim.fence_token or 0, "still going")


async def test_task_is_dead_lettered_after_max_attempts_with_the_reason(
    abroker: Broker, clock: FakeClock
) -> None:
    task_id = await submit(abroker, max_attempts=2)
    for name in ("a", "b"):
        await abroker.claim_task(worker(name), None)
        clock.advance(abroker.settings.lease_seconds + 1)
        await abroker.sweep()
    task = (await abroker.get_task(task_id)).task
    assert task.status is TaskStatus.DEAD
    assert "gave up after 2 failed attempt" in (task.error or "")
    assert [a.agent for a in task.attempts] == ["a", "b"]


async def test_reported_failure_is_retried_elsewhere_unless_not_retryable(abroker: Broker) -> None:
    retry = await submit(abroker, "retry")
    final = await submit(abroker, "final")
    c1 = await abroker.claim_task(worker("a"), retry)
    reply = await abroker.report_task_completion(
        worker("a"), retry, c1.fence_token or 0, success=False, error="flaky"
    )
    assert reply.status is TaskStatus.PENDING
    c2 = await abroker.claim_task(worker("a"), final)
    reply = await abroker.report_task_completion(
        worker("a"), final, c2.fence_token or 0, success=False, error="impossible", retryable=False
    )
    assert reply.status is TaskStatus.FAILED


async def test_dependencies_gate_claims_and_failures_cascade(abroker: Broker) -> None:
    reply = await abroker.submit_tasks(
        PRIMARY,
        [
            TaskRequest(title="build", prompt="b", key="build"),
            TaskRequest(title="test", prompt="t", key="test", depends_on=["build"]),
            TaskRequest(title="docs", prompt="d", depends_on=["build"]),
            TaskRequest(title="release", prompt="r", depends_on=["test"]),
        ],
    )
    build, test, docs, release = (t.id for t in reply.tasks)
    assert [t.status for t in reply.tasks] == [
        TaskStatus.PENDING,
        TaskStatus.BLOCKED,
        TaskStatus.BLOCKED,
        TaskStatus.BLOCKED,
    ]
    assert reply.tasks[3].depends_on == [test]

    claim = await abroker.claim_task(worker("a"), None)
    assert claim.task is not None and claim.task.id == build
    assert not (await abroker.claim_task(worker("b"), None)).claimed  # the rest is blocked
    await abroker.report_task_completion(worker("a"), build, claim.fence_token or 0, success=True)

    statuses = {t.id: t.status for t in (await abroker.list_tasks(None, 10)).tasks}
    assert statuses[test] is TaskStatus.PENDING and statuses[docs] is TaskStatus.PENDING
    claim = await abroker.claim_task(worker("a"), test)
    await abroker.report_task_completion(
        worker("a"), test, claim.fence_token or 0, success=False, retryable=False, error="red"
    )
    failed = (await abroker.get_task(release)).task
    assert failed.status is TaskStatus.FAILED and failed.error == f"dependency #{test} ended as failed"

    late = await abroker.submit_tasks(PRIMARY, [TaskRequest(title="after", prompt="x", depends_on=[test])])
    assert late.tasks[0].status is TaskStatus.FAILED


async def test_dependencies_must_exist_and_come_earlier_in_the_batch(abroker: Broker) -> None:
    with pytest.raises(InvalidRequest, match="not the key of an earlier task"):
        await abroker.submit_tasks(
            PRIMARY,
            [
                TaskRequest(title="a", prompt="a", key="a", depends_on=["b"]),
                TaskRequest(title="b", prompt="b", key="b", depends_on=["a"]),
            ],
        )
    with pytest.raises(InvalidRequest, match="do not exist"):
        await abroker.submit_tasks(PRIMARY, [TaskRequest(title="a", prompt="a", depends_on=[424242])])
    assert (await abroker.list_tasks(None, 10)).tasks == []  # refused batches leave nothing behind


async def test_cancelled_task_is_learned_at_the_agents_next_call(abroker: Broker) -> None:
    task_id = await submit(abroker)
    claim = await abroker.claim_task(worker("a"), None)
    await abroker.cancel_task(task_id, "changed my mind")

    events = await abroker.wait_for_next_event(worker("a"), None, 0)
    assert [(e.kind, e.task_id, e.detail) for e in events.events] == [
        ("task_cancelled", task_id, "changed my mind")
    ]
    with pytest.raises(TaskCancelled, match="was cancelled \\(changed my mind\\)"):
        await abroker.report_task_completion(worker("a"), task_id, claim.fence_token or 0, success=True)
    with pytest.raises(TaskCancelled):
        await abroker.report_progress(worker("a"), task_id, claim.fence_token or 0, "working")
    assert (await abroker.agent_status(worker("a"))).current_task is None


async def test_cancel_wakes_the_holders_parked_wait(abroker: Broker) -> None:
    task_id = await submit(abroker)
    await abroker.claim_task(worker("a"), None)
    waiting = asyncio.create_task(abroker.wait_for_next_event(worker("a"), None, 30))
    await asyncio.sleep(0.05)
    await abroker.cancel_task(task_id, None)
    reply = await asyncio.wait_for(waiting, 5)
    assert reply.events[0].kind == "task_cancelled"


async def test_silent_agent_is_marked_lost_and_its_task_requeued(abroker: Broker, clock: FakeClock) -> None:
    abroker.settings.lease_seconds = 10_000  # the lease would hold; the agent's silence is what counts
    task_id = await submit(abroker, timeout_seconds=100_000)
    await abroker.claim_task(worker("ghost"), None)
    await abroker.register_agent(worker("alive"))
    for _ in range(12):
        clock.advance(55)
        await abroker.heartbeat(worker("alive"))
        await abroker.sweep()
    agents = {a.name: a.status for a in (await abroker.list_agents()).agents}
    assert agents == {"ghost": AgentStatus.LOST, "alive": AgentStatus.IDLE}
    task = (await abroker.get_task(task_id)).task
    assert task.status is TaskStatus.PENDING and task.attempts[0].outcome is AttemptOutcome.AGENT_LOST
    await abroker.register_agent(worker("ghost"))  # a lost agent that speaks again is back
    assert {a.name: a.status for a in (await abroker.list_agents()).agents}["ghost"] is AgentStatus.IDLE


async def test_cursor_changes_every_call_and_acknowledges_events(abroker: Broker) -> None:
    for title in ("one", "two"):
        task_id = await submit(abroker, title)
        await abroker.claim_task(worker("a"), task_id)
        await abroker.cancel_task(task_id, title)

    first = await abroker.wait_for_next_event(worker("a"), None, 0)
    assert [e.detail for e in first.events] == ["one", "two"]
    again = await abroker.wait_for_next_event(worker("a"), None, 0)  # not acknowledged yet: delivered again
    assert [e.detail for e in again.events] == ["one", "two"]

    cursors = [first.cursor]
    for _ in range(5):
        reply = await abroker.wait_for_next_event(worker("a"), cursors[-1], 0)
        assert reply.events == []
        cursors.append(reply.cursor)
    assert len(set(cursors)) == len(cursors)  # no two idle calls carry identical arguments
    resumed = await abroker.wait_for_next_event(worker("a"), None, 0)  # the acknowledged position is durable
    assert resumed.events == []
    with pytest.raises(InvalidRequest, match="not one this broker gave out"):
        await abroker.wait_for_next_event(worker("a"), "'; DROP TABLE tasks; --", 0)


async def test_wait_returns_at_once_when_a_task_is_claimable(abroker: Broker) -> None:
    task_id = await submit(abroker)
    reply = await asyncio.wait_for(abroker.wait_for_next_event(worker("a"), None, 60), 2)
    assert [(e.kind, e.task_id) for e in reply.events] == [("task_available", task_id)]
    assert f"claim_task(task_id={task_id})" in reply.message


async def test_no_lost_wakeup_when_a_task_arrives_during_the_store_read(abroker: Broker) -> None:
    """A task committed while the wait is reading the store must still wake it."""
    await abroker.register_agent(worker("a"))
    original = abroker.store.poll_agent
    submitted = asyncio.Event()

    async def slow_poll(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        result = await original(*args, **kwargs)  # type: ignore[arg-type]
        if not submitted.is_set():
            await submit(abroker, "raced")  # commits after the read, before the wait parks on its future
            submitted.set()
        return result

    abroker.store.poll_agent = slow_poll  # type: ignore[method-assign]
    reply = await asyncio.wait_for(abroker.wait_for_next_event(worker("a"), None, 30), 5)
    assert [e.kind for e in reply.events] == ["task_available"]


async def test_a_new_task_wakes_one_fitting_agent_not_every_waiter(abroker: Broker) -> None:
    names = [f"w{i}" for i in range(10)]
    for name in names:
        await abroker.register_agent(worker(name), persona="tester" if name == "w7" else "implementer")
    waits = {n: asyncio.create_task(abroker.wait_for_next_event(worker(n), None, 30)) for n in names}
    await asyncio.sleep(0.1)
    await submit(abroker, "needs a tester", persona="tester")
    await asyncio.sleep(0.2)
    finished = [n for n, w in waits.items() if w.done()]
    assert finished == ["w7"]
    await submit(abroker, "anyone")
    await asyncio.sleep(0.2)
    finished = [n for n, w in waits.items() if w.done()]
    assert len(finished) == 2  # exactly one more agent woke for the second task
    for w in waits.values():
        w.cancel()
    await asyncio.gather(*waits.values(), return_exceptions=True)


async def test_orphaned_wait_swallows_nothing(abroker: Broker, clock: FakeClock) -> None:
    """A wait whose client vanished got the wake-up; the task stays claimable and is offered to someone else."""
    await abroker.register_agent(worker("gone"))
    await abroker.register_agent(worker("here"))
    orphan = asyncio.create_task(abroker.wait_for_next_event(worker("gone"), None, 30))
    await asyncio.sleep(0.05)
    live = asyncio.create_task(abroker.wait_for_next_event(worker("here"), None, 30))
    await asyncio.sleep(0.05)
    task_id = await submit(abroker)
    await asyncio.wait_for(orphan, 5)  # its answer goes nowhere: nobody claims
    assert not live.done()
    clock.advance(abroker.settings.offer_seconds + 1)
    await abroker.sweep()  # the offer timed out: the next parked agent is woken
    reply = await asyncio.wait_for(live, 5)
    assert [(e.kind, e.task_id) for e in reply.events] == [("task_available", task_id)]
    assert (await abroker.claim_task(worker("here"), task_id)).claimed


async def test_worker_can_only_report_its_own_task(abroker: Broker) -> None:
    task_id = await submit(abroker)
    claim = await abroker.claim_task(worker("owner"), None)
    with pytest.raises(StaleClaim, match="never claimed by you"):
        await abroker.report_task_completion(worker("thief"), task_id, claim.fence_token or 0, success=True)
    with pytest.raises(StaleClaim):
        await abroker.report_progress(worker("thief"), task_id, claim.fence_token or 0, "mine now")
    with pytest.raises(InvalidRequest, match="worker token"):
        await abroker.claim_task(PRIMARY, None)
    with pytest.raises(NotFound):
        await abroker.report_task_completion(worker("owner"), 999_999, 1, success=True)


async def test_duplicate_completion_report_is_answered_not_refused(abroker: Broker) -> None:
    task_id = await submit(abroker)
    claim = await abroker.claim_task(worker("a"), None)
    first = await abroker.report_task_completion(
        worker("a"), task_id, claim.fence_token or 0, success=True, result="r"
    )
    second = await abroker.report_task_completion(
        worker("a"), task_id, claim.fence_token or 0, success=True, result="r"
    )
    assert first.status is second.status is TaskStatus.COMPLETED
    assert len((await abroker.get_task(task_id)).task.attempts) == 1


async def test_persona_and_capabilities_decide_who_may_claim(abroker: Broker) -> None:
    await abroker.register_agent(worker("rev"), persona="reviewer", capabilities=["python"])
    await abroker.register_agent(worker("gen"))
    reviewed = await submit(abroker, "review", persona="reviewer")
    rusty = await submit(abroker, "rust", capabilities=["rust"])
    assert not (await abroker.claim_task(worker("gen"), reviewed)).claimed
    assert not (await abroker.claim_task(worker("rev"), rusty)).claimed
    assert not (await abroker.claim_task(worker("gen"), None)).claimed
    claim = await abroker.claim_task(worker("rev"), None)
    assert claim.task is not None and claim.task.id == reviewed


async def test_wait_for_tasks_any_and_all(abroker: Broker) -> None:
    a, b = await submit(abroker, "a"), await submit(abroker, "b")
    waiting_all = asyncio.create_task(abroker.wait_for_tasks([a, b], "all", 30))
    waiting_any = asyncio.create_task(abroker.wait_for_tasks([a, b], "any", 30))
    claim = await abroker.claim_task(worker("w"), a)
    await abroker.report_task_completion(worker("w"), a, claim.fence_token or 0, success=True, result="A")
    any_reply = await asyncio.wait_for(waiting_any, 5)
    assert any_reply.done and any_reply.finished == [a] and any_reply.pending == [b]
    assert not waiting_all.done()
    await abroker.cancel_task(b, "enough")
    all_reply = await asyncio.wait_for(waiting_all, 5)
    assert all_reply.done and sorted(all_reply.finished) == [a, b]
    assert "Not completed" in all_reply.message
    timed_out = await abroker.wait_for_tasks([await submit(abroker, "c")], "all", 0)
    assert not timed_out.done and "Timed out" in timed_out.message


async def test_release_hands_a_task_back_without_counting_a_failure(abroker: Broker) -> None:
    task_id = await submit(abroker, max_attempts=1)
    await abroker.claim_task(worker("a"), None)
    reply = await abroker.release_task("a", task_id, "launcher stopping")
    assert reply.status is TaskStatus.PENDING
    task = (await abroker.get_task(task_id)).task
    assert task.failures == 0 and task.attempts[0].outcome is AttemptOutcome.RELEASED


async def test_size_limits_are_enforced_with_a_message(abroker: Broker) -> None:
    abroker.settings.max_prompt_chars = 100
    with pytest.raises(InvalidRequest, match="limit is 100"):
        await abroker.submit_tasks(PRIMARY, [TaskRequest(title="big", prompt="x" * 101)])
    with pytest.raises(InvalidRequest, match="absolute path"):
        await abroker.submit_tasks(PRIMARY, [TaskRequest(title="rel", prompt="x", working_dir="../etc")])
    with pytest.raises(InvalidRequest, match="persona"):
        await abroker.submit_tasks(PRIMARY, [TaskRequest(title="p", prompt="x", persona="Robert'); DROP")])


async def test_a_task_offered_to_a_woken_agent_is_not_raced_by_others(
    abroker: Broker, clock: FakeClock
) -> None:
    await abroker.register_agent(worker("parked"))
    parked = asyncio.create_task(abroker.wait_for_next_event(worker("parked"), None, 30))
    await asyncio.sleep(0.05)
    task_id = await submit(abroker)
    assert [e.task_id for e in (await asyncio.wait_for(parked, 5)).events] == [task_id]
    late = await abroker.wait_for_next_event(worker("latecomer"), None, 0)
    assert late.events == []  # not offered the same task: no wasted claim race
    clock.advance(abroker.settings.offer_seconds + 1)  # the woken agent never claimed: now anyone may
    later = await abroker.wait_for_next_event(worker("latecomer"), None, 0)
    assert [e.task_id for e in later.events] == [task_id]


async def test_every_parked_agent_sees_the_task_it_was_woken_for(abroker: Broker) -> None:
    names = [f"p{i}" for i in range(8)]
    for name in names:
        await abroker.register_agent(worker(name))
    waits = [asyncio.create_task(abroker.wait_for_next_event(worker(n), None, 30)) for n in names]
    await asyncio.sleep(0.1)
    await abroker.submit_tasks(PRIMARY, [TaskRequest(title=f"t{i}", prompt="p") for i in range(8)])
    replies = await asyncio.wait_for(asyncio.gather(*waits), 5)
    offered = [r.events[0].task_id for r in replies]
    assert len(set(offered)) == 8  # each woken agent got its own task, none left waiting for a re-offer
