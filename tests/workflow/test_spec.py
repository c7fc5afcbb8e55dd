"""Workflow files are validated before anything is submitted; each mistake is one line naming where it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aiswarm_server.workflow.spec import WorkflowError, parse_workflow

GOOD = """
name: demo
defaults: {retry: {attempts: 2, delay: 30s, backoff: 2}, timeout: 10m}
tasks:
  - {key: a, title: A, prompt: do a}
  - {key: b, title: B, prompt: do b, depends_on: [a], review: {prompt: check b, rounds: 2}}
"""


def test_a_valid_file_gives_durations_in_seconds_and_dependency_order() -> None:
    flow = parse_workflow(
        GOOD.replace("- {key: a", "- {key: c, title: C, prompt: c, depends_on: [b]}\n  - {key: a")
    )
    assert flow.defaults.retry.delay == 30 and flow.defaults.timeout == 600
    assert [s.key for s in flow.in_dependency_order()] == ["a", "b", "c"]
    review = flow.step("b").review
    assert review is not None and review.persona == "reviewer" and review.rounds == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("depends_on: [a]", "depends_on: [x]"),
            "task 'b' depends on 'x', which is no task's key (keys: a, b)",
        ),
        (
            ("{key: a, title: A, prompt: do a}", "{key: a, title: A, prompt: do a, depends_on: [b]}"),
            "cycle: a -> b -> a",
        ),
        (("key: b,", "key: a,"), "two tasks have the key 'a'"),
        (
            ("delay: 30s", "delay: soon"),
            "defaults.retry.delay: 'soon' is not a duration: write seconds (30) or 30s",
        ),
        (
            ("rounds: 2", "rounds: 0"),
            "tasks[1] (key 'b').review.rounds: Input should be greater than or equal to 1",
        ),
        (
            ("prompt: do a}", "prompt: do a, persnoa: x}"),
            "tasks[0] (key 'a').persnoa: is not a field a workflow knows",
        ),
        (("title: A, ", ""), "tasks[0] (key 'a').title: is required"),
        (("tasks:", "tasks: ["), "check the indentation and quoting there"),
    ],
)
def test_mistakes_are_one_line_naming_the_place(change: tuple[str, str], message: str) -> None:
    with pytest.raises(WorkflowError) as error:
        parse_workflow(GOOD.replace(*change), "flow.yaml")
    text = str(error.value)
    assert message in text and text.startswith("flow.yaml") and "\n" not in text


def test_aiswarm_run_refuses_a_bad_file_in_one_line_before_touching_the_broker(tmp_path: Path) -> None:
    bad = tmp_path / "flow.yaml"
    bad.write_text(GOOD.replace("depends_on: [a]", "depends_on: [x]"))
    done = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", "run", str(bad), "--home", str(tmp_path / "home")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "which is no task's key" in done.stderr
    assert "Traceback" not in done.stderr


def test_aiswarm_run_check_shows_the_steps(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(GOOD)
    done = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", "run", str(flow), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "demo: 2 task(s), valid" in done.stdout and "reviewer x2" in done.stdout
