"""What the supervisor does after a CLI run: the one place a run's outcome becomes a decision.

Two questions: what happens to a task the agent still holds (given back without burning an attempt when it was
not the task's fault, reported failed otherwise), and how the agent is paced (a rate limit cools down every agent
of the CLI, a success resets the backoff, a failure lengthens it, a stop changes nothing).
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
    if result.rate_limited:
        pacing = Pacing.COOL_DOWN
    elif result.outcome.kind is OutcomeKind.DONE and not still_held:
        pacing = Pacing.RESET
    elif result.stopped:
        pacing = Pacing.UNCHANGED
    else:
        pacing = Pacing.FAILURE
    if not still_held:
        return Decision(TaskAction.NONE, pacing, result.outcome.reason)
    if result.rate_limited or result.stopped:
        return Decision(
            TaskAction.RELEASE, pacing, "rate limited" if result.rate_limited else "launcher stopping"
        )
    return Decision(TaskAction.FAIL, pacing, result.outcome.reason)
