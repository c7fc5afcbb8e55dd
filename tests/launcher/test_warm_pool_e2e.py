"""The warm pool end to end: ``aiswarm launch`` with one gemini agent keeps its next gemini started ahead of work.

One swarm (a broker process, the scripted model, ``aiswarm launch --cli gemini --warm-pool``) is shared by the tests
of this module, which run in order: the last one stops the launcher with SIGINT and looks for anything left behind.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import psutil
import pytest

from tests.launcher.conftest import LaunchedSwarm, LaunchSwarm, poll, started_by

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

AGENT = "gemini-1"
WarmSwarm = LaunchedSwarm


@pytest.fixture(scope="module")
def swarm(launch_swarm: LaunchSwarm) -> Iterator[WarmSwarm]:
    """``aiswarm launch --agents 1 --cli gemini --warm-pool`` against a broker and the scripted model."""
    yield launch_swarm(cli="gemini", agents=(AGENT,), args=("--warm-pool",), name="warm")


def _agent_log(swarm: WarmSwarm) -> str:
    """The agent's log so far."""
    path = swarm.agent_log(AGENT)
    return path.read_text(errors="replace") if path.exists() else ""


def _submit(swarm: WarmSwarm, path: str, content: str) -> int:
    """Submit one task writing ``content`` to ``path`` in the launch directory; its id."""
    [task_id] = swarm.submit({path: content})
    return task_id


def test_a_warm_gemini_waits_without_model_requests_then_takes_a_task_and_completes_it(
    swarm: WarmSwarm,
) -> None:
    [warm] = poll(lambda: swarm.cli_processes(AGENT), 120, "the warm gemini to start")
    assert swarm.model.stats()["total"] == 0, "a warm CLI must not ask the model anything before its task"
    task_id = _submit(swarm, "warm/first.txt", "from a warm gemini")
    [task] = swarm.wait_done([task_id], timeout=300)
    assert task.status.value == "completed", swarm.tail()
    assert (swarm.workdir / "warm/first.txt").read_text() == "from a warm gemini\n"
    assert f"starting gemini in {swarm.workdir} (warm)" in _agent_log(swarm), swarm.tail()
    assert task.attempts[-1].agent == AGENT
    # the warm gemini ran the task: it exits once it has given its final answer (after its report)
    poll(
        lambda: not warm.is_running() or warm.status() == psutil.STATUS_ZOMBIE, 120, "the warm gemini to exit"
    )


def test_after_a_task_the_next_gemini_is_warm_again_and_serves_the_next_task(swarm: WarmSwarm) -> None:
    poll(lambda: swarm.cli_processes(AGENT), 120, "the next warm gemini")
    task_id = _submit(swarm, "warm/second.txt", "again warm")
    [task] = swarm.wait_done([task_id], timeout=300)
    assert task.status.value == "completed", swarm.tail()
    assert _agent_log(swarm).count(" (warm)") >= 2, swarm.tail()


def test_launch_exit_leaves_no_cli_process_behind(swarm: WarmSwarm) -> None:
    poll(lambda: swarm.cli_processes(AGENT), 120, "a warm gemini before the stop")
    swarm.launcher.send_signal(signal.SIGINT)
    swarm.launcher.wait(60)
    broker_pid = swarm.broker.process.pid if swarm.broker.process else None
    left = poll(
        lambda: not [p for p in started_by(swarm.home) if p.pid != broker_pid],
        30,
        "every CLI process to be gone",
        every=0.5,
    )
    assert left
