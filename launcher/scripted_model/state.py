"""Request statistics and injected faults, shared by every request the server answers.

Every model request is counted once, under its agent (header ``X-Aiswarm-Agent``), its CLI
kind (``qwen``, ``gemini``, ``opencode``) and what the answer did (a :class:`StepKind`, or
``rejected`` when an injected fault answered instead). Tests read the counts to assert
things like "an idle swarm makes no model requests".

A fault makes matching requests fail with an HTTP status (429 with ``Retry-After`` by
default) and/or wait before answering; it lasts for ``count`` requests, or until cleared.
The methods are thread-safe: the server's event loop and a test's thread both call them.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, Field

REJECTED = "rejected"
UNKNOWN_AGENT = "unknown"


class FaultSpec(BaseModel):
    """A fault to inject, as posted to ``/_control`` (``{"op": "fault", ...}``).

    ``agent`` / ``cli`` narrow which requests it hits (``None`` = all). ``status`` ``None``
    means no error, only the ``delay_seconds``. ``count`` ``None`` means until cleared.
    """

    status: int | None = 429
    retry_after: float | None = 1
    agent: str | None = None
    cli: str | None = None
    count: int | None = Field(default=None, ge=1)
    delay_seconds: float = Field(default=0, ge=0)
    message: str = "Rate limit exceeded (injected by the scripted model)"


@dataclass
class Fault:
    """An active fault; ``remaining`` counts down when it is limited to N requests."""

    id: int
    spec: FaultSpec
    remaining: int | None

    def matches(self, agent: str, cli: str) -> bool:
        """Whether a request from this agent and CLI is hit."""
        return self.spec.agent in (None, agent) and self.spec.cli in (None, cli)


@dataclass(frozen=True)
class RequestRecord:
    """One counted request, kept for debugging in ``/_stats`` (``recent``)."""

    agent: str
    cli: str
    kind: str
    tool: str | None = None
    status: int = 200
    at: float = field(default_factory=time.time)
    """When it was answered (epoch seconds)."""


class ModelState:
    """Counters and faults of one scripted model server."""

    def __init__(self, recent: int = 200) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._faults: list[Fault] = []
        self._recent: deque[RequestRecord] = deque(maxlen=recent)
        self._by_agent: dict[str, Counter[str]] = {}
        self._by_cli: dict[str, Counter[str]] = {}
        self._by_kind: Counter[str] = Counter()
        self._tools: dict[str, Counter[str]] = {}

    def add_fault(self, spec: FaultSpec) -> int:
        """Start injecting ``spec``; returns its id (for :meth:`clear_faults`)."""
        with self._lock:
            fault = Fault(next(self._ids), spec, spec.count)
            self._faults.append(fault)
            return fault.id

    def clear_faults(
        self, fault_id: int | None = None, agent: str | None = None, cli: str | None = None
    ) -> int:
        """Remove faults by id, agent or CLI (all of them with no filter); returns how many."""
        with self._lock:
            keep = [
                f
                for f in self._faults
                if (fault_id is not None and f.id != fault_id)
                or (agent is not None and f.spec.agent != agent)
                or (cli is not None and f.spec.cli != cli)
            ]
            removed = len(self._faults) - len(keep)
            self._faults = keep
            return removed

    def take_fault(self, agent: str, cli: str) -> FaultSpec | None:
        """The first fault this request hits, counting it down; ``None`` if none applies."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(agent, cli):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault.spec
            return None

    def record(self, record: RequestRecord) -> None:
        """Count one answered (or rejected) request."""
        with self._lock:
            self._recent.append(record)
            self._by_kind[record.kind] += 1
            self._by_agent.setdefault(record.agent, Counter())[record.kind] += 1
            self._by_cli.setdefault(record.cli, Counter())[record.kind] += 1
            if record.tool:
                self._tools.setdefault(record.agent, Counter())[record.tool] += 1

    def reset_stats(self) -> None:
        """Forget all counts (faults stay)."""
        with self._lock:
            self._recent.clear()
            self._by_kind.clear()
            self._by_agent.clear()
            self._by_cli.clear()
            self._tools.clear()

    def snapshot(self) -> dict[str, Any]:
        """The counts as JSON-ready data, the body of ``GET /_stats``.

        ``{"total": n, "by_kind": {...}, "agents": {name: {"total": n, <kind>: n, "tools": {...}}},
        "clis": {kind: {"total": n, <kind>: n}}, "faults": [...], "recent": [...]}``
        """
        with self._lock:

            def counts(counter: Counter[str]) -> dict[str, int]:
                return {"total": sum(counter.values()), **counter}

            return {
                "total": sum(self._by_kind.values()),
                "by_kind": dict(self._by_kind),
                "agents": {
                    agent: {**counts(counter), "tools": dict(self._tools.get(agent, Counter()))}
                    for agent, counter in self._by_agent.items()
                },
                "clis": {cli: counts(counter) for cli, counter in self._by_cli.items()},
                "faults": [
                    {"id": f.id, "remaining": f.remaining, **f.spec.model_dump()} for f in self._faults
                ],
                "recent": [asdict(r) for r in self._recent],
            }
