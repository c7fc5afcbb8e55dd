"""Workflows run through a real broker process, with worker agents that approve, reject or fail as told."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.models import TaskStatus
from aiswarm_server.replies import ClaimedTask
from aiswarm_server.workflow.runner import FlowRunner, FlowSummary, StepOutcome
from aiswarm_server.workflow.spec import parse_workflow
from tests.broker_harness import BrokerProcess
from tests.workflow.swarm import Decision, ScriptedWorker, working

pytestmark = pytest.mark.anyio

FLOW = """
name: parser
defaults:
  retry: {attempts: 2, delay: 0}
tasks:
  - key: design
    title: Sketch the parser API
    persona: implementer
    prompt: Write docs/api.md
  - key: parser
    title: Implement the parser
    persona: implementer
    depends_on: [design]
    prompt: Implement src/parser.py
    review:
      persona: reviewer
      rounds: 3
      prompt: Review src/parser.py
  - key: docs
    title: Document the parser
    persona: implementer
    depends_on: [parser]
    prompt: Write README section
"""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "home").start()
    yield process
    process.stop()


def implementer(task: ClaimedTask) -> Decision:
    return True, f"did {task.title}"


def reviewer_rejecting_first(task: ClaimedTask) -> Decision:
    if "round 1 of" in task.prompt:
        return True, "CHANGES: add tests for empty input"
    return True, "APPROVE: looks right now"


async def run_flow(
    broker: BrokerProcess, text: str, tmp_path: Path, **kwargs: object
) -> tuple[FlowSummary, list[str]]:
    lines: list[str] = []
    async with BrokerClient(broker.url, broker.admin_token) as client:
        runner = FlowRunner(
            parse_workflow(text),
            client,
            tmp_path / "record.json",
            tmp_path,
            on_event=lines.append,
            poll_seconds=1,
            **kwargs,  # type: ignore[arg-type]
        )
        return await runner.run(), lines


async def all_tasks(broker: BrokerProcess) -> dict[int, object]:
    async with BrokerClient(broker.url, broker.admin_token) as client:
        return {t.id: t for t in (await client.list_tasks(limit=500)).tasks}


async def test_a_review_loop_runs_implement_review_fix_review_to_approval(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    impl = ScriptedWorker("impl-1", "implementer", implementer)
    rev = ScriptedWorker("rev-1", "reviewer", reviewer_rejecting_first)
    async with working(broker.url, broker.admin_token, impl, rev):
        summary, lines = await run_flow(broker, FLOW, tmp_path)

    assert summary.succeeded, summary
    by_key = {s.key: s for s in summary.steps}
    assert by_key["parser"].reviews == 2 and len(by_key["parser"].task_ids) == 4  # work, review, fix, review
    titles = [t.title for t in impl.done]
    assert titles == [
        "Sketch the parser API",
        "Implement the parser",
        "Fix (1): Implement the parser",
        "Document the parser",
    ]
    fix = impl.done[2]
    assert fix.prompt.startswith("Implement src/parser.py") and "add tests for empty input" in fix.prompt
    # The dependent step waited for the approving review, not for the first implementation.
    async with BrokerClient(broker.url, broker.admin_token) as client:
        docs = (await client.get_task(by_key["docs"].task_ids[0])).task
    assert docs.depends_on == [by_key["parser"].task_ids[-1]]
    assert any("review round 1 asked for changes" in line for line in lines)


async def test_a_reviewer_that_always_rejects_ends_review_exhausted_after_n_rounds(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    flow = FLOW.replace("rounds: 3", "rounds: 2")
    impl = ScriptedWorker("impl-1", "implementer", implementer)
    rev = ScriptedWorker("rev-1", "reviewer", lambda task: (True, "CHANGES: still wrong"))
    async with working(broker.url, broker.admin_token, impl, rev):
        summary, _ = await run_flow(broker, flow, tmp_path)

    by_key = {s.key: s for s in summary.steps}
    assert not summary.succeeded
    assert by_key["design"].outcome is StepOutcome.COMPLETED
    assert by_key["parser"].outcome is StepOutcome.REVIEW_EXHAUSTED and by_key["parser"].reviews == 2
    assert "after 2 review round(s): CHANGES: still wrong" in by_key["parser"].detail
    assert by_key["docs"].outcome is StepOutcome.SKIPPED and by_key["docs"].task_ids == []
    assert (
        len([t for t in rev.done]) == 2 and len(impl.done) == 3
    )  # work, fix, (no fix after the last review)


async def test_a_rerun_skips_completed_steps_and_redoes_an_edited_one_and_its_dependents(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    impl = ScriptedWorker("impl-1", "implementer", implementer)
    rev = ScriptedWorker("rev-1", "reviewer", lambda task: (True, "APPROVE"))
    async with working(broker.url, broker.admin_token, impl, rev):
        first, _ = await run_flow(broker, FLOW, tmp_path)
        before = await all_tasks(broker)
        again, lines = await run_flow(broker, FLOW, tmp_path)
        assert await all_tasks(broker) == before  # nothing submitted
        assert again.succeeded and all(s.reused for s in again.steps)
        assert [s.task_ids for s in again.steps] == [s.task_ids for s in first.steps]
        assert sum("completed in an earlier run" in line for line in lines) == 3

        edited, _ = await run_flow(
            broker, FLOW.replace("Implement src/parser.py", "Implement src/parser.py fast"), tmp_path
        )
    by_key = {s.key: s for s in edited.steps}
    assert by_key["design"].reused and not by_key["parser"].reused and not by_key["docs"].reused
    assert edited.succeeded and len(await all_tasks(broker)) == len(before) + 3


async def test_a_failed_step_skips_its_dependents_and_a_rerun_does_it_again(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    attempts: list[str] = []

    def flaky_design(task: ClaimedTask) -> Decision:
        attempts.append(task.title)
        if task.title.startswith("Sketch") and len(attempts) <= 2:
            return False, "the disk is full"
        return True, "ok"

    impl = ScriptedWorker("impl-1", "implementer", flaky_design)
    rev = ScriptedWorker("rev-1", "reviewer", lambda task: (True, "APPROVE"))
    async with working(broker.url, broker.admin_token, impl, rev):
        failed, _ = await run_flow(broker, FLOW, tmp_path)
        by_key = {s.key: s for s in failed.steps}
        assert (
            by_key["design"].outcome is StepOutcome.FAILED and "the disk is full" in by_key["design"].detail
        )
        assert (
            by_key["parser"].outcome is StepOutcome.SKIPPED and by_key["docs"].outcome is StepOutcome.SKIPPED
        )

        second, _ = await run_flow(broker, FLOW, tmp_path)
    assert second.succeeded and not any(s.reused for s in second.steps)


async def test_retry_policy_reaches_the_broker_task(broker: BrokerProcess, tmp_path: Path) -> None:
    flow = """
name: retrying
tasks:
  - key: only
    title: Flaky work
    prompt: do it
    retry: {attempts: 5, delay: 2m, backoff: 1.5}
    timeout: 1h
"""
    async with BrokerClient(broker.url, broker.admin_token) as client:
        runner = FlowRunner(parse_workflow(flow), client, tmp_path / "r.json", tmp_path, poll_seconds=0)
        await runner.start()  # only submit: nobody works on it here
        task = (await client.get_task(runner.record.steps["only"].tasks[0].id)).task
    assert (task.max_attempts, task.retry_delay_seconds, task.retry_backoff) == (5, 120.0, 1.5)
    assert task.timeout_seconds == 3600 and task.status is TaskStatus.PENDING
    assert task.working_dir == str(tmp_path.resolve())
