"""The commands people run most start without the broker's server side, the MCP SDK or the launcher.

Each command imports only what it runs (docs/DESIGN.md, "A command imports what it runs"); this checks which modules
a real ``aiswarm`` process has loaded when it exits, not how long it took (the benchmark measures that).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker_harness import BrokerProcess
from tests.cli.conftest import WIDE
from tests.reliability.swarm import START_TIMEOUT

# Loaded by no command below: the broker's server side, the MCP SDK (its client alone costs ~0.3 s of CPU to import,
# it loads both protocol generations' types and the server), the A2A SDK, the launcher's runtime, httpx (0.28 loads
# its own command line, click, rich and pygments, on import).
NEVER_AT_START = (
    "mcp",
    "mcp_types",
    "uvicorn",
    "starlette",
    "sse_starlette",
    "a2a",
    "prometheus_client",
    "asyncpg",
    "httpx",
    "keyring",
    "aiswarm_server.broker",
    "aiswarm_server.serve",
    "aiswarm_server.http_app",
    "aiswarm_server.tools",
    "aiswarm_server.broker_client",
    "aiswarm_server.dashboard",
    "aiswarm_server.gateway",
    "launcher.supervisor",
    "launcher.cli_run",
    "launcher.isolation",
)
# The broker's own commands do not even register the launcher's and the workflow's commands.
NOT_FOR_BROKER_COMMANDS = (
    *NEVER_AT_START,
    "launcher",
    "aiswarm_server.workflow",
    "aiswarm_server.store",
    "aiswarm_server.auth",
    "yaml",
    "tomlkit",
)

# Runs ``aiswarm ARGS`` as the console script does and prints every loaded module's name on the way out.
PROBE = """
import atexit, json, sys
atexit.register(lambda: sys.__stderr__.write("\\nloaded: " + json.dumps(sorted(sys.modules)) + "\\n"))
sys.argv = ["aiswarm", *json.loads(sys.argv[1])]
from aiswarm_server.cli import main
main()
"""


def loaded_by(args: list[str], home: Path) -> set[str]:
    """The modules an ``aiswarm ARGS`` process had loaded when it exited (it must exit 0)."""
    env = {**os.environ, **WIDE, "AISWARM_HOME": str(home)}
    env.pop("AISWARM_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        input="",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    line = next(line for line in reversed(done.stderr.splitlines()) if line.startswith("loaded: "))
    return set(json.loads(line.removeprefix("loaded: ")))


def heavy(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    """The loaded modules that are, or are inside, one of ``forbidden``."""
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(tmp_path_factory.mktemp("start-up") / "home").start(START_TIMEOUT)
    yield broker
    broker.stop()


@pytest.mark.parametrize(
    "args",
    [["status"], ["tasks"], ["submit", "Start-up check", "-p", "nothing to do"], ["task", "1"], ["agents"]],
    ids=lambda a: a[0],
)
def test_broker_commands_against_a_live_broker_load_neither_server_nor_sdk_nor_launcher(
    live: BrokerProcess, args: list[str]
) -> None:
    if args[0] == "task":
        loaded_by(["submit", "For task 1", "-p", "x"], live.home)  # so that task 1 exists
    modules = loaded_by(args, live.home)
    assert "aiswarm_server.post_client" in modules  # it did talk to the broker
    assert heavy(modules, NOT_FOR_BROKER_COMMANDS) == []


@pytest.mark.parametrize("command", ["status", "tasks", "submit"])
def test_a_broker_commands_help_loads_neither_server_nor_sdk_nor_launcher(
    command: str, tmp_path: Path
) -> None:
    assert heavy(loaded_by([command, "--help"], tmp_path), NOT_FOR_BROKER_COMMANDS) == []


def test_version_loads_no_command_module(tmp_path: Path) -> None:
    assert heavy(loaded_by(["--version"], tmp_path), NOT_FOR_BROKER_COMMANDS) == []


def test_the_full_help_lists_every_command_with_its_help_yet_loads_no_runtime(tmp_path: Path) -> None:
    from typer.main import get_command

    from aiswarm_server.cli import _register_launcher_commands, app

    _register_launcher_commands()
    commands = get_command(app).commands  # type: ignore[attr-defined]
    env = {**os.environ, **WIDE, "AISWARM_HOME": str(tmp_path)}
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "aiswarm"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    for name, command in commands.items():
        summary = (command.help or "").splitlines()[0][:40]
        assert re.search(rf"│ {re.escape(name)}\s+{re.escape(summary)}", shown), (
            f"{name}: {summary!r} not in --help"
        )
    assert heavy(loaded_by(["--help"], tmp_path), NEVER_AT_START) == []
