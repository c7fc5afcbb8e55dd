"""The broker service: every coordination rule lives here. Tools call it; stores do the I/O."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from aiswarm_server import __version__
from aiswarm_server.auth import TokenRegistry, answerer_of, validate_agent_name
from aiswarm_server.config import BrokerSettings
from aiswarm_server.errors import BrokerError, InvalidRequest, NotFound, StaleClaim
from aiswarm_server.isolation import (
    RESOLVER_PERSONA,
    WAIT_CHECK_LIMIT,
    check_declared_files,
    discard_task_branch,
    may_wait,
    merge_task_branch,
    resolution_prompt,
    submitter_git,
    task_branch_deleted,
    why_task_waits,
)
from aiswarm_server.limits import (
    ANSWER_MAX_CHARS,
    CURSOR_MAX_CHARS,
    JSON_REPLY_WAIT_MAX_SECONDS,
    LABEL_MAX_CHARS,
    LIST_LIMIT_MAX,
    MAX_ATTEMPTS_LIMIT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    PROGRESS_MAX_CHARS,
    QUESTION_MAX_CHARS,
    REASON_MAX_CHARS,
    RETRY_BACKOFF_MAX,
    RETRY_DELAY_LIMIT_SECONDS,
    TASK_TIMEOUT_LIMIT_SECONDS,
    TITLE_MAX_CHARS,
)
from aiswarm_server.models import (
    Agent,
    AgentState,
    Event,
    EventKind,
    Identity,
    Isolation,
    IsolationUpdate,
    MergeState,
    NewQuestion,
    NewTask,
    OnUnanswered,
    Question,
    QuestionStatus,
    Role,
    Task,
    TaskChange,
    TaskRequest,
    TaskStatus,
    UsageRecord,
)
from aiswarm_server.replies import (
    AgentsReply,
    AgentStateReply,
    AgentStatusReply,
    AnswerReply,
    AskReply,
    ClaimedTask,
    ClaimReply,
    CompletionReply,
    EventView,
    HeartbeatReply,
    ProgressReply,
    QuotaPoolsReply,
    RegisterReply,
    StatusReply,
    SubmitReply,
    SubmittedTask,
    TaskReply,
    TasksReply,
    TokenInfo,
    TokenListReply,
    TokenReply,
    UsageRow,
    UsageSummaryReply,
    WaitReply,
    WaitTasksReply,
)
from aiswarm_server.store import Store
from aiswarm_server.store.rules import unanswered_continue
from aiswarm_server.waiters import EXCHANGE_OVER, AgentWaiters, TaskWatchers

log = logging.getLogger("aiswarm.broker")

_CURSOR = re.compile(r"^(\d{1,18})(?:\.(\d{1,9}))?$")
_LABEL = re.compile(rf"^[a-z0-9][a-z0-9_.:-]{{0,{LABEL_MAX_CHARS - 1}}}$")
"""A persona or capability name; ``:`` for the launcher's kinds, ``cli:gemini``, ``provider:openrouter``."""


def format_cursor(event_id: int, sequence: int) -> str:
    """Cursors change on every call (``event.sequence``) so idle waits never repeat identical arguments."""
    return f"{event_id}.{sequence}"


def parse_cursor(cursor: str | None) -> tuple[int | None, int]:
    """Split a cursor into (last acknowledged event id, call sequence); ``None`` or ``""`` is (None, 0).

    Raises :class:`InvalidRequest` for text this broker never gave out."""
    if cursor is None or cursor == "":
        return None, 0
    match = _CURSOR.fullmatch(cursor.strip())
    if match is None:
        raise InvalidRequest(
            f"cursor {cursor[:CURSOR_MAX_CHARS]!r} is not one this broker gave out. Pass the `cursor` value returned by your "
            "last wait_for_next_event or register_agent call (like '12.3'), or omit it to resume where you left off."
        )
    return int(match.group(1)), int(match.group(2) or 0)


def normalize_labels(values: Sequence[str], what: str) -> list[str]:
    """Lowercase, check, sort and deduplicate personas or capabilities; raise :class:`InvalidRequest` naming a bad one."""
    labels: list[str] = []
    for value in values:
        label = value.strip().lower()
        if not _LABEL.fullmatch(label):
            raise InvalidRequest(
                f"{what} {value[:70]!r} is not valid: use lowercase letters, digits, '.', '_', ':' or '-' "
                f"(1-{LABEL_MAX_CHARS} characters), e.g. 'python', 'code-review' or 'cli:gemini'."
            )
        labels.append(label)
    return sorted(set(labels))


NewsKind = Literal[
    "submitted",
    "claimed",
    "progress",
    "completed",
    "released",
    "cancelled",
    "swept",
    "waited",
    "merge",
    "offline",
    "model_usage",
    "remote",
    "question",
]


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """Model requests and tokens one CLI run used, as its launcher reports them."""

    provider: str
    task_id: int | None
    requests: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class BrokerNews:
    """One state change this broker made or heard of, for observers (the dashboard's live board, the metrics).

    ``remote`` is a change another broker process committed to a shared store. ``agent`` and ``cli`` name the
    agent that acted, when one did; ``offered_at`` is when the broker woke that agent for the task it claimed.
    """

    kind: NewsKind
    change: TaskChange
    agent: str | None = None
    cli: str | None = None
    offered_at: float | None = None
    at: float = 0.0
    usage: ModelUsage | None = None


class Broker:
    """Agents, tasks, claims under leases with fencing tokens, events from durable cursors, and wake-ups."""

    def __init__(
        self, store: Store, settings: BrokerSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.tokens = TokenRegistry(store)
        self.agent_waiters = AgentWaiters()
        self.task_watchers = TaskWatchers()
        self.answer_waiters = AgentWaiters()  # ask_primary calls waiting for their answer, per agent
        self._offers: dict[int, tuple[str, float]] = {}  # task id -> (agent woken for it, when)
        self._offered_to: dict[str, int] = {}  # agent -> the task it was last woken for
        self._sweeper: asyncio.Task[None] | None = None
        self._started_at = clock()
        self.observers: list[Callable[[BrokerNews], None]] = []
        self._cli_of: dict[str, str] = {}  # agent -> its CLI, for observers

    # lifecycle -----------------------------------------------------------------------------------
    async def start(self, *, sweep: bool = True) -> None:
        """Open the store (creating or migrating its schema), follow changes other broker processes commit, and start the
        sweeper unless ``sweep`` is false. Raises :class:`SchemaTooNew` or :class:`StoreUnavailable`."""
        await self.store.open()
        await self.store.watch_changes(self._apply)
        if sweep:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="aiswarm-sweeper")

    async def stop(self) -> None:
        """Stop the sweeper and close the store."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.store.close()

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed sweep (disk full ...) must not stop future ones
                log.exception("sweep failed; retrying")
            await asyncio.sleep(self.settings.sweep_interval_seconds)

    async def sweep(self) -> TaskChange:
        """Requeue expired leases, mark silent agents lost, and re-offer tasks nobody took up.

        One store transaction: every expired or lost agent's task goes back to ``pending`` (attempts + 1) or to
        ``dead`` after its last attempt, and its holder gets a ``lease_lost`` event; then one fitting parked agent is
        woken per requeued task. Parked agents count as alive. Raises :class:`StoreUnavailable`."""
        now = self.clock()
        change = await self.store.sweep(
            now,
            now - self.settings.agent_lost_seconds,
            keep_alive=self.agent_waiters.parked_agents() + self.answer_waiters.parked_agents(),
            lease=self.settings.lease_seconds,
        )
        self._apply(change, "swept")
        await self._end_waits()
        await self._reoffer(now)
        return change

    async def _why_waits(self, task: Task, holders: Sequence[Task]) -> str | None:
        """Why a task must not run yet (:func:`why_task_waits`), reading its dependencies."""
        dependencies = await self.store.get_tasks(task.depends_on) if task.depends_on else []
        return await why_task_waits(task, dependencies, holders)

    async def _end_waits(self) -> None:
        """Offer again every waiting task (declared files, unmerged dependency) nothing is in the way of any more.

        Several may be freed by one merge although they overlap each other: their claims sort that out (the one
        claimed later waits again)."""
        waiting = await self.store.waiting_tasks(WAIT_CHECK_LIMIT)
        if not waiting:
            return
        holders = await self.store.isolation_holders()
        free = [t.id for t in waiting if await self._why_waits(t, holders) is None]
        if free:
            self._apply(await self.store.end_waits(free, self.clock()), "waited")

    async def _reoffer(self, now: float) -> None:
        # A woken agent may never claim (its client vanished with the answer): after `offer_seconds`
        # the task goes to another parked agent. Only looked at while someone is parked.
        idle = self.agent_waiters.idle_parked_count()
        if idle == 0:
            return
        for task in await self.store.pending_tasks(limit=min(idle, 100)):
            offered = self._offers.get(task.id)
            if offered is not None and now - offered[1] < self.settings.offer_seconds:
                continue
            agent = self.agent_waiters.offer(task, exclude=[offered[0]] if offered else ())
            if agent is not None:
                self._record_offer(task.id, agent, now)

    def _apply(self, change: TaskChange, kind: NewsKind = "remote", actor: str | None = None) -> None:
        """Wake exactly who a change concerns: one fitting agent per claimable task, the agents with new events,
        and the primaries watching finished tasks; then tell the observers."""
        now = self.clock()
        for task in change.claimable:
            agent = self.agent_waiters.offer(task)
            if agent is not None:
                self._record_offer(task.id, agent, now)
        for agent in change.notified_agents:
            self.agent_waiters.wake_agent(agent)
            self.answer_waiters.wake_agent(agent)
        if change.questions:  # something the primary must act on (or a question it saw closed)
            self.task_watchers.notify(change.questions)
        finished = list(change.finished)
        if change.task is not None:
            finished.append(change.task.id)
        if finished:
            self.task_watchers.notify(finished)
            for task_id in finished:
                self._offers.pop(task_id, None)
        if len(self._offers) > 10_000:
            self._offers.clear()
            self._offered_to.clear()
        if (
            change.task
            or change.created
            or change.claimable
            or change.finished
            or change.notified_agents
            or change.questions
        ):
            self._tell(BrokerNews(kind, change, actor, self._cli_of.get(actor or ""), at=now))

    def _tell(self, news: BrokerNews) -> None:
        for observer in self.observers:
            try:
                observer(news)
            except Exception:  # an observer's bug must not fail the call that changed the state
                log.exception("observer %r failed on %s", observer, news.kind)

    def _record_offer(self, task_id: int, agent: str, now: float) -> None:
        self._offers[task_id] = (agent, now)
        self._offered_to[agent] = task_id

    # identity ------------------------------------------------------------------------------------
    @staticmethod
    def agent_of(identity: Identity) -> str:
        """The agent a worker identity speaks for; raise :class:`InvalidRequest` for a primary or admin caller."""
        if identity.role is not Role.WORKER or identity.agent is None:
            raise InvalidRequest(
                "This tool is for worker agents: call it with a worker token (`aiswarm token issue --agent NAME`)."
            )
        return identity.agent

    async def issue_agent_token(self, agent: str) -> TokenReply:
        """Issue a new worker token for ``agent`` (its earlier tokens stay valid until revoked). One store write;
        only the token's hash is kept. Raises :class:`InvalidRequest` for a malformed agent name."""
        validate_agent_name(agent)
        token = await self.tokens.issue(Identity(role=Role.WORKER, agent=agent, label=f"agent {agent}"))
        return TokenReply(
            agent=agent,
            token=token,
            message=f"Token for agent {agent}. Give it to that agent only (Authorization: Bearer ...).",
        )

    async def revoke_agent_tokens(self, agent: str) -> TokenReply:
        """Revoke every token of one agent: at once on this broker, within ``TokenRegistry.SHARED_CACHE_SECONDS``
        on other brokers sharing a PostgreSQL database. An agent without tokens is not an error (0 revoked). No
        event results: the agent's next request is answered 401."""
        count = await self.tokens.revoke_agent(agent)
        return TokenReply(agent=agent, token="", message=f"Revoked {count} token(s) of {agent}.")

    async def list_tokens(self, *, agent: str | None, include_revoked: bool) -> TokenListReply:
        """The issued tokens (fingerprints, never the tokens), optionally only one agent's, revoked ones on request."""
        rows = await self.store.list_tokens()
        tokens = [
            TokenInfo(
                fingerprint=digest[:12],
                role=identity.role,
                agent=identity.agent,
                label=identity.label,
                created_at=created_at,
                revoked_at=revoked_at,
            )
            for digest, identity, created_at, revoked_at in rows
            if (agent is None or identity.agent == agent) and (include_revoked or revoked_at is None)
        ]
        live = sum(1 for t in tokens if t.revoked_at is None)
        return TokenListReply(
            tokens=tokens,
            message=f"{len(tokens)} token(s), {live} valid. Revoke an agent's with revoke_agent_tokens(agent=...).",
        )

    # worker side ---------------------------------------------------------------------------------
    async def register_agent(
        self,
        identity: Identity,
        *,
        cli: str = "unknown",
        persona: str | None = None,
        capabilities: Sequence[str] = (),
        pid: int | None = None,
    ) -> RegisterReply:
        """Register (or re-register) the calling worker, idempotently by name: it keeps its cursor and any task it
        holds. One store write; no event results. Raises :class:`InvalidRequest` for a non-worker caller or a
        malformed persona or capability."""
        name = self.agent_of(identity)
        if persona is not None:
            persona = normalize_labels([persona], "persona")[0]
        caps = normalize_labels(capabilities, "capability")
        cli = cli.strip()[:LABEL_MAX_CHARS] or "unknown"
        agent = await self.store.register_agent(name, cli, persona, caps, pid, self.clock())
        self._cli_of[name] = agent.cli
        self.agent_waiters.remember(name, agent.persona, agent.capabilities)
        held = (
            f" You still hold task #{agent.current_task_id}: finish and report it."
            if agent.current_task_id
            else ""
        )
        return RegisterReply(
            agent=agent,
            cursor=format_cursor(agent.cursor, 0),
            message=f"Registered as {name}.{held} Next: call wait_for_next_event with this cursor to get work.",
        )

    def _longest_wait(self) -> float:
        """How long this call may wait: ``max_wait_seconds``, and at most :data:`JSON_REPLY_WAIT_MAX_SECONDS` in a
        2025-11-25 call (answered as one JSON reply, which Node's fetch stops waiting for after 300 s). A wait that
        ends early answers "nothing yet" with a cursor, so a shorter one costs the caller nothing but a new call."""
        longest = float(self.settings.max_wait_seconds)
        if EXCHANGE_OVER.get() is not None:
            longest = min(longest, float(JSON_REPLY_WAIT_MAX_SECONDS))
        return longest

    async def wait_for_next_event(
        self, identity: Identity, cursor: str | None, timeout_seconds: float
    ) -> WaitReply:
        """Return what is after ``cursor`` (or a claimable task) at once, else park until something arrives.

        Reading acknowledges every event up to ``cursor`` and marks the agent seen, in one store transaction; the
        wait parks before it reads, so a task committed in between still wakes it. A task just offered to another
        woken agent is left out for ``offer_seconds``. The timeout is capped at ``max_wait_seconds``. A wait whose
        caller is gone (:data:`~aiswarm_server.waiters.EXCHANGE_OVER`) leaves its park at once, and a task offered to
        it goes to another parked agent. Raises :class:`InvalidRequest` for a non-worker caller or a cursor this
        broker did not give out."""
        name = self.agent_of(identity)
        ack, sequence = parse_cursor(cursor)
        timeout = min(max(timeout_seconds, 0.0), self._longest_wait())
        deadline = self.clock() + timeout
        exchange_over = EXCHANGE_OVER.get()
        while True:
            if exchange_over is not None and exchange_over.done():
                await self._withdraw_offer(name)
                return WaitReply(events=[], cursor=cursor or "", message="Nobody is waiting for this answer.")
            # Park before reading the store, so a task committed after the read still wakes this wait.
            with self.agent_waiters.park(name, exchange_over) as woken:
                poll = await self.store.poll_agent(name, ack, self.clock())
                self.agent_waiters.remember(name, poll.agent.persona, poll.agent.capabilities)
                self._cli_of[name] = poll.agent.cli
                ack = poll.cursor
                events = [e for e in poll.events if not _about_a_task_left(e, poll.agent)]
                if poll.events and not events:
                    ack = poll.events[-1].id  # acknowledged by the next read: nothing the agent must act on
                    continue
                claimable = self._not_offered_elsewhere(poll.claimable, name)
                if not claimable and poll.agent.current_task_id is None:
                    claimable = await self._task_offered_to(name)
                if events or claimable:
                    if exchange_over is not None and exchange_over.done():
                        continue  # its caller left while it read: the loop's top hands the offer on
                    return self._wait_reply(
                        max(poll.cursor, poll.events[-1].id if poll.events else 0),
                        sequence,
                        events,
                        claimable,
                    )
                remaining = deadline - self.clock()
                if remaining <= 0:
                    return self._wait_reply(poll.cursor, sequence, [], [])
                # A timer instead of asyncio.wait_for: a wake-up then resumes this call one loop turn sooner.
                timer = asyncio.get_running_loop().call_later(remaining, _expire, woken)
                try:
                    await woken
                finally:
                    timer.cancel()

    async def _withdraw_offer(self, agent: str) -> None:
        """Offer the task ``agent`` was woken for to another parked agent now: its wait's answer has no reader."""
        task_id = self._offered_to.pop(agent, None)
        if task_id is None or self._offers.get(task_id, ("", 0.0))[0] != agent:
            return
        del self._offers[task_id]
        task = await self.store.get_task(task_id, with_attempts=False)
        if task is not None and task.status is TaskStatus.PENDING:
            other = self.agent_waiters.offer(task, exclude=[agent])
            if other is not None:
                self._record_offer(task.id, other, self.clock())

    def _not_offered_elsewhere(self, tasks: Sequence[Task], agent: str) -> list[Task]:
        """Leave out tasks just offered to another woken agent: racing it for the claim wastes a call on each side.
        If that agent never claims, the sweeper re-offers the task after ``offer_seconds``."""
        if not self._offers:
            return list(tasks)
        cutoff = self.clock() - self.settings.offer_seconds
        kept = []
        for task in tasks:
            offered = self._offers.get(task.id)
            if offered is None or offered[0] == agent or offered[1] < cutoff:
                kept.append(task)
        return kept

    async def _task_offered_to(self, agent: str) -> list[Task]:
        """The task this agent was woken for, if still claimable (it may sit below the first rows a poll reads)."""
        task_id = self._offered_to.get(agent)
        if task_id is None or self._offers.get(task_id, ("", 0.0))[0] != agent:
            return []
        task = await self.store.get_task(task_id, with_attempts=False)
        return [task] if task is not None and task.status is TaskStatus.PENDING else []

    def _wait_reply(
        self, event_cursor: int, sequence: int, events: Sequence[Any], claimable: Sequence[Task]
    ) -> WaitReply:
        views = [
            EventView(kind=e.kind.value, task_id=e.task_id, detail=e.detail, event_id=e.id) for e in events
        ]
        last = max([event_cursor, *(e.id for e in events)])
        views += [
            EventView(kind="task_available", task_id=t.id, title=t.title, detail=f"priority {t.priority}")
            for t in claimable
        ]
        if claimable:
            message = (
                f"Task #{claimable[0].id} is available. Call claim_task(task_id={claimable[0].id}) to take it "
                "(another agent may take it first; then call wait_for_next_event again with the new cursor)."
            )
        elif events:
            message = "Read these events, act on them, then call wait_for_next_event with the new cursor."
        else:
            message = "Nothing new yet. Call wait_for_next_event again with the new cursor to keep waiting."
        return WaitReply(events=views, cursor=format_cursor(last, sequence + 1), message=message)

    async def claim_task(self, identity: Identity, task_id: int | None) -> ClaimReply:
        """Claim a task atomically: the one named, or the best one this agent fits, under a lease.

        One store transaction sets ``claimed``, a new fence token and the lease, and opens an attempt; an agent that
        already holds a task gets it back with the same fence token. A task that cannot be claimed (taken, not
        fitting, cancelled) is an answer with ``claimed`` false, not an error. Raises :class:`InvalidRequest` for a
        non-worker caller."""
        name = self.agent_of(identity)
        outcome = await self.store.claim(name, task_id, self.clock(), self.settings.lease_seconds)
        if outcome.claim is None:
            return ClaimReply(claimed=False, message=outcome.reason)
        claim = outcome.claim
        # a claim's row carries no dependencies: read them for a task submitted in git
        held = await self.store.get_task(claim.task.id, False) if claim.task.base_commit else None
        if not claim.reclaimed and held is not None and may_wait(held):
            why = await self._why_waits(held, await self.store.isolation_holders())
            if why is not None:
                change = await self.store.defer(name, claim.task.id, claim.fence_token, why, self.clock())
                self._apply(change, "released", name)
                return ClaimReply(
                    claimed=False,
                    message=(
                        f"Task #{claim.task.id} is not run yet: {why}. It waits without an agent and is offered "
                        "again once that is out of the way; call wait_for_next_event for other work."
                    ),
                )
        offered = self._offers.pop(claim.task.id, None)
        if self.observers and not claim.reclaimed:
            woken_at = offered[1] if offered is not None and offered[0] == name else None
            cli = self._cli_of.get(name)
            self._tell(BrokerNews("claimed", TaskChange(task=claim.task), name, cli, woken_at, self.clock()))
        again = " (you already held it; same fence_token)" if claim.reclaimed else ""
        where = f" Work in {claim.task.working_dir}." if claim.task.working_dir else ""
        return ClaimReply(
            claimed=True,
            task=ClaimedTask.of(claim.task),
            fence_token=claim.fence_token,
            lease_expires_at=claim.lease_expires_at,
            message=(
                f"You hold task #{claim.task.id}{again}.{where} Do what its prompt asks, then call "
                f"report_task_completion(task_id={claim.task.id}, fence_token={claim.fence_token}, success=..., "
                f"result=...). For long work call report_progress every few minutes to keep your lease."
            ),
        )

    async def report_progress(
        self, identity: Identity, task_id: int, fence_token: int, message: str, percent: float | None = None
    ) -> ProgressReply:
        """Record a progress note and renew the lease of a task the caller holds, in one store transaction.

        Raises :class:`StaleClaim` (not the holder, or an old fence token), :class:`TaskCancelled` (cancelled while
        held; the holder also has a ``task_cancelled`` event) or :class:`NotFound`. No event results."""
        name = self.agent_of(identity)
        note = message.strip()[:PROGRESS_MAX_CHARS]
        if percent is not None:
            note = f"{percent:.0f}% {note}".strip()
        task = await self.store.renew(
            name, task_id, fence_token, self.clock(), self.settings.lease_seconds, note or None
        )
        if self.observers and note:
            cli = self._cli_of.get(name)
            self._tell(BrokerNews("progress", TaskChange(task=task), name, cli, at=self.clock()))
        return ProgressReply(
            task_id=task_id,
            lease_expires_at=task.lease_expires_at,
            message="Progress recorded and lease renewed. Carry on; report completion when done.",
        )

    async def ask_primary(
        self,
        identity: Identity,
        task_id: int,
        fence_token: int,
        question: str,
        *,
        options: Sequence[str] = (),
        on_timeout: OnUnanswered | None = None,
        answer_within_seconds: float | None = None,
        wait_seconds: float = 0.0,
    ) -> AskReply:
        """Ask the primary a question about the task the caller holds under ``fence_token``, and wait up to
        ``wait_seconds`` (capped at ``max_wait_seconds``) for the answer. ``on_timeout`` and
        ``answer_within_seconds`` left None take the task's policy (:func:`rules.question_policy`).

        One store transaction records the question (the same question asked again by the attempt is the recorded
        one: asking again is how a worker keeps waiting) and holds the task's lease until the question's deadline;
        primaries waiting on the task are woken. The wait parks before it reads, so an answer committed in between
        still ends it; an answer, the deadline or the attempt ending wakes it. Raises :class:`StaleClaim` /
        :class:`TaskCancelled` (not the holder under that fence), :class:`NotFound`, or :class:`InvalidRequest`
        (empty or oversized question, another question still open)."""
        name = self.agent_of(identity)
        text = question.strip()
        if not text or "\x00" in text:
            raise InvalidRequest("question must be non-empty text (no NUL bytes): what do you need decided?")
        self._check_size("question", text, QUESTION_MAX_CHARS)
        choices = list(dict.fromkeys(o.strip() for o in options if o.strip()))
        asked = NewQuestion(
            question=text, options=choices, on_timeout=on_timeout, answer_within_seconds=answer_within_seconds
        )
        result = await self.store.ask_question(
            name, task_id, fence_token, asked, self.clock(), self.settings.lease_seconds
        )
        self._apply(result.change, "question", name)
        current = result.question
        deadline = self.clock() + min(max(wait_seconds, 0.0), self._longest_wait())
        while current.status is QuestionStatus.OPEN:
            # Park before reading, so an answer committed after the read still wakes this wait.
            with self.answer_waiters.park(name) as woken:
                current = await self.store.get_question(current.id) or current
                remaining = deadline - self.clock()
                if current.status is not QuestionStatus.OPEN or remaining <= 0:
                    break
                timer = asyncio.get_running_loop().call_later(remaining, _expire, woken)
                try:
                    await woken
                finally:
                    timer.cancel()
        cursor = None
        if current.status is QuestionStatus.OPEN:
            agent = await self.store.get_agent(name)
            cursor = format_cursor(agent.cursor if agent else 0, int(self.clock()) % 1_000_000)
        return AskReply(
            question_id=current.id,
            task_id=current.task_id,
            status=current.status,
            answer=current.answer,
            options=current.options,
            on_timeout=current.on_timeout,
            deadline_at=current.deadline_at,
            cursor=cursor,
            message=_describe_question(current, self.clock(), cursor),
        )

    async def report_task_completion(
        self,
        identity: Identity,
        task_id: int,
        fence_token: int,
        *,
        success: bool,
        result: str | None = None,
        data: dict[str, Any] | None = None,
        error: str | None = None,
        retryable: bool = True,
    ) -> CompletionReply:
        """Record how the caller's attempt ended, in one store transaction.

        Success completes the task and unblocks its dependents (woken if now ``pending``). Failure requeues it while
        attempts remain and ``retryable`` holds, else fails it (``dead`` after its last attempt) and fails its
        dependents. A report repeated with the same fence token is answered again, not recorded twice. Raises
        :class:`StaleClaim`, :class:`TaskCancelled`, :class:`NotFound`, or :class:`InvalidRequest` for an oversized
        result, error or data. Primaries waiting on the task are woken."""
        name = self.agent_of(identity)
        self._check_size("result", result, self.settings.max_result_chars)
        self._check_size("error", error, self.settings.max_result_chars)
        if data is not None:
            self._check_size("data", json.dumps(data), self.settings.max_result_chars)
        change = await self.store.complete(
            name,
            task_id,
            fence_token,
            success=success,
            retryable=retryable,
            result=result,
            data=data,
            error=error,
            now=self.clock(),
        )
        self._apply(change, "completed", name)
        task = change.task
        status = task.status if task is not None else TaskStatus.COMPLETED
        if success:
            message = f"Task #{task_id} recorded as completed. Call wait_for_next_event for more work."
        elif status is TaskStatus.PENDING:
            message = f"Failure recorded; task #{task_id} goes back to the queue for another attempt."
        else:
            message = f"Failure recorded; task #{task_id} is now {status.value}."
        return CompletionReply(task_id=task_id, status=status, message=message)

    async def heartbeat(self, identity: Identity) -> HeartbeatReply:
        """Mark the calling worker alive and renew the lease of the task it holds, in one store transaction. Raises
        :class:`InvalidRequest` for a non-worker caller; no event results."""
        name = self.agent_of(identity)
        agent, task = await self.store.heartbeat(name, self.clock(), self.settings.lease_seconds)
        cancelled = ""
        if agent.current_task_id is None and task is None:
            cancelled = " You hold no task."
        return HeartbeatReply(
            agent=agent,
            current_task_id=task.id if task else None,
            lease_expires_at=task.lease_expires_at if task else None,
            message=f"Heartbeat recorded.{cancelled}",
        )

    async def agent_status(self, identity: Identity) -> AgentStatusReply:
        """The calling worker's record and the task it holds. Reads only; raises :class:`NotFound` before it registers."""
        name = self.agent_of(identity)
        agent = await self.store.get_agent(name)
        if agent is None:
            raise NotFound(f"Agent {name} has not registered yet. Call register_agent first.")
        task = await self.store.get_task(agent.current_task_id, False) if agent.current_task_id else None
        return AgentStatusReply(
            agent=agent,
            current_task=task,
            message=f"You hold task #{task.id}." if task else "You hold no task. Call wait_for_next_event.",
        )

    async def release_task(self, agent: str, task_id: int, reason: str) -> CompletionReply:
        """Hand a task back to the queue without counting a failure (the launcher's graceful stop).

        One store transaction ends the attempt as ``released`` and makes the task ``pending``; one fitting parked
        agent is woken for it. Raises :class:`StaleClaim` if ``agent`` does not hold it, :class:`NotFound` for an
        unknown task."""
        change = await self.store.release(agent, task_id, None, reason, self.clock())
        self._apply(change, "released", agent)
        status = change.task.status if change.task else TaskStatus.PENDING
        return CompletionReply(
            task_id=task_id, status=status, message=f"Task #{task_id} released: {status.value}."
        )

    async def report_agent_state(
        self, agents: Sequence[str], cli: str | None, state: AgentState, reason: str, until: float | None
    ) -> AgentStateReply:
        """Record the launcher's word on agents (cooling down, circuit open, a reset the user asked for).

        ``agents`` names them; ``cli`` adds every agent of that CLI. Unknown names are ignored."""
        names = set(agents)
        if cli is not None:
            names |= {a.name for a in await self.store.list_agents() if a.cli == cli}
        stored = await self.store.set_agent_state(sorted(names), state, reason, until)
        shown = state.value or "cleared"
        return AgentStateReply(
            agents=stored,
            message=f"{len(stored)} agent(s) now {shown}."
            if stored
            else "No such agent: see `aiswarm agents` for the names.",
        )

    async def save_quota_pool(self, name: str, state: dict[str, Any]) -> QuotaPoolsReply:
        """Keep a quota pool's state (the launcher counts; the broker remembers across relaunches)."""
        await self.store.save_quota_pool(name, state, self.clock())
        return QuotaPoolsReply(pools={name: state}, message=f"Quota pool {name} saved.")

    async def quota_pools(self) -> QuotaPoolsReply:
        """Every quota pool's last saved state."""
        pools = await self.store.list_quota_pools()
        return QuotaPoolsReply(pools=pools, message=f"{len(pools)} quota pool(s).")

    async def record_usage(self, record: UsageRecord) -> None:
        """Keep the model requests and tokens one CLI run used (stamped now), on the task attempt it ran.

        The record is stored (``aiswarm usage`` sums it) and told to the observers (metrics, the dashboard)."""
        validate_agent_name(record.agent)
        now = self.clock()
        await self.store.record_usage(record.model_copy(update={"recorded_at": now}))
        usage = ModelUsage(
            record.provider.strip() or "unknown",
            record.task_id,
            record.requests or 0,
            record.input_tokens,
            record.output_tokens,
        )
        self._tell(
            BrokerNews(
                "model_usage",
                TaskChange(),
                record.agent,
                record.cli.strip()[:64] or "unknown",
                at=now,
                usage=usage,
            )
        )

    async def usage(self, by: UsageGrouping, days: float) -> UsageSummaryReply:
        """Token usage of the last ``days`` days, summed per ``by`` (day, provider, cli, agent, task)."""
        records = await self.store.list_usage(self.clock() - days * 86_400)
        groups: dict[str, list[UsageRecord]] = {}
        for record in records:
            groups.setdefault(_usage_key(record, by), []).append(record)
        rows = [
            UsageRow(
                key=key,
                runs=len(group),
                input_tokens=sum(r.input_tokens for r in group),
                output_tokens=sum(r.output_tokens for r in group),
                cached_tokens=sum(r.cached_tokens for r in group),
                total_tokens=sum(r.total_tokens for r in group),
                requests=sum(r.requests or 0 for r in group),
            )
            for key, group in sorted(groups.items())
        ]
        total = sum(r.total_tokens for r in rows)
        return UsageSummaryReply(by=by, rows=rows, message=f"{len(records)} run(s), {total} tokens, by {by}.")

    async def mark_agents_offline(self, names: Sequence[str]) -> AgentsReply:
        """Mark agents offline at once: their launcher stopped them (after releasing what they held)."""
        for name in names:
            validate_agent_name(name)
        agents = await self.store.mark_agents_offline(list(dict.fromkeys(names)))
        self._tell(BrokerNews("offline", TaskChange(), at=self.clock()))
        unknown = sorted(set(names) - {a.name for a in agents})
        note = f" Unknown: {', '.join(unknown)}." if unknown else ""
        return AgentsReply(agents=agents, message=f"{len(agents)} agent(s) marked offline.{note}")

    # primary side --------------------------------------------------------------------------------
    def _check_size(self, what: str, value: str | None, limit: int) -> None:
        if value is not None and len(value) > limit:
            raise InvalidRequest(
                f"{what} is {len(value)} characters; the limit is {limit}. Shorten it (or write the details to a "
                "file in the working directory and reference its path)."
            )

    def _new_task(
        self, spec: TaskRequest, resolved_deps: list[int], submitter: str, personas: set[str]
    ) -> NewTask:
        title = " ".join(spec.title.split())
        if any(ord(c) < 32 or ord(c) == 127 for c in title):
            raise InvalidRequest("title must be plain text without control characters (no NUL, no escapes).")
        if not title:
            raise InvalidRequest(
                "title must not be empty: give the task a short name, e.g. 'Add tests for parser'."
            )
        if len(title) > TITLE_MAX_CHARS:
            raise InvalidRequest(
                f"title is {len(title)} characters; keep it under {TITLE_MAX_CHARS} and put details in prompt."
            )
        if "\x00" in spec.prompt or not spec.prompt.strip():
            raise InvalidRequest(
                "prompt must be non-empty text (no NUL bytes) saying what the agent should do."
            )
        self._check_size("prompt", spec.prompt, self.settings.max_prompt_chars)
        if spec.working_dir is not None:
            _check_working_dir(spec.working_dir)
        if not PRIORITY_MIN <= spec.priority <= PRIORITY_MAX:
            raise InvalidRequest(
                f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX} (higher runs first)."
            )
        max_attempts = spec.max_attempts or self.settings.default_max_attempts
        if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise InvalidRequest(f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}.")
        timeout = spec.timeout_seconds or self.settings.default_task_timeout_seconds
        if not 1 <= timeout <= TASK_TIMEOUT_LIMIT_SECONDS:
            raise InvalidRequest(
                f"timeout_seconds must be between 1 and {TASK_TIMEOUT_LIMIT_SECONDS} "
                f"({TASK_TIMEOUT_LIMIT_SECONDS // 86_400} days)."
            )
        retry_delay = spec.retry_delay_seconds or 0.0
        if not 0 <= retry_delay <= RETRY_DELAY_LIMIT_SECONDS:
            raise InvalidRequest(
                f"retry_delay_seconds must be between 0 and {RETRY_DELAY_LIMIT_SECONDS} (one day)."
            )
        retry_backoff = spec.retry_backoff or 1.0
        if not 1 <= retry_backoff <= RETRY_BACKOFF_MAX:
            raise InvalidRequest(
                f"retry_backoff must be between 1 and {RETRY_BACKOFF_MAX} (each retry waits that many times longer)."
            )
        persona = normalize_labels([spec.persona], "persona")[0] if spec.persona else None
        if persona is not None and personas and persona not in personas:
            raise InvalidRequest(
                f"persona {persona!r} is unknown: known personas are {', '.join(sorted(personas))}. "
                f"Pick one of them, omit persona, or define it in {self.settings.home / 'personas' / persona}.md."
            )
        return NewTask(
            title=title,
            prompt=spec.prompt,
            priority=spec.priority,
            persona=persona,
            capabilities=normalize_labels(spec.capabilities, "capability"),
            depends_on=resolved_deps,
            working_dir=spec.working_dir,
            max_attempts=max_attempts,
            timeout_seconds=timeout,
            retry_delay_seconds=retry_delay,
            retry_backoff=retry_backoff,
            submitted_by=submitter,
            isolation=spec.isolation,
            files=check_declared_files(spec.files),
            answer_within_seconds=spec.answer_within_seconds,
            on_unanswered=spec.on_unanswered,
        )

    async def submit_tasks(self, identity: Identity, specs: Sequence[TaskRequest]) -> SubmitReply:
        """Submit tasks in one transaction: all of them or, on any refusal, none.

        ``depends_on`` names existing task ids or the ``key``s of earlier tasks in the batch (so no cycle is
        possible). Defaults come from the settings. Each task becomes ``pending`` (one fitting parked agent is
        woken for it, before this call answers) or ``blocked`` until its dependencies complete; a dependency that
        already failed fails it at once. Raises :class:`InvalidRequest` (limits, unknown dependency or persona,
        bad working directory) or :class:`StoreUnavailable`."""
        if not specs:
            raise InvalidRequest("submit at least one task.")
        if len(specs) > self.settings.max_batch:
            raise InvalidRequest(
                f"{len(specs)} tasks in one batch; the limit is {self.settings.max_batch}. Split it."
            )
        keys: dict[str, int] = {}
        existing: set[int] = set()
        for index, spec in enumerate(specs):
            for dep in spec.depends_on:
                if isinstance(dep, str):
                    if dep not in keys:
                        raise InvalidRequest(
                            f"task {index} depends on {dep!r}, which is not the key of an earlier task in this batch. "
                            "Dependencies must name existing task ids or keys of tasks listed before it "
                            "(so no cycle is possible)."
                        )
                else:
                    existing.add(int(dep))
            if spec.key is not None:
                if spec.key in keys:
                    raise InvalidRequest(
                        f"key {spec.key!r} is used twice in this batch; keys must be unique."
                    )
                keys[spec.key] = index
        missing = await self.store.missing_tasks(sorted(existing)) if existing else []
        if missing:
            raise InvalidRequest(
                f"depends_on names task(s) {missing} that do not exist. Use ids from submit_task or list_tasks."
            )
        submitter = identity.label or identity.role.value
        # Batch-local keys become ids inside the store's one transaction; validate everything first.
        personas = await self.known_personas() if any(spec.persona for spec in specs) else set()
        new_tasks: list[tuple[NewTask, list[int]]] = []
        for spec in specs:
            local = [keys[d] for d in spec.depends_on if isinstance(d, str)]
            ids = [d for d in spec.depends_on if isinstance(d, int)]
            new_tasks.append((self._new_task(spec, ids, submitter, personas), local))
        for new, local in new_tasks:
            new.depends_on_batch = local
            new.base_commit, new.target_branch = await submitter_git(new.working_dir, new.isolation)
        change = await self.store.create_tasks([new for new, _ in new_tasks], self.clock())
        created = change.created
        self._apply(change, "submitted")
        await self.agent_waiters.let_woken_reply_first()
        ids = ", ".join(f"#{t.id}" for t in created)
        return SubmitReply(
            tasks=[SubmittedTask.of(t) for t in created],
            message=(
                f"Submitted {len(created)} task(s): {ids}. Call wait_for_tasks(task_ids=[...]) to wait for results, "
                "or get_task(task_id) to look at one." + await self._fit_warning(created)
            ),
        )

    async def _fit_warning(self, tasks: Sequence[Task]) -> str:
        if self.agent_waiters.has_parked() and all(t.persona is None and not t.capabilities for t in tasks):
            return (
                ""  # a parked agent is a live one and fits any task without requirements: no O(agents) read
            )
        agents = [a for a in await self.store.list_agents() if a.status.is_live]
        unfit = [t.id for t in tasks if not any(t.fits(a.persona, a.capabilities) for a in agents)]
        if not unfit:
            return ""
        return (
            f" Note: no live agent currently fits task(s) {unfit} (persona/capabilities); they wait until one "
            "registers (e.g. `aiswarm launch --persona NAME`)."
        )

    async def known_personas(self) -> set[str]:
        """The personas a task may ask for: those the launcher can run for this home (persona files, remote A2A
        agents) and any persona a registered agent declared (it may come from another home). Empty when none is
        known: then any persona is accepted."""
        files = await asyncio.to_thread(_configured_personas, self.settings.home)
        agents = {a.persona for a in await self.store.list_agents() if a.persona}
        return files | agents

    async def get_task(self, task_id: int) -> TaskReply:
        """One task with every attempt. Reads only; raises :class:`NotFound` for an unknown id."""
        task = await self.store.get_task(task_id)
        if task is None:
            raise NotFound(f"Task #{task_id} does not exist. Use list_tasks to see task ids.")
        return TaskReply(task=task, message=_describe_task(task))

    async def record_isolation(self, task_id: int, fence: int | None, update: IsolationUpdate) -> TaskReply:
        """Record what an isolated attempt (under its fence) or the merge queue did with the task's work."""
        task = await self.store.update_isolation(task_id, fence, update, self.clock())
        if task is None:
            if await self.store.get_task(task_id, False) is None:
                raise NotFound(f"Task #{task_id} does not exist. Use list_tasks to see task ids.")
            raise StaleClaim(
                f"Task #{task_id} is held under another fence now: this attempt's worktree is stale. Discard it."
            )
        if update.merge_state is not None and update.merge_state.is_settled:
            # the merge's outcome is what a primary waiting on a completed isolated task waits for
            self.task_watchers.notify([task_id])
            self._tell(BrokerNews("merge", TaskChange(task=task), at=self.clock()))
            await self._end_waits()
        return TaskReply(task=task, message=_describe_task(task))

    async def merge_task(self, task_id: int, discard: bool = False) -> TaskReply:
        """Bring a completed task's branch onto the branch it was submitted from (or, ``discard``, delete it).

        One merge at a time per repository, after the task's dependencies; the user's uncommitted work is
        never touched: a conflict is recorded with the files named and the branch kept.
        """
        task = await self.store.get_task(task_id)
        if task is None:
            raise NotFound(f"Task #{task_id} does not exist. Use list_tasks to see task ids.")
        if discard:
            return await self.record_isolation(task_id, None, await discard_task_branch(task))
        dependencies = await self.store.get_tasks(task.depends_on) if task.depends_on else []
        update, resolvable = await merge_task_branch(task, dependencies, self.settings.home)
        if update.merge_state is MergeState.MERGED and task.resolves is not None:
            await self._mark_resolved(task)
        elif (
            update.merge_state is MergeState.CONFLICT
            and resolvable
            and self.settings.resolve_conflicts
            and task.resolves is None
            and task.merge_state
            is not MergeState.CONFLICT  # one round: only the first conflict is resubmitted
        ):
            conflicting = task.model_copy(update=update.model_dump(exclude_none=True))
            resolver = await self._resubmit_conflict(conflicting)
            update.merge_detail = f"{update.merge_detail}; task #{resolver.id} resolves it"
        return await self.record_isolation(task_id, None, update)

    async def _resubmit_conflict(self, task: Task) -> Task:
        """Submit the one task that resolves ``task``'s conflict: the implementer persona when such an agent is
        live, in a worktree that starts from the target with ``task``'s branch brought in (conflict markers)."""
        live = {a.persona for a in await self.store.list_agents() if a.status.is_live}
        spec = NewTask(
            title=f"Resolve the merge conflict of task #{task.id}"[:TITLE_MAX_CHARS],
            prompt=resolution_prompt(task),
            priority=task.priority,
            persona=RESOLVER_PERSONA if RESOLVER_PERSONA in live else None,
            capabilities=task.capabilities,
            working_dir=task.working_dir,
            max_attempts=task.max_attempts,
            timeout_seconds=task.timeout_seconds,
            submitted_by=f"merge queue (task #{task.id})",
            isolation=Isolation.WORKTREE,
            files=task.files,
            base_commit=task.base_commit,
            target_branch=task.target_branch,
            resolves=task.id,
        )
        change = await self.store.create_tasks([spec], self.clock())
        self._apply(change, "submitted")
        return change.created[0]

    async def _mark_resolved(self, resolver: Task) -> None:
        """The conflicting task ``resolver`` resolved is done with: its work is merged, its kept branch goes."""
        original = await self.store.get_task(resolver.resolves or 0, False)
        if original is None or original.merge_state is not MergeState.CONFLICT:
            return
        await task_branch_deleted(original)
        detail = f"task #{resolver.id} resolved the conflict and was merged onto {resolver.target_branch}"
        await self.record_isolation(
            original.id, None, IsolationUpdate(merge_state=MergeState.RESOLVED, merge_detail=detail)
        )

    async def list_tasks(self, status: TaskStatus | None, limit: int, offset: int = 0) -> TasksReply:
        """Tasks newest first, optionally of one status. Reads only; raises :class:`InvalidRequest` for a bad page."""
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise InvalidRequest(f"limit must be between 1 and {LIST_LIMIT_MAX}.")
        if offset < 0:
            raise InvalidRequest("offset must be 0 or more.")
        tasks = await self.store.list_tasks(status, limit, offset)
        return TasksReply(tasks=tasks, message=f"{len(tasks)} task(s), newest first.")

    async def wait_for_tasks(
        self,
        task_ids: Sequence[int],
        mode: Literal["all", "any"],
        timeout_seconds: float,
        questions: bool = True,
    ) -> WaitTasksReply:
        """Wait until all (or any) of the tasks reach a final status, one of them has an open question from its
        worker (unless ``questions`` is false: the primary must act on it), or the timeout passes.

        Watches before it reads, so a completion or question committed in between still ends the wait; the
        timeout is capped at ``max_wait_seconds``. Reads only. Raises :class:`InvalidRequest` (empty or oversized list) or
        :class:`NotFound` (an unknown id)."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            raise InvalidRequest("task_ids must name at least one task.")
        if len(ids) > self.settings.max_batch:
            raise InvalidRequest(f"wait for at most {self.settings.max_batch} tasks at once.")
        missing = await self.store.missing_tasks(ids)
        if missing:
            raise NotFound(f"Task(s) {missing} do not exist. Use the ids returned by submit_task.")
        timeout = min(max(timeout_seconds, 0.0), self._longest_wait())
        deadline = self.clock() + timeout
        while True:
            with self.task_watchers.watch(ids) as changed:
                tasks = await self.store.get_tasks(ids)
                # an isolated task is finished once its work is merged, kept or refused: a conflict is news too
                finished = [t.id for t in tasks if t.status.is_terminal and not t.merge_unsettled]
                met = len(finished) == len(ids) if mode == "all" else bool(finished)
                asked = [t.question for t in tasks if t.question is not None] if questions else []
                remaining = deadline - self.clock()
                if met or asked or remaining <= 0:
                    return _wait_tasks_reply(tasks, finished, met, asked)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed, remaining)

    async def answer_question(self, identity: Identity, task_id: int, answer: str) -> AnswerReply:
        """Answer the open question of a task's worker, in one store transaction: the worker's waiting
        ``ask_primary`` returns the answer, and its durable log gets a ``question_answered`` event (for its next
        ``wait_for_next_event``). Only a primary or admin answers (:func:`auth.answerer_of`). Raises
        :class:`Forbidden`, :class:`NotFound`, or :class:`InvalidRequest` (empty or oversized answer, no open
        question)."""
        answered_by = answerer_of(identity)
        text = answer.strip()
        if not text or "\x00" in text:
            raise InvalidRequest(
                "answer must be non-empty text (no NUL bytes): the decision the worker asked for."
            )
        self._check_size("answer", text, ANSWER_MAX_CHARS)
        answered = await self.store.answer_question(
            task_id, text, answered_by, self.clock(), self.settings.lease_seconds
        )
        question = answered.question
        self._apply(answered.change, "question", question.agent)
        return AnswerReply(
            question=question,
            message=f"Answer recorded; {question.agent} has it now. Call wait_for_tasks(task_ids=[{task_id}]) "
            "for the result.",
        )

    async def cancel_task(self, task_id: int, reason: str | None) -> TaskReply:
        """Cancel a task that has not finished, in one store transaction: its holder (if any) gets a ``task_cancelled``
        event and is woken, tasks depending on it fail, and primaries waiting on any of them are woken. A finished task
        is left as it is (the reply says so). Raises :class:`NotFound` for an unknown id."""
        reason = (reason or "cancelled by the primary agent").strip()[:REASON_MAX_CHARS]
        change = await self.store.cancel(task_id, reason, self.clock())
        self._apply(change, "cancelled")
        assert change.task is not None
        task = change.task
        if task.status is not TaskStatus.CANCELLED:
            message = f"Task #{task_id} had already finished as {task.status.value}; nothing was cancelled."
        else:
            extra = (
                f" {len(change.finished) - 1} dependent task(s) failed with it."
                if len(change.finished) > 1
                else ""
            )
            message = f"Task #{task_id} cancelled.{extra}"
        return TaskReply(task=task, message=message)

    async def requeue_task(self, identity: Identity, task_id: int) -> SubmitReply:
        """Give a dead or failed task another round: a new task with the same title, prompt, persona,
        capabilities, working directory and limits (its dependencies completed already). The old task keeps its
        history; the new one starts with fresh attempts."""
        task = await self.store.get_task(task_id, with_attempts=False)
        if task is None:
            raise NotFound(f"Task #{task_id} does not exist. Use list_tasks to see task ids.")
        if task.status not in (TaskStatus.DEAD, TaskStatus.FAILED):
            raise InvalidRequest(
                f"Task #{task_id} is {task.status.value}; only a dead or failed task can be requeued "
                "(cancel a running one first, or submit a new task)."
            )
        spec = TaskRequest.model_construct(  # the stored task passed these checks once; _new_task applies them again
            title=task.title,
            prompt=task.prompt,
            priority=task.priority,
            persona=task.persona,
            capabilities=task.capabilities,
            working_dir=task.working_dir,
            max_attempts=task.max_attempts,
            timeout_seconds=task.timeout_seconds,
            answer_within_seconds=task.answer_within_seconds,
            on_unanswered=task.on_unanswered,
        )
        reply = await self.submit_tasks(identity, [spec])
        new_id = reply.tasks[0].id
        reply.message = f"Task #{task_id} requeued as #{new_id}. " + reply.message
        return reply

    async def list_agents(self) -> AgentsReply:
        """Every registered agent with its status and current task. Reads only."""
        agents = await self.store.list_agents()
        parked = set(self.agent_waiters.parked_agents())
        live = sum(1 for a in agents if a.status.is_live)
        return AgentsReply(
            agents=agents,
            message=f"{len(agents)} agent(s), {live} live, {len(parked & {a.name for a in agents})} waiting for work.",
        )

    async def status(self) -> StatusReply:
        """Counts of tasks and agents by status, parked waits and watched tasks, version, uptime. Reads only."""
        stats = await self.store.stats()
        return StatusReply(
            version=__version__,
            database=self.settings.database_label,
            tasks=stats.tasks,
            agents=stats.agents,
            parked_waits=len(self.agent_waiters),
            watched_tasks=len(self.task_watchers),
            uptime_seconds=round(self.clock() - self._started_at, 1),
            message="Broker is running.",
        )


def _check_working_dir(path: str) -> None:
    """A task's working directory must be an absolute path to a directory that exists where the broker runs."""
    if "\x00" in path or not PurePosixPath(path).is_absolute():
        raise InvalidRequest(f"working_dir {path[:80]!r} must be an absolute path, e.g. /home/me/project.")
    try:
        exists = Path(path).is_dir()
    except OSError:
        exists = False
    if not exists:
        raise InvalidRequest(
            f"working_dir {path[:200]!r} is not an existing directory. Create it first, or give the path of the "
            "project the workers should work in."
        )


def _configured_personas(home: Path) -> set[str]:
    """The personas the launcher can run for this home: its persona files and the personas of the remote A2A
    agents in its ``config.toml`` (empty when the launcher is absent or its files cannot be read)."""
    try:
        from launcher.a2a_worker import load_remote_agents
        from launcher.personas import load_personas
    except ImportError:
        return set()
    try:
        names = set(load_personas(home))
    except ValueError as error:  # PersonaError: the launcher refuses the file too, naming it
        log.warning("persona files unreadable, persona names not checked: %s", error)
        return set()
    try:
        names |= {agent.persona for agent in load_remote_agents(home)}
    except BrokerError as error:  # A2AAgentError: the launcher refuses the file too, saying why
        log.warning("%s", error)
    return names


UsageGrouping = Literal["day", "provider", "cli", "agent", "task"]


def _usage_key(record: UsageRecord, by: UsageGrouping) -> str:
    if by == "day":
        return time.strftime("%Y-%m-%d", time.gmtime(record.recorded_at))
    if by == "task":
        return f"#{record.task_id}" if record.task_id is not None else "(no task)"
    value = {"provider": record.provider, "cli": record.cli, "agent": record.agent}[by]
    return value or "(none)"


def _expire(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)  # the wait re-reads the store and, past its deadline, answers "nothing new"


def _describe_task(task: Task) -> str:
    match task.status:
        case TaskStatus.COMPLETED:
            done = f"Task #{task.id} completed by {task.attempts[-1].agent if task.attempts else 'an agent'}."
            return done + _describe_merge(task)
        case TaskStatus.FAILED | TaskStatus.DEAD:
            return f"Task #{task.id} {task.status.value}: {task.error}. Resubmit it (changed) if it still matters."
        case TaskStatus.CANCELLED:
            return f"Task #{task.id} was cancelled: {task.error}."
        case TaskStatus.CLAIMED if task.question is not None:
            return (
                f"Task #{task.id}'s worker {task.claimed_by} asks: {task.question.question!r}. Answer with "
                f"answer_question(task_id={task.id}, answer=...)."
            )
        case TaskStatus.CLAIMED:
            return f"Task #{task.id} is being worked on by {task.claimed_by}. Call wait_for_tasks to wait for it."
        case TaskStatus.BLOCKED if task.waiting:
            return f"Task #{task.id} waits, holding no agent: {task.waited_on}."
        case TaskStatus.BLOCKED:
            return f"Task #{task.id} waits for its dependencies {task.depends_on}."
        case _:
            return f"Task #{task.id} is waiting for an agent. Call wait_for_tasks to wait for it."


def _describe_merge(task: Task) -> str:
    """What became of an isolated task's branch, for the primary."""
    match task.merge_state:
        case None:
            return ""
        case MergeState.PENDING:
            return f" Its work on {task.branch} is waiting for the merge queue."
        case MergeState.MERGED:
            return f" Merged onto {task.target_branch}: {task.diff_stat or 'no file changes'}."
        case MergeState.CONFLICT:
            return f" Not merged: {task.merge_detail}. Resolve it, then call merge_task again."
        case MergeState.MANUAL:
            return f" Its work is on branch {task.branch}: call merge_task to merge it onto {task.target_branch}."
        case MergeState.DISCARDED:
            return " Its branch was discarded."
        case MergeState.PROPOSED:
            return f" Its branch {task.branch} was handed to the merge hook: {task.merge_detail}."
        case MergeState.HOOK_FAILED:
            return (
                f" Not merged: {task.merge_detail}. Its branch {task.branch} is kept: fix the hook and call "
                "merge_task, or merge it yourself."
            )
        case MergeState.RESOLVED:
            return f" Its conflict was resolved: {task.merge_detail}."


def _about_a_task_left(event: Event, agent: Agent) -> bool:
    """A question's answer or expiry for a task the agent no longer holds: nothing it can act on any more (it had
    the answer from ask_primary, or the attempt ended), so its wait passes over it."""
    kinds = (EventKind.QUESTION_ANSWERED, EventKind.QUESTION_EXPIRED)
    return event.kind in kinds and event.task_id != agent.current_task_id


def _describe_question(question: Question, now: float, cursor: str | None) -> str:
    """What a worker that asked does next, by the state of its question."""
    match question.status:
        case QuestionStatus.ANSWERED:
            return f"The primary answered: {question.answer} -- Carry on with the task following this answer."
        case QuestionStatus.OPEN:
            left = max(0, round(question.deadline_at - now))
            after = (
                "you continue with your own judgement"
                if question.on_timeout is OnUnanswered.CONTINUE
                else "this attempt fails"
            )
            return (
                f"Not answered yet (the primary has {left} s more; then {after}). To keep waiting, call "
                f"wait_for_next_event(cursor={cursor!r}, timeout_seconds=50): a question_answered event brings the "
                "answer (or ask_primary again with the same question). Meanwhile you may do the parts of the task "
                "that do not depend on the answer."
            )
        case QuestionStatus.EXPIRED if question.on_timeout is OnUnanswered.CONTINUE:
            return unanswered_continue(question)
        case QuestionStatus.EXPIRED:
            return (
                f"No answer by the deadline, and your question said to fail without one: the attempt at task "
                f"#{question.task_id} failed. Stop working on it and do not report it."
            )
        case _:
            return (
                f"Your attempt at task #{question.task_id} ended before an answer came (completed, cancelled or "
                "expired). Stop working on it."
            )


def _wait_tasks_reply(
    tasks: list[Task], finished: list[int], met: bool, asked: list[Question] | None = None
) -> WaitTasksReply:
    asked = asked or []
    done = set(finished)
    pending = [t.id for t in tasks if t.id not in done]
    failed = [t.id for t in tasks if t.status in (TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED)]
    merging = [t.id for t in tasks if t.merge_unsettled]
    if met:
        message = f"{len(finished)} task(s) finished."
        if failed:
            message += f" Not completed: {failed} (see each task's error)."
        message += "".join(_merge_news(t) for t in tasks if t.id in done)
        if pending:
            message += f" Still running: {pending}."
    elif not asked:
        message = (
            f"Timed out waiting; still running: {pending}. Call wait_for_tasks again to keep waiting "
            "(or cancel_task to give up on one)."
        )
    else:
        message = ""
    if merging:
        message += f" Completed, waiting for the merge queue: {merging}."
    for question in asked:
        choices = f" (options: {', '.join(question.options)})" if question.options else ""
        message += (
            f" Task #{question.task_id}'s worker {question.agent} asks: {question.question!r}{choices}. Answer with "
            f"answer_question(task_id={question.task_id}, answer=...); unanswered by its deadline, the worker "
            f"{'continues on its own judgement' if question.on_timeout is OnUnanswered.CONTINUE else 'fails'}."
        )
    if asked:
        message += " Then call wait_for_tasks again."
    return WaitTasksReply(
        done=met, tasks=tasks, finished=finished, pending=pending, questions=asked, message=message.strip()
    )


def _merge_news(task: Task) -> str:
    """What a primary must act on about a finished task's work: not merged by itself, or merged another way."""
    match task.merge_state:
        case MergeState.CONFLICT:
            files = ", ".join(task.conflict_files) or "see merge_detail"
            return (
                f" Task #{task.id} is conflicting ({files}): {task.merge_detail}. Its branch {task.branch} is "
                "kept: resolve it there and call merge_task, or discard it."
            )
        case MergeState.MANUAL:
            return (
                f" Task #{task.id} is waiting for merge on branch {task.branch}: call merge_task to merge it."
            )
        case MergeState.HOOK_FAILED:
            return f" Task #{task.id}'s merge hook failed: {task.merge_detail}. Its branch {task.branch} is kept."
        case MergeState.PROPOSED:
            return f" Task #{task.id} was handed to the merge hook: {task.merge_detail}."
        case MergeState.RESOLVED:
            return f" Task #{task.id}'s conflict was resolved: {task.merge_detail}."
        case _:
            return ""
