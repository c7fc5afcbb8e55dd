"""The warm pool's lifecycle with a real small process standing in for a CLI (a Python script that, like gemini,
reads its prompt from stdin only after a start-up and gives up on stdin unless a first chunk comes soon)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from launcher.adapters.base import OutcomeKind, RunOutcome
from launcher.agents import AgentPlan
from launcher.cli_run import RunResult
from launcher.supervisor import AgentRun, LaunchConfig, Supervisor
from launcher.warm_pool import PRIMER, WarmPool, WarmSpec

STAND_IN = textwrap.dedent(
    """
    import os, select, sys, time
    time.sleep(float(os.environ.get("START_UP_SECONDS", "0.3")))  # the CLI's start-up, before it reads stdin
    if not select.select([sys.stdin], [], [], 0.5)[0]:  # like gemini: no first chunk within 500 ms, no input
        sys.stderr.write("No input provided via stdin\\n")
        sys.exit(42)
    data = sys.stdin.read()
    sys.stdout.write(repr(data) + " " + os.getcwd())
    """
)


def _spec(tmp_path: Path, cwd: Path | None = None, **env: str) -> WarmSpec:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return WarmSpec.of([sys.executable, str(script)], cwd or tmp_path, {**os.environ, **env}, None)


async def _exit_code(process: asyncio.subprocess.Process, seconds: float = 30) -> int:
    return await asyncio.wait_for(process.wait(), seconds)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_matching_run_takes_the_warm_process_which_reads_the_primer_then_the_prompt(tmp_path: Path) -> None:
    async def scenario() -> tuple[bytes, int]:
        pool = WarmPool()
        assert await pool.start("a", _spec(tmp_path))
        await asyncio.sleep(1.5)  # well past its start-up: it waits in its read of stdin
        process = pool.take("a", _spec(tmp_path))
        assert process is not None and process.stdin is not None
        process.stdin.write(b"do task 7")
        process.stdin.close()
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        assert pool.take("a", _spec(tmp_path)) is None  # taken once: the pool has none left for the agent
        return out, pool.hits

    out, hits = asyncio.run(scenario())
    assert out.decode() == f"{(PRIMER + b'do task 7').decode()!r} {tmp_path}"
    assert hits == 1


def test_a_run_in_another_directory_or_environment_starts_cold_and_the_warm_process_is_killed(
    tmp_path: Path,
) -> None:
    other = tmp_path / "other"
    other.mkdir()

    async def scenario() -> list[int]:
        pool = WarmPool()
        codes: list[int] = []
        for mismatch in (_spec(tmp_path, cwd=other), _spec(tmp_path, TASK_ENV="other")):
            assert await pool.start("a", _spec(tmp_path, START_UP_SECONDS="60"))
            warm = pool._entries["a"].process
            assert pool.take("a", mismatch) is None
            codes.append(await _exit_code(warm))
        assert pool.misses == 2 and pool.hits == 0
        await pool.aclose()
        return codes

    assert asyncio.run(scenario()) == [-signal.SIGKILL, -signal.SIGKILL]


def test_a_dead_or_stale_warm_process_is_not_used_and_a_new_one_replaces_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        pool = WarmPool()
        spec = _spec(tmp_path, START_UP_SECONDS="60")
        assert await pool.start("a", spec)
        first = pool._entries["a"].process
        os.killpg(first.pid, signal.SIGKILL)  # it crashed while warm
        await _exit_code(first)
        assert pool.take("a", spec) is None
        assert await pool.start("a", spec)  # replaced
        second = pool._entries["a"].process
        assert second.pid != first.pid and second.returncode is None
        pool.max_age_seconds = 0.0  # now it is stale
        assert pool.take("a", spec) is None
        assert await _exit_code(second) == -signal.SIGKILL
        assert pool.misses == 2
        await pool.aclose()

    asyncio.run(scenario())


def test_close_kills_every_warm_process_and_starts_none_after(tmp_path: Path) -> None:
    async def scenario() -> list[int]:
        pool = WarmPool()
        spec = _spec(tmp_path, START_UP_SECONDS="60")
        for agent in ("a", "b"):
            assert await pool.start(agent, spec)
        processes = [pool._entries[a].process for a in ("a", "b")]
        await pool.aclose()
        assert not await pool.start("a", spec)
        assert pool.pid("a") is None
        return [await _exit_code(p) for p in processes]

    assert asyncio.run(scenario()) == [-signal.SIGKILL, -signal.SIGKILL]


def test_a_warm_process_dies_with_a_launcher_that_was_killed(tmp_path: Path) -> None:
    """No warm CLI outlives its launcher, even one killed with SIGKILL (no clean-up ran)."""
    spec_file = tmp_path / "launcher.py"
    spec_file.write_text(
        textwrap.dedent(
            f"""
            import asyncio, os, sys
            sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
            from launcher.warm_pool import WarmPool, WarmSpec

            async def main():
                pool = WarmPool()
                spec = WarmSpec.of([sys.executable, "-c", "import time; time.sleep(120)"], {str(tmp_path)!r},
                                   dict(os.environ), None)
                await pool.start("a", spec)
                print(pool.pid("a"), flush=True)
                await asyncio.sleep(120)

            asyncio.run(main())
            """
        )
    )
    launcher = subprocess.Popen([sys.executable, str(spec_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        warm_pid = int(launcher.stdout.readline())
        assert not _gone(warm_pid)
        launcher.kill()
        launcher.wait(30)
        deadline = time.monotonic() + 30
        while not _gone(warm_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(warm_pid)
    finally:
        if launcher.poll() is None:
            launcher.kill()


class _WarmAdapter:
    """An adapter whose CLI is the stand-in: cold, the prompt comes on stdin at once; warm, after the primer."""

    prompt_on_stdin = True

    def __init__(self, script: Path) -> None:
        self.script = script
        self.outputs: list[str] = []

    def prepare_agent_home(self, spec: object) -> SimpleNamespace:
        return SimpleNamespace(settings_path=self.script.with_name("settings.json"))

    def command(self, home: object, prompt: str) -> list[str]:
        return [sys.executable, str(self.script)]

    def warm_command(self, home: object) -> list[str]:
        return [sys.executable, str(self.script)]

    def env(self, home: object, base_env: object = None) -> dict[str, str]:
        return {**os.environ, "START_UP_SECONDS": "0.2"}

    def detect_rate_limit_line(self, line: str) -> bool:
        return False

    def classify_exit(self, returncode: int | None, stdout: str, stderr: str) -> RunOutcome:
        kind = OutcomeKind.DONE if returncode == 0 else OutcomeKind.CRASHED
        return RunOutcome(kind=kind, reason=f"exit {returncode}", returncode=returncode)

    def parse_usage(self, stdout: str) -> None:
        self.outputs.append(stdout)

    def final_answer(self, stdout: str) -> str:
        return stdout.strip()

    def return_logins(self, home: object) -> list[Path]:
        return []


@pytest.mark.parametrize("warm_pool", [True, False])
def test_the_supervisor_runs_a_task_on_the_warm_process_of_its_directory_and_cold_elsewhere(
    tmp_path: Path, warm_pool: bool
) -> None:
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = LaunchConfig(
        agents=[AgentPlan("gemini-1", "gemini")],
        broker_url="http://127.0.0.1:1/mcp",
        admin_token="t",
        home=tmp_path,
        workdir=tmp_path,
        warm_pool=warm_pool,
    )
    adapter = _WarmAdapter(tmp_path / "stand_in.py")

    async def scenario() -> list[RunResult]:
        supervisor = Supervisor(config)
        agent = AgentRun(config.agents[0], None, adapter, None, None, supervisor.views["gemini-1"])  # type: ignore[arg-type]
        await supervisor._warm_up(agent, None)
        await asyncio.sleep(1.0)  # past its start-up
        results = [await asyncio.wait_for(supervisor._run_cli(agent, "task one", None, 60), 30)]
        results.append(await asyncio.wait_for(supervisor._run_cli(agent, "task two", elsewhere, 60), 30))
        if supervisor.warm_pool is not None:
            assert supervisor.warm_pool.hits == 1 and supervisor.warm_pool.misses == 1  # task two: elsewhere
            # the last run was elsewhere, which still exists: the next warm process waits there
            assert supervisor.warm_pool._entries["gemini-1"].spec.cwd == elsewhere
            supervisor.stop()
            assert supervisor.warm_pool.pid("gemini-1") is None
            await supervisor.warm_pool.aclose()
        return results

    results = asyncio.run(scenario())
    assert [r.outcome.kind for r in results] == [OutcomeKind.DONE, OutcomeKind.DONE]
    warm_input = (PRIMER + b"task one").decode() if warm_pool else "task one"
    assert adapter.outputs == [f"{warm_input!r} {tmp_path}", f"{'task two'!r} {elsewhere}"]
    log = (tmp_path / "logs" / "gemini-1.log").read_text()
    assert (f"starting gemini in {tmp_path} (warm)" in log) is warm_pool


def test_a_warm_spec_differs_once_the_settings_the_cli_read_at_its_start_change(tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text('{"model": "a"}')
    before = WarmSpec.of(["cli"], tmp_path, {"A": "1"}, settings)
    assert WarmSpec.of(["cli"], tmp_path, {"A": "1"}, settings) == before
    settings.write_text('{"model": "b"}')
    assert WarmSpec.of(["cli"], tmp_path, {"A": "1"}, settings) != before
