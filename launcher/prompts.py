"""What a worker CLI is told: the task itself (per-task mode), or the session-mode loop.

Per-task mode spends no model request on coordination: the supervisor has reserved the task before the CLI
starts, so the prompt carries the task (title, prompt, working directory, earlier attempts' errors) and the
model's final answer becomes the task's result, reported by the supervisor. The one convention the model must
follow to fail a task is :data:`FAILED_PREFIX` at the start of its answer (:func:`failure_in_answer` reads it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aiswarm_server.replies import ClaimedTask
from launcher.personas import Persona

FAILED_PREFIX = "FAILED:"
"""A final answer whose first non-blank line starts with this (exactly, after leading spaces) says the task
failed; the rest of that line is why. Nothing else in an answer is read as failure."""


def task_prompt(
    agent: str,
    task: ClaimedTask,
    fence: int,
    working_dir: Path,
    persona: Persona | None,
    earlier_errors: Sequence[str] = (),
) -> str:
    """The headless prompt for one reserved task: the task itself, where to work, and how to answer.

    ``working_dir`` is where the CLI runs (the attempt's worktree, or the task's directory); ``earlier_errors``
    says how earlier attempts failed, so this one can avoid it. The model is never asked to call the broker: the
    supervisor reports its final answer, with the fence it holds the task with.
    """
    lines = [
        f"You are aiswarm worker agent {agent}. Task {task.id} is yours: do it now, and nothing else.",
        "",
        f"Title: {task.title}",
        f"Working directory: {working_dir}",
        "Work only in the working directory, and give tools absolute paths under it.",
    ]
    if earlier_errors:
        lines += ["", "Earlier attempts at this task failed; avoid what went wrong:"]
        lines += [f"- {error}" for error in earlier_errors]
    lines += [
        "",
        f'<task id="{task.id}">',
        task.prompt.strip(),
        "</task>",
        "",
        "When you are done, stop and give your final answer: it becomes the task's result, so say in a few lines "
        "what you did (files changed, findings, answers).",
        f"If you could not do the task, start your final answer with the line `{FAILED_PREFIX} <why>`; the task "
        "is then retried.",
        "Do not look for other work, and do not report the task: your answer is reported for you. Only to attach "
        "structured data (a JSON object) to the result, call the aiswarm tool report_task_completion yourself, "
        f"with task_id {task.id} and fence_token {fence}.",
    ]
    return with_persona(persona, *lines)


def failure_in_answer(answer: str) -> str | None:
    """Why the task failed, when ``answer`` says so by the :data:`FAILED_PREFIX` convention; else None."""
    first = next((line.strip() for line in answer.splitlines() if line.strip()), "")
    if not first.startswith(FAILED_PREFIX):
        return None
    return first.removeprefix(FAILED_PREFIX).strip() or "no reason given"


def session_prompt(agent: str, persona: Persona | None) -> str:
    """The prompt for session mode: the CLI loops on the broker itself (the AISwarm ADR pattern)."""
    return with_persona(
        persona,
        f"You are aiswarm worker agent {agent}. Work in a loop:",
        "call wait_for_next_event (pass back the cursor it returns every time, timeout_seconds 240);",
        "on a task_available event call claim_task with its task_id, do what the task's prompt asks in its "
        "working_dir, then call report_task_completion with the task_id, the fence_token, success and a result;",
        "then wait again. Stop after 50 idle waits.",
    )


def with_persona(persona: Persona | None, *lines: str) -> str:
    """The prompt ``lines``, after the persona's role and instructions when the agent has one."""
    head = [f"# Your role: {persona.name}", persona.instructions.strip(), ""] if persona is not None else []
    return "\n".join([*head, *lines])
