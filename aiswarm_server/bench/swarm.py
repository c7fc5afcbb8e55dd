"""The swarm section: the real agent CLIs, driven by the scripted model through ``aiswarm launch``.

For each CLI found (an npm prefix in ``$AISWARM_TEST_CLI_DIR`` as the tests install them, the aiswarm home's
``clis/``, or PATH; a CLI found nowhere is skipped with a line saying so), one launcher with one agent runs trivial
tasks one at a time, first ``--no-warm-pool`` (cold) and then ``--warm-pool`` for the CLIs that can start warm.
Each task is submitted once the launcher and its CLIs use no CPU (a warm CLI is then past its start-up), and gives:

* dispatch: submit -> the agent's first model request (the scripted model's time stamp of that request);
* end to end: submit -> the task completed (the broker's ``wait_for_tasks`` returns);
* model requests by kind (work, coordination, answer, side) from the scripted model's counters, per task.

Then four agents of the first CLI found, warm pool on, drain tasks submitted all at once: tasks per minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from aiswarm_server.bench.processes import HOST, BenchBroker, child_environment
from aiswarm_server.bench.stats import summarize
from aiswarm_server.broker_client import BrokerClient
from launcher.adapters import get_adapter
from launcher.adapters.install import PINNED_CLIS, default_home, node_package_name
from launcher.scripted_model import ScriptedModelServer

CLIS = ("gemini", "qwen", "opencode", "codex", "claude")
THROUGHPUT_AGENTS = 4
TASK_SECONDS = 240
"""A trivial task not done by then counts as not completed."""
IDLE_CPU_SECONDS = 0.03
"""The launcher and its CLIs are idle when they used less CPU than this in a quarter second."""


@dataclass(frozen=True)
class SwarmPlan:
    """How much of the swarm section to run."""

    clis: tuple[str, ...]
    tasks_per_mode: int
    throughput_tasks: int

    @classmethod
    def for_mode(cls, quick: bool) -> SwarmPlan:
        """Quick: gemini only (the CLI with the warm pool's widest use), two tasks each way."""
        return cls(("gemini",), 2, 4) if quick else cls(CLIS, 8, 16)


def cli_search_path(env: dict[str, str]) -> str:
    """A PATH where the launched agents find each CLI and Node 22: the tests' npm prefix, the aiswarm home's."""
    dirs: list[str] = []
    prefix = env.get("AISWARM_TEST_CLI_DIR")
    if prefix:
        modules = Path(prefix) / "node_modules"
        dirs += [str(modules / ".bin"), str(modules / node_package_name() / "bin")]
    home = default_home(env)
    dirs += [str(home / "clis" / name / "node_modules" / ".bin") for name in CLIS]
    dirs.append(str(home / "node" / "node_modules" / node_package_name() / "bin"))
    return os.pathsep.join([*(d for d in dirs if Path(d).is_dir()), env.get("PATH", "")])


def _not_installed(cli: str, path: str) -> str | None:
    if shutil.which(PINNED_CLIS[cli].binary, path=path) is None:
        return (
            f"skipped: {cli} is not installed (`aiswarm install-cli {cli}`, or AISWARM_TEST_CLI_DIR naming the "
            "npm prefix the tests install the CLIs into)"
        )
    return None


class Launch:
    """``aiswarm launch`` of ``agents`` agents of ``cli`` against the bench broker and the scripted model."""

    def __init__(
        self,
        broker: BenchBroker,
        model: ScriptedModelServer,
        cli: str,
        agents: int,
        *,
        warm: bool,
        workdir: Path,
        env: dict[str, str],
    ) -> None:
        self.log_path = workdir.parent / f"launch-{cli}-{agents}-{'warm' if warm else 'cold'}.log"
        command = [
            *(sys.executable, "-m", "aiswarm_server", "launch", "--agents", str(agents), "--cli", cli),
            *("--url", f"http://{HOST}:{broker.port}/mcp", "--model-endpoint", model.url),
            *("--dir", str(workdir), "--isolation", "none", "--grace", "5", "--no-ui"),
            "--warm-pool" if warm else "--no-warm-pool",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env
            )

    def cpu_seconds(self) -> float:
        """CPU time of the launcher and every process under it so far."""
        total = 0.0
        try:
            root = psutil.Process(self.process.pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
        except psutil.Error:
            pass
        return total

    async def until_idle(self, limit: float = 30.0) -> None:
        """Wait until the launcher and its CLIs use no CPU (two quiet quarter seconds in a row), or ``limit``."""
        deadline = time.monotonic() + limit
        quiet, last = 0, self.cpu_seconds()
        while quiet < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            now = self.cpu_seconds()
            quiet = quiet + 1 if now - last < IDLE_CPU_SECONDS else 0
            last = now

    def stop(self) -> None:
        """SIGINT (a drain), then SIGKILL if it has not exited in 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self) -> str:
        """The end of the launcher's output, for an error line."""
        return self.log_path.read_text(errors="replace")[-500:] if self.log_path.exists() else ""


class SwarmBench:
    """One broker and one scripted model shared by every launch of the section."""

    def __init__(self, broker: BenchBroker, model: ScriptedModelServer, root: Path) -> None:
        self.broker = broker
        self.model = model
        self.root = root
        self.workdir = root / "work"
        self.workdir.mkdir(parents=True, exist_ok=True)
        user_home = root / "user"
        user_home.mkdir(exist_ok=True)
        base = child_environment(broker.home)
        self.env = {**base, "PATH": cli_search_path(base), "HOME": str(user_home), "NO_COLOR": "1"}
        self.env.pop("AISWARM_TOKEN", None)
        self._serial = 0

    @property
    def url(self) -> str:
        """The broker's MCP URL."""
        return f"http://{HOST}:{self.broker.port}/mcp"

    async def submit(self, count: int) -> list[int]:
        """Submit ``count`` trivial tasks (each writes one small file); their ids."""
        specs = []
        for _ in range(count):
            self._serial += 1
            path = f"bench/{self._serial}.txt"
            specs.append(
                {
                    "title": f"write {path}",
                    "prompt": f"WRITE {path}\n```\nhello {self._serial}\n```\n",
                    "working_dir": str(self.workdir),
                }
            )
        async with BrokerClient(self.url, self.broker.primary_token) as client:
            return [t.id for t in (await client.submit_tasks(specs)).tasks]

    async def wait_done(self, ids: list[int]) -> int:
        """Wait until every task finished (or :data:`TASK_SECONDS` passed); how many completed."""
        deadline = time.monotonic() + TASK_SECONDS
        async with BrokerClient(self.url, self.broker.admin_token) as client:
            while time.monotonic() < deadline:
                reply = await client.wait_for_tasks(ids, mode="all", timeout_seconds=30)
                if reply.done:
                    break
            statuses = [(await client.get_task(i)).task.status.value for i in ids]
        return statuses.count("completed")

    async def until_parked(self, count: int, launch: Launch, limit: float = 180.0) -> None:
        """Wait until ``count`` agents wait for work; RuntimeError naming the launcher's last words if not."""
        deadline = time.monotonic() + limit
        async with BrokerClient(self.url, self.broker.admin_token) as client:
            while time.monotonic() < deadline:
                if (await client.broker_status()).parked_waits >= count:
                    return
                if launch.process.poll() is not None:
                    break
                await asyncio.sleep(0.2)
        raise RuntimeError(f"the agents did not start: {launch.tail()}")

    async def one_at_a_time(self, cli: str, tasks: int, *, warm: bool) -> dict[str, Any]:
        """``tasks`` trivial tasks, each submitted when the swarm is idle: dispatch, end to end, requests."""
        launch = Launch(self.broker, self.model, cli, 1, warm=warm, workdir=self.workdir, env=self.env)
        dispatch: list[float] = []
        end_to_end: list[float] = []
        kinds: Counter[str] = Counter()
        completed = 0
        try:
            await self.until_parked(1, launch)
            for _ in range(tasks):
                await launch.until_idle()
                self.model.reset_stats()
                submitted = time.time()
                ids = await self.submit(1)
                completed += await self.wait_done(ids)
                end_to_end.append(time.time() - submitted)
                stats = self.model.stats()
                firsts = [r["at"] for r in stats["recent"] if r["at"] >= submitted]
                if firsts:
                    dispatch.append(min(firsts) - submitted)
                kinds.update(stats["by_kind"])
        finally:
            launch.stop()
        warm_runs = _warm_runs(self.broker.home / "logs" / f"{cli}-1.log")
        return {
            "tasks": tasks,
            "completed": completed,
            "dispatch": summarize(dispatch),
            "end_to_end": summarize(end_to_end),
            "requests_per_task": {kind: round(n / tasks, 2) for kind, n in sorted(kinds.items())},
            "warm_runs": warm_runs,
        }

    async def throughput(self, cli: str, tasks: int) -> dict[str, Any]:
        """:data:`THROUGHPUT_AGENTS` agents of ``cli`` (warm pool on) drain ``tasks`` tasks submitted at once."""
        launch = Launch(
            self.broker, self.model, cli, THROUGHPUT_AGENTS, warm=True, workdir=self.workdir, env=self.env
        )
        try:
            await self.until_parked(THROUGHPUT_AGENTS, launch)
            await launch.until_idle()
            self.model.reset_stats()
            started = time.monotonic()
            completed = await self.wait_done(await self.submit(tasks))
            seconds = time.monotonic() - started
            requests = self.model.stats()["by_kind"]
        finally:
            launch.stop()
        return {
            "cli": cli,
            "agents": THROUGHPUT_AGENTS,
            "tasks": tasks,
            "completed": completed,
            "seconds": round(seconds, 2),
            "tasks_per_minute": round(completed * 60 / seconds, 1) if seconds > 0 else 0.0,
            "requests_per_task": {kind: round(n / tasks, 2) for kind, n in sorted(requests.items())},
        }


def _warm_runs(log: Path) -> int:
    """How many runs in the agent's log adopted a warm process."""
    return log.read_text(errors="replace").count(" (warm)\n") if log.exists() else 0


async def measure_swarm(root: Path, plan: SwarmPlan) -> dict[str, Any]:
    """The swarm section: per CLI cold and warm, then the throughput of four agents."""
    results: dict[str, Any] = {"load_average_before": [round(x, 2) for x in os.getloadavg()], "clis": {}}
    with BenchBroker(root / "broker") as broker, ScriptedModelServer() as model:
        bench = SwarmBench(broker, model, root)
        found: list[str] = []
        for cli in plan.clis:
            skipped = _not_installed(cli, bench.env["PATH"])
            if skipped is not None:
                results["clis"][cli] = {"skipped": skipped}
                continue
            found.append(cli)
            row: dict[str, Any] = {}
            modes = [False, True] if get_adapter(cli).starts_warm else [False]
            for warm in modes:
                try:
                    row["warm" if warm else "cold"] = await bench.one_at_a_time(
                        cli, plan.tasks_per_mode, warm=warm
                    )
                except RuntimeError as error:
                    row["warm" if warm else "cold"] = {"error": str(error)}
            if len(modes) == 1:
                row["warm"] = {
                    "skipped": f"{cli} reads its prompt before its start-up: every run starts cold"
                }
            results["clis"][cli] = row
        if found:
            try:
                results["throughput"] = await bench.throughput(found[0], plan.throughput_tasks)
            except RuntimeError as error:
                results["throughput"] = {"error": str(error)}
        else:
            results["throughput"] = {"skipped": "no agent CLI is installed"}
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return results
