"""``aiswarm launch`` end to end: a real broker process, the real qwen-code and gemini-cli, the scripted model.

One swarm (one broker, one launcher with ``qwen-1`` and ``gemini-1``, one scripted model) is shared by the
tests of this module, which run in order: the last one stops the launcher with SIGINT. Tasks are written
in the scripted model's task grammar, so the files the CLIs write can be checked byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from aiswarm_server.broker_client import BrokerCallError, BrokerClient
from aiswarm_server.models import Task
from launcher.scripted_model import ScriptedModelServer
from tests.broker_harness import BrokerProcess
from tests.clis import InstalledClis

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

T = TypeVar("T")
AGENTS = ("qwen-1", "gemini-1")
TASK_WAIT = 300.0


@dataclass
class Swarm:
    """The running swarm: broker, scripted model, launcher process and the directories they use."""

    broker: BrokerProcess
    model: ScriptedModelServer
    launcher: subprocess.Popen[bytes]
    home: Path
    workdir: Path
    env: dict[str, str]
    launcher_log: Path

    def call(self, action: Callable[[BrokerClient], Awaitable[T]], token: str | None = None) -> T:
        """Run one broker call as the admin (or the given token)."""

        async def run() -> T:
            async with BrokerClient(self.broker.url, token or self.broker.admin_token) as client:
                return await action(client)

        return asyncio.run(run())

    def submit(self, files: dict[str, str], title: str = "write") -> list[int]:
        """Submit one task per file (path → content) through the primary token; returns the ids."""
        specs = [
            {
                "title": f"{title} {path}",
                "prompt": f"WRITE {path}\n```\n{content}\n```\n",
                "working_dir": str(self.workdir),
            }
            for path, content in files.items()
        ]
        reply = self.call(lambda b: b.submit_tasks(specs), token=self.broker.primary_token)
        return [t.id for t in reply.tasks]

    def wait_done(self, ids: list[int], timeout: float = TASK_WAIT) -> list[Task]:
        """Wait until every task finished (completed, failed, dead or cancelled)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.call(lambda b: b.wait_for_tasks(ids, mode="all", timeout_seconds=30))
            if reply.done:  # the wait's summaries carry no attempts: read each task in full
                return [self.call(lambda b, i=i: b.get_task(i)).task for i in ids]
            self.check_alive()
        raise AssertionError(f"tasks {ids} not done in {timeout:.0f}s; launcher log:\n{self.tail()}")

    def wait_parked(self, count: int = len(AGENTS), timeout: float = 120.0) -> None:
        """Wait until ``count`` agents are parked in ``wait_for_next_event`` (idle and ready for work)."""
        poll(lambda: self.call(lambda b: b.broker_status()).parked_waits >= count, timeout, "agents parked")

    def check_alive(self) -> None:
        """Fail with the launcher's output if it exited."""
        if self.launcher.poll() is not None:
            raise AssertionError(f"launcher exited {self.launcher.returncode}:\n{self.tail()}")

    def tail(self) -> str:
        """The end of the launcher's output and of each agent log."""
        parts = [self.launcher_log.read_text(errors="replace")[-3000:]]
        for agent in AGENTS:
            log = self.home / "logs" / f"{agent}.log"
            if log.exists():
                parts.append(f"--- {agent}\n" + log.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def cli_process(self, agent: str) -> psutil.Process | None:
        """The running CLI of ``agent``: the launcher's child whose environment points at the agent's home."""
        root = str(self.home / "agents" / agent)
        for child in psutil.Process(self.launcher.pid).children():
            try:
                if root in child.environ().values():
                    return child
            except psutil.Error:
                continue
        return None


def poll(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll until ``condition()`` is truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def started_by(home: Path) -> list[psutil.Process]:
    """Every live process whose environment or command line mentions the aiswarm home (the agents' CLIs)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            env = proc.environ()
            if any(str(home) in v for v in env.values()) or str(home) in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def swarm(clis: InstalledClis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    """A broker, the scripted model and ``aiswarm launch --agents 2 --cli qwen,gemini`` against them."""
    root = tmp_path_factory.mktemp("launch")
    home, workdir, user_home = root / "home", root / "work", root / "user"
    for d in (workdir, user_home):
        d.mkdir()
    broker = BrokerProcess(home, {"AISWARM_LEASE_SECONDS": "120", "AISWARM_LOG_FORMAT": "json"}).start()
    model = ScriptedModelServer().start()
    env = {
        **os.environ,
        "PATH": clis.path_env(),
        "HOME": str(user_home),  # no user logins are carried into the agents' homes
        "AISWARM_HOME": str(home),
        "NO_COLOR": "1",
        "AISWARM_LOG_FORMAT": "json",
    }
    env.pop("AISWARM_TOKEN", None)
    launcher_log = root / "launcher.log"
    with open(launcher_log, "wb") as out:
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aiswarm_server",
                "launch",
                "--agents",
                "2",
                "--cli",
                "qwen,gemini",
                "--url",
                broker.url,
                "--model-endpoint",
                model.url,
                "--dir",
                str(workdir),
                "--cool-down",
                "20",
                "--grace",
                "5",
                "--no-ui",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    swarm = Swarm(broker, model, launcher, home, workdir, env, launcher_log)
    try:
        yield swarm
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)
            try:
                launcher.wait(30)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
        broker_pid = broker.process.pid if broker.process else None
        for proc in started_by(home):
            if proc.pid != broker_pid:
                proc.kill()
        model.stop()
        broker.stop()


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


def test_idle_swarm_spends_no_model_requests_and_a_task_costs_its_work_plus_two_coordination_calls(
    swarm: Swarm,
) -> None:
    swarm.wait_parked()
    swarm.model.reset_stats()
    time.sleep(10)  # the point of the test: ten idle seconds
    assert swarm.model.stats()["total"] == 0
    ids = swarm.submit({f"count/{i}.txt": f"counted {i}" for i in range(2)}, title="count")
    tasks = swarm.wait_done(ids)
    assert all(t.status.value == "completed" for t in tasks), swarm.tail()
    stats = swarm.model.stats()
    by_kind = stats["by_kind"]
    print("model requests for 2 tasks:", by_kind, {a: s["total"] for a, s in stats["agents"].items()})
    assert by_kind.get("work", 0) == 2  # one WRITE each
    assert by_kind.get("coordination", 0) <= 2 * 2  # claim + report per task
    assert by_kind.get("rejected", 0) == 0


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
