"""One run of an agent CLI: started headless in its own process group, watched until it exits, then classified.

A :class:`CliRun` is given everything from outside: the adapter and the agent's prepared home, the prompt, the
:class:`RunPlace` (working directory and environment), a time limit and the launcher's :class:`Drain`. While the
CLI runs it copies stderr to the agent's log and stops the CLI at the first rate-limit line, writes the prompt to
stdin (for CLIs that read it there), kills the CLI at its deadline, drains it on a stop (SIGTERM, then SIGKILL to
the whole group after the grace period) and carries a refreshed login back to the user now and then. A process of
the warm pool (:mod:`launcher.warm_pool`) is adopted instead of started, and is then run exactly like a cold one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from aiswarm_server.tasklog import JSON_LOG_SUFFIX, json_log_line
from launcher.adapters.base import AgentHome, CliAdapter, OutcomeKind, RunOutcome, TokenUsage


@dataclass(frozen=True)
class RunPlace:
    """Where a CLI run starts: its working directory and its whole environment."""

    cwd: Path
    env: dict[str, str]


@dataclass(frozen=True)
class Drain:
    """The launcher's stop: ``stopping`` gives running CLIs ``grace_seconds`` to exit; ``killed`` cuts that short."""

    stopping: asyncio.Event
    killed: asyncio.Event
    grace_seconds: float


@dataclass(frozen=True)
class AgentLog:
    """``$AISWARM_HOME/logs/<agent>.log``: the launcher's notes about the agent, and its ``cli``'s stderr.

    With ``json_lines`` each note also goes to ``<agent>.jsonl`` with the task and fence the agent is running.
    """

    path: Path
    cli: str
    json_lines: bool = False
    task_id: int | None = None
    fence: int | None = None

    def note(self, message: str) -> None:
        """Append ``message`` as one timestamped line (and one JSON line)."""
        now = time.time()
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))} {message}\n")
        if self.json_lines:
            agent = self.path.stem
            fields = {
                "task_id": self.task_id,
                "attempt": self.fence,
                "fence": self.fence,
                "agent": agent,
                "cli": self.cli,
            }
            with open(self.path.with_suffix(JSON_LOG_SUFFIX), "a", encoding="utf-8") as fh:
                fh.write(json_log_line(now, "info", agent, message, fields) + "\n")


@dataclass
class RunResult:
    """One finished CLI run."""

    outcome: RunOutcome
    usage: TokenUsage | None
    rate_limited: bool
    stopped: bool
    seconds: float
    retry_after: float | None = None
    """The provider's ``Retry-After`` on the 429 that stopped the run, when it sent one."""
    answer: str = ""
    """The model's final answer, from the CLI's output ("" when it gave none); a per-task run's result."""

    @classmethod
    def not_started(cls, cli: str, command: str, error: OSError) -> RunResult:
        """The CLI's binary could not be started (missing, not executable)."""
        reason = f"cannot run {command} ({error.strerror}): run `aiswarm install-cli {cli}`"
        return cls(
            RunOutcome(kind=OutcomeKind.BINARY_MISSING, reason=reason, returncode=None),
            None,
            False,
            False,
            0.0,
        )


class CliRun:
    """One headless run of an agent CLI; :meth:`start` it, then :meth:`wait` for its :class:`RunResult`."""

    def __init__(
        self,
        adapter: CliAdapter,
        home: AgentHome,
        prompt: str,
        place: RunPlace,
        *,
        limit_seconds: float | None,
        drain: Drain,
        log: AgentLog,
        login_seconds: float,
        warm: asyncio.subprocess.Process | None = None,
    ) -> None:
        self.adapter = adapter
        self.home = home
        self.prompt = prompt
        self.place = place
        self.limit_seconds = limit_seconds
        self.drain = drain
        self.log = log
        self.login_seconds = login_seconds
        """How often a refreshed login is carried back while the CLI runs."""
        self.rate_limited = False
        self.retry_after: float | None = None
        self.refused_key: int | None = None
        """The HTTP status (401, 403) with which the provider refused the key, seen in the model traffic."""
        self.stopped = False
        self.timed_out = False
        self._killed = asyncio.Event()
        self._started = 0.0
        self._process: asyncio.subprocess.Process | None = None
        self._warm = warm
        """A process of the warm pool, already past its start-up and waiting for the prompt on stdin."""

    @property
    def pid(self) -> int | None:
        """The CLI's process id (its process group's too) once started."""
        return self._process.pid if self._process is not None else None

    @property
    def warm(self) -> bool:
        """Whether the run adopts a process the warm pool started (see :mod:`launcher.warm_pool`)."""
        return self._warm is not None

    async def start(self) -> None:
        """Start the CLI in its own session, so the whole tree it starts is killed together; a warm process
        (started the same way) is adopted instead, its deadline counted from now."""
        self._started = time.monotonic()
        if self._warm is not None:
            self._process = self._warm
            return
        self._process = await asyncio.create_subprocess_exec(
            *self.adapter.command(self.home, self.prompt),
            cwd=str(self.place.cwd),
            env=self.place.env,
            stdin=asyncio.subprocess.PIPE if self.adapter.prompt_on_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )

    async def wait(self) -> RunResult:
        """Feed and watch the CLI until it exits (killing what it left in its group); its classified result."""
        process = self._running()
        watcher = asyncio.create_task(self._watch())
        returner = asyncio.create_task(self._return_logins_while_running())
        reaper = asyncio.create_task(self._reap())
        try:
            stdout, stderr, _ = await asyncio.gather(
                self._read_stdout(), self._read_stderr(), self._write_prompt()
            )
            returncode = await process.wait()
        finally:
            for helper in (watcher, returner, reaper):
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            self._kill_group()  # stragglers the CLI left in its group
        return self._result(returncode, stdout, stderr)

    def kill(self) -> None:
        """SIGKILL the CLI's whole process group now."""
        self._killed.set()
        self._kill_group()

    def model_refused(self, status: int, retry_after: float | None) -> None:
        """The provider refused one of the CLI's requests (seen by the launcher's model proxy): stop the CLI now,
        since it would retry silently for a minute or more; its task is released."""
        if self._killed.is_set():
            return
        if status == 429:
            self.rate_limited, self.retry_after = True, retry_after
            self.log.note(f"the model answered 429 (Retry-After {retry_after}): stopping the CLI")
        else:
            self.refused_key = status
            self.log.note(f"the model refused the key (HTTP {status}): stopping the CLI")
        self.kill()

    def return_logins(self) -> None:
        """Carry a login the CLI refreshed back to the user's file (see ``CliAdapter.return_logins``)."""
        for returned in self.adapter.return_logins(self.home):
            self.log.note(f"carried the CLI's refreshed login back to {returned}")

    # --- while it runs -------------------------------------------------------------------

    async def _read_stderr(self) -> str:
        """Copy stderr to the agent's log; a rate-limit line stops the CLI (the task is released, not failed)."""
        stream = self._running().stderr
        assert stream is not None
        lines: list[str] = []
        # a local append per line: cheap enough to do on the loop
        with open(self.log.path, "a", encoding="utf-8") as fh:  # noqa: ASYNC230
            async for raw in stream:
                line = raw.decode("utf-8", "replace")
                lines.append(line)
                fh.write(f"  [{self.log.cli} stderr] {line.rstrip()}\n")
                fh.flush()
                if not self.rate_limited and self.adapter.detect_rate_limit_line(line):
                    self.rate_limited = True
                    self.kill()  # stop it retrying against a limited account
        return "".join(lines)

    async def _read_stdout(self) -> str:
        stream = self._running().stdout
        assert stream is not None
        return (await stream.read()).decode("utf-8", "replace")

    async def _write_prompt(self) -> None:
        stdin = self._running().stdin
        if stdin is None:
            return
        # written while stdout and stderr are read: a long prompt cannot fill a pipe nobody drains
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(self.prompt.encode("utf-8"))
            await stdin.drain()
        stdin.close()

    async def _watch(self) -> None:
        """Until the CLI exits: drain it on a stop, kill it at its deadline."""
        process = self._running()
        deadline = None if self.limit_seconds is None else self._started + self.limit_seconds
        while process.returncode is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            await _wait_for(self.drain.stopping, left)
            if process.returncode is not None or self._killed.is_set():
                return
            if self.drain.stopping.is_set():
                await self._drain()
                return
            if deadline is not None and time.monotonic() >= deadline:
                self.timed_out = True
                self.kill()
                return

    async def _reap(self) -> None:
        """Once the CLI's own process is gone (killed, crashed), kill its group too.

        qwen re-execs itself in a child that shares the pipes: left alive, it keeps them open and the reads
        would wait for it to finish the task on its own. asyncio's ``wait()`` only returns once the pipes close,
        so the exit is seen by polling ``returncode``.
        """
        process = self._running()
        while process.returncode is None:  # noqa: ASYNC110 - no event fires at the exit itself
            await asyncio.sleep(0.5)
        self._kill_group()

    async def _drain(self) -> None:
        """SIGTERM the CLI's group; SIGKILL it when it has not exited after the grace period (or a second stop)."""
        self.stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._running().pid, signal.SIGTERM)
        await _wait_for(self.drain.killed, self.drain.grace_seconds)
        if self._running().returncode is None:
            self.kill()

    async def _return_logins_while_running(self) -> None:
        while True:  # a long run (session mode) may refresh a rotating token other agents need
            await asyncio.sleep(self.login_seconds)
            self.return_logins()

    # --- after it exited -----------------------------------------------------------------

    def _result(self, returncode: int, stdout: str, stderr: str) -> RunResult:
        """The adapter's classification of the exit; a rate limit seen on stderr wins over it."""
        outcome = self.adapter.classify_exit(None if self.timed_out else returncode, stdout, stderr)
        if self.refused_key is not None:
            outcome = RunOutcome(
                kind=OutcomeKind.AUTH_FAILURE,
                reason=f"the provider refused the key (HTTP {self.refused_key})",
                returncode=returncode,
            )
        elif self.rate_limited and not outcome.kind.out_of_requests:
            outcome = RunOutcome(
                kind=OutcomeKind.RATE_LIMITED,
                reason="model rate limit seen on stderr; stopped the CLI",
                returncode=returncode,
            )
        return RunResult(
            outcome,
            self.adapter.parse_usage(stdout),
            rate_limited=self.rate_limited or outcome.kind.out_of_requests,
            stopped=self.stopped,
            seconds=time.monotonic() - self._started,
            retry_after=self.retry_after,
            answer=self.adapter.final_answer(stdout),
        )

    def _running(self) -> asyncio.subprocess.Process:
        if self._process is None:
            raise RuntimeError("the CLI run was not started")
        return self._process

    def _kill_group(self) -> None:
        """SIGKILL the CLI's whole process group (it leads its own session)."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)


async def _wait_for(event: asyncio.Event, seconds: float | None) -> None:
    """Wait until ``event`` is set or ``seconds`` pass (None: no limit), whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
