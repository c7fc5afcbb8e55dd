"""The launcher's supervisor: one asyncio loop per agent, each driving an unmodified agent CLI.

Per-task mode (the default) keeps the model out of the waiting: the loop waits on the broker as
its agent, reserves a task with ``claim_task`` as soon as one is offered, and only then starts the
CLI headless with a prompt to claim that task (the broker hands back the held claim with the same
fence), do it and report. While the CLI runs (:mod:`launcher.cli_run`) the supervisor renews the
lease; when it exits, :func:`launcher.decisions.decide` says what becomes of a task the agent still
holds (reported failed, or released without burning an attempt) and how the agent is paced.

Session mode starts the CLI once with a prompt to loop on ``wait_for_next_event`` and restarts it
when it exits.

Crashes back off exponentially; a rate limit cools down every agent of the same CLI (they share the
user's account) so the other CLIs take the work (:mod:`launcher.cool_downs`); Ctrl-C drains: running
CLIs get a grace period, then their process groups are killed and their tasks released.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from aiswarm_server.broker_client import BrokerCallError, BrokerClient, BrokerUnreachable
from aiswarm_server.replies import ClaimedTask, ClaimReply, TokenReply
from launcher.adapters import get_adapter
from launcher.adapters.base import AgentHome, AgentSpec, CliAdapter, ModelEndpoint, OutcomeKind
from launcher.agents import AgentNameLocks, AgentPlan, reserve_names
from launcher.cli_run import AgentLog, CliRun, Drain, RunPlace, RunResult
from launcher.cool_downs import CoolDowns, backoff_delay
from launcher.decisions import Pacing, TaskAction, decide
from launcher.isolation.attempt import MergeMode, TaskIsolation
from launcher.isolation.git import GitError
from launcher.isolation.worktrees import Worktrees
from launcher.prompts import session_prompt, task_prompt

log = logging.getLogger("aiswarm.launcher")

Mode = Literal["per-task", "session"]
IsolationChoice = Literal["auto", "worktree", "none"]
T = TypeVar("T")

WAIT_SECONDS = 60
"""One broker wait; well inside every timeout, and the cursor differs each time."""
HEARTBEAT_SECONDS = 20.0
"""Lease renewal while a CLI works (the broker's lease is minutes long); also how often a refreshed login goes back."""


class AgentState(StrEnum):
    """What an agent's loop is doing, for the status view."""

    STARTING = "starting"
    IDLE = "idle"
    RUNNING = "running"
    COOLING = "cooling down"
    BACKOFF = "backing off"
    STOPPING = "stopping"
    STOPPED = "stopped"


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
    log_format: Literal["text", "json"] = "text"
    """json: each agent's log lines also go to logs/<agent>.jsonl with the task, attempt, fence and CLI."""

    @property
    def provider(self) -> str:
        """Who serves the model, for the broker's usage metrics: the endpoint's host, or the CLIs' own login."""
        if not self.endpoint_url:
            return "login"
        return urlsplit(self.endpoint_url).netloc or "endpoint"

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
class Supervisor:
    """Runs every agent's loop until stopped; ``views`` is the live state for the status view."""

    config: LaunchConfig
    views: dict[str, AgentView] = field(default_factory=dict)
    cool_downs: CoolDowns = field(default_factory=CoolDowns)

    def __post_init__(self) -> None:
        self._drain = Drain(asyncio.Event(), asyncio.Event(), self.config.grace_seconds)
        self._running: dict[str, CliRun] = {}
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
        self._task_of: dict[str, tuple[int, int]] = {}  # agent -> (task id, fence) of the task it runs
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
        if self._drain.stopping.is_set():
            self._drain.killed.set()  # a second Ctrl-C: do not wait out the grace period
        self._drain.stopping.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for."""
        return self._drain.stopping.is_set()

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
                    for cli_run in list(self._running.values()):
                        cli_run.kill()
                    with contextlib.suppress(BrokerCallError, BrokerUnreachable, OSError):
                        await admin.mark_agents_offline([p.name for p in self.config.agents])
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

    def _log(self, name: str) -> AgentLog:
        task_id, fence = self._task_of.get(name, (None, None))
        json_lines = self.config.log_format == "json"
        return AgentLog(self.agent_log(name), self.views[name].cli, json_lines, task_id, fence)

    def _note(self, name: str, message: str) -> None:
        self._log(name).note(message)

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
        """Run the reserved task, every note of the agent's meanwhile tagged with it."""
        name, view = agent.name, agent.view
        view.state, view.task_id = AgentState.RUNNING, task.id
        self._task_of[name] = (task.id, fence)  # every note until the end of this run is about the task
        try:
            await self._run_task_held(agent, task, fence)
        finally:
            self._task_of.pop(name, None)

    async def _run_task_held(self, agent: AgentRun, task: ClaimedTask, fence: int) -> None:
        """Prepare the attempt's workspace, run the CLI on the task there, then land or discard the work."""
        name = agent.name
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
        if usage is not None:
            with contextlib.suppress(BrokerCallError, BrokerUnreachable, OSError):
                await agent.admin.record_model_usage(
                    agent=name, cli=agent.plan.cli, provider=self.config.provider, task_id=task.id,
                    requests=usage.requests or 0, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                )  # fmt: skip
        self._note(
            name,
            f"task #{task.id} run ended: {result.outcome.kind.value} ({result.outcome.reason}) "
            f"after {result.seconds:.1f}s{tokens}",
        )
        decision = decide(result, await self._still_holds(agent.worker, task.id))
        if decision.task is TaskAction.RELEASE:
            why = decision.why
            await agent.admin.release_task(name, task.id, f"{name}: {why}; released without a failure")
            self._note(name, f"task #{task.id} released ({why})")
        elif decision.task is TaskAction.FAIL:
            data = {"usage": usage.model_dump()} if usage else None
            reason = f"{name} ({agent.plan.cli}): {decision.why}"
            with contextlib.suppress(BrokerCallError):
                await agent.worker.report_task_completion(
                    task.id, fence, success=False, error=reason, data=data, retryable=True
                )
            self._note(name, f"task #{task.id} reported failed: {reason}")
        self._pace(agent, result, decision.pacing)

    async def _still_holds(self, worker: BrokerClient, task_id: int) -> bool:
        try:
            current = (await worker.get_agent_status()).current_task
        except BrokerCallError:
            return False
        return current is not None and current.id == task_id

    def _pace(self, agent: AgentRun, result: RunResult, pacing: Pacing) -> None:
        """Apply a decision's pacing: a cool-down of the CLI, a failure more, or a fresh start."""
        view, cli = agent.view, agent.plan.cli
        if pacing is Pacing.COOL_DOWN:
            self.cool_downs.start(cli, self.config.cool_down_seconds)
            view.last_error = _short(result.outcome.reason)
            self._note(
                agent.name,
                f"rate limited: every {cli} agent cools down for {self.config.cool_down_seconds:.0f}s",
            )
        elif pacing is Pacing.RESET:
            view.failures = 0
        elif pacing is Pacing.FAILURE:
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
            self._pace(agent, result, decide(result, held is not None).pacing)
            if result.outcome.kind is not OutcomeKind.DONE or result.seconds < 5:
                view.failures = max(view.failures, 1)
            await self._backoff(agent)

    # --- the CLI process --------------------------------------------------------------------

    async def _run_cli(
        self, agent: AgentRun, prompt: str, workdir: Path | None, limit_seconds: float | None
    ) -> RunResult:
        """Run the agent's CLI once on ``prompt`` (in ``workdir``, else the launch directory) until it exits."""
        plan, view = agent.plan, agent.view
        home = agent.adapter.prepare_agent_home(agent.spec)
        place = self._place(agent, home, workdir)
        log = self._log(plan.name)
        view.runs += 1
        log.note(f"run {view.runs}: starting {plan.cli} in {place.cwd}")
        cli_run = CliRun(
            agent.adapter,
            home,
            prompt,
            place,
            limit_seconds=limit_seconds,
            drain=self._drain,
            log=log,
            login_seconds=HEARTBEAT_SECONDS,
        )
        await cli_run.start()
        self._running[plan.name] = cli_run
        view.pid = cli_run.pid
        try:
            result = await cli_run.wait()
        finally:
            self._running.pop(plan.name, None)
            view.pid = None
            cli_run.return_logins()  # once more, now that the CLI has exited
        if result.usage is not None:
            view.tokens += result.usage.total_tokens
            log.note(f"usage: {json.dumps(result.usage.model_dump())}")
        return result

    def _place(self, agent: AgentRun, home: AgentHome, workdir: Path | None) -> RunPlace:
        """Where the agent's CLI runs: ``workdir`` (the task's), else the launch directory, with the adapter's env."""
        return RunPlace(
            cwd=workdir or self.config.workdir, env=agent.adapter.env(home, base_env=self.config.base_env)
        )

    async def _heartbeats(self, worker: BrokerClient) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            with contextlib.suppress(BrokerCallError, BrokerUnreachable):
                await worker.update_heartbeat()

    # --- waiting ----------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain.stopping.wait(), timeout=max(0.0, seconds))

    async def _until_stopped_or_cooled(self, cli: str, call: Awaitable[T]) -> T | None:
        """Await ``call`` unless a stop or a cool-down of ``cli`` comes first (then cancel it, None)."""
        work = asyncio.ensure_future(call)
        stop = asyncio.create_task(self._drain.stopping.wait())
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


def _existing_dir(path: str | None) -> Path | None:
    """``path`` as a directory if it exists, else None (the launch directory is used)."""
    return Path(path) if path and Path(path).is_dir() else None


def _short(text: str, limit: int = 120) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
