"""Circuits: stop sending work where it cannot succeed, and find out when it can again.

Two kinds, both in launcher time (a clock that tests can drive):

* a **shared circuit** per provider (``provider:openrouter``) or CLI (``cli:qwen``), opened by a failure that is
  not the task's fault (a refused key, no login, the binary missing, a configuration error). Every agent behind
  it stops taking work. It is probed again every ``probe_seconds`` (a models listing for a provider, the
  preflight checks for a CLI) and closes when the probe passes, or at once when the user resets it
  (``aiswarm agents reset``).
* a **per-agent breaker** that opens after ``threshold`` consecutive failed runs of any kind, waits, then lets
  one run through (half-open): success closes it, another failure opens it again for twice as long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

DEFAULT_PROBE_SECONDS = 60.0
"""How often an open shared circuit is probed (``aiswarm launch --probe-interval``)."""
DEFAULT_BREAKER_THRESHOLD = 3
"""Consecutive failed runs that open an agent's breaker."""
DEFAULT_BREAKER_SECONDS = 30.0
"""How long a freshly opened agent breaker waits before its half-open run."""
MAX_BREAKER_SECONDS = 600.0


def cli_circuit(cli: str) -> str:
    """The circuit name of a CLI: ``cli:qwen``."""
    return f"cli:{cli}"


def provider_circuit(provider: str) -> str:
    """The circuit name of a provider: ``provider:openrouter``."""
    return f"provider:{provider}"


@dataclass
class OpenCircuit:
    """Why a shared circuit is open and when it is next probed (launcher clock)."""

    name: str
    reason: str
    opened_at: float
    next_probe_at: float


class Circuits:
    """The open shared circuits of one launch; ``changed`` is set (and replaced) on every open and close."""

    def __init__(
        self, probe_seconds: float = DEFAULT_PROBE_SECONDS, clock: Callable[[], float] = time.monotonic
    ):
        self.probe_seconds = probe_seconds
        self._clock = clock
        self._open: dict[str, OpenCircuit] = {}
        self.changed = asyncio.Event()

    def open(self, name: str, reason: str) -> OpenCircuit:
        """Open ``name`` (or refresh its reason); the first probe comes ``probe_seconds`` from now."""
        now = self._clock()
        circuit = self._open.get(name)
        if circuit is None:
            circuit = self._open[name] = OpenCircuit(name, reason, now, now + self.probe_seconds)
            self._signal()
        else:
            circuit.reason = reason
        return circuit

    def close(self, name: str) -> bool:
        """Close ``name``; True when it was open."""
        if self._open.pop(name, None) is None:
            return False
        self._signal()
        return True

    def blocking(self, names: Iterable[str]) -> OpenCircuit | None:
        """The first open circuit among ``names`` (an agent's CLI and provider), or None."""
        return next((self._open[n] for n in names if n in self._open), None)

    def due(self, name: str) -> bool:
        """True when ``name`` is open and its probe is due (then the next one is scheduled)."""
        circuit = self._open.get(name)
        if circuit is None or self._clock() < circuit.next_probe_at:
            return False
        circuit.next_probe_at = self._clock() + self.probe_seconds
        return True

    def open_circuits(self) -> list[OpenCircuit]:
        """Every open circuit."""
        return list(self._open.values())

    def _signal(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass
class AgentBreaker:
    """One agent's breaker: closed, open until a time, or half-open (one run allowed)."""

    threshold: int = DEFAULT_BREAKER_THRESHOLD
    base_seconds: float = DEFAULT_BREAKER_SECONDS
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    consecutive_failures: int = 0
    open_until: float = 0.0
    trips: int = 0
    """How many times it opened since the last success (each wait doubles)."""
    reason: str = ""

    @property
    def is_open(self) -> bool:
        """Open and still waiting."""
        return self.open_until > self._now()

    @property
    def half_open(self) -> bool:
        """Tripped, waited, and the next run is the probe."""
        return self.trips > 0 and not self.is_open

    def remaining(self) -> float:
        """Seconds left before the half-open run (0 when not open)."""
        return max(0.0, self.open_until - self._now())

    def succeeded(self) -> None:
        """A run succeeded: close."""
        self.consecutive_failures = 0
        self.trips = 0
        self.open_until = 0.0
        self.reason = ""

    def failed(self, reason: str) -> bool:
        """A run failed; True when this opened the breaker (the threshold reached, or the half-open run failed)."""
        self.consecutive_failures += 1
        if self.trips == 0 and self.consecutive_failures < self.threshold:
            return False
        self.trips += 1
        self.reason = reason
        wait = min(MAX_BREAKER_SECONDS, self.base_seconds * 2 ** (self.trips - 1))
        self.open_until = self._now() + wait
        return True

    def _now(self) -> float:
        return self.clock()
