"""The warm pool: an agent's next CLI process started ahead of its task, already past its start-up.

gemini and qwen read their headless prompt from a piped stdin only once their start-up is done (settings, MCP
connections, tool registry: ``config.initialize()`` in both bundles), so a CLI started with its prompt-less argv
(:meth:`CliAdapter.warm_command`) parks in that read until a task arrives. Both give up on stdin 500 ms after they
begin to read unless a first chunk came, so :data:`PRIMER` (one newline, harmless at the head of a prompt) is
written at once. When a task arrives, :class:`launcher.cli_run.CliRun` adopts the process, writes the task's prompt
and closes stdin; from there on (stderr, rate-limit lines, deadline, drain, exit, usage, classification) a warm run
is a cold run. CLIs that read their input before their start-up (opencode, claude, codex) gain nothing and always
start cold.

A warm process has its argv, directory, environment and settings fixed at start, so one is used only for a run
whose :class:`WarmSpec` is equal; any other run, or a process that died or is older than ``max_age_seconds``,
kills it and starts cold. Each agent keeps at most one, for the directory of its last run (else the launch's):
tasks in a fresh per-task worktree never match and start cold. A stop kills every warm process at once; each also
dies with the launcher (``PR_SET_PDEATHSIG``), since one left alone would read end-of-file and send the bare primer
to the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

PRIMER = b"\n"
"""Written at once to a warm CLI's stdin: gemini and qwen stop waiting for piped input 500 ms after they begin to
read it unless a first chunk came; the task's prompt follows it."""
DEFAULT_MAX_AGE_SECONDS = 600.0
"""A warm process older than this is replaced before use: its broker session and login were made long ago."""
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WarmSpec:
    """Everything a CLI process fixes at its start: a warm one serves only a run with an equal spec."""

    argv: tuple[str, ...]
    cwd: Path
    env: tuple[tuple[str, str], ...]
    settings_digest: str
    """SHA-256 of the settings file the CLI read at its start (its MCP entry, token, endpoint, model)."""

    @classmethod
    def of(cls, argv: list[str], cwd: Path, env: Mapping[str, str], settings: Path | None) -> WarmSpec:
        """The spec of a run of ``argv`` in ``cwd`` with ``env``, reading the settings file ``settings``."""
        digest = ""
        if settings is not None:
            with contextlib.suppress(OSError):
                digest = hashlib.sha256(settings.read_bytes()).hexdigest()
        return cls(tuple(argv), cwd, tuple(sorted(env.items())), digest)


@dataclass
class WarmProcess:
    """One warm CLI process, parked in its read of stdin."""

    spec: WarmSpec
    process: asyncio.subprocess.Process
    started: float
    """``time.monotonic()`` at its start."""

    @property
    def alive(self) -> bool:
        """Whether the process has not exited."""
        return self.process.returncode is None

    def age(self) -> float:
        """Seconds since it was started."""
        return time.monotonic() - self.started


class WarmPool:
    """At most one warm CLI process per agent; :meth:`take` one for a run, :meth:`start` the next, :meth:`close`."""

    def __init__(
        self,
        *,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        note: Callable[[str, str], None] | None = None,
    ) -> None:
        self.max_age_seconds = max_age_seconds
        self._note = note or (lambda _agent, _message: None)
        self._entries: dict[str, WarmProcess] = {}
        self._reaping: set[asyncio.Task[None]] = set()
        self._closed = False
        self.hits = 0
        """Runs that were given a warm process."""
        self.misses = 0
        """Runs that started cold although the agent had a warm process (another directory, dead, stale)."""

    def pid(self, agent: str) -> int | None:
        """The process id of ``agent``'s warm process, if it has one."""
        entry = self._entries.get(agent)
        return entry.process.pid if entry is not None else None

    async def start(self, agent: str, spec: WarmSpec) -> bool:
        """Start a warm process for ``agent``'s next run (replacing the one it has); False when it cannot start
        (the pool is closed, the binary is missing: the next run starts cold and reports that)."""
        self.discard(agent)
        if self._closed:
            return False
        try:
            process = await asyncio.create_subprocess_exec(
                *spec.argv,
                cwd=str(spec.cwd),
                env=dict(spec.env),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group, killed whole like a cold run's
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except OSError as error:
            self._note(agent, f"warm pool: could not start {spec.argv[0]} ({error.strerror})")
            return False
        if self._closed:  # a stop came while it was starting
            self._kill(process)
            return False
        assert process.stdin is not None
        process.stdin.write(PRIMER)
        self._entries[agent] = WarmProcess(spec, process, time.monotonic())
        return True

    def take(self, agent: str, spec: WarmSpec) -> asyncio.subprocess.Process | None:
        """``agent``'s warm process if it serves ``spec`` (equal, alive, not stale), now the caller's to run;
        else None, and the warm process it had, if any, is killed."""
        entry = self._entries.pop(agent, None)
        if entry is None:
            return None
        why = self._unusable(entry, spec)
        if why is None:
            self.hits += 1
            return entry.process
        self.misses += 1
        self._note(agent, f"warm pool: starting cold, the warm {entry.spec.argv[0]} {why}")
        self._kill(entry.process)
        return None

    def discard(self, agent: str) -> None:
        """Kill ``agent``'s warm process, if it has one."""
        entry = self._entries.pop(agent, None)
        if entry is not None:
            self._kill(entry.process)

    def close(self) -> None:
        """Kill every warm process now; nothing is started any more (a stop)."""
        self._closed = True
        for agent in list(self._entries):
            self.discard(agent)

    async def aclose(self) -> None:
        """:meth:`close`, then wait until every killed process is reaped."""
        self.close()
        if self._reaping:
            await asyncio.wait(set(self._reaping), timeout=10)

    def _unusable(self, entry: WarmProcess, spec: WarmSpec) -> str | None:
        """Why ``entry`` cannot serve ``spec``, or None when it can."""
        if not entry.alive:
            return f"exited ({entry.process.returncode})"
        if entry.age() > self.max_age_seconds:
            return f"is stale ({entry.age():.0f}s old)"
        if entry.spec.cwd != spec.cwd:
            return f"is in {entry.spec.cwd}, not {spec.cwd}"
        if entry.spec != spec:
            return "has other arguments, environment or settings"
        return None

    def _kill(self, process: asyncio.subprocess.Process) -> None:
        """SIGKILL the process's group, and reap it in the background."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        try:
            reap = asyncio.get_running_loop().create_task(_reap(process))
        except RuntimeError:  # no loop (a stop from outside one): the kill is what matters
            return
        self._reaping.add(reap)
        reap.add_done_callback(self._reaping.discard)


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Wait for a killed process (its pipes close with it)."""
    with contextlib.suppress(Exception):
        await process.communicate()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL this process when the launcher's thread that started it exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
