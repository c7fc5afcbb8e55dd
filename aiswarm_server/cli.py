"""The ``aiswarm`` command: one Typer app, a sub-command per job. Errors are one line, never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from aiswarm_server import __version__
from aiswarm_server.broker_client import (
    BrokerCallError,
    BrokerClient,
    BrokerUnreachable,
    local_broker_url,
    local_token,
)
from aiswarm_server.config import DEFAULT_PORT, BrokerSettings
from aiswarm_server.errors import BrokerError, SchemaTooNew
from aiswarm_server.models import MergeState, Task

T = TypeVar("T")

app = typer.Typer(
    name="aiswarm",
    help="Coordinate a swarm of agent CLIs (qwen-code, gemini-cli, opencode) for your primary coding agent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
token_app = typer.Typer(help="Issue, list and revoke broker tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")

console = Console()
errors = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line in logs and pipes

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", envvar="AISWARM_HOME", help="aiswarm home: database, tokens, logs. \\[default: ~/.aiswarm]"
    ),
]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", envvar="AISWARM_URL", help="Broker MCP URL. \\[default: the broker serving --home]"
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class CliError(Exception):
    """A one-line error for the terminal."""


def settings_for(home: Path | None, **overrides: Any) -> BrokerSettings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if home is not None:
        values["home"] = home.expanduser()
    try:
        return BrokerSettings(**values)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise CliError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def with_broker(
    home: Path | None, url: str | None, action: Callable[[BrokerClient], Awaitable[T]], role: str = "admin"
) -> T:
    settings = settings_for(home)
    token = local_token(settings.home, "admin" if role == "admin" else "primary")
    async with BrokerClient(url or local_broker_url(settings), token) as broker:
        return await action(broker)


def print_json(value: BaseModel | list[Any] | dict[str, Any]) -> None:
    if isinstance(value, BaseModel):
        sys.stdout.write(value.model_dump_json(indent=2) + "\n")
    else:
        sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def task_table(tasks: list[Task]) -> Table:
    table = Table("id", "status", "title", "persona", "agent", "tries", "result / error", box=None)
    for t in tasks:
        outcome = t.result if t.status.value == "completed" else (t.error or t.progress or "")
        agent = t.claimed_by or (t.attempts[-1].agent if t.attempts else "")
        table.add_row(
            str(t.id),
            t.status.value,
            t.title[:50],
            t.persona or "",
            agent,
            str(len(t.attempts) or t.failures),
            (outcome or "")[:60].replace("\n", " "),
        )
    return table


# ------------------------------------------------------------------------------------------------ serve
@app.command()
def serve(
    home: HomeOption = None,
    host: Annotated[str, typer.Option(envvar="AISWARM_HOST", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(envvar="AISWARM_PORT", help="Port (0 = any free port).")
    ] = DEFAULT_PORT,
    allow_remote: Annotated[
        bool,
        typer.Option("--allow-remote", envvar="AISWARM_ALLOW_REMOTE", help="Allow a non-loopback --host."),
    ] = False,
    durability: Annotated[
        str,
        typer.Option(
            envvar="AISWARM_DURABILITY", help="normal (survives crashes) or full (also power loss)."
        ),
    ] = "normal",
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="AISWARM_DATABASE_URL",
            help="PostgreSQL URL (postgresql://user@host/db) to share with other brokers. [default: SQLite in home]",
        ),
    ] = None,
    lease_seconds: Annotated[
        float | None, typer.Option(envvar="AISWARM_LEASE_SECONDS", help="Claim lease length. [default: 300]")
    ] = None,
    agent_lost_seconds: Annotated[
        float | None,
        typer.Option(envvar="AISWARM_AGENT_LOST_SECONDS", help="Silence before an agent is lost."),
    ] = None,
    port_file: Annotated[Path | None, typer.Option(help="Write the bound port here once ready.")] = None,
    log_level: Annotated[
        str, typer.Option(envvar="AISWARM_LOG_LEVEL", help="uvicorn log level.")
    ] = "warning",
) -> None:
    """Run the broker: MCP over streamable HTTP at /mcp, plus /health and /metrics."""
    from aiswarm_server.serve import run

    settings = settings_for(
        home,
        host=host,
        port=port,
        allow_remote=allow_remote,
        durability=durability,
        database_url=database_url,
        lease_seconds=lease_seconds,
        agent_lost_seconds=agent_lost_seconds,
    )
    errors.print(
        f"aiswarm broker {__version__}: home {settings.home}, state in {settings.database_label}, "
        f"listening on {settings.host}",
        highlight=False,
    )
    run(settings, log_level=log_level, port_file=port_file)


@app.command()
def mcp(
    home: HomeOption = None,
    url: UrlOption = None,
    token: Annotated[
        str | None, typer.Option(envvar="AISWARM_TOKEN", help="Token to use. [default: the primary token]")
    ] = None,
    no_start: Annotated[bool, typer.Option("--no-start", help="Fail instead of starting a broker.")] = False,
) -> None:
    """A stdio MCP server for clients that only speak stdio: it bridges to the running broker (starting it if absent)."""
    from aiswarm_server.bridge import run_bridge

    settings = settings_for(home)
    run_async(run_bridge(settings, url=url, token=token, start=not no_start))


# ------------------------------------------------------------------------------------------------ tasks
@app.command()
def submit(
    title: Annotated[str, typer.Argument(help="Short name of the task.")],
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="What to do. [default: read stdin]")
    ] = None,
    persona: Annotated[str | None, typer.Option(help="Only agents with this persona take it.")] = None,
    capability: Annotated[
        list[str] | None, typer.Option("--capability", "-c", help="Required capability.")
    ] = None,
    depends_on: Annotated[
        list[int] | None, typer.Option("--depends-on", "-d", help="Task id that must finish first.")
    ] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    working_dir: Annotated[
        Path | None, typer.Option("--dir", help="Directory to work in. [default: current]")
    ] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Tries before giving up.")] = None,
    timeout: Annotated[int | None, typer.Option(help="Per-attempt time limit in seconds.")] = None,
    files: Annotated[
        list[str] | None,
        typer.Option(
            "--file",
            "-f",
            help="A path or glob (relative to --dir) the task will change; tasks whose files overlap take turns.",
        ),
    ] = None,
    isolation: Annotated[
        str,
        typer.Option(help="auto, worktree (its own git worktree, merged back) or none (in place)."),
    ] = "auto",
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result.")] = False,
    home: HomeOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a task to the swarm."""
    text = prompt if prompt is not None else sys.stdin.read()
    directory = str((working_dir or Path.cwd()).resolve())
    if isolation not in ("auto", "worktree", "none"):
        raise CliError(f"--isolation {isolation!r}: choose auto, worktree or none")

    async def action(broker: BrokerClient) -> None:
        reply = await broker.submit_task(
            title,
            text,
            persona=persona,
            capabilities=capability or [],
            depends_on=depends_on or [],
            priority=priority,
            working_dir=directory,
            max_attempts=max_attempts,
            timeout_seconds=timeout,
            isolation=isolation,
            files=files or [],
        )
        task_id = reply.tasks[0].id
        if wait:
            while True:
                done = await broker.wait_for_tasks([task_id])
                if done.done:
                    task = done.tasks[0]
                    break
        else:
            task = (await broker.get_task(task_id)).task
        if as_json:
            print_json(task)
        else:
            console.print(task_table([task]))
            if task.result:
                console.print(task.result, highlight=False)

    run_async(with_broker(home, url, action))


@app.command()
def merge(
    task_id: Annotated[int, typer.Argument(help="The completed task whose branch to merge.")],
    discard: Annotated[bool, typer.Option("--discard", help="Delete the task's branch instead.")] = False,
    home: HomeOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Merge a completed task's kept branch onto the branch it was submitted from (or discard it)."""

    async def action(broker: BrokerClient) -> None:
        reply = await broker.merge_task(task_id, discard=discard)
        if as_json:
            print_json(reply.task)
        else:
            console.print(reply.message, highlight=False)
        if reply.task.merge_state is MergeState.CONFLICT:
            raise typer.Exit(1)

    run_async(with_broker(home, url, action))


@app.command()
def worktrees(
    prune: Annotated[
        bool, typer.Option("--prune", help="Remove the worktrees no running task attempt owns.")
    ] = False,
    home: HomeOption = None,
    url: UrlOption = None,
) -> None:
    """List the task worktrees under the aiswarm home and the task branches kept in their repositories."""
    from launcher.isolation.attempt import prune_orphans
    from launcher.isolation.worktrees import Worktrees, kept_branches

    found = Worktrees(settings_for(home).home)
    if prune:

        async def pruned(broker: BrokerClient) -> list[Path]:
            return await prune_orphans(found, broker)

        removed = run_async(with_broker(home, url, pruned))
        console.print(f"removed {len(removed)} orphaned worktree(s)", highlight=False)

    async def listing() -> list[str]:
        lines: list[str] = []
        for common_dir in found.repositories():
            for record in found.records(common_dir):
                lines.append(
                    f"task {record.task_id} (attempt {record.fence}): {record.path} on {record.branch}"
                )
            lines += [f"kept branch {b} in {common_dir}" for b in await kept_branches(common_dir)]
        return lines

    lines = run_async(listing())
    console.print("\n".join(lines) if lines else "no task worktrees", highlight=False)


@app.command("tasks")
def tasks_command(
    status: Annotated[
        str | None, typer.Option(help="Only this status (pending, claimed, completed ...).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    home: HomeOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List tasks, newest first."""

    async def action(broker: BrokerClient) -> None:
        reply = await broker.list_tasks(status=status, limit=limit)
        print_json([t.model_dump(mode="json") for t in reply.tasks]) if as_json else console.print(
            task_table(reply.tasks)
        )

    run_async(with_broker(home, url, action))


@app.command("task")
def task_command(
    task_id: Annotated[int, typer.Argument(help="The task id.")],
    cancel: Annotated[bool, typer.Option("--cancel", help="Cancel it.")] = False,
    home: HomeOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one task (result, error, attempts), or cancel it."""

    async def action(broker: BrokerClient) -> None:
        reply = await (
            broker.cancel_task(task_id, "cancelled from the command line")
            if cancel
            else broker.get_task(task_id)
        )
        if as_json:
            print_json(reply.task)
            return
        task = reply.task
        console.print(task_table([task]))
        console.print(f"[bold]prompt[/bold]\n{task.prompt}", highlight=False)
        if task.result:
            console.print(f"[bold]result[/bold]\n{task.result}", highlight=False)
        if task.error:
            console.print(f"[bold]error[/bold] {task.error}", highlight=False)
        if task.merge_state is not None:
            console.print(
                f"[bold]branch[/bold] {task.branch} -> {task.target_branch or '(detached HEAD)'}: "
                f"{task.merge_state.value}; {task.diff_stat or ''} {task.merge_detail or ''}",
                highlight=False,
            )
        for attempt in task.attempts:
            took = f"{attempt.finished_at - attempt.claimed_at:.1f}s" if attempt.finished_at else "running"
            console.print(
                f"  attempt {attempt.number}: {attempt.agent} {attempt.outcome.value} {took} {attempt.error or ''}"
            )
        console.print(reply.message, style="dim", highlight=False)

    run_async(with_broker(home, url, action))


@app.command()
def agents(home: HomeOption = None, url: UrlOption = None, as_json: JsonOption = False) -> None:
    """List worker agents."""

    async def action(broker: BrokerClient) -> None:
        reply = await broker.list_agents()
        if as_json:
            print_json([a.model_dump(mode="json") for a in reply.agents])
            return
        table = Table("agent", "cli", "persona", "status", "task", "capabilities", box=None)
        for a in reply.agents:
            table.add_row(
                a.name,
                a.cli,
                a.persona or "",
                a.status.value,
                str(a.current_task_id or ""),
                ",".join(a.capabilities),
            )
        console.print(table)

    run_async(with_broker(home, url, action))


@app.command()
def status(home: HomeOption = None, url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Is the broker running? Task and agent counts."""

    async def action(broker: BrokerClient) -> None:
        reply = await broker.broker_status()
        if as_json:
            print_json({**reply.model_dump(mode="json"), "url": broker.url})
            return
        console.print(
            f"broker {broker.url} up {reply.uptime_seconds:.0f}s, database {reply.database}", highlight=False
        )
        console.print("tasks: " + (", ".join(f"{k} {v}" for k, v in sorted(reply.tasks.items())) or "none"))
        console.print("agents: " + (", ".join(f"{k} {v}" for k, v in sorted(reply.agents.items())) or "none"))
        console.print(f"parked waits: {reply.parked_waits}")

    run_async(with_broker(home, url, action))


@app.command()
def ui(
    home: HomeOption = None,
    url: UrlOption = None,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Only print the address.")] = False,
) -> None:
    """Open the dashboard (task board, agents, task pages) in a browser; log in with the primary token."""
    settings = settings_for(home)
    base = (url or local_broker_url(settings)).removesuffix("/").removesuffix("/mcp")
    address = f"{base}/ui"
    import httpx  # here, not at the top: every other command starts faster without it

    try:
        httpx.get(f"{base}/health", timeout=5).raise_for_status()
    except httpx.HTTPError:
        raise CliError(
            f"no broker answers at {base}: start it with `aiswarm serve` (or pass --url)."
        ) from None
    console.print(f"dashboard: {address}", highlight=False, soft_wrap=True)
    console.print(
        f"log in with the token in {settings.home / 'primary.token'}", highlight=False, soft_wrap=True
    )
    # Without a display, webbrowser would start a text browser (lynx, w3m) in this terminal.
    graphical = sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if graphical and not no_browser:
        import webbrowser

        with contextlib.suppress(webbrowser.Error):
            webbrowser.open(address)


@app.command()
def demo(
    cli: Annotated[
        str, typer.Option("--cli", envvar="AISWARM_DEMO_CLIS", help="Worker CLIs, comma-separated.")
    ] = "qwen,gemini",
    keep: Annotated[Path | None, typer.Option("--keep", help="Copy the sample folder and logs here.")] = None,
    no_install: Annotated[
        bool, typer.Option("--no-install", help="Fail instead of installing missing CLIs.")
    ] = False,
) -> None:
    """Run the whole swarm offline: a temporary broker, a scripted model, real worker CLIs, a sample job."""
    from launcher.demo import DemoError, render, run_demo

    names = [c.strip() for c in cli.split(",") if c.strip()]
    if not names:
        raise CliError("--cli needs at least one CLI, e.g. qwen,gemini")
    try:
        outcome = run_async(run_demo(console, clis=names, keep=keep, install=not no_install))
    except DemoError as error:
        raise CliError(str(error)) from None
    render(outcome, console)
    if not outcome.ok:
        raise typer.Exit(1)


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="Small counts: a smoke test of the measurement.")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json-out", help="Write the results as JSON here.")
    ] = None,
) -> None:
    """Measure the broker against its own transport over real HTTP (see docs/BENCHMARK.md)."""
    from aiswarm_server.bench import render, run_bench

    render(run_bench(quick, json_out))


# ------------------------------------------------------------------------------------------------ tokens
@token_app.command("issue")
def token_issue(
    agent: Annotated[str, typer.Option("--agent", help="The worker agent's name, e.g. qwen-1.")],
    home: HomeOption = None,
    url: UrlOption = None,
) -> None:
    """Issue a worker token for one agent (printed once; store it like a password)."""

    async def action(broker: BrokerClient) -> None:
        reply = await broker.issue_agent_token(agent)
        sys.stdout.write(reply.token + "\n")

    run_async(with_broker(home, url, action))


@token_app.command("revoke")
def token_revoke(
    agent: Annotated[str, typer.Option("--agent", help="Revoke every token of this agent.")],
    home: HomeOption = None,
    url: UrlOption = None,
) -> None:
    """Revoke an agent's tokens."""

    async def action(broker: BrokerClient) -> None:
        from aiswarm_server.replies import TokenReply

        reply = await broker.call("revoke_agent_tokens", TokenReply, agent=agent)
        console.print(reply.message)

    run_async(with_broker(home, url, action))


@token_app.command("list")
def token_list(
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent's tokens.")] = None,
    revoked: Annotated[bool, typer.Option("--revoked", help="Also list revoked tokens.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    home: HomeOption = None,
    url: UrlOption = None,
) -> None:
    """List issued tokens: fingerprint, role, agent, when issued and revoked (never the tokens themselves)."""

    async def action(broker: BrokerClient) -> None:
        reply = await broker.list_tokens(agent, include_revoked=revoked)
        if as_json:
            print_json(reply)
            return
        table = Table(box=None)
        for column in ("fingerprint", "role", "agent", "label", "issued", "revoked"):
            table.add_column(column, no_wrap=True)
        for token in reply.tokens:
            table.add_row(
                token.fingerprint,
                token.role.value,
                token.agent or "",
                token.label,
                _when(token.created_at),
                _when(token.revoked_at) if token.revoked_at else "",
            )
        console.print(table)
        console.print(reply.message, highlight=False)

    run_async(with_broker(home, url, action))


def _when(timestamp: float) -> str:
    return time.strftime("%m-%d %H:%M:%S", time.localtime(timestamp))


@token_app.command("path")
def token_path(
    role: Annotated[str, typer.Argument(help="primary or admin")] = "primary", home: HomeOption = None
) -> None:
    """Print where the primary (or admin) token file is (0600; created by the broker on first start)."""
    if role not in ("primary", "admin"):
        raise CliError("role must be 'primary' or 'admin'")
    settings = settings_for(home)
    sys.stdout.write(str(settings.home / f"{role}.token") + "\n")


def _register_launcher_commands() -> None:
    from aiswarm_server.workflow.cli import register as register_workflow_commands

    register_workflow_commands(app)
    try:
        from launcher.cli import register
        from launcher.primaries import install_client_command
    except ImportError:  # the broker alone (no launcher package) still works
        return
    register(app)
    install_client_command(app)


def _broker_command(args: list[str]) -> bool:
    """Whether ``args`` run one of the broker's own commands (serve, mcp, submit, token ...)."""
    own = {group.name for group in app.registered_groups}
    for command in app.registered_commands:
        callback = command.callback.__name__.replace("_", "-") if command.callback else None
        own.add(command.name or callback)
    return bool(args) and args[0] in own


def main() -> None:
    """Entry point: run the app, turning known failures into one clear line."""
    # The launcher's commands are added unless a broker command runs: importing the launcher (supervisor,
    # adapters, client installers) is about a tenth of `aiswarm serve`'s start-up, which the test suite pays often.
    if not _broker_command(sys.argv[1:]):
        _register_launcher_commands()
    try:
        code = app(standalone_mode=False)  # click answers a raised typer.Exit with its code here
        if isinstance(code, int) and code:
            sys.exit(code)
    except (CliError, BrokerError, BrokerUnreachable, SchemaTooNew) as error:
        errors.print(f"error: {error}", highlight=False, markup=False)
        sys.exit(1)
    except BrokerCallError as error:
        errors.print(f"refused: {error}", highlight=False, markup=False)
        sys.exit(1)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        errors.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:  # click usage errors and anything unforeseen: one line, never a traceback
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        errors.print(f"error: {type(error).__name__}: {error}", highlight=False, markup=False)
        if os.environ.get("AISWARM_DEBUG"):
            raise
        sys.exit(1)
