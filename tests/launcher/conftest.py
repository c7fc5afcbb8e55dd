"""Fixtures for the launcher tests: the real CLIs (installed once per session, see ``tests/clis.py``) and the
harness of the end-to-end tests that run ``aiswarm launch`` as a process against a real broker process and the
scripted model (``launch_swarm``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.models import Task
from launcher.scripted_model import ScriptedModelServer
from tests.broker_harness import BrokerProcess
from tests.clis import InstalledClis, clis

__all__ = [
    "InstalledClis",
    "LaunchedSwarm",
    "clis",
    "delegation_prompt",
    "install_client",
    "launch_swarm",
    "poll",
    "run_primary",
    "started_by",
]

T = TypeVar("T")
TASK_WAIT = 300.0


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
    """Every live process whose environment or command line mentions ``home`` (the agents' CLIs)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(str(home) in v for v in proc.environ().values()) or str(home) in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@dataclass
class LaunchedSwarm:
    """A broker process, the scripted model and one ``aiswarm launch`` process working in ``workdir``."""

    broker: BrokerProcess
    model: ScriptedModelServer
    launcher: subprocess.Popen[bytes]
    workdir: Path
    env: dict[str, str]
    launcher_log: Path
    agents: tuple[str, ...]
    owns_services: bool = True
    """Whether stopping the swarm stops the broker and the model too (else they serve other launches)."""
    stopped: bool = field(default=False, init=False)

    @property
    def home(self) -> Path:
        """The aiswarm home the broker and the launcher share."""
        return self.broker.home

    def agent_log(self, agent: str) -> Path:
        """The launcher's log of ``agent``."""
        return self.home / "logs" / f"{agent}.log"

    def call(self, action: Callable[[BrokerClient], Awaitable[T]], token: str | None = None) -> T:
        """Run one broker call as the admin (or the given token)."""

        async def run() -> T:
            async with BrokerClient(self.broker.url, token or self.broker.admin_token) as client:
                return await action(client)

        return asyncio.run(run())

    def submit_specs(self, specs: list[dict[str, Any]]) -> list[int]:
        """Submit tasks (``working_dir`` defaults to the swarm's) through the primary token; returns the ids."""
        specs = [{"working_dir": str(self.workdir), **spec} for spec in specs]
        reply = self.call(lambda b: b.submit_tasks(specs), token=self.broker.primary_token)
        return [t.id for t in reply.tasks]

    def submit(self, files: dict[str, str], title: str = "write") -> list[int]:
        """Submit one task per file (path → content) in the scripted model's grammar; returns the ids."""
        return self.submit_specs(
            [
                {"title": f"{title} {path}", "prompt": f"WRITE {path}\n```\n{content}\n```\n"}
                for path, content in files.items()
            ]
        )

    def wait_done(self, ids: list[int], timeout: float = TASK_WAIT) -> list[Task]:
        """Wait until every task finished (completed, failed, dead or cancelled); each task read in full."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.call(lambda b: b.wait_for_tasks(ids, mode="all", timeout_seconds=20))
            if reply.done:  # the wait's summaries carry no attempts
                return [self.call(lambda b, i=i: b.get_task(i)).task for i in ids]
            self.check_alive()
        raise AssertionError(f"tasks {ids} not done in {timeout:.0f}s; launcher log:\n{self.tail()}")

    def task(self, task_id: int) -> Task:
        """The task as ``get_task`` shows it now."""
        return self.call(lambda b: b.get_task(task_id)).task

    def wait_parked(self, count: int | None = None, timeout: float = 120.0) -> None:
        """Wait until ``count`` agents (default: all of this launch's) are parked in ``wait_for_next_event``;
        fail at once if the launcher exits."""
        wanted = len(self.agents) if count is None else count

        def parked() -> bool:
            self.check_alive()
            return self.call(lambda b: b.broker_status()).parked_waits >= wanted

        poll(parked, timeout, "agents parked")

    def check_alive(self) -> None:
        """Fail with the launcher's output if it exited."""
        if self.launcher.poll() is not None:
            raise AssertionError(f"launcher exited {self.launcher.returncode}:\n{self.tail()}")

    def tail(self) -> str:
        """The end of the launcher's output and of each agent log."""
        parts = [self.launcher_log.read_text(errors="replace")[-3000:]]
        for agent in self.agents:
            if self.agent_log(agent).exists():
                parts.append(f"--- {agent}\n" + self.agent_log(agent).read_text(errors="replace")[-4000:])
        if self.broker.log_path is not None and self.broker.log_path.exists():
            parts.append("--- broker\n" + self.broker.log_path.read_text(errors="replace")[-2000:])
        return "\n".join(parts)

    def cli_processes(self, agent: str) -> list[psutil.Process]:
        """The running CLIs of ``agent`` (working or warm): the launcher's children whose environment points at
        the agent's home."""
        root = str(self.home / "agents" / agent)
        found: list[psutil.Process] = []
        for child in psutil.Process(self.launcher.pid).children():
            try:
                if root in child.environ().values():
                    found.append(child)
            except psutil.Error:
                continue
        return found

    def cli_process(self, agent: str) -> psutil.Process | None:
        """The running CLI of ``agent`` (the first, if a warm one runs beside it)."""
        return next(iter(self.cli_processes(agent)), None)

    def stop(self) -> None:
        """SIGINT the launcher (killed if it lingers), kill what its agents left, then stop what it owns (once)."""
        if self.stopped:
            return
        self.stopped = True
        if self.launcher.poll() is None:
            self.launcher.send_signal(signal.SIGINT)
            try:
                self.launcher.wait(60)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
                self.launcher.wait()
        broker_pid = self.broker.process.pid if self.broker.process else None
        for agent in self.agents:
            for proc in started_by(self.home / "agents" / agent):
                if proc.pid != broker_pid:
                    proc.kill()
        if self.owns_services:
            self.model.stop()
            self.broker.stop()


LaunchSwarm = Callable[..., LaunchedSwarm]


@pytest.fixture(scope="module")
def launch_swarm(clis: InstalledClis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaunchSwarm]:
    """Start ``aiswarm launch --cli MIX`` (``agents`` names what it runs) against a broker and the scripted model.

    ``launch_swarm(cli="qwen,gemini", agents=("qwen-1", "gemini-1"))`` starts a new broker and model for that
    launch; pass ``broker=`` and ``model=`` to share running ones between launches. ``args`` are added to the
    command line, ``broker_env`` and ``launcher_env`` to the broker's and the launcher's environment; ``config``
    is the new broker home's ``config.toml``; ``workdir`` (default: a new empty directory) is the launch's
    ``--dir``. Every launch is stopped when the module ends.
    """
    started: list[LaunchedSwarm] = []

    def launch(
        *,
        cli: str,
        agents: tuple[str, ...],
        args: tuple[str, ...] = (),
        broker: BrokerProcess | None = None,
        model: ScriptedModelServer | None = None,
        broker_env: dict[str, str] | None = None,
        launcher_env: dict[str, str] | None = None,
        config: str | None = None,
        workdir: Path | None = None,
        name: str = "launch",
    ) -> LaunchedSwarm:
        root = tmp_path_factory.mktemp(name)
        user_home = root / "user"
        user_home.mkdir()
        if workdir is None:
            workdir = root / "work"
            workdir.mkdir()
        owns = broker is None
        if broker is None:
            if config is not None:
                (root / "home").mkdir()
                (root / "home" / "config.toml").write_text(config)
            env = {"AISWARM_LEASE_SECONDS": "120", "AISWARM_LOG_FORMAT": "json", **(broker_env or {})}
            broker = BrokerProcess(root / "home", env).start()
        model = model or ScriptedModelServer().start()
        env = {
            **os.environ,
            "PATH": clis.path_env(),
            "HOME": str(user_home),  # no user logins are carried into the agents' homes
            "AISWARM_HOME": str(broker.home),
            "NO_COLOR": "1",
            "AISWARM_LOG_FORMAT": "json",
            **(launcher_env or {}),
        }
        env.pop("AISWARM_TOKEN", None)
        launcher_log = root / "launcher.log"
        with open(launcher_log, "wb") as out:
            launcher = subprocess.Popen(
                [
                    *(sys.executable, "-m", "aiswarm_server", "launch", "--agents", str(len(agents))),
                    *("--cli", cli, "--url", broker.url, "--model-endpoint", model.url),
                    *("--dir", str(workdir), "--grace", "5", "--no-ui", *args),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        swarm = LaunchedSwarm(broker, model, launcher, workdir, env, launcher_log, agents, owns)
        started.append(swarm)
        return swarm

    try:
        yield launch
    finally:
        for swarm in reversed(started):
            swarm.stop()


def install_client(
    client: str, swarm: LaunchedSwarm, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run ``aiswarm install-client CLIENT`` against the swarm's broker with a primary's ``env``; asserts success."""
    done = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", "install-client", client, "--url", swarm.broker.url],
        env={**env, "PATH": os.environ.get("PATH", "")},  # aiswarm runs with the test's Python
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def delegation_prompt(files: dict[str, str], workdir: Path) -> str:
    """A primary's prompt: delegate one task per file (path → content) through ``submit_tasks``, then wait."""
    tasks = [
        {
            "title": f"write {path}",
            "prompt": f"Create the file {path} containing exactly: {content}",
            "working_dir": str(workdir),
        }
        for path, content in files.items()
    ]
    block = json.dumps({"tasks": tasks}, indent=2)
    return (
        "You are the primary agent. Delegate these tasks to the aiswarm workers: call submit_tasks with them, "
        "then wait_for_tasks (mode all) with the returned ids, and summarise the results.\n"
        f"```json\n{block}\n```\n"
    )


@dataclass
class PrimaryRun:
    """How a primary agent's CLI process ended."""

    returncode: int
    stdout: str
    stderr: str


def run_primary(
    name: str,
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    timeout: float,
    swarm: LaunchedSwarm,
    stdin: str | None = None,
) -> PrimaryRun:
    """Run a primary agent's CLI in its own process group until it exits; fail (with the swarm's logs) after
    ``timeout`` seconds. Whatever it leaves in its group is killed."""
    started = time.monotonic()
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"{name} did not finish in {timeout:.0f}s\n{stdout[-3000:]}\n{stderr[-3000:]}\n{swarm.tail()}"
        ) from None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # anything it left behind in its group
        if process.poll() is None:
            process.wait()
    print(f"{name} ran {time.monotonic() - started:.0f}s")
    return PrimaryRun(process.returncode, stdout, stderr)
