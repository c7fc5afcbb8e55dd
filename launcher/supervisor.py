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
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal, TypeVar

from aiswarm_server.client import BrokerCallError, BrokerClient, BrokerUnreachable
from aiswarm_server.models import Task
from launcher.adapters import get_adapter
from launcher.adapters.base import AgentSpec, CliAdapter, ModelEndpoint, OutcomeKind, RunOutcome, TokenUsage
from launcher.personas import Persona

log = logging.getLogger("aiswarm.launcher")

Mode = Literal["per-task", "session"]
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
    lines = []
    if persona is not None:
        lines += [f"# Your role: {persona.name}", persona.instructions.strip(), ""]
    lines += [
        f"You are aiswarm worker agent {agent}. Task {task_id} is reserved for you on the aiswarm broker.",
        f"1. Call claim_task with task_id {task_id}. It returns the task (title, prompt, working_dir) "
        "and the fence_token you hold it with.",
        "2. Do what the task's prompt asks, working in its working_dir (use absolute paths under it).",
        f"3. Call report_task_completion with task_id {task_id}, that fence_token, success true or false, "
        "and a short result (or the error when you could not do it).",
        "Then stop: do not look for other work.",
    ]
    return "\n".join(lines)


def session_prompt(agent: str, persona: Persona | None) -> str:
    """The prompt for session mode: the CLI loops on the broker itself (the AISwarm ADR pattern)."""
    lines = []
    if persona is not None:
        lines += [f"# Your role: {persona.name}", persona.instructions.strip(), ""]
    lines += [
        f"You are aiswarm worker agent {agent}. Work in a loop:",
        "call wait_for_next_event (pass back the cursor it returns every time, timeout_seconds 240);",
        "on a task_available event call claim_task with its task_id, do what the task's prompt asks in its "
        "working_dir, then call report_task_completion with the task_id, the fence_token, success and a result;",
        "then wait again. Stop after 50 idle waits.",
    ]
    return "\n".join(lines)


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
        for plan in self.config.agents:
            self.views[plan.name] = AgentView(
                plan.name, plan.cli, plan.persona.name if plan.persona else None
            )
        (self.config.home / "logs").mkdir(parents=True, exist_ok=True)

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
        """Issue tokens, then run every agent's loop until :meth:`stop` (or every loop ends)."""
        async with BrokerClient(self.config.broker_url, self.config.admin_token) as admin:
            tokens = {p.name: (await admin.issue_agent_token(p.name)).token for p in self.config.agents}
            loops = [asyncio.create_task(self._agent(p, tokens[p.name], admin)) for p in self.config.agents]
            try:
                await asyncio.gather(*loops)
            finally:
                for loop in loops:
                    loop.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
                for process in list(self._running.values()):
                    _kill_group(process)

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
        while not self.stopping:
            try:
                async with BrokerClient(self.config.broker_url, token) as worker:
                    if self.config.mode == "session":
                        await self._session_loop(plan, spec, adapter, worker, admin, view)
                    else:
                        await self._per_task_loop(plan, spec, adapter, worker, admin, view)
                    break
            except (BrokerUnreachable, BrokerCallError, OSError) as error:
                view.failures += 1
                view.last_error = _short(str(error))
                delay = backoff_delay(self.config.backoff_seconds, view.failures)
                self._note(plan.name, f"broker error: {error}; retrying in {delay:.0f}s")
                view.state = AgentState.BACKOFF
                await self._sleep(delay)
        view.state = AgentState.STOPPED

    async def _per_task_loop(
        self,
        plan: AgentPlan,
        spec: AgentSpec,
        adapter: CliAdapter,
        worker: BrokerClient,
        admin: BrokerClient,
        view: AgentView,
    ) -> None:
        caps = plan.persona.capabilities if plan.persona else []
        registered = await worker.register_agent(
            cli=plan.cli, persona=spec.persona, capabilities=caps, pid=os.getpid()
        )
        cursor: str | None = registered.cursor
        held = (await worker.get_agent_status()).current_task
        if held is not None:  # a relaunch finds its agent still holding a task: carry on with it
            claim = await worker.claim_task(held.id)
            if claim.claimed and claim.task is not None and claim.fence_token is not None:
                await self._run_task(plan, spec, adapter, worker, admin, view, claim.task, claim.fence_token)
        while not self.stopping:
            if not await self._ready(plan, view):
                continue
            view.state = AgentState.IDLE
            reply = await self._until_stopped_or_cooled(
                plan.cli, worker.wait_for_next_event(cursor, WAIT_SECONDS)
            )
            if reply is None:
                continue  # stopped, or a cool-down started: the wait was abandoned (the offer lapses)
            cursor = reply.cursor
            for event in reply.events:
                if event.kind != "task_available" or event.task_id is None or self.stopping:
                    continue
                if self.cool_downs.remaining(plan.cli) > 0:
                    break
                claim = await worker.claim_task(event.task_id)
                if claim.claimed and claim.task is not None and claim.fence_token is not None:
                    await self._run_task(
                        plan, spec, adapter, worker, admin, view, claim.task, claim.fence_token
                    )
                    await self._backoff(plan, view)
                    break

    async def _ready(self, plan: AgentPlan, view: AgentView) -> bool:
        """Sit out a cool-down or a backoff; False when the loop should re-check (stop or more waiting)."""
        cooling = self.cool_downs.remaining(plan.cli)
        if cooling > 0:
            view.state = AgentState.COOLING
            view.cool_down_until = time.time() + cooling
            await self._sleep(cooling)
            return False
        view.cool_down_until = 0.0
        return not self.stopping

    async def _run_task(
        self,
        plan: AgentPlan,
        spec: AgentSpec,
        adapter: CliAdapter,
        worker: BrokerClient,
        admin: BrokerClient,
        view: AgentView,
        task: Task,
        fence: int,
    ) -> None:
        view.state, view.task_id = AgentState.RUNNING, task.id
        self._note(plan.name, f"task #{task.id} reserved (fence {fence}): {task.title}")
        timeout = self.config.task_timeout or float(task.timeout_seconds)
        workdir = _existing_dir(task.working_dir)
        prompt = task_prompt(plan.name, task.id, plan.persona)
        beat = asyncio.create_task(self._heartbeats(worker))
        try:
            result = await self._run_cli(plan, spec, adapter, view, prompt, workdir, timeout)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beat
        usage = result.usage
        tokens = f", {usage.total_tokens} tokens ({usage.requests or '?'} turns)" if usage else ""
        self._note(
            plan.name,
            f"task #{task.id} run ended: {result.outcome.kind.value} ({result.outcome.reason}) "
            f"after {result.seconds:.1f}s{tokens}",
        )
        still_held = await self._still_holds(worker, task.id)
        if still_held:
            if result.rate_limited or result.stopped:
                why = "rate limited" if result.rate_limited else "launcher stopping"
                await admin.release_task(
                    plan.name, task.id, f"{plan.name}: {why}; released without a failure"
                )
                self._note(plan.name, f"task #{task.id} released ({why})")
            else:
                data = {"usage": usage.model_dump()} if usage else None
                reason = f"{plan.name} ({plan.cli}): {result.outcome.reason}"
                with contextlib.suppress(BrokerCallError):
                    await worker.report_task_completion(
                        task.id, fence, success=False, error=reason, data=data, retryable=True
                    )
                self._note(plan.name, f"task #{task.id} reported failed: {reason}")
        self._after_run(plan, view, result, still_held)
        view.task_id = None

    async def _still_holds(self, worker: BrokerClient, task_id: int) -> bool:
        try:
            current = (await worker.get_agent_status()).current_task
        except BrokerCallError:
            return False
        return current is not None and current.id == task_id

    def _after_run(self, plan: AgentPlan, view: AgentView, result: RunResult, still_held: bool) -> None:
        """Book-keeping after a run: cool-down on a rate limit, backoff after failures, reset on success."""
        kind = result.outcome.kind
        if result.rate_limited:
            self.cool_downs.start(plan.cli, self.config.cool_down_seconds)
            view.last_error = _short(result.outcome.reason)
            self._note(
                plan.name,
                f"rate limited: every {plan.cli} agent cools down for {self.config.cool_down_seconds:.0f}s",
            )
        elif kind in (OutcomeKind.DONE,) and not still_held:
            view.failures = 0
        elif not result.stopped:
            view.failures += 1
            view.last_error = _short(result.outcome.reason)

    async def _backoff(self, plan: AgentPlan, view: AgentView) -> None:
        delay = backoff_delay(self.config.backoff_seconds, view.failures)
        if delay > 0 and not self.stopping:
            view.state = AgentState.BACKOFF
            self._note(plan.name, f"backing off {delay:.0f}s after {view.failures} failed run(s)")
            await self._sleep(delay)

    async def _session_loop(
        self,
        plan: AgentPlan,
        spec: AgentSpec,
        adapter: CliAdapter,
        worker: BrokerClient,
        admin: BrokerClient,
        view: AgentView,
    ) -> None:
        caps = plan.persona.capabilities if plan.persona else []
        await worker.register_agent(cli=plan.cli, persona=spec.persona, capabilities=caps, pid=os.getpid())
        while not self.stopping:
            if not await self._ready(plan, view):
                continue
            view.state = AgentState.RUNNING
            result = await self._run_cli(
                plan, spec, adapter, view, session_prompt(plan.name, plan.persona), None, None
            )
            self._note(plan.name, f"session ended: {result.outcome.kind.value} ({result.outcome.reason})")
            held = (await worker.get_agent_status()).current_task
            if held is not None:
                await admin.release_task(plan.name, held.id, f"{plan.name}: session ended; released")
            self._after_run(plan, view, result, held is not None)
            if result.outcome.kind is not OutcomeKind.DONE or result.seconds < 5:
                view.failures = max(view.failures, 1)
            await self._backoff(plan, view)

    # --- the CLI process --------------------------------------------------------------------

    async def _run_cli(
        self,
        plan: AgentPlan,
        spec: AgentSpec,
        adapter: CliAdapter,
        view: AgentView,
        prompt: str,
        workdir: Path | None,
        limit_seconds: float | None,
    ) -> RunResult:
        home = adapter.prepare_agent_home(spec)
        argv = adapter.command(home, prompt)
        env = adapter.env(home, base_env=self.config.base_env)
        started = time.monotonic()
        view.runs += 1
        self._note(plan.name, f"run {view.runs}: starting {plan.cli} in {workdir or self.config.workdir}")
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(workdir or self.config.workdir),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
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

        watcher = asyncio.create_task(watch())
        try:
            stdout, stderr = await asyncio.gather(read_stdout(), read_stderr())
            returncode = await process.wait()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            _kill_group(process)  # stragglers the CLI left in its group
            self._running.pop(plan.name, None)
            view.pid = None
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
