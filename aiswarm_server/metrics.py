"""The broker's Prometheus metrics, fed by the broker's own change stream (:class:`BrokerNews`).

Counters and histograms count what this broker process did since it started (Prometheus' ``rate()`` and
``increase()`` handle restarts); gauges are read from the store at each scrape, so they are the truth shared by
every broker on the same database. The README's "Metrics" section says which series answer which question.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from aiswarm_server import __version__
from aiswarm_server.broker import Broker, BrokerNews
from aiswarm_server.models import AgentStatus, Task, TaskStatus

log = logging.getLogger("aiswarm.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
NO_PERSONA = "none"
UNKNOWN_CLI = "unknown"

# Seconds: a wake-up is milliseconds, a queue wait or a model run is seconds to hours.
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 10, 20, 100)
IN_FLIGHT_LIMIT = 100_000
ENDING_KINDS = frozenset({"completed", "released", "cancelled", "swept"})


def _persona(task: Task) -> str:
    return task.persona or NO_PERSONA


class BrokerMetrics:
    """The metric families and the observer that keeps them; one per broker app (its own registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.info = Gauge("aiswarm_info", "The broker's version.", ["version"], registry=registry)
        self.info.labels(__version__).set(1)
        self.tasks = Gauge("aiswarm_tasks", "Tasks in the store, by status.", ["status"], registry=registry)
        self.agents = Gauge(
            "aiswarm_agents", "Agents in the store, by status.", ["status"], registry=registry
        )
        self.parked_waits = Gauge(
            "aiswarm_parked_waits", "wait_for_next_event calls parked on this broker.", registry=registry
        )
        self.watched_tasks = Gauge(
            "aiswarm_watched_tasks", "Tasks a wait_for_tasks call is waiting on.", registry=registry
        )
        self.submitted = Counter(
            "aiswarm_tasks_submitted", "Tasks submitted, by persona.", ["persona"], registry=registry
        )
        self.finished = Counter(
            "aiswarm_tasks_finished",
            "Tasks that reached a final status (completed, failed, dead, cancelled), by persona and by the CLI of "
            "the agent that held them last ('none' when no agent did).",
            ["status", "persona", "cli"],
            registry=registry,
        )
        self.attempts_ended = Counter(
            "aiswarm_attempts_ended",
            "Claims that ended: completed, failed (requeued or not), released, expired (lease or agent lost), "
            "cancelled; by persona and CLI.",
            ["outcome", "persona", "cli"],
            registry=registry,
        )
        self.queued = Histogram(
            "aiswarm_task_queued_seconds",
            "From submission to the first claim (including time blocked on dependencies), by persona.",
            ["persona"],
            buckets=SLOW_BUCKETS,
            registry=registry,
        )
        self.running = Histogram(
            "aiswarm_task_running_seconds",
            "From a claim to its end, by how it ended, persona and CLI.",
            ["outcome", "persona", "cli"],
            buckets=SLOW_BUCKETS,
            registry=registry,
        )
        self.claims_per_task = Histogram(
            "aiswarm_task_claims",
            "Claims a task took before its final status (0 for a task cancelled before anyone took it).",
            ["status"],
            buckets=ATTEMPT_BUCKETS,
            registry=registry,
        )
        self.wakeup = Histogram(
            "aiswarm_wakeup_to_claim_seconds",
            "From the broker waking a parked agent for a task to that agent's claim of it, by CLI.",
            ["cli"],
            buckets=FAST_BUCKETS,
            registry=registry,
        )
        self.model_requests = Counter(
            "aiswarm_model_requests",
            "Model requests the launcher's CLI runs made, by CLI and provider.",
            ["cli", "provider"],
            registry=registry,
        )
        self.model_tokens = Counter(
            "aiswarm_model_tokens",
            "Model tokens the launcher's CLI runs used, by CLI, provider and kind (input, output).",
            ["cli", "provider", "kind"],
            registry=registry,
        )
        self._broker: Broker | None = None
        self._in_flight: dict[int, tuple[float, str, str]] = {}  # task id -> (claimed at, persona, cli)
        self._lookups: set[asyncio.Task[None]] = set()

    def attach(self, broker: Broker) -> None:
        """Follow this broker's changes."""
        self._broker = broker
        broker.observers.append(self.observe)

    async def render(self) -> bytes:
        """The exposition text, with the gauges read from the broker first."""
        broker = self._broker
        if broker is not None:
            status = await broker.status()
            _set_all(self.tasks, status.tasks, [s.value for s in TaskStatus])
            _set_all(self.agents, status.agents, [s.value for s in AgentStatus])
            self.parked_waits.set(status.parked_waits)
            self.watched_tasks.set(status.watched_tasks)
        return generate_latest(self.registry)

    # the observer ------------------------------------------------------------------------------------
    def observe(self, news: BrokerNews) -> None:
        """Count one change (changes other brokers made are theirs to count)."""
        if news.kind == "remote":
            return
        if news.usage is not None:
            usage = news.usage
            cli = news.cli or UNKNOWN_CLI
            self.model_requests.labels(cli, usage.provider).inc(usage.requests)
            self.model_tokens.labels(cli, usage.provider, "input").inc(usage.input_tokens)
            self.model_tokens.labels(cli, usage.provider, "output").inc(usage.output_tokens)
            return
        change = news.change
        for task in change.created:
            self.submitted.labels(_persona(task)).inc()
        task = change.task
        if news.kind == "claimed" and task is not None:
            cli = news.cli or UNKNOWN_CLI
            if task.fence_token == 1:
                self.queued.labels(_persona(task)).observe(max(news.at - task.created_at, 0.0))
            if news.offered_at is not None:
                self.wakeup.labels(cli).observe(max(news.at - news.offered_at, 0.0))
            if len(self._in_flight) >= IN_FLIGHT_LIMIT:
                self._in_flight.clear()
            self._in_flight[task.id] = (news.at, _persona(task), cli)
            return
        counted: set[int] = set()
        # A repeated report is answered with the task as it is now: its attempt ended (and was counted) before, or
        # the task is held again under a newer claim. Only a task that left its claim here, or ended, is counted.
        if task is not None and task.status is not TaskStatus.CLAIMED and news.kind in ENDING_KINDS:
            counted.add(task.id)
            cli = self._attempt_ended(task, news)
            if task.id in change.finished:
                self._finished(task, cli)
        requeued = [t for t in change.claimable if t.id not in counted and t.id in self._in_flight]
        for lost in requeued:  # the sweeper took back an expired lease
            counted.add(lost.id)
            self._end_claim(lost.id, "expired", news.at)
        rest = [i for i in change.finished if i not in counted]
        if rest and self._broker is not None:
            lookup = asyncio.get_running_loop().create_task(self._count_finished(rest, news))
            self._lookups.add(lookup)
            lookup.add_done_callback(self._lookups.discard)

    def _attempt_ended(self, task: Task, news: BrokerNews) -> str | None:
        if news.kind == "released":
            outcome = "released"
        elif news.kind == "cancelled":
            outcome = "cancelled"
        elif news.kind == "swept":
            outcome = "expired"
        else:
            outcome = "completed" if task.status is TaskStatus.COMPLETED else "failed"
        return self._end_claim(task.id, outcome, news.at, news.cli) or news.cli

    def _end_claim(self, task_id: int, outcome: str, now: float, cli: str | None = None) -> str | None:
        """Count the end of the claim this broker saw on the task; the CLI that held it."""
        claimed = self._in_flight.pop(task_id, None)
        if claimed is None:
            return None  # not claimed through this broker since it started (or a cancel before any claim)
        claimed_at, persona, claim_cli = claimed
        cli = cli or claim_cli
        self.attempts_ended.labels(outcome, persona, cli).inc()
        self.running.labels(outcome, persona, cli).observe(max(now - claimed_at, 0.0))
        return cli

    def _finished(self, task: Task, cli: str | None) -> None:
        self.finished.labels(task.status.value, _persona(task), cli or "none").inc()
        self.claims_per_task.labels(task.status.value).observe(task.fence_token)

    async def _count_finished(self, task_ids: Sequence[int], news: BrokerNews) -> None:
        """Tasks a change finished without carrying them (dead leases, dependents failed with another)."""
        assert self._broker is not None
        try:
            tasks = await self._broker.store.get_tasks(task_ids)
        except Exception:  # a scrape can miss a count; the broker's call must not fail for it
            log.warning("could not read finished tasks %s for the metrics", list(task_ids)[:10])
            return
        for task in tasks:
            cli = self._end_claim(task.id, "expired" if news.kind == "swept" else "cancelled", news.at)
            self._finished(task, cli)


def _set_all(gauge: Gauge, values: dict[str, int], known: Iterable[str]) -> None:
    for name in {*known, *values}:
        gauge.labels(name).set(values.get(name, 0))
