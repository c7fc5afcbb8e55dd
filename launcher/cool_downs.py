"""When an agent may start its CLI again: a cool-down per CLI after a rate limit, backoff after failed runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

MAX_BACKOFF_SECONDS = 120.0


def backoff_delay(base: float, failures: int, cap: float = MAX_BACKOFF_SECONDS) -> float:
    """Exponential backoff after ``failures`` consecutive failed runs (0 failures: no delay)."""
    return 0.0 if failures <= 0 else min(cap, base * 2 ** (failures - 1))


class CoolDowns:
    """Cool-downs per CLI: a rate limit on one agent pauses its siblings of the same CLI (same account)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._until: dict[str, float] = {}
        self._clock = clock
        self.changed = asyncio.Event()
        """Set (then replaced by a fresh event) whenever a cool-down starts: parked waits re-check."""

    def start(self, cli: str, seconds: float) -> None:
        """Cool ``cli`` down for ``seconds`` from now (never shortens a running cool-down)."""
        self._until[cli] = max(self._until.get(cli, 0.0), self._clock() + seconds)
        self.changed.set()
        self.changed = asyncio.Event()

    def remaining(self, cli: str) -> float:
        """Seconds left in ``cli``'s cool-down (0 when none)."""
        return max(0.0, self._until.get(cli, 0.0) - self._clock())

    def until(self, cli: str) -> float:
        """The clock value when ``cli``'s cool-down ends."""
        return self._until.get(cli, 0.0)
