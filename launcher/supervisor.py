"""The launcher's supervisor: one asyncio loop per agent, each driving an unmodified agent CLI.

Per-task mode (the default) keeps the model out of the waiting: the loop waits on the broker as
its agent, reserves a task with ``claim_task`` as soon as one is offered, and only then starts the
CLI headless with a prompt to claim that task (the broker hands back the held claim with the same
fence), do it and report. While the CLI runs (:mod:`launcher.cli_run`) the supervisor renews the
lease; when it exits, :func:`launcher.decisions.decide` says what becomes of a task the agent still
holds (reported failed, or released without burning an attempt) and how the agent is paced.

Session mode starts the CLI once with a prompt to loop on ``wait_for_next_event`` and restarts it
when it exits; the supervisor watches the task it holds (its deadline, its lease, its directory).

Before any work, a preflight checks each agent (:mod:`launcher.preflight`); a failure that is not the task's
fault opens a circuit for the provider or CLI (:mod:`launcher.circuits`); each agent's model traffic passes the
launcher's proxy (:mod:`launcher.model_proxy`), which sees a 429 or a refused key at once and counts requests
against quota pools (:mod:`launcher.quota`); every agent's state and every run's tokens go to the broker.

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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from aiswarm_server.broker_client import BrokerCallError, BrokerClient, BrokerUnreachable
from aiswarm_server.models import AgentState as BrokerAgentState
from aiswarm_server.models import AttemptOutcome, Task, UsageRecord
from aiswarm_server.replies import (
    AgentStateReply,
    ClaimedTask,
    ClaimReply,
    QuotaPoolsReply,
    TokenReply,
)
from launcher.adapters import get_adapter
from launcher.adapters.base import (
    AGENT_HEADER,
    CLI_HEADER,
    AgentHome,
    AgentSpec,
    CliAdapter,
    OutcomeKind,
    TokenUsage,
)
from launcher.agents import AgentNameLocks, AgentPlan, agent_capabilities, reserve_names
from launcher.changes import DeclaredFiles
from launcher.circuits import (
    DEFAULT_BREAKER_SECONDS,
    DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_PROBE_SECONDS,
    AgentBreaker,
    Circuits,
    cli_circuit,
    provider_circuit,
)
from launcher.cli_run import AgentLog, CliRun, Drain, RunPlace, RunResult
from launcher.cool_downs import CoolDowns, backoff_delay
from launcher.decisions import Pacing, TaskAction, TaskRun, decide
from launcher.isolation.attempt import MergeMode, TaskIsolation
from launcher.isolation.git import GitError
from launcher.isolation.hook import MergeHook
from launcher.isolation.worktrees import Worktrees
from launcher.model_proxy import ModelProxy
from launcher.preflight import cli_problems, credential_problem
from launcher.prompts import session_prompt, task_prompt
from launcher.providers import (
    ModelEndpoint,
    Provider,
    ProviderError,
    check_spoken,
    endpoint_provider,
    probe,
    public_base_url,
)
from launcher.quota import PoolState, QuotaPool
from launcher.warm_pool import WarmPool, WarmSpec

log = logging.getLogger("aiswarm.launcher")

Mode = Literal["per-task", "session"]
IsolationChoice = Literal["auto", "worktree", "none"]
T = TypeVar("T")

WAIT_SECONDS = 60
"""One broker wait; well inside every timeout, and the cursor differs each time."""
HEARTBEAT_SECONDS = 20.0
"""Lease renewal while a CLI works (the broker's lease is minutes long); also how often a refreshed login goes back."""
RESET_POLL_SECONDS = 2.0
"""While an agent's circuit is open, how often it looks for a reset the user asked for (``aiswarm agents reset``)."""
POOL_CHECK_SECONDS = 1.0
"""While an agent's quota pool is spent, how often it looks again (the clock may be a test's)."""
SESSION_POLL_SECONDS = 0.5
"""How often the supervisor looks at the task a session CLI holds (one local broker call)."""


class AgentState(StrEnum):
    """What an agent's loop is doing, for the status view."""

    STARTING = "starting"
    IDLE = "idle"
    RUNNING = "running"
    COOLING = "cooling down"
    CIRCUIT_OPEN = "circuit open"
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
    circuit: str = ""
    """Why the agent takes no work (an open circuit and its reason), or empty."""
    circuit_until: float = 0.0
    """Wall-clock time of the next probe (shared circuit) or half-open run (the agent's breaker)."""
    provider: str | None = None
    tokens: int = 0
    pid: int | None = None
    published: tuple[str, str] = ("", "")
    """The state and reason last recorded in the broker's agent record."""


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
    providers: dict[str, Provider] = field(default_factory=dict)
    """The providers of the config file, by name."""
    probe_seconds: float = DEFAULT_PROBE_SECONDS
    breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD
    breaker_seconds: float = DEFAULT_BREAKER_SECONDS
    clock: Callable[[], float] = time.time
    """Wall-clock time for quota pools (their day and minute windows)."""
    isolation: IsolationChoice = "auto"
    merge_mode: MergeMode = MergeMode.AUTO
    merge_hook: MergeHook | None = None
    """The command ``merge_mode`` hook runs for a completed task's branch (``merge_hook`` in config.toml)."""
    log_format: Literal["text", "json"] = "text"
    """json: each agent's log lines also go to logs/<agent>.jsonl with the task, attempt, fence and CLI."""
    warm_pool: bool = True
    """Per-task mode: start each agent's next CLI ahead of its task, for CLIs that allow it (launcher.warm_pool)."""

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

    def endpoint_for(self, cli: str, provider: str | None = None) -> ModelEndpoint | None:
        """The endpoint an agent of ``cli`` is pointed at: its provider's (the key read now from its source),
        else ``--model-endpoint`` (``.../v1`` for OpenAI-style CLIs, the bare host for gemini), else None (the
        CLI's own login). ProviderError (one line) when the provider is unknown, unusable or has no key."""
        if provider is not None:
            found = self.providers.get(provider)
            if found is None:
                known = ", ".join(sorted(self.providers)) or "none"
                raise ProviderError(f"no provider {provider!r} in the config file (known: {known})")
            check_spoken(cli, found)
            return found.endpoint(self.base_env)
        if not self.endpoint_url:
            return None
        return endpoint_provider(
            self.endpoint_url, cli, self.endpoint_api_key, self.model or self.endpoint_model
        )


@dataclass
class SessionWatch:
    """What the supervisor knows about the task a session CLI holds."""

    task_id: int | None = None
    since: float = 0.0
    limit: float = 0.0
    moved: int | None = None
    """The task the session was stopped for because it is in another directory or runs in its own worktree."""
    timed_out: int | None = None
    """The task the session was stopped for at its deadline."""


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
        self.circuits = Circuits(self.config.probe_seconds)
        self.breakers: dict[str, AgentBreaker] = {}
        self._preflight_done = False
        self._proxy: ModelProxy | None = None
        self._sessions: dict[str, SessionWatch] = {}
        self._agent_runs: dict[str, AgentRun] = {}
        self._admin: BrokerClient | None = None
        self._saving: set[asyncio.Task[None]] = set()
        self.pools: dict[str, QuotaPool] = {
            name: QuotaPool(name, p.requests_per_minute, p.requests_per_day, p.quota_resets_at)
            for name, p in self.config.providers.items()
            if (p.requests_per_minute or p.requests_per_day)
            and any(a.provider == name for a in self.config.agents)
        }
        """The quota pools of this launch's providers, by provider name."""
        self._names = AgentNameLocks(self.config.home)
        self._reserved = False
        self._in_flight: set[int] = set()
        self.isolation = TaskIsolation(
            Worktrees(self.config.home),
            isolate_by_default=self.config.isolates_by_default,
            merge_mode=self.config.merge_mode,
            hook=self.config.merge_hook,
            note=self._note,
        )
        self.warm_pool = (
            WarmPool(note=self._note) if self.config.warm_pool and self.config.mode == "per-task" else None
        )
        """Each agent's next CLI, started ahead of its task (None: every run starts cold)."""
        self.tokens: dict[str, str] = {}
        self._task_of: dict[str, tuple[int, int]] = {}  # agent -> (task id, fence) of the task it runs
        """The token issued to each agent by this launch (every earlier one is revoked)."""
        self._make_views()
        (self.config.home / "logs").mkdir(parents=True, exist_ok=True)

    def _make_views(self) -> None:
        self.views.clear()
        for plan in self.config.agents:
            self.views[plan.name] = AgentView(
                plan.name, plan.cli, plan.persona.name if plan.persona else None, provider=plan.provider
            )
            self.breakers[plan.name] = AgentBreaker(
                self.config.breaker_threshold, self.config.breaker_seconds
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
        if self.warm_pool is not None:
            self.warm_pool.close()

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for."""
        return self._drain.stopping.is_set()

    def preflight(self) -> dict[str, list[str]]:
        """Check, before any work is taken, that each agent's CLI runs and its credentials are there.

        Returns the problems by agent (one line each; agents that can work are absent). Each problem opens the
        circuit of the CLI or provider at fault, so those agents take no work until a probe passes. Called by
        :meth:`run` if not before; ``aiswarm launch`` calls it first to print the problems.
        """
        env = self._env()
        by_cli = {
            cli: cli_problems(cli, self.config.home, env) for cli in {p.cli for p in self.config.agents}
        }
        problems: dict[str, list[str]] = {}
        for plan in self.config.agents:
            found = [(cli_circuit(plan.cli), line) for line in by_cli[plan.cli]]
            if not found:
                missing = self._credential_problem(plan, env)
                if missing is not None:
                    found.append((self._auth_circuit(plan), missing))
            for circuit, line in found:
                self.circuits.open(circuit, line)
            if found:
                problems[plan.name] = [line for _, line in found]
        self._preflight_done = True
        return problems

    def _credential_problem(self, plan: AgentPlan, env: Mapping[str, str]) -> str | None:
        try:
            endpoint = self.config.endpoint_for(plan.cli, plan.provider)
        except ProviderError as error:
            return credential_problem(plan.cli, error, False, self._user_home(env), env)
        return credential_problem(plan.cli, None, endpoint is not None, self._user_home(env), env)

    def _env(self) -> Mapping[str, str]:
        return self.config.base_env if self.config.base_env is not None else os.environ

    @staticmethod
    def _user_home(env: Mapping[str, str]) -> Path:
        return Path(env["HOME"]) if env.get("HOME") else Path.home()

    @staticmethod
    def _auth_circuit(plan: AgentPlan) -> str:
        """The circuit a refused or missing credential opens: the provider's, else the CLI's (its login)."""
        return provider_circuit(plan.provider) if plan.provider else cli_circuit(plan.cli)

    @staticmethod
    def _cool_key(plan: AgentPlan) -> str:
        """What a rate limit cools down: the agents of the same provider (one key), else of the same CLI."""
        return provider_circuit(plan.provider) if plan.provider else plan.cli

    @staticmethod
    def _circuits_of(plan: AgentPlan) -> list[str]:
        return [cli_circuit(plan.cli), *([provider_circuit(plan.provider)] if plan.provider else [])]

    def _pool_blocked_until(self, plan: AgentPlan) -> float | None:
        """When the agent's quota pool has budget again (clock time), or None when it has some now."""
        pool = self.pools.get(plan.provider or "")
        return None if pool is None else pool.blocked_until(self.config.clock())

    def _spend(self, plan: AgentPlan) -> None:
        """Count one model request against the agent's pool and save the pool in the broker."""
        pool = self.pools.get(plan.provider or "")
        if pool is None:
            return
        pool.count(self.config.clock())
        if pool.blocked_until(self.config.clock()) is not None:
            self._note(plan.name, pool.describe(self.config.clock()))
        if self._admin is not None:
            save = asyncio.create_task(self._save_pool(self._admin, pool))
            self._saving.add(save)
            save.add_done_callback(self._saving.discard)

    @staticmethod
    async def _save_pool(admin: BrokerClient, pool: QuotaPool) -> None:
        with contextlib.suppress(BrokerCallError, BrokerUnreachable):
            await admin.call(
                "save_quota_pool", QuotaPoolsReply, name=pool.name, state=pool.state.model_dump()
            )

    async def run(self) -> None:
        """Reserve the names, run the preflight, replace each agent's tokens, then run every agent's loop
        until :meth:`stop`."""
        self.reserve_names()
        if not self._preflight_done:
            for name, lines in (await asyncio.to_thread(self.preflight)).items():
                for line in lines:
                    self._note(name, f"preflight: {line}")
        self._proxy = ModelProxy(self._model_refused, self._admit_model_request)
        await self._proxy.start()
        try:
            async with BrokerClient(self.config.broker_url, self.config.admin_token) as admin:
                self._admin = admin
                saved = (await admin.call("list_quota_pools", QuotaPoolsReply)).pools
                for name, pool in self.pools.items():
                    if name in saved:
                        pool.state = PoolState.model_validate(saved[name])
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
                    if self.warm_pool is not None:
                        await self.warm_pool.aclose()
                    await asyncio.gather(*self._saving, return_exceptions=True)
                    with contextlib.suppress(BrokerCallError, BrokerUnreachable, OSError):
                        await admin.mark_agents_offline([p.name for p in self.config.agents])
        finally:
            self._admin = None
            self._names.release()
            self._reserved = False
            await self._proxy.stop()

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
            endpoint=self._endpoint_or_none(plan),
            persona=plan.persona.name if plan.persona else None,
        )
        self._note(plan.name, f"agent {plan.name} ({plan.cli}) starting in {self.config.mode} mode")
        loop = self._session_loop if self.config.mode == "session" else self._per_task_loop
        while not self.stopping:
            try:
                async with BrokerClient(self.config.broker_url, token) as worker:
                    run = self._agent_runs[plan.name] = AgentRun(plan, spec, adapter, worker, admin, view)
                    await loop(run)
                    break
            except (BrokerUnreachable, BrokerCallError, OSError) as error:
                view.failures += 1
                view.last_error = _short(str(error))
                delay = backoff_delay(self.config.backoff_seconds, view.failures)
                self._note(plan.name, f"broker error: {error}; retrying in {delay:.0f}s")
                view.state = AgentState.BACKOFF
                await self._sleep(delay)
        view.state = AgentState.STOPPED

    def _endpoint_or_none(self, plan: AgentPlan) -> ModelEndpoint | None:
        """The agent's endpoint, routed through the model proxy; None when its key cannot be read (the
        preflight opened its circuit)."""
        try:
            endpoint = self.config.endpoint_for(plan.cli, plan.provider)
        except ProviderError:
            return None
        if endpoint is None or self._proxy is None:
            return endpoint
        upstream = urlsplit(endpoint.base_url or public_base_url(endpoint.kind))
        # The proxy routes by origin and the CLI keeps the provider's path (``/v1``...): a CLI that rewrites its base
        # URL (Claude Code drops ``/v1`` and appends ``/v1/messages``) then still reaches the provider's own path.
        origin = urlunsplit((upstream.scheme, upstream.netloc, "", "", ""))
        routed = self._proxy.route(plan.name, origin) + upstream.path.rstrip("/")
        return endpoint.model_copy(update={"base_url": routed})

    def _model_refused(self, agent: str, status: int, retry_after: float | None) -> None:
        """The model proxy saw the provider refuse ``agent``'s request: tell the agent's running CLI, if any."""
        cli_run = self._running.get(agent)
        if cli_run is not None:
            cli_run.model_refused(status, retry_after)

    async def _register(self, agent: AgentRun) -> str | None:
        """Register (or re-register) the agent with the broker; returns its event cursor."""
        caps = [
            *(agent.plan.persona.capabilities if agent.plan.persona else []),
            *agent_capabilities(agent.plan),
        ]
        registered = await agent.worker.register_agent(
            cli=agent.plan.cli, persona=agent.spec.persona, capabilities=caps, pid=os.getpid()
        )
        return registered.cursor

    async def _per_task_loop(self, agent: AgentRun) -> None:
        cursor = await self._register(agent)
        held = (await agent.worker.get_agent_status()).current_task
        if held is not None:  # a relaunch finds its agent still holding a task: carry on with it
            await self._run_claimed(agent, await agent.worker.claim_task(held.id))
        else:
            await self._warm_up(agent, None)
        while not self.stopping:
            if not await self._ready(agent):
                continue
            agent.view.state = AgentState.IDLE
            reply = await self._until_stopped_or_cooled(
                self._cool_key(agent.plan),
                agent.worker.wait_for_next_event(cursor, WAIT_SECONDS),
                self._circuits_of(agent.plan),
            )
            if reply is None:
                continue  # stopped, or a cool-down started: the wait was abandoned (the offer lapses)
            cursor = reply.cursor
            for event in reply.events:
                if event.kind != "task_available" or event.task_id is None or self.stopping:
                    continue
                if (
                    self.cool_downs.remaining(self._cool_key(agent.plan)) > 0
                    or self.circuits.blocking(self._circuits_of(agent.plan))
                    or self._pool_blocked_until(agent.plan) is not None
                ):
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
        """Sit out an open circuit, a cool-down or a backoff; False when the loop should re-check."""
        view = agent.view
        blocked = self.circuits.blocking(self._circuits_of(agent.plan))
        if blocked is not None:
            view.state, view.circuit = AgentState.CIRCUIT_OPEN, f"{blocked.name}: {blocked.reason}"
            view.circuit_until = time.time() + max(0.0, blocked.next_probe_at - time.monotonic())
            if await self._reset_asked(agent):
                self._close_circuit(blocked.name, "reset by the user")
                return False
            await self._publish(agent, BrokerAgentState.CIRCUIT_OPEN, view.circuit, view.circuit_until)
            if self.circuits.due(blocked.name):
                failure = await asyncio.to_thread(self._probe, agent.plan, blocked.name)
                if failure is None:
                    self._close_circuit(blocked.name, "the probe passed")
                else:
                    blocked.reason = failure
                    self._note(agent.name, f"circuit {blocked.name} stays open: {failure}")
                return False
            wait = min(RESET_POLL_SECONDS, max(0.0, blocked.next_probe_at - time.monotonic()))
            await self._sleep_or_change(wait)
            return False
        breaker = self.breakers[agent.name]
        if breaker.is_open:
            view.state, view.circuit = AgentState.CIRCUIT_OPEN, f"agent: {breaker.reason}"
            view.circuit_until = time.time() + breaker.remaining()
            await self._publish(agent, BrokerAgentState.CIRCUIT_OPEN, view.circuit, view.circuit_until)
            await self._sleep(breaker.remaining())
            return False
        view.circuit, view.circuit_until = "", 0.0
        if agent.spec.endpoint is None and (agent.plan.provider or self.config.endpoint_url):
            agent.spec = agent.spec.model_copy(update={"endpoint": self._endpoint_or_none(agent.plan)})
        pool = self.pools.get(agent.plan.provider or "")
        until = self._pool_blocked_until(agent.plan)
        if pool is not None and until is not None:
            view.state, view.cool_down_until = AgentState.COOLING, until
            await self._publish(agent, BrokerAgentState.COOLING, pool.describe(self.config.clock()), until)
            await self._sleep(min(POOL_CHECK_SECONDS, until - self.config.clock()))
            return False
        cooling = self.cool_downs.remaining(self._cool_key(agent.plan))
        if cooling > 0:
            view.state = AgentState.COOLING
            view.cool_down_until = time.time() + cooling
            await self._publish(agent, BrokerAgentState.COOLING, view.last_error, view.cool_down_until)
            await self._sleep(cooling)
            return False
        view.cool_down_until = 0.0
        await self._publish(agent, BrokerAgentState.NONE, "", None)
        return not self.stopping

    async def _publish(
        self, agent: AgentRun, state: BrokerAgentState, reason: str, until: float | None
    ) -> None:
        """Record the agent's state in its broker record (once per change), for `aiswarm agents` and status."""
        if agent.view.published == (state.value, reason):
            return
        with contextlib.suppress(BrokerCallError, BrokerUnreachable):
            await agent.admin.call(
                "report_agent_state",
                AgentStateReply,
                agents=[agent.name],
                state=state.value,
                reason=reason,
                until=until,
            )
            agent.view.published = (state.value, reason)

    async def _reset_asked(self, agent: AgentRun) -> bool:
        """True when the user reset this agent's circuit (``aiswarm agents reset``) since it was published."""
        if agent.view.published[0] != BrokerAgentState.CIRCUIT_OPEN.value:
            return False
        try:
            record = (await agent.worker.get_agent_status()).agent
        except (BrokerCallError, BrokerUnreachable):
            return False
        return record.state is BrokerAgentState.RESET

    async def _record_usage(
        self, agent: AgentRun, usage: TokenUsage, task_id: int | None, fence: int | None
    ) -> None:
        """Keep the run's tokens in the broker, on the task attempt it ran (the one holding ``fence``)."""
        attempt = None
        with contextlib.suppress(BrokerCallError, BrokerUnreachable):
            if task_id is not None:
                task = (await agent.admin.get_task(task_id)).task
                attempt = next((a.number for a in task.attempts if a.fence_token == fence), None)
            endpoint = agent.spec.endpoint
            record = UsageRecord(
                task_id=task_id,
                attempt=attempt,
                agent=agent.name,
                cli=agent.plan.cli,
                provider=agent.plan.provider or (endpoint.provider if endpoint else "cli-login"),
                model=agent.spec.model or (endpoint.model if endpoint else ""),
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached_tokens=usage.cached_tokens,
                total_tokens=usage.total_tokens,
                requests=usage.requests,
            )
            await agent.admin.record_usage(record)

    def _close_circuit(self, name: str, why: str) -> None:
        """Close a shared circuit and say so in the log of every agent behind it."""
        if self.circuits.close(name):
            for plan in self.config.agents:
                if name in self._circuits_of(plan):
                    self._note(plan.name, f"circuit {name} closed ({why}): taking work again")

    def _probe(self, plan: AgentPlan, circuit: str) -> str | None:
        """Probe an open circuit without spending a model request; None when it may close, else why not."""
        env = self._env()
        if circuit == cli_circuit(plan.cli):
            problems = cli_problems(plan.cli, self.config.home, env)
            if problems:
                return problems[0]
            if plan.provider:
                return None
        missing = self._credential_problem(plan, env)
        if missing is not None:
            return missing
        endpoint = self._endpoint_or_none(plan)
        if endpoint is None:
            return None  # the CLI's own login: found again; the next run tells whether it is accepted
        result = probe(endpoint, headers={AGENT_HEADER: plan.name, CLI_HEADER: plan.cli})
        return None if result.ok else result.detail

    async def _sleep_or_change(self, seconds: float) -> None:
        """Sleep, but wake at once on stop or when a circuit opens or closes."""
        changed = asyncio.create_task(self.circuits.changed.wait())
        stop = asyncio.create_task(self._drain.stopping.wait())
        try:
            await asyncio.wait(
                {changed, stop}, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            changed.cancel()
            stop.cancel()

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
        """Run the CLI on the reserved task in ``workdir`` (else the launch directory), then report the task from
        the CLI's final answer: completed, or failed; or release it when the run failed through no fault of the
        task. A task the CLI reported itself is left as it reported it."""
        name = agent.name
        timeout = self.config.task_timeout or float(task.timeout_seconds)
        cwd = (workdir or self.config.workdir).absolute()
        record = await self._task_record(agent, task.id)
        declared = await DeclaredFiles.watch(cwd, record.files) if record is not None else None
        prompt = task_prompt(name, task, fence, cwd, agent.plan.persona, _earlier_errors(task, record))
        result = await self._run_cli(agent, prompt, workdir, timeout)
        usage = result.usage
        if usage is not None:
            await self._record_usage(agent, usage, task.id, fence)
        tokens = f", {usage.total_tokens} tokens ({usage.requests or '?'} turns)" if usage else ""
        self._note(
            name,
            f"task #{task.id} run ended: {result.outcome.kind.value} ({result.outcome.reason}) "
            f"after {result.seconds:.1f}s{tokens}",
        )
        changed = await declared.changed() if declared is not None else None
        decision = decide(
            result, await self._still_holds(agent.worker, task.id), TaskRun(result.answer, changed)
        )
        data = {"usage": usage.model_dump()} if usage else None
        if decision.task is TaskAction.RELEASE:
            why = decision.why
            await agent.admin.release_task(name, task.id, f"{name}: {why}; released without a failure")
            self._note(name, f"task #{task.id} released ({why})")
        elif decision.task is TaskAction.COMPLETE:
            # Before isolation.finish: it lands the worktree of a task completed under this fence.
            try:
                await agent.worker.report_task_completion(
                    task.id, fence, success=True, result=result.answer.strip(), data=data
                )
            except BrokerCallError as error:
                self._note(name, f"task #{task.id} could not be reported completed: {error}")
            else:
                self._note(name, f"task #{task.id} reported completed: {_short(result.answer)}")
        elif decision.task is TaskAction.FAIL:
            reason = f"{name} ({agent.plan.cli}): {decision.why}"
            with contextlib.suppress(BrokerCallError):
                await agent.worker.report_task_completion(
                    task.id, fence, success=False, error=reason, data=data, retryable=True
                )
            self._note(name, f"task #{task.id} reported failed: {reason}")
        self._pace(agent, result, decision.pacing)

    async def _task_record(self, agent: AgentRun, task_id: int) -> Task | None:
        """The task as the broker keeps it (its declared files, its attempts), or None when it cannot be read."""
        try:
            return (await agent.admin.get_task(task_id)).task
        except (BrokerCallError, BrokerUnreachable):
            return None

    async def _still_holds(self, worker: BrokerClient, task_id: int) -> bool:
        try:
            current = (await worker.get_agent_status()).current_task
        except BrokerCallError:
            return False
        return current is not None and current.id == task_id

    def _pace(self, agent: AgentRun, result: RunResult, pacing: Pacing) -> None:
        """Apply a decision's pacing: a cool-down, an open circuit, a failure more (the breaker may open), or a
        fresh start."""
        view, plan = agent.view, agent.plan
        breaker = self.breakers[agent.name]
        if pacing is Pacing.COOL_DOWN and self._pool_blocked_until(plan) is not None:
            view.last_error = _short(result.outcome.reason)  # the spent pool holds its agents until it resets
        elif pacing is Pacing.COOL_DOWN:
            # The provider's Retry-After is honoured when longer than the configured cool-down (a daily reset).
            seconds = max(self.config.cool_down_seconds, result.retry_after or 0.0)
            self.cool_downs.start(self._cool_key(plan), seconds)
            view.last_error = _short(result.outcome.reason)
            sharing = f"{plan.provider} provider" if plan.provider else plan.cli
            self._note(agent.name, f"rate limited: every {sharing} agent cools down for {seconds:.0f}s")
        elif pacing is Pacing.OPEN_CIRCUIT:
            kind = result.outcome.kind
            circuit = self._auth_circuit(plan) if kind is OutcomeKind.AUTH_FAILURE else cli_circuit(plan.cli)
            self.circuits.open(circuit, _short(result.outcome.reason))
            view.last_error = _short(result.outcome.reason)
            self._note(
                agent.name,
                f"circuit {circuit} open: {result.outcome.reason}; probed every {self.config.probe_seconds:.0f}s "
                "or closed by `aiswarm agents reset`",
            )
        elif pacing is Pacing.RESET:
            view.failures = 0
            breaker.succeeded()
        elif pacing is Pacing.FAILURE:
            view.failures += 1
            view.last_error = _short(result.outcome.reason)
            if breaker.failed(view.last_error):
                self._note(
                    agent.name,
                    f"circuit open after {breaker.consecutive_failures} failed runs: one run again in "
                    f"{breaker.remaining():.0f}s",
                )

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
            session = SessionWatch()
            self._sessions[agent.name] = session
            watcher = asyncio.create_task(self._watch_session(agent, session))
            try:
                result = await self._run_cli(
                    agent, session_prompt(agent.name, agent.plan.persona), None, None
                )
            finally:
                self._sessions.pop(agent.name, None)
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher
            self._note(agent.name, f"session ended: {result.outcome.kind.value} ({result.outcome.reason})")
            if result.usage is not None:
                await self._record_usage(agent, result.usage, None, None)
            held = (await agent.worker.get_agent_status()).current_task
            if held is not None and held.id == session.moved:
                # The task is for another directory, or runs in its own worktree: the session is over, the task
                # runs there as in per-task mode.
                self._note(agent.name, f"task #{held.id} is in {held.working_dir}: running it there")
                await self._run_claimed(agent, await agent.worker.claim_task(held.id))
            elif held is not None and held.id == session.timed_out:
                reason = f"{agent.name} ({agent.plan.cli}): the task's {session.limit:.0f}s deadline passed"
                with contextlib.suppress(BrokerCallError):
                    await agent.worker.report_task_completion(
                        held.id, held.fence_token, success=False, error=reason, retryable=True
                    )
                self._note(agent.name, f"task #{held.id} reported failed: {reason}")
            elif held is not None:
                await agent.admin.release_task(agent.name, held.id, f"{agent.name}: session ended; released")
            if session.moved is None:
                self._pace(agent, result, decide(result, held is not None).pacing)
                if result.outcome.kind is not OutcomeKind.DONE or result.seconds < 5:
                    view.failures = max(view.failures, 1)
                await self._backoff(agent)

    async def _watch_session(self, agent: AgentRun, session: SessionWatch) -> None:
        """While a session CLI runs: find the task it holds, renew its lease, end the session at the task's
        deadline, and end it as soon as it holds a task for another directory (run then as in per-task mode)."""
        last_beat = time.monotonic()
        while True:
            await asyncio.sleep(SESSION_POLL_SECONDS)
            if await self._session_must_end(agent, session):
                return
            if session.task_id is not None and time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                last_beat = time.monotonic()
                with contextlib.suppress(BrokerCallError, BrokerUnreachable):
                    await agent.worker.update_heartbeat()

    async def _session_must_end(self, agent: AgentRun, session: SessionWatch) -> bool:
        """Look at the task the session holds; True (and the CLI stopped) when the session must end now."""
        try:
            held = (await agent.worker.get_agent_status()).current_task
        except (BrokerCallError, BrokerUnreachable):
            return False
        if held is None:
            session.task_id = None
            return False
        if held.id != session.task_id:
            session.task_id, session.since = held.id, time.monotonic()
            session.limit = self.config.task_timeout or float(held.timeout_seconds)
            agent.view.task_id = held.id
        if (
            held.working_dir and not _inside(self.config.workdir, held.working_dir)
        ) or self.isolation.wants_worktree(held):
            session.moved = held.id
        elif time.monotonic() - session.since >= session.limit:
            session.timed_out = held.id
        else:
            return False
        cli_run = self._running.get(agent.name)
        if cli_run is not None:
            cli_run.kill()
        return True

    async def _admit_model_request(self, agent: str, method: str) -> tuple[int, float | None] | None:
        """The model proxy asks before forwarding: None lets the request through (a POST is counted against
        the agent's quota pool); ``(status, Retry-After)`` answers it instead: 429 from a spent pool (the
        provider is not asked), 503 for a session CLI that just claimed a task for another directory (it would
        write outside its workspace; it is stopped instead)."""
        run = self._agent_runs.get(agent)
        if run is None:
            return None
        session = self._sessions.get(agent)
        if session is not None and (
            session.moved is not None
            or session.timed_out is not None
            or await self._session_must_end(run, session)
        ):
            return 503, None
        until = self._pool_blocked_until(run.plan)
        if until is not None:
            return 429, max(0.0, until - self.config.clock())
        if method == "POST":
            self._spend(run.plan)
        return None

    # --- the CLI process --------------------------------------------------------------------

    async def _run_cli(
        self, agent: AgentRun, prompt: str, workdir: Path | None, limit_seconds: float | None
    ) -> RunResult:
        """Run the agent's CLI once on ``prompt`` (in ``workdir``, else the launch directory) until it exits."""
        plan, view = agent.plan, agent.view
        home = agent.adapter.prepare_agent_home(agent.spec)
        place = self._place(agent, home, workdir)
        warm_spec = self._warm_spec(agent, home, place)
        warm = self.warm_pool.take(plan.name, warm_spec) if self.warm_pool and warm_spec else None
        log = self._log(plan.name)
        view.runs += 1
        log.note(f"run {view.runs}: starting {plan.cli} in {place.cwd}{' (warm)' if warm else ''}")
        cli_run = CliRun(
            agent.adapter,
            home,
            prompt,
            place,
            limit_seconds=limit_seconds,
            drain=self._drain,
            log=log,
            login_seconds=HEARTBEAT_SECONDS,
            warm=warm,
        )
        try:
            await cli_run.start()
        except OSError as error:
            return RunResult.not_started(plan.cli, agent.adapter.command(home, "")[0], error)
        self._running[plan.name] = cli_run
        view.pid = cli_run.pid
        try:
            result = await cli_run.wait()
        finally:
            self._running.pop(plan.name, None)
            view.pid = None
            cli_run.return_logins()  # once more, now that the CLI has exited
        await self._warm_up(agent, place.cwd)
        if result.usage is not None:
            view.tokens += result.usage.total_tokens
            log.note(f"usage: {json.dumps(result.usage.model_dump())}")
        return result

    def _place(self, agent: AgentRun, home: AgentHome, workdir: Path | None) -> RunPlace:
        """Where the agent's CLI runs: ``workdir`` (the task's), else the launch directory, with the adapter's env."""
        cwd = workdir or self.config.workdir
        env = agent.adapter.env(home, base_env=self.config.base_env)
        env["PWD"] = str(cwd)  # opencode takes its working directory from PWD, not from the process's cwd
        return RunPlace(cwd=cwd, env=env)

    def _warm_spec(self, agent: AgentRun, home: AgentHome, place: RunPlace) -> WarmSpec | None:
        """What a warm process must have been started with to serve a run at ``place`` (None: the CLI cannot)."""
        argv = agent.adapter.warm_command(home) if self.warm_pool is not None else None
        return None if argv is None else WarmSpec.of(argv, place.cwd, place.env, home.settings_path)

    async def _warm_up(self, agent: AgentRun, cwd: Path | None) -> None:
        """Start the agent's next CLI ahead of its task: in ``cwd`` (the last run's directory) unless it is gone
        or a task's worktree (never used twice), else in the launch directory."""
        if self.warm_pool is None or self.stopping:
            return
        if cwd is not None and cwd.is_relative_to(self.isolation.worktrees.root):
            cwd = None
        cwd = _existing_dir(str(cwd) if cwd else None)
        home = agent.adapter.prepare_agent_home(agent.spec)
        spec = self._warm_spec(agent, home, self._place(agent, home, cwd))
        if spec is not None:
            await self.warm_pool.start(agent.name, spec)

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

    async def _until_stopped_or_cooled(
        self, cool_key: str, call: Awaitable[T], circuits: list[str] | None = None
    ) -> T | None:
        """Await ``call`` unless a stop, a cool-down of ``cool_key`` or one of ``circuits`` opening comes first
        (then cancel it, None)."""
        work = asyncio.ensure_future(call)
        stop = asyncio.create_task(self._drain.stopping.wait())
        cooled = asyncio.create_task(self.cool_downs.changed.wait())
        tripped = asyncio.create_task(self.circuits.changed.wait())
        try:
            while True:
                await asyncio.wait({work, stop, cooled, tripped}, return_when=asyncio.FIRST_COMPLETED)
                if work.done():
                    return work.result()
                if stop.done():
                    return None
                if self.cool_downs.remaining(cool_key) > 0 or (circuits and self.circuits.blocking(circuits)):
                    return None
                if cooled.done():
                    cooled = asyncio.create_task(self.cool_downs.changed.wait())
                if tripped.done():
                    tripped = asyncio.create_task(self.circuits.changed.wait())
        finally:
            for pending in (work, stop, cooled, tripped):
                if not pending.done():
                    pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work


def _earlier_errors(task: ClaimedTask, record: Task | None) -> list[str]:
    """How earlier attempts at the task failed, one line each (the last error alone when the record is unknown)."""
    if record is None:
        return [task.error] if task.error and task.failures else []
    return [
        f"attempt {a.number} ({a.agent}, {a.outcome.value}): {a.error or 'no error recorded'}"
        for a in record.attempts
        if a.outcome in _FAILED_ATTEMPTS
    ]


_FAILED_ATTEMPTS = frozenset({AttemptOutcome.FAILED, AttemptOutcome.EXPIRED, AttemptOutcome.AGENT_LOST})


def _inside(directory: Path, path: str) -> bool:
    """Whether ``path`` (normalised, no file system access) is ``directory`` or below it."""
    return Path(os.path.normpath(path)).is_relative_to(directory)


def _existing_dir(path: str | None) -> Path | None:
    """``path`` as a directory if it exists, else None (the launch directory is used)."""
    return Path(path) if path and Path(path).is_dir() else None


def _short(text: str, limit: int = 120) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
