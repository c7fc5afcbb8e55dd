"""What the supervisor does after a CLI run: the one place a run's outcome becomes a decision.

Two questions: what happens to a task the agent still holds (given back without burning an attempt when it was
not the task's fault, reported completed with the CLI's final answer, or reported failed), and how the agent is
paced (a rate limit cools down every agent of the CLI or provider, a refused key, missing binary or configuration
error opens a circuit, a success resets the backoff, a failure lengthens it, a stop changes nothing).

A per-task run (:class:`TaskRun`) completes its task only when the CLI exited cleanly, its final answer is not
empty and does not say it failed (``FAILED:``, :func:`launcher.prompts.failure_in_answer`), and, for a task that
declared the files it changes, in a git checkout, some of them changed. Anything else that is the task's fault
(an error exit, the turn limit, the deadline) fails it: an attempt is consumed and it is retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from launcher.adapters.base import OutcomeKind
from launcher.cli_run import RunResult
from launcher.prompts import failure_in_answer


class TaskAction(StrEnum):
    """What becomes of the task the run was for."""

    NONE = "none"
    """The agent no longer holds it: the CLI reported it (or it was cancelled, or its lease passed on)."""
    COMPLETE = "complete"
    """Reported completed, with the CLI's final answer as its result."""
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
class TaskRun:
    """What a per-task run left besides its outcome: the CLI's final answer and whether the task's files changed."""

    answer: str
    changed: bool | None = None
    """Whether the files the task declared changed (None: it declared none, or its directory is not in git)."""


@dataclass(frozen=True)
class Decision:
    """The supervisor's decision after one run."""

    task: TaskAction
    pacing: Pacing
    why: str
    """For a release, why it is not the task's fault; for a failure, the run's outcome."""


def decide(result: RunResult, still_held: bool, run: TaskRun | None = None) -> Decision:
    """The decision after ``result``; ``still_held`` says whether the agent still holds the task after the run.

    ``run`` is given for a per-task run, where the supervisor reports the task from the CLI's answer; without it
    (session mode) the CLI reports its task itself, and a task it still holds after a clean exit was left unreported.
    """
    kind = result.outcome.kind
    if not still_held:
        return Decision(TaskAction.NONE, _pacing(result, reported=True), result.outcome.reason)
    if result.stopped:
        return Decision(TaskAction.RELEASE, _pacing(result), "launcher stopping")
    if result.rate_limited:
        return Decision(TaskAction.RELEASE, _pacing(result), "rate limited")
    if kind.not_the_tasks_fault:
        return Decision(TaskAction.RELEASE, _pacing(result), result.outcome.reason)
    if kind is not OutcomeKind.DONE:
        return Decision(TaskAction.FAIL, _pacing(result), result.outcome.reason)
    if run is None:
        return Decision(
            TaskAction.FAIL, _pacing(result), "no report: the CLI exited 0 without reporting the task"
        )
    said = failure_in_answer(run.answer)
    if said is not None:  # the CLI did its job, as when it reports a failure itself: its backoff starts over
        return Decision(
            TaskAction.FAIL, _pacing(result, reported=True), f"the CLI answered that it failed: {said}"
        )
    if not run.answer.strip():
        return Decision(TaskAction.FAIL, _pacing(result), "the CLI exited 0 with an empty final answer")
    if run.changed is False:
        why = "the CLI changed none of the files the task declared (git shows no change there)"
        return Decision(TaskAction.FAIL, _pacing(result), why)
    return Decision(TaskAction.COMPLETE, _pacing(result, reported=True), result.outcome.reason)


def _pacing(result: RunResult, *, reported: bool = False) -> Pacing:
    """How the run paces its agent; ``reported``: the task was reported (by the CLI, or for it from its answer)."""
    kind = result.outcome.kind
    if result.rate_limited:
        return Pacing.COOL_DOWN
    if kind.not_the_tasks_fault:
        return Pacing.OPEN_CIRCUIT
    if kind is OutcomeKind.DONE and reported:
        return Pacing.RESET
    if result.stopped:
        return Pacing.UNCHANGED
    return Pacing.FAILURE
