"""Per-task mode spends no model request on coordination: the task is in the CLI's prompt, and the launcher
reports the CLI's final answer as the task's result (or the task failed, when the run did not do it).

One ``aiswarm launch`` runs a qwen-code, a gemini-cli and an opencode agent against a real broker process and the
scripted model, which counts every model request and tells work (the CLI's own tools), coordination (a broker
tool) and the final answer apart. Tasks ask for one CLI by its capability (``cli:<name>``), so each CLI's count
is its own.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiswarm_server.models import Task
from tests.launcher.conftest import LaunchedSwarm, LaunchSwarm, poll

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CLIS = ("qwen", "gemini", "opencode")
AGENTS = tuple(f"{cli}-1" for cli in CLIS)


@pytest.fixture(scope="module")
def swarm(launch_swarm: LaunchSwarm) -> Iterator[LaunchedSwarm]:
    """``aiswarm launch --cli qwen,gemini,opencode`` in per-task mode (the default)."""
    yield launch_swarm(cli=",".join(CLIS), agents=AGENTS, args=("--cool-down", "5"), name="per-task")


def write(path: str, content: str) -> str:
    return f"WRITE {path}\n```\n{content}\n```\n"


def run_for(swarm: LaunchedSwarm, cli: str, prompt: str, **fields: object) -> Task:
    """Submit one task only ``cli``'s agent may take and wait for it to finish."""
    spec = {"title": f"{cli} task", "prompt": prompt, "capabilities": [f"cli:{cli}"], **fields}
    [task] = swarm.wait_done(swarm.submit_specs([spec]))
    return task


@pytest.mark.parametrize("cli", CLIS)
def test_a_task_costs_its_work_and_its_answer_and_no_coordination_request(
    swarm: LaunchedSwarm, cli: str
) -> None:
    swarm.wait_parked()
    agent = f"{cli}-1"
    figures: dict[str, dict[str, int]] = {}
    for files in (1, 2):
        swarm.model.reset_stats()
        prompt = "".join(write(f"{cli}/{files}-{i}.txt", f"file {i} of {files}") for i in range(files))
        task = run_for(swarm, cli, prompt)
        assert task.status.value == "completed", swarm.tail()
        assert [(a.agent, a.outcome.value) for a in task.attempts] == [(agent, "completed")]
        paths = [f"{cli}/{files}-{i}.txt" for i in range(files)]
        assert task.result == f"Wrote {', '.join(paths)}"  # the CLI's final answer, word for word
        for i, path in enumerate(paths):
            assert (swarm.workdir / path).read_text() == f"file {i} of {files}\n"
        stats = swarm.model.stats()["agents"][agent]
        figures[f"{files} file(s)"] = {k: v for k, v in stats.items() if k != "tools"}
        assert stats.get("coordination", 0) == 0, stats
        assert stats.get("work") == files and stats.get("answer") == 1, stats
        assert not any("aiswarm" in tool for tool in stats["tools"]), stats["tools"]
    print(f"{cli} model requests per task:", figures)


@pytest.mark.parametrize(
    ("cli", "prompt", "error"),
    [
        ("qwen", "FAIL the input is missing", "the CLI answered that it failed: the input is missing"),
        ("gemini", "FAIL the input is missing", "the CLI answered that it failed: the input is missing"),
        ("opencode", "FAIL the input is missing", "the CLI answered that it failed: the input is missing"),
        ("qwen", write("silent.txt", "quiet") + "SILENT\n", "the CLI exited 0 with an empty final answer"),
    ],
)
def test_a_run_that_answers_failed_or_nothing_fails_its_task_and_consumes_an_attempt(
    swarm: LaunchedSwarm, cli: str, prompt: str, error: str
) -> None:
    swarm.wait_parked()
    swarm.model.reset_stats()
    task = run_for(swarm, cli, prompt, max_attempts=1)
    assert task.status.value in ("failed", "dead") and task.failures == 1, (task, swarm.tail())
    [attempt] = task.attempts
    assert (attempt.agent, attempt.outcome.value) == (f"{cli}-1", "failed")
    assert error in (attempt.error or ""), attempt
    assert swarm.model.stats()["agents"][f"{cli}-1"].get("coordination", 0) == 0


def test_in_a_git_checkout_a_run_that_changed_none_of_its_declared_files_fails_and_one_that_did_is_merged(
    swarm: LaunchedSwarm,
) -> None:
    repo = swarm.workdir / "repo"
    repo.mkdir()
    (repo / "README").write_text("base\n")
    for args in (("init", "-q", "-b", "main"), ("add", "-A"), ("commit", "-qm", "base")):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=repo,
            check=True,
            capture_output=True,
        )
    swarm.wait_parked()
    idle = run_for(
        swarm,
        "gemini",
        "RESULT nothing needed doing",
        working_dir=str(repo),
        files=["app.txt"],
        max_attempts=1,
    )
    assert idle.failures == 1 and idle.attempts[0].outcome.value == "failed", (idle, swarm.tail())
    assert "changed none of the files the task declared" in (idle.attempts[0].error or "")
    done = run_for(swarm, "qwen", write("app.txt", "app"), working_dir=str(repo), files=["app.txt"])
    assert done.status.value == "completed" and done.result == "Wrote app.txt", swarm.tail()
    poll(lambda: _merged(repo, "app.txt") == "app\n", 120, "the task's work merged onto main")


def _merged(repo: Path, path: str) -> str:
    """``path`` as the main branch of ``repo`` has it (the task's work is merged there)."""
    shown = subprocess.run(["git", "show", f"main:{path}"], cwd=repo, capture_output=True, text=True)
    return shown.stdout
