"""``aiswarm demo``: the whole swarm, offline, in about a minute, with no account.

A broker on a temporary home, the project's scripted model server standing in for the paid model, two real worker
CLIs (qwen-code and gemini-cli, installed into ``~/.aiswarm/clis`` on first use), and a small job on a sample folder:
three tasks in parallel and a fourth that depends on them. Progress is shown live; at the end the results and the
files are printed and everything is cleaned up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.home import ADMIN_TOKEN_FILE, PRIMARY_TOKEN_FILE
from aiswarm_server.models import Task
from launcher.adapters import get_adapter
from launcher.adapters.install import (
    PINNED_CLIS,
    InstallError,
    default_home,
    install_cli,
    node_major,
    node_path,
)
from launcher.agents import plan_agents
from launcher.scripted_model import ScriptedModelServer
from launcher.supervisor import LaunchConfig, Supervisor

SAMPLE_TASKS: list[dict[str, object]] = [
    {
        "key": "module",
        "title": "Write the greeting module",
        "persona": None,
        "prompt": (
            "WRITE greeting.py\n```\ndef greet(name: str) -> str:\n"
            '    """Say hello."""\n    return f"Hello, {name}!"\n```\n'
        ),
    },
    {
        "key": "tests",
        "title": "Write tests for the greeting module",
        "prompt": (
            "WRITE test_greeting.py\n```\nfrom greeting import greet\n\n\ndef test_greet() -> None:\n"
            '    assert greet("swarm") == "Hello, swarm!"\n```\n'
        ),
    },
    {
        "key": "docs",
        "title": "Document the project",
        "prompt": "WRITE NOTES.md\n```\n# Notes\n\n`greet(name)` returns a greeting.\n```\n",
    },
    {
        "title": "Summarise what the swarm did",
        "depends_on": ["module", "tests", "docs"],
        "prompt": (
            "WRITE SUMMARY.md\n```\n# Summary\n\n- greeting.py: the module\n- test_greeting.py: its test\n"
            "- NOTES.md: the notes\n```\n"
        ),
    },
]


class DemoError(Exception):
    """The demo cannot run; the message says what to do."""


@dataclass
class DemoOutcome:
    """What the demo did: its tasks, the files the workers wrote, how long and how many model requests it took."""

    tasks: list[Task]
    files: dict[str, str]
    seconds: float
    model_requests: int
    workdir: Path
    log_dir: Path
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every task completed."""
        return bool(self.tasks) and all(t.status == "completed" for t in self.tasks)


def prepare_clis(names: list[str], cli_home: Path, console: Console, *, install: bool) -> None:
    """Make each CLI and a new enough Node findable on this process's PATH, installing them on first use."""
    extra: list[str] = []
    for name in names:
        adapter = get_adapter(name)
        if (
            adapter.find_binary(cli_home) is None
            and adapter.find_binary(cli_home, path=os.environ.get("PATH")) is None
        ):
            if not install:
                raise DemoError(
                    f"{name} is not installed: run `aiswarm install-cli {name}` (needs npm), or drop --no-install"
                )
            pin = PINNED_CLIS[name]
            console.print(f"installing {pin.spec} into {cli_home / 'clis' / name} (first run only) ...")
            try:
                install_cli(name, cli_home)
            except InstallError as error:
                raise DemoError(f"could not install {name}: {error}") from None
        private = cli_home / "clis" / name / "node_modules" / ".bin"
        if private.exists():
            extra.append(str(private))
    node_bin = node_path(cli_home)
    if node_bin is not None:
        extra.insert(0, str(node_bin))
    os.environ["PATH"] = os.pathsep.join([*extra, os.environ.get("PATH", "")])
    wanted = max(PINNED_CLIS[n].min_node_major or 0 for n in names)
    if (node_major() or 0) < wanted:
        if not install:
            raise DemoError(
                f"Node {wanted} or newer is needed: run `aiswarm install-cli {names[0]}` to install it"
            )
        install_cli(names[0], cli_home)
        node_bin = node_path(cli_home)
        if node_bin is not None:
            os.environ["PATH"] = os.pathsep.join([str(node_bin), os.environ["PATH"]])


@contextlib.contextmanager
def broker_process(home: Path) -> Iterator[str]:
    """``aiswarm serve`` on a free loopback port for the demo's temporary home."""
    port_file = home / "port"
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "broker.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "aiswarm_server", "serve", "--port", "0", "--port-file", str(port_file)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, "AISWARM_HOME": str(home)},
        )
    try:
        deadline = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"the demo broker did not start; see {home / 'broker.log'}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text().strip()}/mcp"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _watch(primary: BrokerClient, ids: list[int], console: Console, deadline: float) -> list[Task]:
    """Print each task's transitions until all are finished (or the deadline passes)."""
    seen: dict[int, str] = {}
    while True:
        tasks = [(await primary.get_task(i)).task for i in ids]
        for task in tasks:
            state = f"{task.status.value}:{task.claimed_by or ''}"
            if seen.get(task.id) != state:
                seen[task.id] = state
                who = task.claimed_by or (task.attempts[-1].agent if task.attempts else "")
                detail = f" by {who}" if who else ""
                console.print(f"  #{task.id} {task.title}: [bold]{task.status.value}[/bold]{detail}")
        if all(t.status.is_terminal for t in tasks) or time.monotonic() > deadline:
            return tasks
        await asyncio.sleep(0.5)


async def run_demo(
    console: Console, *, clis: list[str], keep: Path | None, install: bool = True, limit_seconds: float = 300
) -> DemoOutcome:
    """Run the sample job end to end and return what happened."""
    prepare_clis(clis, default_home(), console, install=install)
    root = Path(tempfile.mkdtemp(prefix="aiswarm-demo-"))
    home, workdir = root / "home", root / "sample"
    workdir.mkdir(parents=True)
    (workdir / "README.txt").write_text("A sample project for the aiswarm demo.\n", encoding="utf-8")
    started = time.monotonic()
    try:
        with ScriptedModelServer() as model, broker_process(home) as url:
            console.print(f"broker {url} · scripted model {model.url} · sample folder {workdir}")
            admin = (home / ADMIN_TOKEN_FILE).read_text().strip()
            primary_token = (home / PRIMARY_TOKEN_FILE).read_text().strip()
            agents = plan_agents(len(clis), ",".join(clis), [])
            config = LaunchConfig(
                agents=agents,
                broker_url=url,
                admin_token=admin,
                home=home,
                workdir=workdir,
                endpoint_url=model.url,
                task_timeout=180,
                cool_down_seconds=5,
                grace_seconds=5,
            )
            supervisor = Supervisor(config)
            running = asyncio.create_task(supervisor.run())
            try:
                console.print(f"workers: {', '.join(a.name for a in agents)} (real CLIs, scripted model)")
                async with BrokerClient(url, primary_token) as primary:
                    batch = [{**t, "working_dir": str(workdir)} for t in SAMPLE_TASKS]
                    submitted = await primary.submit_tasks(
                        [{k: v for k, v in t.items() if v is not None} for t in batch]
                    )
                    ids = [t.id for t in submitted.tasks]
                    console.print(f"submitted {len(ids)} tasks (the last depends on the other three):")
                    tasks = await _watch(primary, ids, console, time.monotonic() + limit_seconds)
            finally:
                supervisor.stop()
                supervisor.stop()  # no grace needed: every task is finished or the demo gave up
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(running, 30)
            stats = model.stats()
        files = {
            p.relative_to(workdir).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(workdir.rglob("*"))
            if p.is_file() and p.name != "README.txt"
        }
        outcome = DemoOutcome(
            tasks=tasks,
            files=files,
            seconds=time.monotonic() - started,
            model_requests=int(stats.get("total", 0)),
            workdir=workdir,
            log_dir=home / "logs",
        )
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copytree(workdir, keep / "sample", dirs_exist_ok=True)
            shutil.copytree(home / "logs", keep / "logs", dirs_exist_ok=True)
            outcome.workdir, outcome.log_dir = keep / "sample", keep / "logs"
        return outcome
    finally:
        shutil.rmtree(root, ignore_errors=True)


def render(outcome: DemoOutcome, console: Console) -> None:
    """Print the demo's tasks, the files the workers wrote, the totals and where the files and logs are."""
    table = Table("task", "status", "agent", "result", box=None)
    for task in outcome.tasks:
        agent = task.attempts[-1].agent if task.attempts else ""
        table.add_row(
            f"#{task.id} {task.title}", task.status.value, agent, (task.result or task.error or "")[:70]
        )
    console.print(table)
    for name, text in outcome.files.items():
        console.print(f"[bold]{name}[/bold]\n{text}", highlight=False)
    verdict = "every task done" if outcome.ok else "NOT every task was done"
    console.print(
        f"{verdict} in {outcome.seconds:.0f} s with {outcome.model_requests} scripted model requests. "
        + (
            f"Files: {outcome.workdir}, agent logs: {outcome.log_dir}"
            if outcome.workdir.exists()
            else "Cleaned up."
        )
    )
