"""A worker asks the primary, end to end: ``aiswarm launch`` runs the real gemini-cli per task against a real broker
and the scripted model; the task's prompt says to ask (``ASK``), a plain primary client answers the question
``wait_for_tasks`` brings it, and the worker finishes with the answer in its result and in the file it writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.models import QuestionStatus, Task
from tests.launcher.conftest import LaunchedSwarm, LaunchSwarm

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TASK_WAIT = 300.0
ANSWER = "hello from the primary"
Launch = LaunchedSwarm


@pytest.fixture(scope="module")
def launch(launch_swarm: LaunchSwarm) -> Iterator[Launch]:
    """A broker, the scripted model and ``aiswarm launch`` with one gemini agent in per-task mode."""
    yield launch_swarm(cli="gemini", agents=("gemini-1",), args=("--mode", "per-task"), name="questions")


async def delegate_and_answer(launch: Launch) -> tuple[Task, list[str]]:
    """The primary's side: submit, wait (a question ends the wait early), answer, wait for the result."""
    prompt = "ASK Which greeting goes in greeting.txt?\nWRITE greeting.txt\n```\n{answer}\n```\nRESULT wrote {answer}"
    asked: list[str] = []
    async with BrokerClient(launch.broker.url, launch.broker.primary_token) as primary:
        submitted = await primary.submit_task("greet", prompt, working_dir=str(launch.workdir))
        task_id = submitted.tasks[0].id
        deadline = time.monotonic() + TASK_WAIT
        while time.monotonic() < deadline:
            assert launch.launcher.poll() is None, f"launcher exited:\n{launch.tail()}"
            waited = await primary.wait_for_tasks([task_id], timeout_seconds=30)
            for question in waited.questions:
                asked.append(question.question)
                await primary.answer_question(question.task_id, ANSWER)
            if waited.done:
                return (await primary.get_task(task_id)).task, asked
    raise AssertionError(f"task not done in {TASK_WAIT:.0f}s; launcher log:\n{launch.tail()}")


def test_a_gemini_worker_asks_the_primary_and_finishes_with_the_answer(launch: Launch) -> None:
    task, asked = asyncio.run(delegate_and_answer(launch))

    assert asked == ["Which greeting goes in greeting.txt?"]
    assert task.status == "completed", f"{task.error}\n{launch.tail()}"
    assert task.result == f"wrote {ANSWER}"
    assert (launch.workdir / "greeting.txt").read_text() == ANSWER + "\n"
    assert [(q.status, q.answer) for q in task.questions] == [(QuestionStatus.ANSWERED, ANSWER)]
    assert len(task.attempts) == 1 and task.attempts[0].agent.startswith("gemini")
