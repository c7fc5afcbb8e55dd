"""What the supervisor does after a CLI run: the one place a run's outcome becomes a decision.

Two questions: what happens to a task the agent still holds (given back without burning an attempt when it was
not the task's fault, reported failed otherwise), and how the agent is paced (a rate limit cools down every agent
of the CLI or provider, a refused key, missing binary or configuration error opens a circuit, a success resets
the backoff, a failure lengthens it, a stop changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from launcher.adapters.base import OutcomeKind
from launcher.cli_run import RunResult


class TaskAction(StrEnum):
    """What becomes of the task the run was for."""

    NONE = "none"
    """The agent no longer holds it: the CLI reported it."""
    RELEASE = "release"
    """Back to the queue without a failure: not the task's fault."""
    FAIL = "fail"
    """Reported failed (retryable): counts an attempt."""


class Pacing(StrEnum):
    """How the run changes when the agent may start its CLI again."""

    COOL_DOWN = "cool down"
    """Every agent of the CLI pauses (they share the account that is rate limited)."""
    OPEN_CIRCUIT = "open circuit"
    """No agent of the CLI or provider takes work until a probe passes: nothing can succeed there."""
    RESET = "reset"
    """A success: the backoff starts over."""
    FAILURE = "failure"
    """One more failed run: the backoff grows."""
    UNCHANGED = "unchanged"
    """A stop: nothing learned about the CLI."""


@dataclass(frozen=True)
class Decision:
    """The supervisor's decision after one run."""

    task: TaskAction
    pacing: Pacing
    why: str
    """For a release, why it is not the task's fault; for a failure, the run's outcome."""


def decide(result: RunResult, still_held: bool) -> Decision:
    """The decision after ``result``; ``still_held`` says whether the agent still holds the task after the run."""
    kind = result.outcome.kind
    if result.rate_limited:
        pacing = Pacing.COOL_DOWN
    elif kind.not_the_tasks_fault:
        pacing = Pacing.OPEN_CIRCUIT
    elif kind is OutcomeKind.DONE and not still_held:
        pacing = Pacing.RESET
    elif result.stopped:
        pacing = Pacing.UNCHANGED
    else:
        pacing = Pacing.FAILURE
    if not still_held:
        return Decision(TaskAction.NONE, pacing, result.outcome.reason)
    if result.stopped:
        return Decision(TaskAction.RELEASE, pacing, "launcher stopping")
    if result.rate_limited:
        return Decision(TaskAction.RELEASE, pacing, "rate limited")
    if kind.not_the_tasks_fault:
        return Decision(TaskAction.RELEASE, pacing, result.outcome.reason)
    if kind is OutcomeKind.DONE:
        return Decision(TaskAction.FAIL, pacing, "no report: the CLI exited 0 without reporting the task")
    return Decision(TaskAction.FAIL, pacing, result.outcome.reason)
