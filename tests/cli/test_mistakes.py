"""A newcomer's mistakes at the shell: each answered in a line that names what is wrong and what to do."""

from __future__ import annotations

import os
import pty
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker_harness import BrokerProcess
from tests.cli.conftest import AISWARM, WIDE, aiswarm, closed_port
from tests.reliability.swarm import START_TIMEOUT

BROKER_COMMANDS = [
    ["status"],
    ["tasks"],
    ["agents"],
    ["submit", "x", "-p", "do x"],
    ["task", "1"],
    ["token", "list"],
]


@pytest.fixture(scope="module")
def stopped_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose broker ran once (tokens exist) and has stopped."""
    broker = BrokerProcess(tmp_path_factory.mktemp("stopped") / "home").start(START_TIMEOUT)
    broker.stop()
    return broker.home


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(tmp_path_factory.mktemp("cli") / "home").start(START_TIMEOUT)
    yield broker
    broker.stop()


@pytest.mark.parametrize("command", BROKER_COMMANDS, ids=lambda c: " ".join(c))
def test_a_broker_command_without_a_broker_says_so_in_one_line_with_the_command_to_start_it(
    stopped_home: Path, command: list[str]
) -> None:
    ran = aiswarm(*command, "--home", str(stopped_home), env={"AISWARM_PORT": str(closed_port())})
    assert ran.code != 0
    assert len(ran.err_lines) == 1, ran.err
    assert "no aiswarm broker answers" in ran.err and f"`aiswarm serve --home {stopped_home}`" in ran.err
    assert "ExceptionGroup" not in ran.err and "Traceback" not in ran.err


def test_a_home_that_never_had_a_broker_says_to_start_one(tmp_path: Path) -> None:
    ran = aiswarm("status", home=tmp_path / "fresh")
    assert ran.code != 0 and len(ran.err_lines) == 1 and "aiswarm serve" in ran.err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["submit", "x", "-p", "y", "--depends-on", "abc"], "'--depends-on'"),
        (["task", "abc"], "'TASK_ID'"),
        (["serve", "--port", "abc"], "'--port'"),
        (["task"], "Missing argument 'TASK_ID'"),
        (["nosuch"], "No such command 'nosuch'"),
        (["tasks", "--status", "nope"], "'--status'"),
    ],
)
def test_usage_errors_show_the_usage_name_the_option_and_exit_2(
    tmp_path: Path, args: list[str], named: str
) -> None:
    ran = aiswarm(*args, home=tmp_path / "home")
    assert ran.code == 2, ran.err
    assert ran.err.startswith("Usage: aiswarm") and named in ran.err_lines[-1]
    assert "BadParameter" not in ran.err and "UsageError" not in ran.err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["--max-attempts", "0"],
            "Invalid value for '--max-attempts': 0 is out of range: it must be between 1 and 100",
        ),
        (
            ["--timeout", "-5"],
            "Invalid value for '--timeout': -5 is out of range: it must be between 1 and 604800",
        ),
        (["--priority", "5000"], "'--priority': 5000 is out of range: it must be between -1000 and 1000"),
    ],
)
def test_out_of_range_values_name_the_option_and_the_allowed_range(
    tmp_path: Path, args: list[str], said: str
) -> None:
    ran = aiswarm("submit", "x", "-p", "y", *args, home=tmp_path / "home")
    assert ran.code == 2
    assert said in ran.err_lines[-1]
    assert "pydantic" not in ran.err and "validation error" not in ran.err


def test_an_empty_title_is_refused_with_what_to_write(tmp_path: Path) -> None:
    ran = aiswarm("submit", " ", "-p", "y", home=tmp_path / "home")
    assert ran.code == 2 and "'TITLE': must not be empty" in ran.err_lines[-1]


def test_a_missing_directory_is_refused_naming_the_option(tmp_path: Path) -> None:
    ran = aiswarm("submit", "x", "-p", "y", "--dir", str(tmp_path / "absent"), home=tmp_path / "home")
    assert ran.code == 2 and "'--dir'" in ran.err_lines[-1] and "does not exist" in ran.err_lines[-1]


def test_a_merge_hook_launch_without_a_hook_says_what_to_put_in_the_config(tmp_path: Path) -> None:
    ran = aiswarm("launch", "--merge", "hook", home=tmp_path / "home")
    assert ran.code != 0 and len(ran.err_lines) == 1, ran.err_lines
    assert "--merge hook needs merge_hook in" in ran.err_lines[0] and "config.toml" in ran.err_lines[0]
    (tmp_path / "home").mkdir(exist_ok=True)
    (tmp_path / "home" / "config.toml").write_text('merge_hook = "gh pr create --head {pr}"\n')
    ran = aiswarm("launch", "--merge", "hook", home=tmp_path / "home")
    assert ran.code != 0 and "merge_hook names {pr}" in ran.err_lines[-1], ran.err_lines


def test_version_prints_the_version() -> None:
    from aiswarm_server import __version__

    ran = aiswarm("--version")
    assert ran.code == 0 and ran.out.strip() == f"aiswarm {__version__}"


def test_submit_without_a_prompt_from_a_terminal_says_how_to_give_one(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [AISWARM, "submit", "x"],
            stdin=terminal,
            capture_output=True,
            text=True,
            env={**os.environ, **WIDE, "AISWARM_HOME": str(tmp_path / "home")},
            timeout=60,
            check=False,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert done.returncode == 1
    assert "no prompt: pass it with -p" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_an_unknown_persona_is_refused_with_the_known_ones(live: BrokerProcess) -> None:
    ran = aiswarm("submit", "x", "-p", "y", "--persona", "nosuch", home=live.home)
    assert ran.code == 1 and len(ran.err_lines) == 1, ran.err
    assert (
        "persona 'nosuch' is unknown: known personas are implementer, researcher, reviewer, tester" in ran.err
    )
    assert "nosuch" not in aiswarm("tasks", home=live.home).out


def test_replies_meant_for_a_model_are_told_to_people_in_commands(live: BrokerProcess) -> None:
    submitted = aiswarm("submit", "for people", "-p", "y", "--json", home=live.home)
    assert submitted.code == 0, submitted.err
    task_id = submitted.out.split('"id": ')[1].split(",")[0]
    shown = aiswarm("task", task_id, home=live.home)
    tokens = aiswarm("token", "list", home=live.home)
    for ran in (submitted, shown, tokens):
        assert ran.code == 0
        for tool in ("wait_for_tasks", "get_task", "list_tasks", "revoke_agent_tokens", "Call "):
            assert tool not in ran.out, ran.out
    assert f"`aiswarm task {task_id}` shows it later" in shown.out
    assert "`aiswarm token revoke --agent NAME`" in tokens.out
    missing = aiswarm("task", "99999", home=live.home)
    assert missing.code == 1
    assert missing.err.strip() == "refused: Task #99999 does not exist. Use `aiswarm tasks` to see task ids."


HELP_DEFAULTS = [
    (["serve"], ["--home", "--database-url", "--lease-seconds"]),
    (["submit"], ["--home", "--url", "--prompt", "--dir", "--max-attempts"]),
    (["launch"], ["--home", "--dir", "--url", "--task-timeout"]),
]


@pytest.mark.parametrize(("command", "options"), HELP_DEFAULTS, ids=lambda c: " ".join(c))
def test_help_shows_every_default(command: list[str], options: list[str]) -> None:
    ran = aiswarm(*command, "--help")
    assert ran.code == 0
    lines = {line.split()[1]: line for line in ran.out.splitlines() if line.startswith("│ --")}
    for option in options:
        assert "[default: " in lines[option], lines[option]
    if command == ["submit"]:
        assert "stdin" in lines["--prompt"]


def test_help_shows_the_environment_variable_of_every_option_that_has_one() -> None:
    from typer.main import get_command

    from aiswarm_server.cli import _register_launcher_commands, app

    _register_launcher_commands()
    root = get_command(app)
    commands: list[list[str]] = []
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        commands += [[name, sub] for sub in subcommands] if subcommands else [[name]]
    checked = 0
    for path in commands:
        command = root
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        wanted = [p for p in command.params if getattr(p, "envvar", None)]
        if not wanted:
            continue
        ran = aiswarm(*path, "--help")
        for param in wanted:
            assert f"env var: {param.envvar}" in ran.out, (
                f"aiswarm {' '.join(path)} --help hides {param.envvar}"
            )
            checked += 1
    assert checked > 20
