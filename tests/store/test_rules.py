"""The rules both stores apply, as pure functions: retry or dead-letter, a new task's status, repeated reports."""

from __future__ import annotations

import pytest

from aiswarm_server.errors import StaleClaim, TaskCancelled
from aiswarm_server.models import AttemptOutcome, TaskStatus
from aiswarm_server.store import rules


def report(success: bool, error: str | None = None) -> rules.Report:
    return rules.Report(success=success, retryable=True, result=None, data=None, error=error)


def test_a_failed_attempt_is_retried_until_its_attempts_are_used_up_then_dead_lettered() -> None:
    retried = rules.after_attempt(AttemptOutcome.FAILED, 0, 3, "boom")
    assert (retried.status, retried.failures, retried.error) == (TaskStatus.PENDING, 1, "boom")
    dead = rules.after_attempt(AttemptOutcome.EXPIRED, 2, 3, "lease expired")
    assert dead.status is TaskStatus.DEAD and dead.failures == 3
    assert dead.error == "lease expired (gave up after 3 failed attempt(s))"


def test_a_release_costs_no_attempt_and_a_non_retryable_failure_fails_at_once() -> None:
    released = rules.after_attempt(AttemptOutcome.RELEASED, 2, 3, "stopping")
    assert (released.status, released.failures) == (TaskStatus.PENDING, 2)
    failed = rules.after_attempt(AttemptOutcome.FAILED, 0, 3, "bad spec", retryable=False)
    assert (failed.status, failed.failures, failed.error) == (TaskStatus.FAILED, 1, "bad spec")


@pytest.mark.parametrize(
    ("dependencies", "expected"),
    [
        ([], (TaskStatus.PENDING, None)),
        ([(1, "completed"), (2, "completed")], (TaskStatus.PENDING, None)),
        ([(1, "completed"), (2, "claimed")], (TaskStatus.BLOCKED, None)),
        ([(1, "pending"), (2, "dead")], (TaskStatus.FAILED, "dependency #2 ended as dead")),
        ([(3, "cancelled")], (TaskStatus.FAILED, "dependency #3 ended as cancelled")),
    ],
)
def test_a_new_task_status_follows_from_its_dependencies(
    dependencies: list[tuple[int, str]], expected: tuple[TaskStatus, str | None]
) -> None:
    assert rules.status_from_dependencies(dependencies) == expected


def test_only_the_same_report_again_counts_as_repeated() -> None:
    assert rules.is_repeated(report(True), "completed")
    assert rules.is_repeated(report(False), "failed")
    assert not rules.is_repeated(report(True), "failed")
    assert not rules.is_repeated(report(True), "expired")
    assert not rules.is_repeated(report(True), None)


def test_a_stale_report_is_told_what_happened_and_what_to_do() -> None:
    def refusal(status: str, claimed_by: str | None, outcome: str | None) -> StaleClaim:
        return rules.stale_report(
            "slow",
            7,
            1,
            status=status,
            claimed_by=claimed_by,
            fence_token=2,
            error="stop",
            attempt_outcome=outcome,
        )

    assert "fence_token 1 is not your current claim on task #7 (it is 2)" in str(
        refusal("claimed", "slow", None)
    )
    assert "never claimed by you" in str(refusal("pending", None, None))
    assert isinstance(refusal("cancelled", None, "cancelled"), TaskCancelled)
    expired = str(refusal("claimed", "fast", "expired"))
    assert "your lease expired" in expired and "held by fast" in expired and "wait_for_next_event" in expired


def test_a_named_claim_is_refused_with_the_reason_or_allowed() -> None:
    def why(status: str, fits: bool = True) -> str | None:
        return rules.why_not_claimable(7, status, "a", fits=fits, persona="tester", capabilities=["python"])

    assert why("pending") is None
    assert "already claimed by a" in (why("claimed") or "")
    assert "waiting for its dependencies" in (why("blocked") or "")
    assert "already completed" in (why("completed") or "")
    assert "needs persona 'tester'" in (why("pending", fits=False) or "")
