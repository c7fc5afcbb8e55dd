"""``aiswarm launch`` end to end: a real broker process, the real qwen-code and gemini-cli, the scripted model.

One swarm (one broker, one launcher with ``qwen-1`` and ``gemini-1``, one scripted model) is shared by the
tests of this module, which run in order: the last one stops the launcher with SIGINT. Tasks are written
in the scripted model's task grammar, so the files the CLIs write can be checked byte for byte.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from aiswarm_server.broker_client import BrokerCallError
from tests.launcher.conftest import LaunchedSwarm, LaunchSwarm, poll, started_by

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

AGENTS = ("qwen-1", "gemini-1")
Swarm = LaunchedSwarm


@pytest.fixture(scope="module")
def swarm(launch_swarm: LaunchSwarm) -> Iterator[Swarm]:
    """A broker, the scripted model and ``aiswarm launch --agents 2 --cli qwen,gemini`` against them."""
    yield launch_swarm(cli="qwen,gemini", agents=AGENTS, args=("--cool-down", "20"))


def test_launched_swarm_completes_every_task_with_the_right_files(swarm: Swarm) -> None:
    files = {f"out/file{i}.txt": f"hello {i}\nfrom the swarm" for i in range(4)}
    swarm.wait_parked()
    ids = swarm.submit(files)
    tasks = swarm.wait_done(ids)
    assert [t.status.value for t in tasks] == ["completed"] * 4, swarm.tail()
    for path, content in files.items():
        assert (swarm.workdir / path).read_text() == content + "\n"
    for task in tasks:
        assert task.result, f"task #{task.id} has no result"
        assert task.attempts[-1].agent in AGENTS
    assert {t.attempts[-1].agent for t in tasks} <= set(AGENTS)


def test_idle_swarm_spends_no_model_requests_and_a_task_costs_its_work_and_no_coordination(
    swarm: Swarm,
) -> None:
    swarm.wait_parked()
    swarm.model.reset_stats()
    time.sleep(10)  # the point of the test: ten idle seconds
    assert swarm.model.stats()["total"] == 0
    files = {f"count/{i}.txt": f"counted {i}" for i in range(2)}
    ids = swarm.submit(files, title="count")
    tasks = swarm.wait_done(ids)
    assert all(t.status.value == "completed" for t in tasks), swarm.tail()
    stats = swarm.model.stats()
    by_kind = stats["by_kind"]
    print("model requests for 2 tasks:", by_kind, {a: s["total"] for a, s in stats["agents"].items()})
    assert by_kind.get("work", 0) == 2  # one WRITE each
    assert by_kind.get("answer", 0) == 2  # the final answer, which is the task's result
    assert by_kind.get("coordination", 0) == 0  # the task is in the prompt; the launcher reports it
    assert by_kind.get("rejected", 0) == 0
    assert [t.result for t in tasks] == [f"Wrote {path}" for path in files]


def test_cli_killed_mid_task_is_retried_elsewhere_once_and_the_stale_fence_is_refused(swarm: Swarm) -> None:
    swarm.wait_parked()
    [task_id] = swarm.submit({"killed/result.txt": "survived"}, title="killed")
    holder: str = poll(
        lambda: swarm.call(lambda b: b.get_task(task_id)).task.claimed_by, 60, "the task to be reserved"
    )
    fault = swarm.model.inject_fault(status=None, delay_seconds=300, agent=holder)
    try:
        cli: psutil.Process = poll(lambda: swarm.cli_process(holder), 60, f"{holder}'s CLI to start")
        first_fence = swarm.call(lambda b: b.get_task(task_id)).task.fence_token
        cli.kill()
        [task] = swarm.wait_done([task_id])
    finally:
        swarm.model.clear_faults(fault_id=fault)
    assert task.status.value == "completed", swarm.tail()
    assert (swarm.workdir / "killed/result.txt").read_text() == "survived\n"
    outcomes = [(a.agent, a.outcome.value) for a in task.attempts]
    assert outcomes[0] == (holder, "failed"), outcomes
    assert [o for o in outcomes if o[1] == "completed"] == [(task.attempts[-1].agent, "completed")]
    assert task.attempts[-1].agent != holder
    token = _agent_token(swarm.home, holder)
    with pytest.raises(BrokerCallError):
        swarm.call(
            lambda b: b.report_task_completion(task_id, first_fence, success=True, result="late"), token=token
        )
    assert swarm.call(lambda b: b.get_task(task_id)).task.result != "late"

    # The JSON logs follow the task: the broker's lines and both agents', both attempts, in time order.
    merged = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", "logs", "--task", str(task_id), "--json"],
        env=swarm.env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = [json.loads(text) for text in merged.stdout.splitlines()]
    assert [line["ts"] for line in lines] == sorted(line["ts"] for line in lines)
    winner = task.attempts[-1].agent
    assert {line["source"] for line in lines} == {"broker", holder, winner}
    claims = [(line["agent"], line["attempt"]) for line in lines if "claimed by" in line["message"]]
    assert claims == [(holder, 1), (winner, 2)]
    assert {line.get("attempt") for line in lines if line["source"] == holder} >= {1}
    assert {line.get("attempt") for line in lines if line["source"] == winner} >= {2}
    assert all(line.get("task_id") == task_id for line in lines)


def test_rate_limited_cli_cools_down_and_the_other_cli_completes_its_task(swarm: Swarm) -> None:
    swarm.wait_parked()
    swarm.model.reset_stats()
    fault = swarm.model.inject_fault(status=429, cli="qwen", retry_after=1)
    try:
        ids = swarm.submit({f"limited/{i}.txt": f"limited {i}" for i in range(2)}, title="limited")
        tasks = swarm.wait_done(ids)
    finally:
        swarm.model.clear_faults(fault_id=fault)
    assert [t.status.value for t in tasks] == ["completed"] * 2, swarm.tail()
    assert {t.attempts[-1].agent for t in tasks} == {"gemini-1"}
    assert swarm.model.stats()["clis"].get("qwen", {}).get("rejected", 0) > 0, "qwen never met the 429"
    log = (swarm.home / "logs" / "qwen-1.log").read_text()
    assert "cools down" in log
    released = [a for t in tasks for a in t.attempts if a.agent == "qwen-1"]
    assert all(a.outcome.value == "released" for a in released), released


def test_status_logs_and_sigint_stop_the_launcher_leaving_nothing_running(swarm: Swarm) -> None:
    swarm.wait_parked()
    env = swarm.env
    status = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", "status", "--url", swarm.broker.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert re.search(r"agents: .*\d", status.stdout), status.stdout
    logs = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", "logs", "gemini-1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert logs.returncode == 0, logs.stderr
    assert "task #" in logs.stdout and "run ended" in logs.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", "logs", "nobody-9"], env=env, capture_output=True, text=True
    )
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1, missing.stderr
    swarm.launcher.send_signal(signal.SIGINT)
    assert swarm.launcher.wait(60) == 0, swarm.tail()
    assert "stopped" in swarm.launcher_log.read_text()
    leftovers = [
        p for p in started_by(swarm.home) if swarm.broker.process and p.pid != swarm.broker.process.pid
    ]
    assert leftovers == [], [p.cmdline() for p in leftovers]


def _agent_token(home: Path, agent: str) -> str:
    """The worker token the launcher wrote into the agent's CLI settings."""
    for path in (home / "agents" / agent).rglob("settings.json"):
        match = re.search(r"Bearer ([A-Za-z0-9_\-.]+)", path.read_text())
        if match:
            return match.group(1)
    raise AssertionError(f"no token in {agent}'s settings")
