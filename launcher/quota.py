"""Quota pools: the request budgets that agents sharing one credential spend together.

A provider in the config file may set ``requests_per_minute`` and ``requests_per_day`` (and ``quota_resets_at``,
the UTC time its day starts again, ``"00:00"`` by default). Every agent on that provider draws from one pool.
Requests are counted as they pass the launcher's model proxy (the same requests a CLI's usage report counts);
when a budget is spent the pool is blocked until its window resets: no task is dispatched to its agents, and a
request a running CLI makes anyway is answered 429 by the proxy with ``Retry-After`` (the provider is never
asked). The counters are saved in the broker after each request, so a relaunch carries on from them.

Times are wall-clock seconds from the clock the supervisor is given (a fake one in tests).
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field

from pydantic import BaseModel

DAY_SECONDS = 86_400.0
MINUTE_SECONDS = 60.0


class PoolState(BaseModel):
    """A pool's counters, as saved in the broker."""

    day_start: float = 0.0
    day_used: int = 0
    minute_start: float = 0.0
    minute_used: int = 0


@dataclass
class QuotaPool:
    """One pool's budgets and counters."""

    name: str
    per_minute: int | None = None
    per_day: int | None = None
    resets_at: str = "00:00"
    """UTC ``HH:MM`` at which the day's budget starts again."""
    state: PoolState = field(default_factory=PoolState)

    def day_start(self, now: float) -> float:
        """The start of the day window holding ``now`` (the last reset at or before it)."""
        hours, minutes = (int(part) for part in self.resets_at.split(":"))
        day = time.gmtime(now)
        today = calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, hours, minutes, 0)) * 1.0
        return today if today <= now else today - DAY_SECONDS

    def _roll(self, now: float) -> None:
        start = self.day_start(now)
        if self.state.day_start != start:
            self.state.day_start, self.state.day_used = start, 0
        if now - self.state.minute_start >= MINUTE_SECONDS:
            self.state.minute_start, self.state.minute_used = now, 0

    def blocked_until(self, now: float) -> float | None:
        """When the pool may be used again, or None when it has budget left now."""
        self._roll(now)
        if self.per_day is not None and self.state.day_used >= self.per_day:
            return self.state.day_start + DAY_SECONDS
        if self.per_minute is not None and self.state.minute_used >= self.per_minute:
            return self.state.minute_start + MINUTE_SECONDS
        return None

    def count(self, now: float, requests: int = 1) -> None:
        """Spend ``requests`` from the pool's budgets."""
        self._roll(now)
        self.state.day_used += requests
        self.state.minute_used += requests

    def describe(self, now: float) -> str:
        """One line: what is spent and, when blocked, until when (UTC)."""
        spent = f"{self.state.day_used}/{self.per_day or '∞'} today"
        until = self.blocked_until(now)
        if until is None:
            return f"quota pool {self.name}: {spent}"
        return f"quota pool {self.name} spent ({spent}) until {time.strftime('%H:%M:%S UTC', time.gmtime(until))}"
