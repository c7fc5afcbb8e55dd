"""Worker agents for the benchmark: many parked ``wait_for_next_event`` calls over raw connections.

A fleet is split over a few subprocesses (``python -m aiswarm_server.bench.fleet``), each holding hundreds of
agents on one asyncio loop, one raw HTTP connection per agent (and, speaking 2025-11-25, its session's standalone
GET stream on a second one, as gemini-cli and qwen-code hold). The orchestrator drives them with JSON lines on
stdin and reads JSON lines from stdout; every time stamp is ``time.monotonic()``, which is one system-wide
clock on Linux, so the orchestrator can subtract its own time stamps from the agents'.

Commands (stdin): ``connect`` (open a connection per agent and register), ``park`` (start every agent's loop),
``hold`` ``{"on": bool}`` (woken agents wait for ``release`` before claiming), ``release``, ``stop``.
Events (stdout): ``ready``, ``woke`` (agent, task, t), ``done`` (agent, task, fence, t), ``miss`` (a claim that
found nothing), ``error``, ``stopped``.

An agent's loop: wait -> on ``task_available`` report ``woke`` -> (unless held) claim -> complete -> wait again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from aiswarm_server.bench.processes import HOST, child_environment
from aiswarm_server.bench.rawmcp import PROTOCOL_VERSION, PROTOCOLS, McpCallError, Protocol, RawMcpConnection

WAIT_SECONDS = 240
CONNECT_BATCH = 100


@dataclass
class _Agent:
    name: str
    token: str
    connection: RawMcpConnection | None = None
    cursor: str | None = None
    loop: asyncio.Task[None] | None = None


class FleetProcess:
    """The subprocess side: runs the agents given to it and obeys the orchestrator's commands."""

    def __init__(
        self, port: int, agents: list[tuple[str, str]], out: TextIO, protocol: Protocol = PROTOCOL_VERSION
    ) -> None:
        self.port = port
        self.protocol: Protocol = protocol
        self.agents = [_Agent(name, token) for name, token in agents]
        self.out = out
        self.release = asyncio.Event()
        self.release.set()

    def emit(self, event: str, **fields: Any) -> None:
        self.out.write(json.dumps({"ev": event, **fields}) + "\n")
        self.out.flush()

    async def connect(self) -> None:
        async def one(agent: _Agent) -> None:
            agent.connection = await RawMcpConnection.open(HOST, self.port, agent.token, self.protocol)
            reply = await agent.connection.call_tool("register_agent", {"cli": "bench"})
            agent.cursor = reply["cursor"]

        for start in range(0, len(self.agents), CONNECT_BATCH):
            await asyncio.gather(*(one(a) for a in self.agents[start : start + CONNECT_BATCH]))
        self.emit("ready", n=len(self.agents))

    async def run_agent(self, agent: _Agent) -> None:
        connection = agent.connection
        assert connection is not None
        try:
            while True:
                reply = await connection.call_tool(
                    "wait_for_next_event", {"cursor": agent.cursor, "timeout_seconds": WAIT_SECONDS}
                )
                woke_at = time.monotonic()
                agent.cursor = reply["cursor"]
                offered = [e["task_id"] for e in reply["events"] if e["kind"] == "task_available"]
                if not offered:
                    continue
                self.emit("woke", agent=agent.name, task=offered[0], t=woke_at)
                await self.release.wait()
                claim = await connection.call_tool("claim_task", {})
                if not claim["claimed"]:
                    self.emit("miss", agent=agent.name)
                    continue
                task = claim["task"]["id"]
                fence = claim["fence_token"]
                await connection.call_tool(
                    "report_task_completion",
                    {"task_id": task, "fence_token": fence, "success": True, "result": "ok"},
                )
                self.emit("done", agent=agent.name, task=task, fence=fence, t=time.monotonic())
        except asyncio.CancelledError:
            raise
        except (McpCallError, OSError, asyncio.IncompleteReadError, ValueError, KeyError) as error:
            self.emit("error", agent=agent.name, error=f"{type(error).__name__}: {error}"[:300])

    def park(self) -> None:
        for agent in self.agents:
            if agent.loop is None or agent.loop.done():
                agent.loop = asyncio.create_task(self.run_agent(agent))

    async def stop(self) -> None:
        loops = [a.loop for a in self.agents if a.loop is not None]
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await asyncio.gather(
            *(a.connection.close() for a in self.agents if a.connection is not None), return_exceptions=True
        )
        self.emit("stopped")

    async def serve(self) -> None:
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:  # the orchestrator went away: stop by ourselves
                await self.stop()
                return
            command = json.loads(line)
            match command["cmd"]:
                case "connect":
                    await self.connect()
                case "park":
                    self.park()
                case "hold":
                    if command["on"]:
                        self.release.clear()
                    else:
                        self.release.set()
                case "release":
                    self.release.set()
                case "stop":
                    await self.stop()
                    return


@dataclass
class FleetEvents:
    """What the orchestrator learned from the fleet, plus hooks to be told of each wake-up and completion."""

    woke: list[dict[str, Any]] = field(default_factory=list)
    done: list[dict[str, Any]] = field(default_factory=list)
    misses: int = 0
    errors: list[str] = field(default_factory=list)
    on_woke: Callable[[dict[str, Any]], None] | None = None
    on_done: Callable[[dict[str, Any]], None] | None = None


class Fleet:
    """The orchestrator side: ``async with Fleet(port, agents, processes) as fleet`` starts and always stops it."""

    def __init__(
        self, port: int, agents: list[tuple[str, str]], processes: int, protocol: Protocol = PROTOCOL_VERSION
    ) -> None:
        self.port = port
        self.protocol: Protocol = protocol
        count = max(1, min(processes, len(agents)))
        self.shares = [agents[i::count] for i in range(count)]
        self.procs: list[asyncio.subprocess.Process] = []
        self.readers: list[asyncio.Task[None]] = []
        self.events = FleetEvents()
        self._ready = 0
        self._stopped = 0
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Fleet:
        try:
            for share in self.shares:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "aiswarm_server.bench.fleet",
                    "--port",
                    str(self.port),
                    "--protocol",
                    self.protocol,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    env=child_environment(extra={"AISWARM_BENCH_AGENTS": json.dumps(share)}),
                    limit=1 << 22,
                )
                self.procs.append(proc)
                self.readers.append(asyncio.create_task(self._read(proc)))
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.send({"cmd": "stop"})
            await self._until(lambda: self._stopped >= len(self.procs), 30)
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 10)
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            event: dict[str, Any] = json.loads(line)
            kind = event["ev"]
            if kind == "woke":
                self.events.woke.append(event)
                if self.events.on_woke is not None:
                    self.events.on_woke(event)
            elif kind == "done":
                self.events.done.append(event)
                if self.events.on_done is not None:
                    self.events.on_done(event)
            elif kind == "miss":
                self.events.misses += 1
            elif kind == "error":
                self.events.errors.append(f"{event['agent']}: {event['error']}")
            elif kind == "ready":
                self._ready += 1
            elif kind == "stopped":
                self._stopped += 1
            self._changed.set()
        self._stopped = max(self._stopped, sum(1 for p in self.procs if p.returncode is not None))
        self._changed.set()

    async def _until(self, condition: Callable[[], bool], within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
        return True

    async def send(self, command: dict[str, Any]) -> None:
        line = (json.dumps(command) + "\n").encode()
        for proc in self.procs:
            if proc.stdin is not None and proc.returncode is None:
                proc.stdin.write(line)
                await proc.stdin.drain()

    async def connect(self, timeout_s: float = 300) -> None:
        """Open every agent's connection and register it."""
        await self.send({"cmd": "connect"})
        if not await self._until(lambda: self._ready >= len(self.procs), timeout_s):
            raise RuntimeError(f"fleet did not connect in {timeout_s} s; errors: {self.events.errors[:3]}")

    async def park(self) -> None:
        await self.send({"cmd": "park"})

    async def hold(self, on: bool) -> None:
        await self.send({"cmd": "hold", "on": on})

    async def wait_for(self, condition: Callable[[], bool], within_s: float) -> bool:
        """Wait until ``condition()`` holds (re-checked on every fleet event); False after ``within_s``."""
        return await self._until(condition, within_s)


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description="benchmark worker agents (driven by aiswarm_server.bench)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOL_VERSION)
    args = parser.parse_args()
    agents = [(str(a), str(t)) for a, t in json.loads(os.environ["AISWARM_BENCH_AGENTS"])]
    asyncio.run(FleetProcess(args.port, agents, sys.stdout, args.protocol).serve())


if __name__ == "__main__":
    main()
