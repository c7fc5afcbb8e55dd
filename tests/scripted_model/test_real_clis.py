"""The real qwen-code, gemini-cli and opencode binaries, driven by the scripted model through MCP.

Each CLI gets its own home (``QWEN_HOME``, ``GEMINI_CLI_HOME``, ``OPENCODE_CONFIG``; ``HOME``
and the XDG directories point into a temp dir), talks to the scripted model on loopback and
to a stand-in broker exposing ``claim_task`` and ``report_task_completion``. The test checks
that the CLI claimed the task, wrote the file with its own write tool and reported, and
counts the model requests it took.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from launcher.scripted_model import ScriptedModelServer
from tests.scripted_model.conftest import InstalledClis, StandInBroker

pytestmark = pytest.mark.e2e

MODEL = "scripted-m"


@dataclass(frozen=True)
class Run:
    """How to start one CLI: its command, environment and working directory."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path


def _base_env(clis: InstalledClis, home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": clis.path_env(),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "TMPDIR": str(home),
        "NO_COLOR": "1",
        "TERM": "dumb",
        "LANG": "C.UTF-8",
    }


def _mcp_entry(broker: StandInBroker, agent: str) -> dict[str, object]:
    return {
        "httpUrl": broker.url,
        "headers": {"Authorization": f"Bearer {agent}"},
        "timeout": 60000,
        "trust": True,
    }


def qwen_run(
    clis: InstalledClis, root: Path, model: ScriptedModelServer, broker: StandInBroker, prompt: str
) -> Run:
    """qwen-code: settings in ``QWEN_HOME/settings.json``, the model through ``OPENAI_*``."""
    agent = "qwen-1"
    qwen_home = root / "qwen-home"
    qwen_home.mkdir(parents=True)
    settings = {
        "mcpServers": {"aiswarm": {**_mcp_entry(broker, agent), "alwaysLoadTools": True}},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
        "model": {
            "generationConfig": {
                "customHeaders": {"X-Aiswarm-Agent": agent},
                "maxRetries": 2,
                "retryInitialDelayMs": 500,
                "retryMaxDelayMs": 1000,
            }
        },
    }
    (qwen_home / "settings.json").write_text(json.dumps(settings))
    env = {
        **_base_env(clis, root / "home"),
        "QWEN_HOME": str(qwen_home),
        "OPENAI_BASE_URL": f"{model.url}/v1",
        "OPENAI_API_KEY": "scripted",
        "OPENAI_MODEL": MODEL,
        "QWEN_USAGE_STATISTICS_ENABLED": "false",
    }
    argv = ["qwen", "-p", prompt, "--yolo", "--output-format", "json", "--max-session-turns", "20"]
    return Run(argv, env, root / "work")


def gemini_run(
    clis: InstalledClis, root: Path, model: ScriptedModelServer, broker: StandInBroker, prompt: str
) -> Run:
    """gemini-cli: settings in ``GEMINI_CLI_HOME/.gemini/settings.json``, the model at ``GOOGLE_GEMINI_BASE_URL``."""
    agent = "gemini-1"
    gemini_home = root / "gemini-home"
    (gemini_home / ".gemini").mkdir(parents=True)
    settings = {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
        "general": {"maxAttempts": 2},
        "model": {"maxSessionTurns": 20},
        "mcpServers": {"aiswarm": _mcp_entry(broker, agent)},
    }
    (gemini_home / ".gemini" / "settings.json").write_text(json.dumps(settings))
    env = {
        **_base_env(clis, root / "home"),
        "GEMINI_CLI_HOME": str(gemini_home),
        "GEMINI_API_KEY": "scripted",
        "GOOGLE_GEMINI_BASE_URL": model.url,
        "GEMINI_CLI_TRUST_WORKSPACE": "true",
        "GEMINI_CLI_CUSTOM_HEADERS": f"X-Aiswarm-Agent: {agent}",
    }
    argv = ["gemini", "-p", prompt, "--output-format", "json", "-m", MODEL, "--yolo"]
    return Run(argv, env, root / "work")


def opencode_run(
    clis: InstalledClis, root: Path, model: ScriptedModelServer, broker: StandInBroker, prompt: str
) -> Run:
    """opencode: one config file (``OPENCODE_CONFIG``) with a custom OpenAI-compatible provider."""
    agent = "opencode-1"
    config = {
        "$schema": "https://opencode.ai/config.json",
        "model": f"scripted/{MODEL}",
        "autoupdate": False,
        "share": "disabled",
        "permission": {"*": "allow"},
        "provider": {
            "scripted": {
                "npm": "@ai-sdk/openai-compatible",
                "options": {
                    "baseURL": f"{model.url}/v1",
                    "apiKey": "scripted",
                    "headers": {"X-Aiswarm-Agent": agent},
                },
                "models": {MODEL: {"tool_call": True}},
            }
        },
        "mcp": {
            "aiswarm": {
                "type": "remote",
                "url": broker.url,
                "headers": {"Authorization": f"Bearer {agent}"},
                "timeout": 60000,
            }
        },
    }
    config_file = root / "opencode.json"
    config_file.write_text(json.dumps(config))
    env = {
        **_base_env(clis, root / "home"),
        "OPENCODE_CONFIG": str(config_file),
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
        "OPENCODE_DISABLE_SHARE": "1",
        "OPENCODE_DISABLE_CLAUDE_CODE": "1",
        "OPENCODE_DISABLE_EXTERNAL_SKILLS": "1",
    }
    argv = ["opencode", "run", "--format", "json", "--title", "aiswarm task", prompt]
    return Run(argv, env, root / "work")


LAUNCHERS = {"qwen": qwen_run, "gemini": gemini_run, "opencode": opencode_run}

TASK_PROMPT = """\
# Greet the reader.
WRITE greetings/hello.txt
```
hello from {cli}
second line
```
"""

WORKER_PROMPT = (
    "You are {agent}, a worker in an aiswarm swarm. Call claim_task with task_id 7, do exactly what the "
    "task's prompt asks in its working_dir using your own file tools, then call report_task_completion "
    "with the task_id and fence_token from the claim."
)


def _run(run: Run, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    run.cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [*run.argv],
        cwd=run.cwd,
        env=run.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("cli", ["qwen", "gemini", "opencode"])
def test_cli_claims_writes_with_its_own_tool_and_reports(
    cli: str, clis: InstalledClis, model: ScriptedModelServer, broker: StandInBroker, tmp_path: Path
) -> None:
    agent = f"{cli}-1"
    work = tmp_path / "work"
    work.mkdir()
    broker.add_task(7, "greet", TASK_PROMPT.format(cli=cli), work)

    done = _run(LAUNCHERS[cli](clis, tmp_path, model, broker, WORKER_PROMPT.format(agent=agent)))

    diagnostics = f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, diagnostics
    assert (work / "greetings" / "hello.txt").read_text() == f"hello from {cli}\nsecond line\n", diagnostics
    assert broker.reports == [
        {
            "agent": agent,
            "task_id": 7,
            "fence_token": 701,
            "success": True,
            "result": "Wrote greetings/hello.txt",
            "error": None,
        }
    ]
    assert [tool for _, tool, _ in broker.calls] == ["claim_task", "report_task_completion"]
    stats = model.stats()["agents"][agent]
    # claim, report; one write; one final answer; plus the CLI's own side requests (if any).
    assert (stats.get("coordination"), stats.get("work"), stats.get("answer")) == (2, 1, 1), stats
    assert stats.get("rejected") is None, stats
    assert stats["tools"]["write_file" if cli != "opencode" else "write"] == 1, stats


def test_qwen_reads_before_overwriting_and_rides_out_a_burst_of_429s(
    clis: InstalledClis, model: ScriptedModelServer, broker: StandInBroker, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    (work / "greetings").mkdir(parents=True)
    (work / "greetings" / "hello.txt").write_text("stale\n")
    broker.add_task(7, "greet", TASK_PROMPT.format(cli="qwen"), work)
    model.inject_fault(agent="qwen-1", count=2, retry_after=1)

    done = _run(qwen_run(clis, tmp_path, model, broker, WORKER_PROMPT.format(agent="qwen-1")))

    diagnostics = f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, diagnostics
    assert (work / "greetings" / "hello.txt").read_text() == "hello from qwen\nsecond line\n"
    assert [r["success"] for r in broker.reports] == [True]
    stats = model.stats()["agents"]["qwen-1"]
    assert stats["rejected"] == 2, stats
    # qwen refuses the first write of a file it has not read: write, read_file, write again.
    assert stats["tools"] == {
        "mcp__aiswarm__claim_task": 1,
        "write_file": 2,
        "read_file": 1,
        "mcp__aiswarm__report_task_completion": 1,
    }, stats
