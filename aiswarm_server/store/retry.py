"""When a failed task may run again: the retry-delay rule every store applies."""

from __future__ import annotations

MAX_RETRY_DELAY_SECONDS = 7 * 86_400.0


def retry_at(now: float, failures: int, delay_seconds: float, backoff: float) -> float | None:
    """When a task that has now failed ``failures`` times becomes claimable again; ``None`` for at once.

    The wait is ``delay_seconds * backoff ** (failures - 1)`` (the first retry waits ``delay_seconds``), capped
    at seven days.
    """
    if delay_seconds <= 0 or failures < 1:
        return None
    try:
        wait = delay_seconds * backoff ** (failures - 1)
    except OverflowError:
        wait = MAX_RETRY_DELAY_SECONDS
    return now + min(wait, MAX_RETRY_DELAY_SECONDS)
