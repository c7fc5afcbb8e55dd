"""opencode as the primary agent, end to end: it delegates through aiswarm's MCP tools to launched workers.

The real opencode binary is configured by ``aiswarm install-client opencode`` (the MCP entry with the primary
token), plus a provider pointing at the scripted model. Given a prompt naming ``submit_tasks`` with a ```json
block of tasks, the scripted model makes opencode call ``aiswarm_submit_tasks``, then ``aiswarm_wait_for_tasks``
with the returned ids, then answer. ``aiswarm launch`` runs the real qwen-code and gemini-cli as the workers
that do the tasks. Everything talks over 127.0.0.1.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.scripted_model import ScriptedModelServer
from tests.clis import InstalledClis
from tests.launcher.conftest import LaunchedSwarm, LaunchSwarm, delegation_prompt, install_client, run_primary

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

AGENTS = ("qwen-1", "gemini-1")
PRIMARY = "primary"
FILES = {"out/alpha.txt": "alpha from the swarm", "out/beta.txt": "beta from the swarm"}
OPENCODE_TIMEOUT = 900.0
Swarm = LaunchedSwarm


@pytest.fixture(scope="module")
def swarm(launch_swarm: LaunchSwarm) -> Iterator[Swarm]:
    """A broker, the scripted model and ``aiswarm launch`` with one qwen and one gemini worker."""
    yield launch_swarm(cli="qwen,gemini", agents=AGENTS, args=("--cool-down", "20"))


def _opencode_env(clis: InstalledClis, user_home: Path, swarm: Swarm) -> dict[str, str]:
    """A private HOME / XDG tree for opencode; nothing of the real user's config is read."""
    env = {
        "PATH": clis.path_env(),
        "HOME": str(user_home),
        "XDG_CONFIG_HOME": str(user_home / ".config"),
        "XDG_DATA_HOME": str(user_home / ".local" / "share"),
        "XDG_CACHE_HOME": str(user_home / ".cache"),
        "XDG_STATE_HOME": str(user_home / ".local" / "state"),
        "TMPDIR": str(user_home),
        "NO_COLOR": "1",
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "AISWARM_HOME": str(swarm.home),
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
        "OPENCODE_DISABLE_SHARE": "1",
        "OPENCODE_DISABLE_CLAUDE_CODE": "1",
        "OPENCODE_DISABLE_EXTERNAL_SKILLS": "1",
    }
    user_home.mkdir(parents=True, exist_ok=True)
    return env


def _install_client(env: dict[str, str], swarm: Swarm) -> Path:
    """``aiswarm install-client opencode`` into the private XDG config; returns the file it wrote."""
    done = install_client("opencode", swarm, env)
    path = Path(env["XDG_CONFIG_HOME"]) / "opencode" / "opencode.json"
    assert path.exists(), done.stdout
    config = json.loads(path.read_text())
    entry = config["mcp"]["aiswarm"]
    assert entry["type"] == "remote" and entry["url"] == swarm.broker.url, entry
    assert entry["headers"] == {"Authorization": f"Bearer {swarm.broker.primary_token}"}, entry
    assert entry["timeout"] >= 300_000, entry  # wait_for_tasks holds a call for up to 290 s
    return path


def _add_scripted_model(path: Path, model: ScriptedModelServer) -> None:
    """The provider opencode needs to talk to the scripted model, added to install-client's file."""
    config = json.loads(path.read_text())
    config |= {
        "model": "scripted/m",
        "autoupdate": False,
        "share": "disabled",
        "permission": {"*": "allow"},
        "provider": {
            "scripted": {
                "npm": "@ai-sdk/openai-compatible",
                "options": {
                    "baseURL": f"{model.url}/v1",
                    "apiKey": "x",
                    "headers": {"X-Aiswarm-Agent": PRIMARY},
                },
                "models": {"m": {"tool_call": True}},
            }
        },
    }
    path.write_text(json.dumps(config, indent=2))


def _tool_uses(stdout: str) -> list[dict[str, Any]]:
    """opencode's ``tool_use`` events (``--format json``), as their ``part``."""
    parts = []
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (
            isinstance(event, dict)
            and event.get("type") == "tool_use"
            and isinstance(event.get("part"), dict)
        ):
            parts.append(event["part"])
    return parts


def _output(part: dict[str, Any]) -> dict[str, Any]:
    """A tool call's output parsed as the broker's JSON reply."""
    state = part.get("state") or {}
    output = state.get("output")
    assert isinstance(output, str), part
    return json.loads(output[output.index("{") : output.rindex("}") + 1])


def test_opencode_primary_delegates_to_launched_workers_and_waits_for_their_results(
    swarm: Swarm, clis: InstalledClis, tmp_path: Path
) -> None:
    env = _opencode_env(clis, tmp_path / "opencode-user", swarm)
    config_path = _install_client(env, swarm)
    _add_scripted_model(config_path, swarm.model)
    project = tmp_path / "project"
    project.mkdir()

    # The prompt goes in on stdin: `opencode run` re-quotes each message argument holding a space and
    # backslash-escapes its double quotes, which would break the ```json block the scripted model reads.
    opencode = run_primary(
        "opencode",
        [str(clis.bin / "opencode"), "run", "--format", "json", "--title", "t"],
        env=env,
        cwd=project,
        timeout=OPENCODE_TIMEOUT,
        swarm=swarm,
        stdin=delegation_prompt(FILES, swarm.workdir),
    )
    stdout, stderr = opencode.stdout, opencode.stderr
    (tmp_path / "opencode.stdout").write_text(stdout)
    diagnostics = (
        f"exit {opencode.returncode}\nstdout:\n{stdout[-4000:]}\nstderr:\n{stderr[-3000:]}\n{swarm.tail()}"
    )
    assert opencode.returncode == 0, diagnostics

    uses = _tool_uses(stdout)
    tools = [p.get("tool") for p in uses]
    assert tools[0] == "aiswarm_submit_tasks", (tools, diagnostics)
    assert set(tools[1:]) == {"aiswarm_wait_for_tasks"}, (tools, diagnostics)
    assert all((p.get("state") or {}).get("status") == "completed" for p in uses), diagnostics
    submitted = _output(uses[0])
    ids = [t["id"] for t in submitted["tasks"]]
    assert len(ids) == len(FILES), submitted
    assert uses[1]["state"]["input"]["task_ids"] == ids, uses[1]
    waited = _output(uses[-1])
    assert waited["done"] is True, waited
    by_id = {t["id"]: t for t in waited["tasks"]}
    assert sorted(by_id) == sorted(ids), waited
    for task_id, path in zip(ids, FILES, strict=True):
        assert by_id[task_id]["status"] == "completed", waited
        assert by_id[task_id]["result"] == f"Wrote {path}", waited

    for path, content in FILES.items():
        assert (swarm.workdir / path).read_text() == content

    for task_id in ids:
        task = swarm.call(lambda b, i=task_id: b.get_task(i), token=swarm.broker.primary_token).task
        assert task.status.value == "completed", task
        assert task.attempts and task.attempts[-1].agent in AGENTS, task.attempts
        assert task.attempts[-1].outcome.value == "completed", task.attempts

    stats = swarm.model.stats()
    primary = stats["agents"][PRIMARY]
    print("primary model requests:", {k: v for k, v in primary.items() if k != "tools"}, primary["tools"])
    assert primary["tools"].get("aiswarm_submit_tasks") == 1, primary
    assert primary["tools"].get("aiswarm_wait_for_tasks") == len(uses) - 1, primary
    assert primary.get("coordination") == len(uses), primary
    assert primary.get("answer") == 1, primary
    assert primary.get("work") is None and primary.get("rejected") is None, primary
    assert stats["clis"]["opencode"]["coordination"] >= len(uses), stats["clis"]
    workers = {a: s["total"] for a, s in stats["agents"].items() if a in AGENTS}
    assert workers, stats["agents"]

    swarm.launcher.send_signal(signal.SIGINT)
    assert swarm.launcher.wait(90) == 0, swarm.tail()
