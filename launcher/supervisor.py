"""The launcher's supervisor: one asyncio loop per agent, each driving an unmodified agent CLI.

Per-task mode (the default) keeps the model out of the waiting: the loop waits on the broker as
its agent, reserves a task with ``claim_task`` as soon as one is offered, and only then starts the
CLI headless with a prompt to claim that task (the broker hands back the held claim with the same
fence), do it and report. While the CLI runs the supervisor renews the lease and reads stderr for
rate limits; when it exits the outcome is classified and a task the agent still holds is reported
failed (retryable) or, for a rate limit or a graceful stop, released without burning an attempt.

Session mode starts the CLI once with a prompt to loop on ``wait_for_next_event`` and restarts it
when it exits.

Crashes back off exponentially; a rate limit cools down every agent of the same CLI (they share the
user's account) so the other CLIs take the work; Ctrl-C drains: running CLIs get a grace period,
then their process groups are killed and their tasks released.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Literal, TypeVar

from aiswarm_server.broker_client import BrokerCallError, BrokerClient, BrokerUnreachable
from aiswarm_server.replies import ClaimedTask, ClaimReply, TokenReply
from launcher.adapters import get_adapter
from launcher.adapters.base import AgentSpec, CliAdapter, ModelEndpoint, OutcomeKind, RunOutcome, TokenUsage
from launcher.isolation.attempt import MergeMode, TaskIsolation
from launcher.isolation.git import GitError
from launcher.isolation.worktrees import Worktrees
from launcher.personas import Persona

log = logging.getLogger("aiswarm.launcher")

Mode = Literal["per-task", "session"]
IsolationChoice = Literal["auto", "worktree", "none"]
T = TypeVar("T")

WAIT_SECONDS = 60
"""One broker wait; well inside every timeout, and the cursor differs each time."""
HEARTBEAT_SECONDS = 20.0
"""Lease renewal while a CLI works (the broker's lease is minutes long)."""
MAX_BACKOFF_SECONDS = 120.0


class AgentState(StrEnum):
    """What an agent's loop is doing, for the status view."""

    STARTING = "starting"
    IDLE = "idle"
    RUNNING = "running"
    COOLING = "cooling down"
    BACKOFF = "backing off"
    STOPPING = "stopping"
    STOPPED = "stopped"


class LaunchError(Exception):
    """The launch cannot go ahead; the message is one line saying what to do."""


@dataclass(frozen=True)
class AgentPlan:
    """One agent to run: a stable name (``qwen-1``), its CLI and optional persona."""

    name: str
    cli: str
    persona: Persona | None = None


@dataclass
class AgentView:
    """The live state of one agent (read by the status view)."""

    name: str
    cli: str
    persona: str | None
    state: AgentState = AgentState.STARTING
    task_id: int | None = None
    runs: int = 0
    failures: int = 0
    last_error: str = ""
    cool_down_until: float = 0.0
    tokens: int = 0
    pid: int | None = None


@dataclass
class LaunchConfig:
    """Everything the supervisor needs; built by ``aiswarm launch``."""

    agents: list[AgentPlan]
    broker_url: str
    admin_token: str
    home: Path
    workdir: Path
    mode: Mode = "per-task"
    model: str | None = None
    endpoint_url: str | None = None
    endpoint_api_key: str = "aiswarm"
    endpoint_model: str = "aiswarm-model"
    task_timeout: float | None = None
    cool_down_seconds: float = 60.0
    grace_seconds: float = 10.0
    backoff_seconds: float = 2.0
    base_env: Mapping[str, str] | None = None
    isolation: IsolationChoice = "auto"
    merge_mode: MergeMode = MergeMode.AUTO

    @property
    def isolates_by_default(self) -> bool:
        """Whether tasks without their own choice run in worktrees: ``worktree``, or ``auto`` with several agents."""
        return self.isolation == "worktree" or (self.isolation == "auto" and len(self.agents) > 1)

    def endpoint_for(self, cli: str) -> ModelEndpoint | None:
        """The model endpoint as this CLI wants it: ``.../v1`` for OpenAI-style CLIs, the bare host for gemini."""
        if not self.endpoint_url:
            return None
        bare = self.endpoint_url.rstrip("/").removesuffix("/v1")
        base = bare if cli == "gemini" else bare + "/v1"
        return ModelEndpoint(
            base_url=base, api_key=self.endpoint_api_key, model=self.model or self.endpoint_model
        )


def plan_agents(count: int, cli_mix: str, personas: list[Persona]) -> list[AgentPlan]:
    """Stable agent names from a CLI mix: ``qwen,gemini`` round-robin, or ``qwen:2,gemini:2`` counts.

    Names are ``<cli>-<n>`` numbered per CLI, so a relaunch with the same mix continues as the same agents.
    Personas are given to the agents in turn (one persona: every agent).
    """
    parts = [p.strip() for p in cli_mix.split(",") if p.strip()]
    if not parts:
        raise LaunchError("--cli is empty: name at least one CLI, e.g. --cli qwen,gemini")
    order: list[str] = []
    if any(":" in p for p in parts):
        for part in parts:
            name, _, number = part.partition(":")
            if not number.isdigit() or int(number) < 1:
                raise LaunchError(f"--cli {part!r}: write NAME:COUNT with a positive count, e.g. qwen:2")
            order += [name.strip()] * int(number)
        if count and count != len(order):
            raise LaunchError(f"--agents {count} but --cli {cli_mix} asks for {len(order)}: drop one of them")
    else:
        if count < 1:
            raise LaunchError("--agents must be at least 1")
        order = [parts[i % len(parts)] for i in range(count)]
    for cli in set(order):
        get_adapter(cli)  # raises UnknownCliError naming the known CLIs
    seen: dict[str, int] = {}
    plans: list[AgentPlan] = []
    for i, cli in enumerate(order):
        seen[cli] = seen.get(cli, 0) + 1
        persona = personas[i % len(personas)] if personas else None
        plans.append(AgentPlan(name=f"{cli}-{seen[cli]}", cli=cli, persona=persona))
    return plans


def task_prompt(agent: str, task_id: int, persona: Persona | None) -> str:
    """The headless prompt for one reserved task (the model never waits: the task is already held)."""
    return _with_persona(
        persona,
        f"You are aiswarm worker agent {agent}. Task {task_id} is reserved for you on the aiswarm broker.",
        f"1. Call claim_task with task_id {task_id}. It returns the task (title, prompt, working_dir) "
        "and the fence_token you hold it with.",
        "2. Do what the task's prompt asks, working in its working_dir (use absolute paths under it).",
        f"3. Call report_task_completion with task_id {task_id}, that fence_token, success true or false, "
        "and a short result (or the error when you could not do it).",
        "Then stop: do not look for other work.",
    )


def session_prompt(agent: str, persona: Persona | None) -> str:
    """The prompt for session mode: the CLI loops on the broker itself (the AISwarm ADR pattern)."""
    return _with_persona(
        persona,
        f"You are aiswarm worker agent {agent}. Work in a loop:",
        "call wait_for_next_event (pass back the cursor it returns every time, timeout_seconds 240);",
        "on a task_available event call claim_task with its task_id, do what the task's prompt asks in its "
        "working_dir, then call report_task_completion with the task_id, the fence_token, success and a result;",
        "then wait again. Stop after 50 idle waits.",
    )


def _with_persona(persona: Persona | None, *lines: str) -> str:
    """The prompt ``lines``, after the persona's role and instructions when the agent has one."""
    head = [f"# Your role: {persona.name}", persona.instructions.strip(), ""] if persona is not None else []
    return "\n".join([*head, *lines])


def backoff_delay(base: float, failures: int, cap: float = MAX_BACKOFF_SECONDS) -> float:
    """Exponential backoff after ``failures`` consecutive failed runs (0 failures: no delay)."""
    return 0.0 if failures <= 0 else min(cap, base * 2 ** (failures - 1))


class CoolDowns:
    """Cool-downs per CLI: a rate limit on one agent pauses its siblings of the same CLI (same account)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._until: dict[str, float] = {}
        self._clock = clock
        self.changed = asyncio.Event()

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


class AgentNameLocks:
    """The agent names this launcher runs: an exclusive ``flock`` per name in ``$AISWARM_HOME/launch/``.

    Every launch numbers its agents ``<cli>-<n>`` from 1, so two launches against one home would both be
    ``qwen-1``: the same agent, the same private home, and the second one's token revocation would cut the
    first one off. A name is used only by the launch holding its lock; the kernel drops the lock when the
    launcher exits however it ends, so a relaunch after a crash gets its names (and its held tasks) back.
    """

    def __init__(self, home: Path) -> None:
        self.directory = home / "launch"
        self._held: dict[str, int] = {}

    def take(self, name: str) -> bool:
        """Lock ``name`` for this launcher; False when another running launch holds it."""
        if name in self._held:
            return True
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._held[name] = fd
        return True

    def holder(self, name: str) -> str:
        """The pid written by the launch that holds ``name`` (for messages), or ``?``."""
        with contextlib.suppress(OSError):
            return (self.directory / f"{name}.lock").read_text().strip() or "?"
        return "?"

    def release(self) -> None:
        """Give every name back."""
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()


def reserve_names(plans: list[AgentPlan], locks: AgentNameLocks) -> list[AgentPlan]:
    """``plans`` with every name locked for this launch; a name another launch runs becomes the next free ``<cli>-<n>``."""
    wanted = {p.name for p in plans}
    reserved: list[AgentPlan] = []
    for plan in plans:
        name, n = plan.name, 0
        while not locks.take(name):
            n += 1
            name = f"{plan.cli}-{n}"
            while name in wanted:
                n += 1
                name = f"{plan.cli}-{n}"
            wanted.add(name)
        reserved.append(plan if name == plan.name else replace(plan, name=name))
    return reserved


@dataclass
class AgentRun:
    """One agent's loop: its plan, spec and adapter, its worker and the admin connection, its live view."""

    plan: AgentPlan
    spec: AgentSpec
    adapter: CliAdapter
    worker: BrokerClient
    admin: BrokerClient
    view: AgentView

    @property
    def name(self) -> str:
        """The agent's name."""
        return self.plan.name


@dataclass
class RunResult:
    """One finished CLI run."""

    outcome: RunOutcome
    usage: TokenUsage | None
    rate_limited: bool
    stopped: bool
    seconds: float


@dataclass
class Supervisor:
    """Runs every agent's loop until stopped; ``views`` is the live state for the status view."""

    config: LaunchConfig
    views: dict[str, AgentView] = field(default_factory=dict)
    cool_downs: CoolDowns = field(default_factory=CoolDowns)

    def __post_init__(self) -> None:
        self._stopping = asyncio.Event()
        self._killed = asyncio.Event()
        self._running: dict[str, asyncio.subprocess.Process] = {}
        self._names = AgentNameLocks(self.config.home)
        self._reserved = False
        self._in_flight: set[int] = set()
        self.isolation = TaskIsolation(
            Worktrees(self.config.home),
            isolate_by_default=self.config.isolates_by_default,
            merge_mode=self.config.merge_mode,
            note=self._note,
        )
        self.tokens: dict[str, str] = {}
        """The token issued to each agent by this launch (every earlier one is revoked)."""
        self._make_views()
        (self.config.home / "logs").mkdir(parents=True, exist_ok=True)

    def _make_views(self) -> None:
        self.views.clear()
        for plan in self.config.agents:
            self.views[plan.name] = AgentView(
                plan.name, plan.cli, plan.persona.name if plan.persona else None
            )

    def reserve_names(self) -> list[str]:
        """Lock this launch's agent names (renaming those another running launch holds); returns the names.

        Called by :meth:`run` if not before; ``aiswarm launch`` calls it first to print the final names.
        """
        if not self._reserved:
            planned = self.config.agents
            self.config.agents = reserve_names(planned, self._names)
            for before, after in zip(planned, self.config.agents, strict=True):
                if before.name != after.name:
                    log.warning(
                        "agent %s is run by another aiswarm launch (pid %s): this one runs %s",
                        before.name,
                        self._names.holder(before.name),
                        after.name,
                    )
            self._make_views()
            self._reserved = True
        return [p.name for p in self.config.agents]

    # --- control ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Drain: no new work; running CLIs get ``grace_seconds``, then are killed and their tasks released."""
        if self._stopping.is_set():
            self._killed.set()  # a second Ctrl-C: do not wait out the grace period
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for."""
        return self._stopping.is_set()

    async def run(self) -> None:
        """Reserve the names, replace each agent's tokens, then run every agent's loop until :meth:`stop`."""
        self.reserve_names()
        try:
            async with BrokerClient(self.config.broker_url, self.config.admin_token) as admin:
                for plan in self.config.agents:
                    self.tokens[plan.name] = await self._fresh_token(admin, plan.name)
                await self._clean_worktrees(admin)
                loops = [
                    asyncio.create_task(self._agent(p, self.tokens[p.name], admin))
                    for p in self.config.agents
                ]
                try:
                    await asyncio.gather(*loops)
                finally:
                    for loop in loops:
                        loop.cancel()
                    await asyncio.gather(*loops, return_exceptions=True)
                    for process in list(self._running.values()):
                        _kill_group(process)
        finally:
            self._names.release()
            self._reserved = False

    async def _fresh_token(self, admin: BrokerClient, name: str) -> str:
        """Revoke the agent's earlier tokens (a previous launch's), then issue the one this launch uses.

        Safe because this launch holds the name's lock: no other running launch uses these tokens.
        """
        revoked = await admin.call("revoke_agent_tokens", TokenReply, agent=name)
        self._note(name, f"{revoked.message} Issued this launch's token.")
        return (await admin.issue_agent_token(name)).token

    async def _clean_worktrees(self, admin: BrokerClient) -> None:
        """Land what a crashed launch of these agents left, and remove every orphaned worktree (never fatal)."""
        names = {p.name for p in self.config.agents}
        try:
            removed = await self.isolation.recover(admin, names, busy=set(self._in_flight))
        except (BrokerCallError, BrokerUnreachable, GitError, OSError) as error:
            log.warning("cleaning up task worktrees failed: %s", error)
            return
        if removed:
            log.info("removed %d orphaned task worktree(s)", len(removed))

    # --- one agent --------------------------------------------------------------------------

    def agent_log(self, name: str) -> Path:
        """``$AISWARM_HOME/logs/<agent>.log``."""
        return self.config.home / "logs" / f"{name}.log"

    def _note(self, name: str, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n"
        with open(self.agent_log(name), "a", encoding="utf-8") as fh:
            fh.write(line)

    async def _agent(self, plan: AgentPlan, token: str, admin: BrokerClient) -> None:
        view = self.views[plan.name]
        adapter = get_adapter(plan.cli)
        spec = AgentSpec(
            name=plan.name,
            cli=plan.cli,
            token=token,
            broker_url=self.config.broker_url,
            aiswarm_home=self.config.home,
            model=self.config.model or (plan.persona.preferred_model if plan.persona else None),
            endpoint=self.config.endpoint_for(plan.cli),
            persona=plan.persona.name if plan.persona else None,
        )
        self._note(plan.name, f"agent {plan.name} ({plan.cli}) starting in {self.config.mode} mode")
        loop = self._session_loop if self.config.mode == "session" else self._per_task_loop
        while not self.stopping:
            try:
                async with BrokerClient(self.config.broker_url, token) as worker:
                    await loop(AgentRun(plan, spec, adapter, worker, admin, view))
                    break
            except (BrokerUnreachable, BrokerCallError, OSError) as error:
                view.failures += 1
                view.last_error = _short(str(error))
                delay = backoff_delay(self.config.backoff_seconds, view.failures)
                self._note(plan.name, f"broker error: {error}; retrying in {delay:.0f}s")
                view.state = AgentState.BACKOFF
                await self._sleep(delay)
        view.state = AgentState.STOPPED

    async def _register(self, agent: AgentRun) -> str | None:
        """Register (or re-register) the agent with the broker; returns its event cursor."""
        caps = agent.plan.persona.capabilities if agent.plan.persona else []
        registered = await agent.worker.register_agent(
            cli=agent.plan.cli, persona=agent.spec.persona, capabilities=caps, pid=os.getpid()
        )
        return registered.cursor

    async def _per_task_loop(self, agent: AgentRun) -> None:
        cursor = await self._register(agent)
        held = (await agent.worker.get_agent_status()).current_task
        if held is not None:  # a relaunch finds its agent still holding a task: carry on with it
            await self._run_claimed(agent, await agent.worker.claim_task(held.id))
        while not self.stopping:
            if not await self._ready(agent):
                continue
            agent.view.state = AgentState.IDLE
            reply = await self._until_stopped_or_cooled(
                agent.plan.cli, agent.worker.wait_for_next_event(cursor, WAIT_SECONDS)
            )
            if reply is None:
                continue  # stopped, or a cool-down started: the wait was abandoned (the offer lapses)
            cursor = reply.cursor
            for event in reply.events:
                if event.kind != "task_available" or event.task_id is None or self.stopping:
                    continue
                if self.cool_downs.remaining(agent.plan.cli) > 0:
                    break
                if await self._run_claimed(agent, await agent.worker.claim_task(event.task_id)):
                    await self._backoff(agent)
                    break

    async def _run_claimed(self, agent: AgentRun, claim: ClaimReply) -> bool:
        """Run the CLI on a task the claim reserved; False when the claim reserved nothing."""
        if not claim.claimed or claim.task is None or claim.fence_token is None:
            return False
        await self._run_task(agent, claim.task, claim.fence_token)
        return True

    async def _ready(self, agent: AgentRun) -> bool:
        """Sit out a cool-down or a backoff; False when the loop should re-check (stop or more waiting)."""
        cooling = self.cool_downs.remaining(agent.plan.cli)
        if cooling > 0:
            agent.view.state = AgentState.COOLING
            agent.view.cool_down_until = time.time() + cooling
            await self._sleep(cooling)
            return False
        agent.view.cool_down_until = 0.0
        return not self.stopping

    async def _run_task(self, agent: AgentRun, task: ClaimedTask, fence: int) -> None:
        self._in_flight.add(task.id)
        try:
            await self._run_isolated(agent, task, fence)
        finally:
            self._in_flight.discard(task.id)
            agent.view.task_id = None
        await self._clean_worktrees(agent.admin)

    async def _run_isolated(self, agent: AgentRun, task: ClaimedTask, fence: int) -> None:
        """Prepare the attempt's workspace, run the CLI on the task there, then land or discard the work."""
        name, view = agent.name, agent.view
        view.state, view.task_id = AgentState.RUNNING, task.id
        self._note(name, f"task #{task.id} reserved (fence {fence}): {task.title}")
        beat = asyncio.create_task(self._heartbeats(agent.worker))
        try:
            try:
                workspace = await self.isolation.prepare(name, agent.admin, agent.worker, task.id, fence)
            except (GitError, OSError) as error:
                reason = f"{name}: could not create the task's worktree: {error}"
                self._note(name, f"task #{task.id} reported failed: {reason}")
                with contextlib.suppress(BrokerCallError):
                    await agent.worker.report_task_completion(
                        task.id, fence, success=False, error=reason, retryable=True
                    )
                return
            if workspace is None:
                self._note(
                    name, f"task #{task.id} is no longer held by {name} (cancelled or expired while waiting)"
                )
                return
            await self._run_in(agent, task, fence, workspace.directory or _existing_dir(task.working_dir))
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beat
        try:
            await self.isolation.finish(name, agent.admin, workspace, fence)
        except (BrokerCallError, BrokerUnreachable, GitError, OSError) as error:
            self._note(
                name, f"task #{task.id}: landing its work failed ({error}); retried at the next clean-up"
            )

    async def _run_in(self, agent: AgentRun, task: ClaimedTask, fence: int, workdir: Path | None) -> None:
        """Run the CLI on the reserved task in ``workdir``; report it failed if the CLI left it unreported."""
        name = agent.name
        timeout = self.config.task_timeout or float(task.timeout_seconds)
        prompt = task_prompt(name, task.id, agent.plan.persona)
        result = await self._run_cli(agent, prompt, workdir, timeout)
        usage = result.usage
        tokens = f", {usage.total_tokens} tokens ({usage.requests or '?'} turns)" if usage else ""
        self._note(
            name,
            f"task #{task.id} run ended: {result.outcome.kind.value} ({result.outcome.reason}) "
            f"after {result.seconds:.1f}s{tokens}",
        )
        still_held = await self._still_holds(agent.worker, task.id)
        if still_held:
            if result.rate_limited or result.stopped:
                why = "rate limited" if result.rate_limited else "launcher stopping"
                await agent.admin.release_task(name, task.id, f"{name}: {why}; released without a failure")
                self._note(name, f"task #{task.id} released ({why})")
            else:
                data = {"usage": usage.model_dump()} if usage else None
                reason = f"{name} ({agent.plan.cli}): {result.outcome.reason}"
                with contextlib.suppress(BrokerCallError):
                    await agent.worker.report_task_completion(
                        task.id, fence, success=False, error=reason, data=data, retryable=True
                    )
                self._note(name, f"task #{task.id} reported failed: {reason}")
        self._after_run(agent, result, still_held)

    async def _still_holds(self, worker: BrokerClient, task_id: int) -> bool:
        try:
            current = (await worker.get_agent_status()).current_task
        except BrokerCallError:
            return False
        return current is not None and current.id == task_id

    def _after_run(self, agent: AgentRun, result: RunResult, still_held: bool) -> None:
        """Book-keeping after a run: cool-down on a rate limit, backoff after failures, reset on success."""
        kind, view, cli = result.outcome.kind, agent.view, agent.plan.cli
        if result.rate_limited:
            self.cool_downs.start(cli, self.config.cool_down_seconds)
            view.last_error = _short(result.outcome.reason)
            self._note(
                agent.name,
                f"rate limited: every {cli} agent cools down for {self.config.cool_down_seconds:.0f}s",
            )
        elif kind in (OutcomeKind.DONE,) and not still_held:
            view.failures = 0
        elif not result.stopped:
            view.failures += 1
            view.last_error = _short(result.outcome.reason)

    async def _backoff(self, agent: AgentRun) -> None:
        view = agent.view
        delay = backoff_delay(self.config.backoff_seconds, view.failures)
        if delay > 0 and not self.stopping:
            view.state = AgentState.BACKOFF
            self._note(agent.name, f"backing off {delay:.0f}s after {view.failures} failed run(s)")
            await self._sleep(delay)

    async def _session_loop(self, agent: AgentRun) -> None:
        await self._register(agent)
        view = agent.view
        while not self.stopping:
            if not await self._ready(agent):
                continue
            view.state = AgentState.RUNNING
            result = await self._run_cli(agent, session_prompt(agent.name, agent.plan.persona), None, None)
            self._note(agent.name, f"session ended: {result.outcome.kind.value} ({result.outcome.reason})")
            held = (await agent.worker.get_agent_status()).current_task
            if held is not None:
                await agent.admin.release_task(agent.name, held.id, f"{agent.name}: session ended; released")
            self._after_run(agent, result, held is not None)
            if result.outcome.kind is not OutcomeKind.DONE or result.seconds < 5:
                view.failures = max(view.failures, 1)
            await self._backoff(agent)

    # --- the CLI process --------------------------------------------------------------------

    async def _run_cli(
        self, agent: AgentRun, prompt: str, workdir: Path | None, limit_seconds: float | None
    ) -> RunResult:
        plan, adapter, view = agent.plan, agent.adapter, agent.view
        home = adapter.prepare_agent_home(agent.spec)
        argv = adapter.command(home, prompt)
        env = adapter.env(home, base_env=self.config.base_env)
        started = time.monotonic()
        view.runs += 1
        self._note(plan.name, f"run {view.runs}: starting {plan.cli} in {workdir or self.config.workdir}")
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(workdir or self.config.workdir),
            env=env,
            stdin=asyncio.subprocess.PIPE if adapter.prompt_on_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: the whole CLI tree is killed together
        )
        self._running[plan.name] = process
        view.pid = process.pid
        rate_limited = False
        stopped = False
        timed_out = False
        killed = asyncio.Event()

        def kill() -> None:
            killed.set()
            _kill_group(process)

        async def read_stderr() -> str:
            nonlocal rate_limited
            assert process.stderr is not None
            lines: list[str] = []
            # a local append per line: cheap enough to do on the loop
            with open(self.agent_log(plan.name), "a", encoding="utf-8") as fh:  # noqa: ASYNC230
                async for raw in process.stderr:
                    line = raw.decode("utf-8", "replace")
                    lines.append(line)
                    fh.write(f"  [{plan.cli} stderr] {line.rstrip()}\n")
                    fh.flush()
                    if not rate_limited and adapter.detect_rate_limit_line(line):
                        rate_limited = True
                        kill()  # stop it retrying against a limited account; the task is released
            return "".join(lines)

        async def read_stdout() -> str:
            assert process.stdout is not None
            return (await process.stdout.read()).decode("utf-8", "replace")

        async def write_prompt() -> None:
            if process.stdin is None:
                return
            # written while stdout and stderr are read: a long prompt cannot fill a pipe nobody drains
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                process.stdin.write(prompt.encode("utf-8"))
                await process.stdin.drain()
            process.stdin.close()

        async def watch() -> None:
            nonlocal stopped, timed_out
            deadline = None if limit_seconds is None else started + limit_seconds
            while process.returncode is None:
                stop_wait = asyncio.create_task(self._stopping.wait())
                try:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    await asyncio.wait({stop_wait}, timeout=left)
                finally:
                    stop_wait.cancel()
                if process.returncode is not None or killed.is_set():
                    return
                if self.stopping:
                    stopped = True
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGTERM)
                    kill_wait = asyncio.create_task(self._killed.wait())
                    await asyncio.wait({kill_wait}, timeout=self.config.grace_seconds)
                    kill_wait.cancel()
                    if process.returncode is None:
                        kill()
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    timed_out = True
                    kill()
                    return

        def return_logins() -> None:
            for returned in adapter.return_logins(home):
                self._note(plan.name, f"carried the CLI's refreshed login back to {returned}")

        async def return_logins_while_running() -> None:
            while True:  # a long run (session mode) may refresh a rotating token other agents need
                await asyncio.sleep(HEARTBEAT_SECONDS)
                return_logins()

        async def reap() -> None:
            # qwen re-execs itself in a child that shares the pipes: once the CLI's own process is gone (killed,
            # crashed) its group goes too, or the reads would wait for that child to finish its work. asyncio's
            # wait() only returns once the pipes close, so the exit is seen by polling returncode.
            while process.returncode is None:  # noqa: ASYNC110 - no event fires at the exit itself
                await asyncio.sleep(0.5)
            _kill_group(process)

        watcher = asyncio.create_task(watch())
        returner = asyncio.create_task(return_logins_while_running())
        reaper = asyncio.create_task(reap())
        try:
            stdout, stderr, _ = await asyncio.gather(read_stdout(), read_stderr(), write_prompt())
            returncode = await process.wait()
        finally:
            for helper in (watcher, returner, reaper):
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            _kill_group(process)  # stragglers the CLI left in its group
            self._running.pop(plan.name, None)
            view.pid = None
            return_logins()
        outcome = adapter.classify_exit(None if timed_out else returncode, stdout, stderr)
        if rate_limited and outcome.kind is not OutcomeKind.RATE_LIMITED:
            outcome = RunOutcome(
                kind=OutcomeKind.RATE_LIMITED,
                reason="model rate limit seen on stderr; stopped the CLI",
                returncode=returncode,
            )
        rate_limited = rate_limited or outcome.kind is OutcomeKind.RATE_LIMITED
        usage = adapter.parse_usage(stdout)
        if usage is not None:
            view.tokens += usage.total_tokens
            self._note(plan.name, f"usage: {json.dumps(usage.model_dump())}")
        return RunResult(outcome, usage, rate_limited, stopped, time.monotonic() - started)

    async def _heartbeats(self, worker: BrokerClient) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            with contextlib.suppress(BrokerCallError, BrokerUnreachable):
                await worker.update_heartbeat()

    # --- waiting ----------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=max(0.0, seconds))

    async def _until_stopped_or_cooled(self, cli: str, call: Awaitable[T]) -> T | None:
        """Await ``call`` unless a stop or a cool-down of ``cli`` comes first (then cancel it, None)."""
        work = asyncio.ensure_future(call)
        stop = asyncio.create_task(self._stopping.wait())
        cooled = asyncio.create_task(self.cool_downs.changed.wait())
        try:
            while True:
                await asyncio.wait({work, stop, cooled}, return_when=asyncio.FIRST_COMPLETED)
                if work.done():
                    return work.result()
                if stop.done():
                    return None
                if self.cool_downs.remaining(cli) > 0:
                    return None
                cooled = asyncio.create_task(self.cool_downs.changed.wait())
        finally:
            for pending in (work, stop, cooled):
                if not pending.done():
                    pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work


def _kill_group(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the CLI's whole process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _existing_dir(path: str | None) -> Path | None:
    """``path`` as a directory if it exists, else None (the launch directory is used)."""
    return Path(path) if path and Path(path).is_dir() else None


def _short(text: str, limit: int = 120) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
