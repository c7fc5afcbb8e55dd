"""The ``aiswarm`` command: one Typer app, a sub-command per job. Errors are one line, never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
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
from aiswarm_server.broker_calls import (
    BrokerCallError,
    BrokerCalls,
    BrokerUnreachable,
    local_broker_url,
    local_token,
)
from aiswarm_server.config import DEFAULT_PORT, BrokerSettings, ConfigFileError
from aiswarm_server.errors import BrokerError, SchemaTooNew
from aiswarm_server.limits import (
    LIST_LIMIT_MAX,
    MAX_ATTEMPTS_LIMIT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    TASK_TIMEOUT_LIMIT_SECONDS,
    TITLE_MAX_CHARS,
)
from aiswarm_server.models import (
    Agent,
    AgentState,
    MergeState,
    OnUnanswered,
    Question,
    QuestionStatus,
    Task,
    TaskStatus,
)
from aiswarm_server.post_client import PostClient
from aiswarm_server.replies import AgentStateReply, UsageSummaryReply

T = TypeVar("T")

#: How long ``submit --wait`` keeps reconnecting to a broker that went away before it gives up.
RECONNECT_SECONDS = 600.0

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
        "--home",
        envvar="AISWARM_HOME",
        help="aiswarm home: database, tokens, logs.",
        show_default="~/.aiswarm",
    ),
]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", envvar="AISWARM_URL", help="Broker MCP URL.", show_default="the broker serving --home"
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class CliError(Exception):
    """A one-line error for the terminal."""


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"aiswarm {__version__}\n")
        raise typer.Exit()


@app.callback()
def _app(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Coordinate a swarm of agent CLIs (qwen-code, gemini-cli, opencode) for your primary coding agent."""


def settings_for(home: Path | None, **overrides: Any) -> BrokerSettings:
    """Broker settings for ``home`` with the CLI's overrides; a bad value is a :class:`CliError` naming the setting."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if home is not None:
        values["home"] = home.expanduser()
    try:
        return BrokerSettings(**values)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise CliError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None


def _within(low: float, high: float | None = None) -> Callable[[Any], Any]:
    """An option callback refusing values outside ``low``..``high`` with one line naming the range."""

    def check(value: Any) -> Any:
        for item in value if isinstance(value, list) else [value]:
            if item is not None and (item < low or (high is not None and item > high)):
                allowed = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
                raise typer.BadParameter(f"{item:g} is out of range: it must be {allowed}")
        return value

    return check


def _setting_default(name: str) -> str:
    """A setting's built-in default as --help shows it (the option itself defaults to the setting)."""
    value = BrokerSettings.model_fields[name].default
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a new event loop."""
    return asyncio.run(coro)


async def with_broker(
    home: Path | None, url: str | None, action: Callable[[BrokerCalls], Awaitable[T]], role: str = "admin"
) -> T:
    """Run ``action`` against the broker of ``home`` (or at ``url``); an absent broker is one line saying how to
    start it."""
    settings = settings_for(home)
    target = url or local_broker_url(settings)
    try:
        token = local_token(settings.home, "admin" if role == "admin" else "primary")
        async with PostClient(target, token) as broker:
            return await action(broker)
    except BrokerUnreachable as error:
        raise CliError(_unreachable(settings, home, url, error)) from None


def _unreachable(
    settings: BrokerSettings, home: Path | None, url: str | None, error: BrokerUnreachable
) -> str:
    if error.url is None:  # no token: this home never had a broker
        return str(error)
    start = "aiswarm serve" + (f" --home {settings.home}" if home is not None else "")
    where = f" (home {settings.home})" if url is None else ""
    return f"no aiswarm broker answers at {error.url}{where}. Start it with `{start}`."


def print_json(value: BaseModel | list[Any] | dict[str, Any]) -> None:
    """Write a model, list or dict to stdout as indented JSON."""
    if isinstance(value, BaseModel):
        sys.stdout.write(value.model_dump_json(indent=2) + "\n")
    else:
        sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def task_table(tasks: list[Task]) -> Table:
    """A table of tasks for the terminal: id, status, title, persona, agent, tries and the outcome."""
    table = Table("id", "status", "title", "persona", "agent", "tries", "result / error", box=None)
    for t in tasks:
        outcome = t.result if t.status is TaskStatus.COMPLETED else (t.error or t.progress or "")
        if t.question is not None:
            outcome = f"asks: {t.question.question}"
        agent = t.claimed_by or (t.attempts[-1].agent if t.attempts else "")
        table.add_row(
            str(t.id),
            t.status.value + (" (asks)" if t.question is not None else ""),
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
        int,
        typer.Option(
            envvar="AISWARM_PORT", callback=_within(0, 65535), help="Port, 0-65535 (0 = any free one)."
        ),
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
            help="PostgreSQL URL (postgresql://user@host/db) to share with other brokers.",
            show_default="SQLite in --home",
        ),
    ] = None,
    lease_seconds: Annotated[
        float | None,
        typer.Option(
            envvar="AISWARM_LEASE_SECONDS",
            callback=_within(0.001, 86_400),
            help="Claim lease length in seconds.",
            show_default=_setting_default("lease_seconds"),
        ),
    ] = None,
    agent_lost_seconds: Annotated[
        float | None,
        typer.Option(
            envvar="AISWARM_AGENT_LOST_SECONDS",
            callback=_within(0.001, 86_400),
            help="Silence (seconds) before an agent is marked lost.",
            show_default=_setting_default("agent_lost_seconds"),
        ),
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

    def banner(url: str) -> None:
        errors.print(
            f"aiswarm broker {__version__} serving {url} (home {settings.home}, state in "
            f"{settings.database_label}). Stop it with Ctrl-C or `aiswarm stop`.",
            highlight=False,
            markup=False,
        )

    run(settings, log_level=log_level, port_file=port_file, on_serving=banner)


@app.command()
def stop(
    home: HomeOption = None,
    wait_seconds: Annotated[
        float,
        typer.Option(
            "--wait-seconds", callback=_within(0), help="How long to wait for it to finish stopping."
        ),
    ] = 30.0,
) -> None:
    """Stop the broker serving --home gracefully, as Ctrl-C would: waits are answered, nothing is lost."""
    from aiswarm_server.home import home_is_served, read_broker_info

    settings = settings_for(home)
    info = read_broker_info(settings.home)
    if info is None or not home_is_served(settings.home):
        raise CliError(f"no aiswarm broker is serving {settings.home}; nothing to stop.")
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        raise CliError(f"the broker of {settings.home} (pid {info.pid}) is already gone.") from None
    except PermissionError:
        raise CliError(f"the broker of {settings.home} (pid {info.pid}) belongs to another user.") from None
    deadline = time.monotonic() + wait_seconds
    while home_is_served(settings.home):
        if time.monotonic() > deadline:
            raise CliError(
                f"the broker (pid {info.pid}) is still stopping after {wait_seconds:.0f}s; "
                f"`kill -9 {info.pid}` ends it at once (committed state is kept)."
            )
        time.sleep(0.1)
    console.print(f"stopped the broker at {info.url} (pid {info.pid}).", highlight=False, markup=False)


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
def _title(value: str) -> str:
    title = " ".join(value.split())
    if not title:
        raise typer.BadParameter(
            "must not be empty: give the task a short name, e.g. 'Add tests for the parser'"
        )
    if len(title) > TITLE_MAX_CHARS:
        raise typer.BadParameter(
            f"is {len(title)} characters; keep it to {TITLE_MAX_CHARS} and put details in -p"
        )
    return value


def _prompt(prompt: str | None) -> str:
    """The prompt from -p, else from stdin; a terminal on stdin gets a hint instead of a silent wait."""
    if prompt is not None:
        return prompt
    if sys.stdin.isatty():
        raise CliError(
            "no prompt: pass it with -p 'what to do', or pipe it in (aiswarm submit TITLE < prompt.md)."
        )
    return sys.stdin.read()


@app.command()
def submit(
    title: Annotated[str, typer.Argument(metavar="TITLE", callback=_title, help="Short name of the task.")],
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", "-p", help="What to do.", show_default="read from stdin"),
    ] = None,
    persona: Annotated[
        str | None, typer.Option(help="Only agents with this persona take it (a name from personas/).")
    ] = None,
    capability: Annotated[
        list[str] | None, typer.Option("--capability", "-c", help="Required capability (repeatable).")
    ] = None,
    depends_on: Annotated[
        list[int] | None,
        typer.Option(
            "--depends-on", "-d", callback=_within(1), help="Task id that must finish first (repeatable)."
        ),
    ] = None,
    priority: Annotated[
        int,
        typer.Option(
            callback=_within(PRIORITY_MIN, PRIORITY_MAX),
            help=f"Higher runs first ({PRIORITY_MIN} to {PRIORITY_MAX}).",
        ),
    ] = 0,
    working_dir: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            exists=True,
            file_okay=False,
            help="Directory the worker works in.",
            show_default="current directory",
        ),
    ] = None,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            callback=_within(1, MAX_ATTEMPTS_LIMIT),
            help=f"Tries before giving up (1-{MAX_ATTEMPTS_LIMIT}).",
            show_default="the broker's, 3 unless AISWARM_DEFAULT_MAX_ATTEMPTS",
        ),
    ] = None,
    timeout: Annotated[
        int | None,
        typer.Option(
            callback=_within(1, TASK_TIMEOUT_LIMIT_SECONDS),
            help=f"Per-attempt time limit in seconds (1-{TASK_TIMEOUT_LIMIT_SECONDS}).",
            show_default="the broker's, 1800 unless AISWARM_DEFAULT_TASK_TIMEOUT_SECONDS",
        ),
    ] = None,
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
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait for the result; exit 1 unless the task completed (it survives broker restarts).",
        ),
    ] = False,
    home: HomeOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a task to the swarm."""
    text = _prompt(prompt)
    directory = str((working_dir or Path.cwd()).resolve())
    if isolation not in ("auto", "worktree", "none"):
        raise CliError(f"--isolation {isolation!r}: choose auto, worktree or none")

    async def send(broker: BrokerCalls) -> Task:
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
        return (await broker.get_task(reply.tasks[0].id)).task

    task = run_async(with_broker(home, url, send))
    if wait:
        errors.print(
            f"submitted task #{task.id}; waiting for it (Ctrl-C stops waiting, not the task)", highlight=False
        )
        task = run_async(wait_until_finished(home, url, task.id))
    if as_json:
        print_json(task)
    else:
        console.print(task_table([task]))
        if task.result:
            console.print(task.result, highlight=False, markup=False)
        console.print(describe_task(task), style="dim", highlight=False, markup=False)
    if wait and task.status is not TaskStatus.COMPLETED:
        raise typer.Exit(1)


async def wait_until_finished(home: Path | None, url: str | None, task_id: int) -> Task:
    """Wait for a task to finish, reconnecting for as long as the broker is away (restarts included)."""
    lost_since: float | None = None

    async def wait(broker: BrokerCalls) -> Task:
        nonlocal lost_since
        if lost_since is not None:
            errors.print("reconnected; still waiting", highlight=False)
            lost_since = None
        while not (await broker.wait_for_tasks([task_id])).done:
            pass
        return (await broker.get_task(task_id)).task  # with every attempt

    while True:
        try:
            return await with_broker(home, url, wait)
        except CliError as error:
            now = time.monotonic()
            if lost_since is None:
                lost_since = now
                errors.print(f"{error} Retrying until it is back ...", highlight=False, markup=False)
            elif now - lost_since > RECONNECT_SECONDS:
                raise CliError(
                    f"{error} Gave up waiting after {RECONNECT_SECONDS:.0f}s; the task is kept: "
                    f"`aiswarm task {task_id}` shows it."
                ) from None
            await asyncio.sleep(1.0)


def describe_task(task: Task) -> str:
    """One line for people on where a task stands and which command shows more."""
    match task.status:
        case TaskStatus.COMPLETED:
            return f"Task #{task.id} completed."
        case TaskStatus.FAILED | TaskStatus.DEAD:
            return f"Task #{task.id} {task.status.value}: {task.error}"
        case TaskStatus.CANCELLED:
            return f"Task #{task.id} was cancelled: {task.error}"
        case TaskStatus.CLAIMED if task.question is not None:
            return f'{task.claimed_by} waits for your answer: aiswarm answer {task.id} "..."'
        case TaskStatus.CLAIMED:
            return f"Task #{task.id} is being worked on by {task.claimed_by}. `aiswarm task {task.id}` shows it later."
        case TaskStatus.BLOCKED:
            return f"Task #{task.id} waits for task(s) {', '.join(f'#{d}' for d in task.depends_on)} to complete."
        case _:
            agents = "" if task.persona is None else f" with persona {task.persona}"
            return (
                f"Task #{task.id} is waiting for an agent{agents} (`aiswarm agents` lists them, `aiswarm launch` "
                f"starts some). `aiswarm task {task.id}` shows it later."
            )


@app.command()
def merge(
    task_id: Annotated[int, typer.Argument(help="The completed task whose branch to merge.")],
    discard: Annotated[bool, typer.Option("--discard", help="Delete the task's branch instead.")] = False,
    home: HomeOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Merge a completed task's kept branch onto the branch it was submitted from (or discard it)."""

    async def action(broker: BrokerCalls) -> None:
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

        async def pruned(broker: BrokerCalls) -> list[Path]:
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
            lines += [f"kept branch {b} in {common_dir}" for b in await kept_branches(common_dir, found.tag)]
        return lines

    lines = run_async(listing())
    console.print("\n".join(lines) if lines else "no task worktrees", highlight=False)


@app.command("tasks")
def tasks_command(
    status: Annotated[
        TaskStatus | None, typer.Option(help="Only tasks with this status.", case_sensitive=False)
    ] = None,
    limit: Annotated[
        int,
        typer.Option(callback=_within(1, LIST_LIMIT_MAX), help=f"At most this many (1-{LIST_LIMIT_MAX})."),
    ] = 50,
    home: HomeOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List tasks, newest first."""

    async def action(broker: BrokerCalls) -> None:
        reply = await broker.list_tasks(status=status.value if status else None, limit=limit)
        if as_json:
            print_json([t.model_dump(mode="json") for t in reply.tasks])
        else:
            console.print(task_table(reply.tasks))

    run_async(with_broker(home, url, action))


@app.command("task")
def task_command(
    task_id: Annotated[int, typer.Argument(metavar="TASK_ID", callback=_within(1), help="The task id.")],
    cancel: Annotated[bool, typer.Option("--cancel", help="Cancel it.")] = False,
    home: HomeOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one task (result, error, attempts), or cancel it."""

    async def action(broker: BrokerCalls) -> None:
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
        console.print("[bold]prompt[/bold]")
        console.print(task.prompt, highlight=False, markup=False)
        if task.result:
            console.print("[bold]result[/bold]")
            console.print(task.result, highlight=False, markup=False)
        if task.error and not task.status.is_terminal:
            console.print(f"last error: {task.error}", highlight=False, markup=False)
        if task.merge_state is not None:
            console.print(
                f"branch {task.branch} -> {task.target_branch or '(detached HEAD)'}: "
                f"{task.merge_state.value}; {task.diff_stat or ''} {task.merge_detail or ''}",
                highlight=False,
                markup=False,
            )
        for question in task.questions:
            asked = (
                f"  question #{question.id} ({question.agent}, {question.status.value}): {question.question}"
            )
            if question.options:
                asked += f" [options: {' | '.join(question.options)}]"
            if question.answer is not None:
                asked += f"\n    answer ({question.answered_by}): {question.answer}"
            elif question.status is QuestionStatus.OPEN:
                left = max(0, round(question.deadline_at - time.time()))
                asked += f"\n    open for {left}s more; then the worker {_after_deadline(question)}"
            console.print(asked, highlight=False, markup=False)
        for attempt in task.attempts:
            took = f"{attempt.finished_at - attempt.claimed_at:.1f}s" if attempt.finished_at else "running"
            console.print(
                f"  attempt {attempt.number}: {attempt.agent} {attempt.outcome.value} {took} {attempt.error or ''}",
                highlight=False,
                markup=False,
            )
        console.print(describe_task(task), style="dim", highlight=False, markup=False)

    run_async(with_broker(home, url, action))


def _after_deadline(question: Question) -> str:
    return "continues on its own judgement" if question.on_timeout is OnUnanswered.CONTINUE else "fails"


@app.command("answer")
def answer_command(
    task_id: Annotated[int, typer.Argument(metavar="TASK_ID", callback=_within(1), help="The task id.")],
    text: Annotated[str, typer.Argument(metavar="ANSWER", help="Your answer to its worker's question.")],
    home: HomeOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Answer the question a task's worker asked (`aiswarm tasks` marks such tasks "asks")."""

    async def action(broker: BrokerCalls) -> None:
        reply = await broker.answer_question(task_id, text)
        if as_json:
            print_json(reply.question)
            return
        question = reply.question
        console.print(
            f"answered question #{question.id} of task #{task_id} ({question.agent}): {question.question}",
            highlight=False,
            markup=False,
        )

    run_async(with_broker(home, url, action))


agents_app = typer.Typer(
    help="List worker agents (with what the launcher says about them); `agents reset` closes circuits.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(agents_app, name="agents")


def agent_state_text(agent: Agent) -> str:
    """``cooling until 12:03:04``, ``circuit open: <why> (probe 12:03:04)``, or empty."""
    if not agent.state:
        return ""
    until = time.strftime("%H:%M:%S", time.localtime(agent.state_until)) if agent.state_until else ""
    if agent.state is AgentState.COOLING:
        return f"cooling down until {until}" if until else "cooling down"
    if agent.state is AgentState.CIRCUIT_OPEN:
        return f"circuit open: {agent.state_reason}" + (f" (next probe {until})" if until else "")
    return "reset asked"


@agents_app.callback()
def agents(
    ctx: typer.Context, home: HomeOption = None, url: UrlOption = None, as_json: JsonOption = False
) -> None:
    """List worker agents."""
    if ctx.invoked_subcommand is not None:
        return

    async def action(broker: BrokerCalls) -> None:
        reply = await broker.list_agents()
        if as_json:
            print_json([a.model_dump(mode="json") for a in reply.agents])
            return
        table = Table("agent", "cli", "persona", "status", "task", "state", "capabilities", box=None)
        for a in reply.agents:
            table.add_row(
                a.name,
                a.cli,
                a.persona or "",
                a.status.value,
                str(a.current_task_id or ""),
                agent_state_text(a),
                ",".join(a.capabilities),
            )
        console.print(table)

    run_async(with_broker(home, url, action))


@agents_app.command("reset")
def agents_reset(
    names: Annotated[
        list[str] | None, typer.Argument(help="Agents whose circuit to close, e.g. qwen-1.")
    ] = None,
    cli: Annotated[str | None, typer.Option("--cli", help="Every agent of this CLI.")] = None,
    home: HomeOption = None,
    url: UrlOption = None,
) -> None:
    """Close the agents' open circuits now (after fixing a key or a login), instead of waiting for the probe."""
    if not names and cli is None:
        raise CliError(
            "name the agents (aiswarm agents reset qwen-1) or a CLI (aiswarm agents reset --cli qwen)"
        )

    async def action(broker: BrokerCalls) -> None:
        reply = await broker.call(
            "report_agent_state",
            AgentStateReply,
            agents=names or [],
            cli=cli,
            state=AgentState.RESET.value,
            reason="reset by the user",
        )
        if not reply.agents:
            raise CliError(reply.message)
        console.print(f"reset asked for {', '.join(a.name for a in reply.agents)}", highlight=False)

    run_async(with_broker(home, url, action))


@app.command()
def usage(
    by: Annotated[str, typer.Option("--by", help="Sum per day, provider, cli, agent or task.")] = "day",
    days: Annotated[float, typer.Option("--days", min=0.001, help="How many days back.")] = 30,
    home: HomeOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Tokens the swarm's CLI runs used, per day, provider, CLI, agent or task."""
    if by not in ("day", "provider", "cli", "agent", "task"):
        raise CliError(f"--by {by!r}: choose day, provider, cli, agent or task")

    async def action(broker: BrokerCalls) -> None:
        reply = await broker.call("usage_summary", UsageSummaryReply, by=by, days=days)
        if as_json:
            print_json(reply)
            return
        table = Table(by, "runs", "input", "output", "cached", "total", "requests", box=None)
        for row in reply.rows:
            table.add_row(
                row.key,
                str(row.runs),
                str(row.input_tokens),
                str(row.output_tokens),
                str(row.cached_tokens),
                str(row.total_tokens),
                str(row.requests),
            )
        console.print(table)
        console.print(reply.message, highlight=False)

    run_async(with_broker(home, url, action))


@app.command()
def status(home: HomeOption = None, url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Is the broker running? Task and agent counts."""

    async def action(broker: BrokerCalls) -> None:
        reply = await broker.broker_status()
        if as_json:
            states = [
                {"agent": a.name, "state": a.state.value, "reason": a.state_reason, "until": a.state_until}
                for a in (await broker.list_agents()).agents
                if a.state
            ]
            print_json({**reply.model_dump(mode="json"), "url": broker.url, "agent_states": states})
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
    swarm: Annotated[
        bool,
        typer.Option(
            "--swarm/--no-swarm",
            envvar="AISWARM_BENCH_SWARM",
            help="Also run the installed agent CLIs against the scripted model: dispatch latency cold and warm, "
            "model requests per task, tasks per minute.",
        ),
    ] = True,
) -> None:
    """Measure the broker against its own transport over real HTTP, and the swarm of real agent CLIs against the
    scripted model (see docs/BENCHMARK.md)."""
    from aiswarm_server.bench import render, run_bench

    render(run_bench(quick, json_out, swarm=swarm))


# ------------------------------------------------------------------------------------------------ tokens
@token_app.command("issue")
def token_issue(
    agent: Annotated[str, typer.Option("--agent", help="The worker agent's name, e.g. qwen-1.")],
    home: HomeOption = None,
    url: UrlOption = None,
) -> None:
    """Issue a worker token for one agent (printed once; store it like a password)."""

    async def action(broker: BrokerCalls) -> None:
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

    async def action(broker: BrokerCalls) -> None:
        reply = await broker.revoke_agent_tokens(agent)
        console.print(reply.message, highlight=False, markup=False)

    run_async(with_broker(home, url, action))


@token_app.command("list")
def token_list(
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent's tokens.")] = None,
    revoked: Annotated[bool, typer.Option("--revoked", help="Also list revoked tokens.")] = False,
    as_json: JsonOption = False,
    home: HomeOption = None,
    url: UrlOption = None,
) -> None:
    """List issued tokens: fingerprint, role, agent, when issued and revoked (never the tokens themselves)."""

    async def action(broker: BrokerCalls) -> None:
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
        valid = sum(1 for token in reply.tokens if token.revoked_at is None)
        console.print(
            f"{len(reply.tokens)} token(s), {valid} valid. `aiswarm token revoke --agent NAME` revokes an agent's.",
            highlight=False,
            markup=False,
        )

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


# The broker's refusals are written for models and name tools; people get the command instead.
_COMMAND_FOR_TOOL = {
    "list_tasks": "`aiswarm tasks`",
    "get_task": "`aiswarm task ID`",
    "submit_task": "`aiswarm submit`",
    "list_agents": "`aiswarm agents`",
    "wait_for_tasks": "`aiswarm submit --wait`",
    "cancel_task": "`aiswarm task ID --cancel`",
}
_TOOL_NAME = re.compile(r"\b(" + "|".join(_COMMAND_FOR_TOOL) + r")\b(\([^)]*\))?")


def for_people(refusal: str) -> str:
    """A refusal the broker wrote for a model, with the tools it names replaced by the commands that do the same."""
    return _TOOL_NAME.sub(lambda match: _COMMAND_FOR_TOOL[match.group(1)], refusal)


DEBUG_VARIABLE = "AISWARM_DEBUG"
"""Set (to anything) to see the traceback after the one-line error of an unforeseen failure."""

_launcher_commands_registered = False


def _register_launcher_commands() -> None:
    global _launcher_commands_registered
    if _launcher_commands_registered:
        return
    _launcher_commands_registered = True
    from aiswarm_server.workflow.cli import register as register_workflow_commands

    register_workflow_commands(app)
    try:
        from launcher.cli import register
        from launcher.primaries import install_client_command
    except ImportError:  # the broker alone (no launcher package) still works
        return
    register(app)
    install_client_command(app)


def environment_variables() -> dict[str, list[str]]:
    """Every ``AISWARM_*`` variable aiswarm reads, each with what it stands for.

    The commands' options that have a variable (``launch --cli``), the broker settings of ``config.toml``
    (``config.toml: lease_seconds``), the providers' tables and :data:`DEBUG_VARIABLE`. The README's
    Configuration table lists exactly these names.
    """
    from typer.main import get_command

    _register_launcher_commands()
    found: dict[str, list[str]] = {}

    def collect(command: Any, path: tuple[str, ...]) -> None:
        for param in command.params:
            names = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
            for name in filter(None, names):
                found.setdefault(name, []).append(
                    " ".join((*path, param.opts[0] if param.opts else param.name))
                )
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            collect(sub, (*path, name))

    collect(get_command(app), ())
    prefix = BrokerSettings.model_config.get("env_prefix", "")
    for field in BrokerSettings.model_fields:
        found.setdefault(f"{prefix}{field.upper()}", []).append(f"config.toml: {field}")
    found.setdefault("AISWARM_PROVIDERS__<NAME>__<FIELD>", []).append("config.toml: [providers.NAME] FIELD")
    found.setdefault(DEBUG_VARIABLE, []).append("tracebacks")
    return dict(sorted(found.items()))


def _needs_launcher_commands(args: list[str]) -> bool:
    """Whether ``args`` may run or list a launcher or workflow command: not when they run one of the broker's own
    commands (serve, status, submit, token ...), nor for ``--version``."""
    own = {group.name for group in app.registered_groups}
    for command in app.registered_commands:
        callback = command.callback.__name__.replace("_", "-") if command.callback else None
        own.add(command.name or callback)
    own.add("--version")
    return not args or args[0] not in own


def main() -> None:
    """Entry point: run the app, turning known failures into one clear line."""
    # Commands import lazily (docs/DESIGN.md, "A command imports what it runs"): the launcher's and the workflow's
    # commands are not even registered when the broker's own command runs.
    if _needs_launcher_commands(sys.argv[1:]):
        _register_launcher_commands()
    try:
        code = app(standalone_mode=False)  # a typer.Exit inside a command comes back as its exit code
        if isinstance(code, int) and code:
            sys.exit(code)
    except (CliError, BrokerError, BrokerUnreachable, SchemaTooNew, ConfigFileError) as error:
        errors.print(f"error: {error}", highlight=False, markup=False)
        sys.exit(1)
    except BrokerCallError as error:
        errors.print(f"refused: {for_people(str(error))}", highlight=False, markup=False)
        sys.exit(1)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        errors.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.TyperException as error:  # usage errors: Click's own usage line and message, exit 2
        show = getattr(error, "show", None)
        if show is not None:
            show()
        else:
            errors.print(f"error: {error.format_message()}", highlight=False, markup=False)
        sys.exit(error.exit_code)
    except Exception as error:  # anything unforeseen: one line, never a traceback
        errors.print(f"error: {type(error).__name__}: {error}", highlight=False, markup=False)
        if os.environ.get(DEBUG_VARIABLE):
            raise
        sys.exit(1)
