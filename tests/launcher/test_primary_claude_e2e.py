"""Claude Code as the primary agent, end to end: it delegates through aiswarm's MCP tools to a launched worker.

The real ``claude`` binary (pinned) is configured by ``aiswarm install-client claude`` alone: the ``aiswarm``
entry in ``$CLAUDE_CONFIG_DIR/.claude.json`` (``type: "http"``, the broker URL, the primary token in
``headers``). It talks to the scripted model through ``ANTHROPIC_BASE_URL``; given a prompt naming
``submit_tasks`` with a ```json block, the model makes it call ``mcp__aiswarm__submit_tasks``, then
``mcp__aiswarm__wait_for_tasks`` with the returned ids, then answer. ``aiswarm launch`` runs one real gemini-cli
worker, a CLI per task, that does the task. Everything talks over 127.0.0.1.

Headless (``-p``), Claude Code 2.1.332 does not declare the MCP Tasks extension (it does so by default only in
its interactive entry point), so the submit is answered with the plain reply and the results come back through
``wait_for_tasks``. Were a later pin to declare it, the submit's result would already hold the finished task and
the scripted model would answer without waiting: the count of ``wait_for_tasks`` calls below would say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.models import Task
from launcher.scripted_model import ScriptedModelServer
from tests.broker_harness import BrokerProcess
from tests.clis import InstalledClis

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

WORKER = "gemini-1"
PRIMARY = "primary"
FILES = {"out/claude-primary.txt": "written for the claude primary"}
CLAUDE_TIMEOUT = 600.0


@dataclass
class Swarm:
    """A broker, the scripted model and ``aiswarm launch`` with one gemini worker."""

    root: Path
    broker: BrokerProcess
    model: ScriptedModelServer
    launcher: subprocess.Popen[bytes]
    home: Path
    workdir: Path
    launcher_log: Path

    def tail(self) -> str:
        """The end of the launcher's output, of the worker's log and of the broker log."""
        parts = [f"--- launcher\n{self.launcher_log.read_text(errors='replace')[-3000:]}"]
        log = self.home / "logs" / f"{WORKER}.log"
        if log.exists():
            parts.append(f"--- {WORKER}\n" + log.read_text(errors="replace")[-3000:])
        if self.broker.log_path is not None and self.broker.log_path.exists():
            parts.append("--- broker\n" + self.broker.log_path.read_text(errors="replace")[-2000:])
        return "\n".join(parts)


def _stop_group(process: subprocess.Popen[bytes], first: int, grace: float) -> None:
    """Send ``first`` to ``process``, wait ``grace`` seconds, then kill its whole process group."""
    if process.poll() is None:
        try:
            process.send_signal(first)
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # started with start_new_session: its own group
    if process.poll() is None:
        process.wait(10)


def _started_by(home: Path) -> list[psutil.Process]:
    """Live processes whose environment or command line mentions ``home`` (the worker's CLI)."""
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


@pytest.fixture
def swarm(clis: InstalledClis, tmp_path: Path) -> Iterator[Swarm]:
    home, workdir, user_home = tmp_path / "aiswarm-home", tmp_path / "work", tmp_path / "launcher-user"
    for d in (workdir, user_home):
        d.mkdir()
    broker = BrokerProcess(home, {"AISWARM_LEASE_SECONDS": "120"}).start()
    model = ScriptedModelServer().start()
    env = {**os.environ, "PATH": clis.path_env(), "HOME": str(user_home), "AISWARM_HOME": str(home)}
    env["NO_COLOR"] = "1"
    env.pop("AISWARM_TOKEN", None)
    launcher_log = tmp_path / "launcher.log"
    with open(launcher_log, "wb") as out:
        launcher = subprocess.Popen(
            [
                *(sys.executable, "-m", "aiswarm_server", "launch", "--agents", "1", "--cli", "gemini"),
                *("--mode", "per-task", "--url", broker.url, "--model-endpoint", model.url),
                *("--dir", str(workdir), "--cool-down", "20", "--grace", "5", "--no-ui"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:
        yield Swarm(tmp_path, broker, model, launcher, home, workdir, launcher_log)
    finally:
        _stop_group(launcher, signal.SIGINT, 60)
        broker_pid = broker.process.pid if broker.process else None
        for proc in _started_by(home):
            if proc.pid != broker_pid:
                proc.kill()
        model.stop()
        broker.stop()


def _claude_env(clis: InstalledClis, config_dir: Path, swarm: Swarm) -> dict[str, str]:
    """A private Claude Code config directory and the scripted model as its API; nothing of the user's is read."""
    config_dir.mkdir(parents=True)
    return {
        "PATH": clis.path_env(),
        "HOME": str(config_dir.parent),
        "CLAUDE_CONFIG_DIR": str(config_dir),
        "TMPDIR": str(config_dir.parent),
        "NO_COLOR": "1",
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "AISWARM_HOME": str(swarm.home),
        "ANTHROPIC_BASE_URL": swarm.model.url,
        "ANTHROPIC_API_KEY": "x",
        "ANTHROPIC_CUSTOM_HEADERS": f"X-Aiswarm-Agent: {PRIMARY}",
        # As for workers: with tool search on, the MCP tools hide behind a ToolSearch call.
        "ENABLE_TOOL_SEARCH": "false",
        "CLAUDE_CODE_MAX_RETRIES": "2",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


def _install_client(env: dict[str, str], swarm: Swarm) -> None:
    """``aiswarm install-client claude`` (user scope) into the private config directory; checks the entry."""
    done = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", "install-client", "claude", "--url", swarm.broker.url],
        env={**env, "PATH": os.environ.get("PATH", "")},  # aiswarm runs with the test's Python
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    config = json.loads((Path(env["CLAUDE_CONFIG_DIR"]) / ".claude.json").read_text())
    entry = config["mcpServers"]["aiswarm"]
    assert entry["type"] == "http" and entry["url"] == swarm.broker.url, entry
    assert entry["headers"] == {"Authorization": f"Bearer {swarm.broker.primary_token}"}, entry


def _prompt(workdir: Path) -> str:
    tasks = [
        {
            "title": f"write {path}",
            "prompt": f"Create the file {path} containing exactly: {content}",
            "working_dir": str(workdir),
        }
        for path, content in FILES.items()
    ]
    block = json.dumps({"tasks": tasks}, indent=2)
    return (
        "You are the primary agent. Delegate these tasks to the aiswarm workers: call submit_tasks with them, "
        "then wait_for_tasks (mode all) with the returned ids, and summarise the results.\n"
        f"```json\n{block}\n```\n"
    )


def _get_task(swarm: Swarm, task_id: int) -> Task:
    async def run() -> Task:
        async with BrokerClient(swarm.broker.url, swarm.broker.primary_token) as client:
            return (await client.get_task(task_id)).task

    return asyncio.run(run())


def test_claude_code_primary_delegates_to_a_launched_worker_and_gets_its_result(
    swarm: Swarm, clis: InstalledClis
) -> None:
    env = _claude_env(clis, swarm.root / "claude-user" / "config", swarm)
    _install_client(env, swarm)
    project = swarm.root / "project"
    project.mkdir()

    started = time.monotonic()
    claude = subprocess.Popen(
        [
            *(str(clis.bin / "claude"), "-p", _prompt(swarm.workdir), "--output-format", "json"),
            *("--allowedTools", "mcp__aiswarm", "--max-turns", "12"),
        ],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = claude.communicate(timeout=CLAUDE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(claude.pid, signal.SIGKILL)
        stdout, stderr = claude.communicate()
        raise AssertionError(
            f"claude did not finish in {CLAUDE_TIMEOUT:.0f}s\n{stdout[-3000:]}\n{stderr[-3000:]}\n{swarm.tail()}"
        ) from None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(claude.pid, signal.SIGKILL)
        if claude.poll() is None:
            claude.wait()
    print(f"claude ran {time.monotonic() - started:.0f}s")
    diagnostics = (
        f"exit {claude.returncode}\nstdout:\n{stdout[-4000:]}\nstderr:\n{stderr[-3000:]}\n{swarm.tail()}"
    )
    assert claude.returncode == 0, diagnostics
    final = json.loads(stdout[stdout.index("{") :])
    assert final.get("is_error") is False, diagnostics
    answer = final["result"]
    assert answer.startswith("All tasks finished."), diagnostics

    for path, content in FILES.items():
        assert (swarm.workdir / path).read_text() == content
    task_ids = [int(line.split()[1]) for line in answer.splitlines()[1:]]
    assert len(task_ids) == len(FILES), answer
    for task_id, path in zip(task_ids, FILES, strict=True):
        assert f"Task {task_id} (write {path}): completed - Wrote {path}" in answer, answer
        task = _get_task(swarm, task_id)
        assert task.status.value == "completed" and task.submitted_by == "local primary", task
        assert task.attempts and task.attempts[-1].agent == WORKER, task.attempts

    stats = swarm.model.stats()
    primary = stats["agents"][PRIMARY]
    print("primary model requests:", {k: v for k, v in primary.items() if k != "tools"}, primary["tools"])
    assert primary["tools"].get("mcp__aiswarm__submit_tasks") == 1, primary
    assert primary["tools"].get("mcp__aiswarm__wait_for_tasks", 0) >= 1, primary
    assert primary.get("answer") == 1, primary
    assert primary.get("work") is None and primary.get("rejected") is None, primary
    assert stats["agents"][WORKER]["total"] >= 1, stats["agents"]

    swarm.launcher.send_signal(signal.SIGINT)
    assert swarm.launcher.wait(90) == 0, swarm.tail()
