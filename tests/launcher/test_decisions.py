"""After a CLI run: what becomes of the task (completed from the answer, failed, released) and how the agent is
paced; the ``FAILED:`` convention; whether the files a task declared changed (a real git repository)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from aiswarm_server.replies import ClaimedTask
from launcher.adapters.base import OutcomeKind, RunOutcome
from launcher.changes import DeclaredFiles
from launcher.cli_run import RunResult
from launcher.decisions import Pacing, TaskAction, TaskRun, decide
from launcher.personas import Persona
from launcher.prompts import failure_in_answer, session_prompt, task_prompt


def run(
    kind: OutcomeKind = OutcomeKind.DONE,
    answer: str = "Wrote a.txt",
    rate_limited: bool = False,
    stopped: bool = False,
) -> RunResult:
    outcome = RunOutcome(kind=kind, reason=f"{kind.value} reason", returncode=0)
    return RunResult(outcome, None, rate_limited, stopped, 1.0, answer=answer)


@pytest.mark.parametrize(
    ("result", "changed", "task", "pacing", "why"),
    [
        (run(), None, TaskAction.COMPLETE, Pacing.RESET, "done reason"),
        (run(), True, TaskAction.COMPLETE, Pacing.RESET, "done reason"),
        (run(answer="  \n"), None, TaskAction.FAIL, Pacing.FAILURE, "empty final answer"),
        (
            run(answer="\nFAILED: no such file\nmore"),
            None,
            TaskAction.FAIL,
            Pacing.RESET,
            "failed: no such file",
        ),
        (run(), False, TaskAction.FAIL, Pacing.FAILURE, "changed none of the files the task declared"),
        (run(OutcomeKind.CRASHED), None, TaskAction.FAIL, Pacing.FAILURE, "crashed reason"),
        (run(OutcomeKind.TURN_LIMIT), None, TaskAction.FAIL, Pacing.FAILURE, "turn_limit reason"),
        (run(OutcomeKind.TIMED_OUT), None, TaskAction.FAIL, Pacing.FAILURE, "timed_out reason"),
        (
            run(OutcomeKind.RATE_LIMITED, rate_limited=True),
            None,
            TaskAction.RELEASE,
            Pacing.COOL_DOWN,
            "rate",
        ),
        (
            run(OutcomeKind.QUOTA_EXHAUSTED, rate_limited=True),
            None,
            TaskAction.RELEASE,
            Pacing.COOL_DOWN,
            "rate",
        ),
        (run(OutcomeKind.AUTH_FAILURE), None, TaskAction.RELEASE, Pacing.OPEN_CIRCUIT, "auth_failure reason"),
        (run(OutcomeKind.BINARY_MISSING), None, TaskAction.RELEASE, Pacing.OPEN_CIRCUIT, "binary_missing"),
        (run(OutcomeKind.CRASHED, stopped=True), None, TaskAction.RELEASE, Pacing.UNCHANGED, "stopping"),
    ],
)
def test_a_per_task_run_still_holding_its_task_is_completed_from_its_answer_failed_or_released(
    result: RunResult, changed: bool | None, task: TaskAction, pacing: Pacing, why: str
) -> None:
    decision = decide(result, True, TaskRun(result.answer, changed))
    assert (decision.task, decision.pacing) == (task, pacing)
    assert why in decision.why


def test_a_failure_that_is_not_the_tasks_fault_wins_over_the_answer() -> None:
    limited = run(OutcomeKind.RATE_LIMITED, answer="", rate_limited=True)
    assert decide(limited, True, TaskRun("", False)).task is TaskAction.RELEASE


@pytest.mark.parametrize("kind", [OutcomeKind.DONE, OutcomeKind.CRASHED])
def test_a_task_the_cli_reported_itself_is_left_as_it_is(kind: OutcomeKind) -> None:
    decision = decide(run(kind, answer=""), False, TaskRun("", False))
    assert decision.task is TaskAction.NONE
    assert decision.pacing is (Pacing.RESET if kind is OutcomeKind.DONE else Pacing.FAILURE)


def test_in_session_mode_a_clean_exit_still_holding_the_task_is_a_missing_report() -> None:
    decision = decide(run(), True)
    assert (decision.task, decision.pacing) == (TaskAction.FAIL, Pacing.FAILURE)
    assert "without reporting" in decision.why


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("FAILED: the tests do not build", "the tests do not build"),
        ("\n   FAILED:   spaced  \nrest", "spaced"),
        ("FAILED:", "no reason given"),
        ("Done. Nothing FAILED: all good", None),
        ("failed: lower case is an answer", None),
        ("**FAILED:** markdown is an answer", None),
        ("Wrote a.txt\nFAILED: only the first line counts", None),
        ("", None),
    ],
)
def test_only_a_first_line_starting_with_failed_colon_says_the_task_failed(
    answer: str, reason: str | None
) -> None:
    assert failure_in_answer(answer) == reason


def test_the_task_prompt_carries_the_task_and_asks_for_no_coordination(tmp_path: Path) -> None:
    reviewer = Persona(name="reviewer", description="r", instructions="Review carefully.", capabilities=[])
    task = ClaimedTask(
        id=42, title="Fix the parser", prompt="Make parse() accept tabs.", priority=0, persona="reviewer",
        capabilities=[], depends_on=[], working_dir="/elsewhere", timeout_seconds=60, failures=1, error="x",
    )  # fmt: skip
    prompt = task_prompt("qwen-1", task, 9, tmp_path, reviewer, ["attempt 1 (gemini-1, failed): tests broke"])
    assert prompt.startswith("# Your role: reviewer\nReview carefully.")
    assert "Title: Fix the parser" in prompt and f"Working directory: {tmp_path}\n" in prompt
    assert '<task id="42">\nMake parse() accept tabs.\n</task>' in prompt
    assert "- attempt 1 (gemini-1, failed): tests broke" in prompt
    assert "`FAILED: <why>`" in prompt and "task_id 42 and fence_token 9" in prompt
    # never asked to claim or wait; the report is done for it
    assert (
        "claim_task" not in prompt and "wait_for_next_event" not in prompt and "report_progress" not in prompt
    )
    assert "wait_for_next_event" in session_prompt("qwen-1", None)
    assert "report_progress" not in session_prompt("qwen-1", None)


def git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "app.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text("out/\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    return repo


def changed_after(directory: Path, declared: list[str], change: object) -> bool | None:
    async def scenario() -> bool | None:
        watch = await DeclaredFiles.watch(directory, declared)
        if watch is None:
            return None
        await asyncio.sleep(0.01)  # a later write gets a later modification time
        if callable(change):
            change()
        return await watch.changed()

    return asyncio.run(scenario())


def test_a_write_under_the_declared_files_counts_as_a_change_even_with_the_same_content(repo: Path) -> None:
    app = repo / "src" / "app.py"
    assert changed_after(repo, ["src/"], lambda: app.write_text("x = 1\n")) is True
    assert changed_after(repo, ["src/*.py"], lambda: (repo / "src" / "new.py").write_text("")) is True
    assert (
        changed_after(repo, ["out/"], lambda: (repo / "out").mkdir() or (repo / "out" / "r").write_text(""))
        is True
    )
    assert changed_after(repo, ["src/app.py"], app.unlink) is True


def test_a_run_that_wrote_elsewhere_or_nothing_changed_none_of_its_declared_files(repo: Path) -> None:
    assert changed_after(repo, ["src/app.py"], lambda: (repo / "README").write_text("elsewhere")) is False
    assert changed_after(repo, ["docs/**/*.md"], None) is False


def test_a_commit_counts_as_a_change(repo: Path) -> None:
    def commit() -> None:
        (repo / "src" / "app.py").write_text("x = 2\n")
        git(repo, "commit", "-qam", "work")

    assert changed_after(repo / "src", ["app.py"], commit) is True


def test_nothing_is_guessed_without_declared_files_or_outside_git(repo: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert changed_after(repo, [], None) is None
    assert changed_after(plain, ["a.txt"], None) is None
