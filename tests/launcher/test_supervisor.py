"""Fast tests of the supervisor's rules: agent names, prompts, backoff, cool-downs, endpoints, process groups."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from launcher.adapters import UnknownCliError
from launcher.agents import AgentPlan, agent_capabilities, plan_agents
from launcher.cli_run import RunResult
from launcher.cool_downs import CoolDowns, backoff_delay
from launcher.errors import LaunchError
from launcher.personas import Persona
from launcher.supervisor import AgentRun, LaunchConfig, Supervisor

REVIEWER = Persona(
    name="reviewer", description="reviews", instructions="Review carefully.", capabilities=["review"]
)


def test_round_robin_mix_gives_stable_names_numbered_per_cli() -> None:
    plans = plan_agents(4, "qwen,gemini", [])
    assert [(p.name, p.cli) for p in plans] == [
        ("qwen-1", "qwen"),
        ("gemini-1", "gemini"),
        ("qwen-2", "qwen"),
        ("gemini-2", "gemini"),
    ]


def test_counted_mix_and_personas_in_turn() -> None:
    other = Persona(name="tester", description="tests", instructions="Test.")
    plans = plan_agents(0, "qwen:2,gemini:1", [REVIEWER, other])
    assert [p.name for p in plans] == ["qwen-1", "qwen-2", "gemini-1"]
    assert [p.persona.name if p.persona else None for p in plans] == ["reviewer", "tester", "reviewer"]


@pytest.mark.parametrize(
    ("count", "mix", "error"),
    [
        (0, "qwen", LaunchError),
        (3, "qwen:2,gemini:2", LaunchError),
        (1, "qwen:x", LaunchError),
        (1, "nope", UnknownCliError),
    ],
)
def test_bad_mixes_are_refused_with_one_line(count: int, mix: str, error: type[Exception]) -> None:
    with pytest.raises(error) as raised:
        plan_agents(count, mix, [])
    assert "\n" not in str(raised.value)


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_delay(2, n, cap=20) for n in range(6)] == [0, 2, 4, 8, 16, 20]


def test_cool_down_covers_every_agent_of_the_cli_and_never_shrinks() -> None:
    now = [100.0]

    async def scenario() -> None:
        cool = CoolDowns(clock=lambda: now[0])
        woken = cool.changed
        cool.start("qwen", 30)
        assert woken.is_set()
        cool.start("qwen", 5)
        assert cool.remaining("qwen") == 30
        assert cool.remaining("gemini") == 0
        now[0] += 31
        assert cool.remaining("qwen") == 0

    asyncio.run(scenario())


def test_endpoint_is_v1_for_openai_clis_and_bare_for_gemini(tmp_path: Path) -> None:
    config = LaunchConfig(
        agents=[],
        broker_url="http://127.0.0.1:1/mcp",
        admin_token="t",
        home=tmp_path,
        workdir=tmp_path,
        endpoint_url="http://127.0.0.1:9/v1/",
    )
    qwen, gemini = config.endpoint_for("qwen"), config.endpoint_for("gemini")
    assert qwen is not None and qwen.base_url == "http://127.0.0.1:9/v1"
    assert gemini is not None and gemini.base_url == "http://127.0.0.1:9"


def test_stop_kills_the_whole_process_group_after_the_grace_period(tmp_path: Path) -> None:
    """A CLI that ignores SIGTERM and has a child of its own: both are gone after the grace period."""
    script = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print('ready', flush=True); time.sleep(60)"
    )
    config = LaunchConfig(
        agents=[AgentPlan("qwen-1", "qwen")],
        broker_url="http://127.0.0.1:1/mcp",
        admin_token="t",
        home=tmp_path,
        workdir=tmp_path,
        grace_seconds=0.5,
    )

    class FakeAdapter:
        prompt_on_stdin = False

        def prepare_agent_home(self, spec: object) -> None:
            return None

        def command(self, home: object, prompt: str) -> list[str]:
            return [sys.executable, "-c", script]

        def warm_command(self, home: object) -> None:
            return None  # every run starts cold

        def env(self, home: object, base_env: object = None) -> dict[str, str]:
            return dict(os.environ)

        def detect_rate_limit_line(self, line: str) -> bool:
            return False

        def classify_exit(self, returncode: int | None, stdout: str, stderr: str) -> object:
            from launcher.adapters.base import OutcomeKind, RunOutcome

            return RunOutcome(kind=OutcomeKind.CRASHED, reason=f"exit {returncode}", returncode=returncode)

        def parse_usage(self, stdout: str) -> None:
            return None

        def final_answer(self, stdout: str) -> str:
            return stdout

        def return_logins(self, home: object) -> list[Path]:
            return []

    async def scenario() -> tuple[RunResult, list[psutil.Process]]:
        supervisor = Supervisor(config)
        view = supervisor.views["qwen-1"]
        run = asyncio.create_task(
            supervisor._run_cli(
                AgentRun(config.agents[0], None, FakeAdapter(), None, None, view),  # type: ignore[arg-type]
                "p",
                None,
                None,
            )
        )
        deadline = time.monotonic() + 60
        while view.pid is None or not psutil.Process(view.pid).children():
            assert time.monotonic() < deadline, "the CLI never started its child"
            await asyncio.sleep(0.05)
        cli = psutil.Process(view.pid)
        group = [cli, *cli.children()]
        supervisor.stop()
        return await asyncio.wait_for(run, 60), group

    result, group = asyncio.run(scenario())
    assert result.stopped is True
    # SIGKILL lands when the kernel next schedules each process: on a loaded machine that can be a moment after
    # the run returned, so wait (generously) for the group to be gone rather than look once.
    deadline = time.monotonic() + 30
    while (alive := [p.pid for p in group if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive == []
    assert "run 1: starting qwen" in (tmp_path / "logs" / "qwen-1.log").read_text()


def _running(process: psutil.Process) -> bool:
    """Whether ``process`` (the very one: a reused pid is another process) still runs; a zombie does not."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_prompt_on_stdin_reaches_the_cli_whole(tmp_path: Path) -> None:
    """For a CLI that reads its prompt on stdin, the supervisor writes it there and closes it."""
    prompt = "say \"hi\" \\ and 'bye'\n" + "x" * 200_000  # larger than a pipe's buffer
    config = LaunchConfig(
        agents=[AgentPlan("opencode-1", "opencode")],
        broker_url="http://127.0.0.1:1/mcp",
        admin_token="t",
        home=tmp_path,
        workdir=tmp_path,
    )
    seen: list[str] = []

    class StdinAdapter:
        prompt_on_stdin = True

        def prepare_agent_home(self, spec: object) -> None:
            return None

        def command(self, home: object, prompt: str) -> list[str]:
            return [sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read())"]

        def warm_command(self, home: object) -> None:
            return None  # every run starts cold

        def env(self, home: object, base_env: object = None) -> dict[str, str]:
            return dict(os.environ)

        def detect_rate_limit_line(self, line: str) -> bool:
            return False

        def classify_exit(self, returncode: int | None, stdout: str, stderr: str) -> object:
            from launcher.adapters.base import OutcomeKind, RunOutcome

            return RunOutcome(kind=OutcomeKind.DONE, reason="ok", returncode=returncode)

        def parse_usage(self, stdout: str) -> None:
            seen.append(stdout)

        def final_answer(self, stdout: str) -> str:
            return stdout

        def return_logins(self, home: object) -> list[Path]:
            return []

    async def scenario() -> RunResult:
        supervisor = Supervisor(config)
        agent = AgentRun(config.agents[0], None, StdinAdapter(), None, None, supervisor.views["opencode-1"])  # type: ignore[arg-type]
        return await asyncio.wait_for(supervisor._run_cli(agent, prompt, None, 60), 30)

    result = asyncio.run(scenario())
    assert result.outcome.returncode == 0
    assert seen == [prompt]


def test_refreshed_logins_are_returned_while_the_cli_runs_and_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long run (session mode) may rotate a token other agents need: it is carried back as it goes."""
    monkeypatch.setattr("launcher.supervisor.HEARTBEAT_SECONDS", 0.1)
    config = LaunchConfig(
        agents=[AgentPlan("qwen-1", "qwen")],
        broker_url="http://127.0.0.1:1/mcp",
        admin_token="t",
        home=tmp_path,
        workdir=tmp_path,
    )
    calls: list[bool] = []

    class RefreshingAdapter:
        prompt_on_stdin = False

        def prepare_agent_home(self, spec: object) -> None:
            return None

        def command(self, home: object, prompt: str) -> list[str]:
            return [sys.executable, "-c", "import time; time.sleep(1)"]

        def warm_command(self, home: object) -> None:
            return None  # every run starts cold

        def env(self, home: object, base_env: object = None) -> dict[str, str]:
            return dict(os.environ)

        def detect_rate_limit_line(self, line: str) -> bool:
            return False

        def classify_exit(self, returncode: int | None, stdout: str, stderr: str) -> object:
            from launcher.adapters.base import OutcomeKind, RunOutcome

            return RunOutcome(kind=OutcomeKind.DONE, reason="ok", returncode=returncode)

        def parse_usage(self, stdout: str) -> None:
            return None

        def final_answer(self, stdout: str) -> str:
            return stdout

        def return_logins(self, home: object) -> list[Path]:
            calls.append(supervisor.views["qwen-1"].pid is not None)
            return [tmp_path / "oauth_creds.json"]

    supervisor = Supervisor(config)

    async def scenario() -> RunResult:
        agent = AgentRun(config.agents[0], None, RefreshingAdapter(), None, None, supervisor.views["qwen-1"])  # type: ignore[arg-type]
        return await asyncio.wait_for(supervisor._run_cli(agent, "p", None, 60), 30)

    asyncio.run(scenario())
    assert calls.count(True) >= 3, "returned while the CLI was running"
    assert calls[-1] is False, "and once more after it exited"
    assert "carried the CLI's refreshed login back to" in (tmp_path / "logs" / "qwen-1.log").read_text()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["launch", "--cli", "qwen:x"], "--cli 'qwen:x': write NAME:COUNT"),
        (["launch", "--mode", "often"], "--mode 'often': choose per-task or session"),
        (["logs", "nobody"], "no log for agent 'nobody'"),
    ],
)
def test_a_refused_launcher_command_prints_one_line_and_no_error_class(
    tmp_path: Path, args: list[str], says: str
) -> None:
    env = {**os.environ, "AISWARM_HOME": str(tmp_path / "home"), "COLUMNS": "300"}
    done = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", *args], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert says in done.stderr
    assert "LaunchError" not in done.stderr and "BrokerError" not in done.stderr


def test_providers_capabilities_and_preferred_clis_shape_the_plan() -> None:
    qwen_fan = Persona(name="tester", description="tests", instructions="Test.", preferred_cli="qwen")
    plans = plan_agents(0, "gemini@gemini-key:1,qwen@openrouter:1", [qwen_fan, REVIEWER], ("long-context",))
    assert [(p.name, p.provider) for p in plans] == [("gemini-1", "gemini-key"), ("qwen-1", "openrouter")]
    assert {p.name: p.persona.name if p.persona else None for p in plans} == {
        "qwen-1": "tester",  # its preferred CLI, although the gemini agent came first
        "gemini-1": "reviewer",
    }
    assert agent_capabilities(plans[0]) == ["cli:gemini", "provider:gemini-key", "long-context"]
    with pytest.raises(LaunchError, match="CLI@PROVIDER"):
        plan_agents(1, "qwen@", [])
