"""Which agents a launch runs: stable names from the CLI mix, and a lock per name so two launches never share one."""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass, replace
from pathlib import Path

from launcher.adapters import get_adapter
from launcher.errors import LaunchError
from launcher.personas import Persona


@dataclass(frozen=True)
class AgentPlan:
    """One agent to run: a stable name (``qwen-1``), its CLI and optional persona."""

    name: str
    cli: str
    persona: Persona | None = None


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
