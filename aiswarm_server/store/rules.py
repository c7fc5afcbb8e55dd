"""The rules every store applies inside its transactions, as pure functions: decisions, and the texts agents read.

A store reads the rows a transition depends on, asks a rule here what follows, and writes the answer in its own
dialect and lock order (as each saq queue backend asks ``Job.retryable``). A change to the retry rule or to the
wording of a refusal is made here, once, for every store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiswarm_server.errors import InvalidRequest, NotFound, StaleClaim, TaskCancelled
from aiswarm_server.limits import ANSWER_WITHIN_DEFAULT_SECONDS
from aiswarm_server.models import (
    AttemptOutcome,
    Claim,
    NewQuestion,
    OnUnanswered,
    Question,
    QuestionStatus,
    Task,
    TaskChange,
    TaskStatus,
)

#: ``last_seen_at`` is kept to this resolution: an agent that calls again sooner is not rewritten, so a wait that
#: finds nothing new commits no write at all (liveness is judged in minutes).
SEEN_RESOLUTION_SECONDS = 2.0

#: A dependency that ended in one of these fails every task waiting on it.
BROKEN = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.DEAD})


# --- decisions -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Report:
    """What an agent reported about its attempt: success (with a result) or failure (retryable or not)."""

    success: bool
    retryable: bool
    result: str | None
    data: dict[str, Any] | None
    error: str | None

    @property
    def outcome(self) -> AttemptOutcome:
        """How the attempt ends when this report is recorded."""
        return AttemptOutcome.COMPLETED if self.success else AttemptOutcome.FAILED

    @property
    def failure(self) -> str:
        """The error recorded for a failure report."""
        return self.error or "the agent reported failure"


def is_repeated(report: Report, attempt_outcome: str | None) -> bool:
    """Whether ``report`` repeats one already recorded for the attempt (a retry after a lost response).

    A repeated report is answered with the task as it is, not refused.
    """
    return attempt_outcome == report.outcome.value


@dataclass(frozen=True, slots=True)
class AfterAttempt:
    """Where a task goes after an attempt that did not succeed, and what is recorded with it."""

    status: TaskStatus
    failures: int
    error: str
    retry_at: float | None = None  # set when the task waits (blocked) for its retry delay


#: The longest a failed task waits for its next attempt, however the backoff grows.
MAX_RETRY_DELAY_SECONDS = 7 * 86_400.0


@dataclass(frozen=True, slots=True)
class RetryDelay:
    """A task's retry policy: wait ``seconds * backoff ** (failures - 1)`` before the next attempt."""

    seconds: float = 0.0
    backoff: float = 1.0

    def retry_at(self, now: float, failures: int) -> float | None:
        """When a task that has now failed ``failures`` times may be claimed again; ``None`` for at once."""
        if self.seconds <= 0 or failures < 1:
            return None
        try:
            wait = self.seconds * self.backoff ** (failures - 1)
        except OverflowError:
            wait = MAX_RETRY_DELAY_SECONDS
        return now + min(wait, MAX_RETRY_DELAY_SECONDS)


def after_attempt(
    ended_as: AttemptOutcome,
    failures: int,
    max_attempts: int,
    error: str,
    *,
    retryable: bool = True,
    delay: RetryDelay = RetryDelay(),
    now: float = 0.0,
) -> AfterAttempt:
    """Retry or dead-letter: back to the queue while attempts remain, dead once they are used up.

    A released attempt is not counted as a failure (a graceful stop is not the task's fault) and is requeued at
    once; a failed one waits its retry ``delay`` (``blocked`` until ``retry_at``) when it has one; a report that is
    not ``retryable`` fails the task at once.
    """
    released = ended_as is AttemptOutcome.RELEASED
    failures += 0 if released else 1
    if not retryable:
        return AfterAttempt(TaskStatus.FAILED, failures, error)
    if failures >= max_attempts:
        return AfterAttempt(
            TaskStatus.DEAD, failures, f"{error} (gave up after {failures} failed attempt(s))"
        )
    later = None if released else delay.retry_at(now, failures)
    return AfterAttempt(TaskStatus.PENDING if later is None else TaskStatus.BLOCKED, failures, error, later)


def status_from_dependencies(dependencies: Sequence[tuple[int, str]]) -> tuple[TaskStatus, str | None]:
    """A new task's status (and error) from its dependencies' ``(id, status)``.

    Failed at once if one of them already ended badly, blocked while any is not completed, pending otherwise.
    """
    for dependency_id, status in dependencies:
        if status in BROKEN:
            return TaskStatus.FAILED, dependency_ended(dependency_id, status)
    if any(status != TaskStatus.COMPLETED for _, status in dependencies):
        return TaskStatus.BLOCKED, None
    return TaskStatus.PENDING, None


def dependency_ended(dependency_id: int, status: str) -> str:
    """The error of a task failed by the dependency cascade."""
    return f"dependency #{dependency_id} ended as {status}"


def record_created(change: TaskChange, task: Task) -> None:
    """Note a new task: claimable when pending, finished when a dependency had already failed it."""
    change.created.append(task)
    if task.status is TaskStatus.PENDING:
        change.claimable.append(task)
    elif task.status.is_terminal:
        change.finished.append(task.id)


def record_requeue_or_end(change: TaskChange, task: Task) -> None:
    """Note a task that left its attempt: claimable again if it went back to the queue, finished if it ended
    (neither while it waits for its retry delay)."""
    change.task = task
    if task.status is TaskStatus.PENDING:
        change.claimable.append(task)
    elif task.status.is_terminal:
        change.finished.append(task.id)


# --- claim messages --------------------------------------------------------------------------------------------
NOTHING_TO_CLAIM = "No task is available for you right now. Call wait_for_next_event to wait for one."


def already_holding(task_id: int, title: str) -> str:
    """Why a claim of another task is refused while the agent still holds one."""
    return (
        f"You already hold task #{task_id} ({title!r}). Finish it and call "
        f"report_task_completion(task_id={task_id}, ...) before claiming another task."
    )


def why_not_claimable(
    task_id: int,
    status: str,
    claimed_by: str | None,
    *,
    fits: bool,
    persona: str | None,
    capabilities: list[str],
) -> str | None:
    """Why the agent may not claim the task it named (taken, blocked, over, or not for it); None if it may."""
    if status == TaskStatus.CLAIMED:
        return (
            f"Task #{task_id} was already claimed by {claimed_by}. Do not work on it; "
            "call wait_for_next_event (or claim_task without task_id) for other work."
        )
    if status == TaskStatus.BLOCKED:
        return f"Task #{task_id} is waiting for its dependencies to complete; it cannot be claimed yet."
    if status != TaskStatus.PENDING:
        return (
            f"Task #{task_id} is already {status}; there is nothing to do for it. Call wait_for_next_event."
        )
    if not fits:
        return (
            f"Task #{task_id} needs persona {persona!r} and capabilities {capabilities}, which you do not have. "
            "Call claim_task without task_id."
        )
    return None


def claim_of(task: Task, now: float, *, reclaimed: bool = False) -> Claim:
    """The claim an agent is given for a task it now holds (its lease never unset: ``now`` if it were)."""
    return Claim(
        task=task,
        fence_token=task.fence_token,
        lease_expires_at=task.lease_expires_at or now,
        reclaimed=reclaimed,
    )


def agent_lost(name: str) -> str:
    """What an attempt ends with when its agent was marked lost."""
    return f"agent {name} was lost (not heard from since before the cut-off)"


def lease_lost(holder: str, timeout_seconds: int, deadline_at: float | None, now: float) -> str:
    """What an attempt ends with when the sweep finds its lease run out: the task's timeout, or silence."""
    if deadline_at is not None and deadline_at <= now:
        return f"timed out: not completed within its {timeout_seconds} s timeout"
    return f"lease expired: {holder} sent no progress report or heartbeat in time"


# --- refusals --------------------------------------------------------------------------------------------------
def unknown_task_to_claim(task_id: int) -> NotFound:
    """A claim named a task that does not exist."""
    return NotFound(
        f"Task #{task_id} does not exist. Call claim_task without task_id to take any task you fit."
    )


def unknown_task_reported(task_id: int) -> NotFound:
    """A report or renewal named a task that does not exist."""
    return NotFound(f"Task #{task_id} does not exist. Check the task_id you received from claim_task.")


def unknown_task_released(task_id: int) -> NotFound:
    """A release named a task that does not exist."""
    return NotFound(f"Task #{task_id} does not exist.")


def unknown_task_cancelled(task_id: int) -> NotFound:
    """A cancellation named a task that does not exist."""
    return NotFound(f"Task #{task_id} does not exist. Use list_tasks to see task ids.")


def holds(agent: str, fence: int, *, status: str, claimed_by: str | None, fence_token: int) -> bool:
    """Whether ``agent`` holds the task under ``fence`` now (its report or renewal may be recorded)."""
    return status == TaskStatus.CLAIMED and claimed_by == agent and fence_token == fence


_ATTEMPT_ENDED: dict[str, str] = {
    AttemptOutcome.EXPIRED: "your lease expired (no progress report or heartbeat in time, or the task's timeout passed)",
    AttemptOutcome.AGENT_LOST: "you were marked lost after a long silence",
    AttemptOutcome.RELEASED: "it was released back to the queue",
    AttemptOutcome.FAILED: "you already reported it as failed",
    AttemptOutcome.COMPLETED: "you already reported it as completed",
    AttemptOutcome.UNANSWERED: "your question was not answered by its deadline, and it said to fail without one",
}


def stale_report(
    agent: str,
    task_id: int,
    fence: int,
    *,
    status: str,
    claimed_by: str | None,
    fence_token: int,
    error: str | None,
    attempt_outcome: str | None,
) -> StaleClaim | TaskCancelled:
    """The refusal of a report or renewal from an agent that does not hold the task under ``fence``.

    ``status``, ``claimed_by``, ``fence_token`` and ``error`` are the task's now; ``attempt_outcome`` is how the
    agent's attempt under ``fence`` ended (None: the agent never had one).
    """
    if attempt_outcome is None:
        if claimed_by == agent and status == TaskStatus.CLAIMED:
            return StaleClaim(
                f"fence_token {fence} is not your current claim on task #{task_id} (it is {fence_token}). "
                "Use the fence_token returned by your latest claim_task."
            )
        return StaleClaim(
            f"You do not hold task #{task_id}: it was never claimed by you with fence_token {fence}. "
            "Only report tasks that claim_task gave you."
        )
    if status == TaskStatus.CANCELLED:
        return TaskCancelled(
            f"Task #{task_id} was cancelled ({error or 'no reason given'}). Stop working on it, "
            "discard its changes if they are unwanted, and call wait_for_next_event for new work."
        )
    why = _ATTEMPT_ENDED.get(attempt_outcome, f"your attempt ended as {attempt_outcome}")
    now_with = f"; it is now {status}" + (
        f" and held by {claimed_by}" if status == TaskStatus.CLAIMED else ""
    )
    return StaleClaim(
        f"Your claim on task #{task_id} (fence_token {fence}) is no longer valid: {why}{now_with}. "
        "Your report was not recorded. Discard this work and call wait_for_next_event."
    )


# --- questions -------------------------------------------------------------------------------------------------
def question_policy(
    asked: NewQuestion, task_within: float | None, task_on_unanswered: str | None
) -> tuple[OnUnanswered, float]:
    """How long a question stays open and what its deadline does: what the worker asked for (it knows what rides
    on this question), else what the submitter set on the task, else continue after the broker's default."""
    on_timeout = asked.on_timeout or (OnUnanswered(task_on_unanswered) if task_on_unanswered else None)
    within = asked.answer_within_seconds or task_within or ANSWER_WITHIN_DEFAULT_SECONDS
    return on_timeout or OnUnanswered.CONTINUE, float(within)


def question_deadline(now: float, within: float, attempt_deadline: float | None) -> float:
    """When a question closes unanswered: ``within`` seconds from now, never after the attempt's own deadline (the
    task's timeout keeps running while its worker waits, and wins)."""
    deadline = now + within
    return deadline if attempt_deadline is None else min(deadline, attempt_deadline)


def lease_while_asking(
    now: float, lease: float, question_deadline: float, attempt_deadline: float | None
) -> float:
    """The lease of a task whose worker waits for an answer: it lasts at least until the question's deadline (the
    wait is the work), never past the attempt's deadline."""
    held = max(now + lease, question_deadline)
    return held if attempt_deadline is None else min(held, attempt_deadline)


def asked_again(asked: NewQuestion, latest: Question | None) -> Question | None:
    """The attempt's latest question when ``asked`` repeats it (a retry, or asking again to keep waiting): it is
    answered as it stands, never recorded twice. Raises :class:`InvalidRequest` while a different one is open."""
    if latest is None:
        return None
    if latest.question == asked.question:
        return latest
    if latest.status is QuestionStatus.OPEN:
        raise InvalidRequest(
            f"Your question #{latest.id} on task #{latest.task_id} is still open: one question at a time. Wait for "
            f"its answer (call ask_primary again with the same question, or wait_for_next_event), or carry on."
        )
    return None


def no_open_question(task_id: int, status: str, latest: Question | None) -> InvalidRequest:
    """Why an answer cannot be recorded: the task has no open question (none asked, or the last one closed)."""
    if latest is None:
        return InvalidRequest(f"Task #{task_id} ({status}) has no question to answer: its worker asked none.")
    closed = {
        QuestionStatus.ANSWERED: f"was answered already by {latest.answered_by}",
        QuestionStatus.EXPIRED: "went unanswered past its deadline",
        QuestionStatus.WITHDRAWN: "was withdrawn when its attempt ended",
    }[latest.status]
    return InvalidRequest(
        f"Task #{task_id} has no open question: its last one (#{latest.id}) {closed}. Nothing was recorded."
    )


def unknown_task_answered(task_id: int) -> NotFound:
    """An answer named a task that does not exist."""
    return NotFound(f"Task #{task_id} does not exist. Use list_tasks to see task ids.")


def unanswered_continue(question: Question) -> str:
    """What the worker is told when its question's deadline passed and it may go on."""
    return (
        f"No answer to your question #{question.id} by its deadline: continue with your own judgement, and say in "
        "your result what you decided and why."
    )


def unanswered_fail(question: Question) -> str:
    """What the attempt (and the task) fail with when a question that had to be answered was not."""
    return (
        f"question #{question.id} was not answered by its deadline and said to fail without an answer: "
        f"{question.question[:300]!r}"
    )
