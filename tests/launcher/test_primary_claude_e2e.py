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

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clis import InstalledClis
from tests.launcher.conftest import LaunchedSwarm, LaunchSwarm, delegation_prompt, install_client, run_primary

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

WORKER = "gemini-1"
PRIMARY = "primary"
FILES = {"out/claude-primary.txt": "written for the claude primary"}
CLAUDE_TIMEOUT = 600.0
Swarm = LaunchedSwarm


@pytest.fixture(scope="module")
def swarm(launch_swarm: LaunchSwarm) -> Iterator[Swarm]:
    """A broker, the scripted model and ``aiswarm launch`` with one gemini worker, a CLI per task."""
    yield launch_swarm(cli="gemini", agents=(WORKER,), args=("--mode", "per-task", "--cool-down", "20"))


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
    install_client("claude", swarm, env)
    config = json.loads((Path(env["CLAUDE_CONFIG_DIR"]) / ".claude.json").read_text())
    entry = config["mcpServers"]["aiswarm"]
    assert entry["type"] == "http" and entry["url"] == swarm.broker.url, entry
    assert entry["headers"] == {"Authorization": f"Bearer {swarm.broker.primary_token}"}, entry


def test_claude_code_primary_delegates_to_a_launched_worker_and_gets_its_result(
    swarm: Swarm, clis: InstalledClis, tmp_path: Path
) -> None:
    env = _claude_env(clis, tmp_path / "claude-user" / "config", swarm)
    _install_client(env, swarm)
    project = tmp_path / "project"
    project.mkdir()

    claude = run_primary(
        "claude",
        [
            *(
                str(clis.bin / "claude"),
                "-p",
                delegation_prompt(FILES, swarm.workdir),
                "--output-format",
                "json",
            ),
            *("--allowedTools", "mcp__aiswarm", "--max-turns", "12"),
        ],
        env=env,
        cwd=project,
        timeout=CLAUDE_TIMEOUT,
        swarm=swarm,
    )
    stdout, stderr = claude.stdout, claude.stderr
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
        task = swarm.call(lambda b, i=task_id: b.get_task(i), token=swarm.broker.primary_token).task
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
