"""What a worker CLI is told: the headless prompt for one reserved task, or the session-mode loop."""

from __future__ import annotations

from launcher.personas import Persona


def task_prompt(agent: str, task_id: int, persona: Persona | None) -> str:
    """The headless prompt for one reserved task (the model never waits: the task is already held)."""
    return with_persona(
        persona,
        f"You are aiswarm worker agent {agent}. Task {task_id} is reserved for you on the aiswarm broker.",
        f"1. Call claim_task with task_id {task_id}. It returns the task (title, prompt, working_dir) "
        "and the fence_token you hold it with.",
        "2. Do what the task's prompt asks, working in its working_dir (use absolute paths under it).",
        f"3. Call report_task_completion with task_id {task_id}, that fence_token, success true or false, "
        "and a short result (or the error when you could not do it).",
        "Then stop: do not look for other work.",
    )


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
