"""Launcher commands added to the ``aiswarm`` app: launch, logs, doctor, install-cli.

Every option has an ``AISWARM_*`` environment fallback (shown in ``--help``). Errors are raised as
:class:`~launcher.errors.LaunchError`, which ``aiswarm_server.cli.main`` prints as one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from aiswarm_server.cli import HomeOption
from aiswarm_server.config import BrokerSettings
from launcher.circuits import DEFAULT_PROBE_SECONDS
from launcher.errors import LaunchError

if TYPE_CHECKING:
    from launcher.a2a_worker import A2AWorker
    from launcher.supervisor import Supervisor


def _settings(home: Path | None) -> BrokerSettings:
    return BrokerSettings(home=home.expanduser()) if home is not None else BrokerSettings()


def register(app: typer.Typer) -> None:
    """Attach the launcher's sub-commands to the main CLI."""
    app.command()(launch)
    app.command()(logs)
    app.command()(doctor)
    app.command("install-cli")(install_cli)


def launch(
    agents: Annotated[
        int, typer.Option("--agents", "-n", envvar="AISWARM_AGENTS", help="How many worker agents.")
    ] = 2,
    cli: Annotated[
        str,
        typer.Option(
            envvar="AISWARM_CLI",
            help="CLIs to run: 'qwen,gemini' (round-robin) or 'qwen:2,gemini:2' (counts); CLI@PROVIDER gives "
            "them a provider of the config file ($AISWARM_HOME/config.toml): 'qwen@openrouter:2,gemini@gemini-key:2'.",
        ),
    ] = "qwen,gemini",
    persona: Annotated[
        str | None,
        typer.Option(
            envvar="AISWARM_PERSONA", help="Persona for every agent, or a comma list given in turn."
        ),
    ] = None,
    capability: Annotated[
        str | None,
        typer.Option(
            envvar="AISWARM_CAPABILITY",
            help="Capabilities every agent advertises, comma separated (tasks may require them), e.g. "
            "'long-context'. Agents always advertise cli:<cli> and provider:<name>.",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(envvar="AISWARM_MODEL", help="Model name passed to every CLI.")
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--dir", envvar="AISWARM_DIR", help="Working directory of the CLIs. \\[default: current]"
        ),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            envvar="AISWARM_MODE",
            help="per-task: start a CLI per task (idle costs nothing); session: one long CLI run per agent.",
        ),
    ] = "per-task",
    url: Annotated[
        str | None,
        typer.Option(
            envvar="AISWARM_URL",
            help="Broker MCP URL. \\[default: the broker serving --home, started if needed]",
        ),
    ] = None,
    task_timeout: Annotated[
        float | None,
        typer.Option(
            envvar="AISWARM_TASK_TIMEOUT",
            help="Kill a CLI run after this many seconds. \\[default: the task's]",
        ),
    ] = None,
    model_endpoint: Annotated[
        str | None,
        typer.Option(envvar="AISWARM_MODEL_ENDPOINT", help="Custom model server URL (OpenAI / Gemini API)."),
    ] = None,
    model_api_key: Annotated[
        str, typer.Option(envvar="AISWARM_MODEL_API_KEY", help="API key for --model-endpoint.")
    ] = "aiswarm",
    model_name: Annotated[
        str, typer.Option(envvar="AISWARM_MODEL_NAME", help="Model name at --model-endpoint.")
    ] = "aiswarm-model",
    cool_down: Annotated[
        float, typer.Option(envvar="AISWARM_COOL_DOWN", help="Seconds a rate-limited CLI's agents pause.")
    ] = 60.0,
    grace: Annotated[
        float, typer.Option(envvar="AISWARM_GRACE", help="Seconds running CLIs get to finish on Ctrl-C.")
    ] = 10.0,
    probe_interval: Annotated[
        float,
        typer.Option(
            envvar="AISWARM_PROBE_INTERVAL",
            min=0.5,
            help="Seconds between probes of an open circuit (a refused key, no login, a missing CLI).",
        ),
    ] = DEFAULT_PROBE_SECONDS,
    no_ui: Annotated[
        bool, typer.Option("--no-ui", envvar="AISWARM_NO_UI", help="No live status table.")
    ] = False,
    isolation: Annotated[
        str,
        typer.Option(
            envvar="AISWARM_ISOLATION",
            help="Where tasks in a git checkout work: worktree (each attempt its own git worktree, merged back), "
            "none (in place), auto (worktree when more than one agent). A task's own isolation wins.",
        ),
    ] = "auto",
    merge: Annotated[
        str,
        typer.Option(
            envvar="AISWARM_MERGE",
            help="auto: merge each completed task's branch onto the submitter's branch; manual: keep it for "
            "`aiswarm merge TASK`; hook: run merge_hook from config.toml instead (e.g. open a pull request).",
        ),
    ] = "auto",
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar="AISWARM_LOG_FORMAT",
            help="json: also write JSON lines (task, attempt, fence, agent, CLI) to logs/*.jsonl, for "
            "`aiswarm logs --task N` (a broker this starts does the same).",
        ),
    ] = "text",
    warm_pool: Annotated[
        bool,
        typer.Option(
            "--warm-pool/--no-warm-pool",
            envvar="AISWARM_WARM_POOL",
            help="Per-task mode: start each agent's next CLI ahead of its task, past its start-up (gemini, qwen), "
            "so a task reaches the model in a fraction of a second.",
        ),
    ] = True,
    home: HomeOption = None,
) -> None:
    """Start worker agent CLIs and supervise them until Ctrl-C (which drains them gracefully)."""
    from aiswarm_server.auth import ADMIN_TOKEN_FILE, read_token_file
    from aiswarm_server.bridge import broker_is_up, start_broker
    from aiswarm_server.broker_client import local_broker_url
    from launcher.adapters import GenericCliError, UnknownCliError, register_configured_clis
    from launcher.agents import plan_agents
    from launcher.isolation.attempt import MergeMode
    from launcher.personas import PersonaError, get_persona
    from launcher.providers import ProviderError, load_providers
    from launcher.supervisor import LaunchConfig, Supervisor

    if mode not in ("per-task", "session"):
        raise LaunchError(f"--mode {mode!r}: choose per-task or session")
    if isolation not in ("auto", "worktree", "none"):
        raise LaunchError(f"--isolation {isolation!r}: choose auto, worktree or none")
    if merge not in ("auto", "manual", "hook"):
        raise LaunchError(f"--merge {merge!r}: choose auto, manual or hook")
    if log_format not in ("text", "json"):
        raise LaunchError(f"--log-format {log_format!r}: choose text or json")
    os.environ["AISWARM_LOG_FORMAT"] = log_format  # the broker started below, if any, logs the same way
    settings = _settings(home)
    try:
        register_configured_clis(settings.home / "config.toml")
    except GenericCliError as error:
        raise LaunchError(str(error)) from None
    merge_hook = None
    if merge == "hook":
        from launcher.isolation.hook import MergeHook, MergeHookError

        if not settings.merge_hook:
            raise LaunchError(
                f"--merge hook needs merge_hook in {settings.home / 'config.toml'}, e.g. "
                'merge_hook = "git push -q origin {branch} && gh pr create --head {branch} --base {target} --fill"'
            )
        try:
            merge_hook = MergeHook(settings.merge_hook, settings.merge_hook_timeout_seconds)
        except MergeHookError as error:
            raise LaunchError(str(error)) from None
    directory = (workdir or Path.cwd()).expanduser().resolve()
    if not directory.is_dir():
        raise LaunchError(f"--dir {directory} is not a directory")
    try:
        personas = [get_persona(p.strip(), settings.home) for p in (persona or "").split(",") if p.strip()]
        extra = tuple(c.strip().lower() for c in (capability or "").split(",") if c.strip())
        plans = plan_agents(agents, cli, personas, extra)
        providers = load_providers(settings.home)
    except (PersonaError, UnknownCliError, ProviderError) as error:
        raise LaunchError(str(error)) from None
    if url is not None:
        if not broker_is_up(url):
            raise LaunchError(
                f"no aiswarm broker answers at {url}: start one with `aiswarm serve`, or drop --url"
            )
        broker_url = url
    else:
        broker_url = local_broker_url(settings)
        if not broker_is_up(broker_url):
            broker_url = start_broker(settings)
    admin_token = read_token_file(settings.home / ADMIN_TOKEN_FILE)
    if admin_token is None:
        raise LaunchError(
            f"no admin token in {settings.home}: is --home the home the broker at {broker_url} serves?"
        )
    config = LaunchConfig(
        agents=plans,
        broker_url=broker_url,
        admin_token=admin_token,
        home=settings.home,
        workdir=directory,
        mode="session" if mode == "session" else "per-task",
        model=model,
        endpoint_url=model_endpoint,
        endpoint_api_key=model_api_key,
        endpoint_model=model_name,
        task_timeout=task_timeout,
        cool_down_seconds=cool_down,
        grace_seconds=grace,
        providers=providers,
        probe_seconds=probe_interval,
        isolation="worktree" if isolation == "worktree" else "none" if isolation == "none" else "auto",
        merge_mode=MergeMode(merge),
        merge_hook=merge_hook,
        log_format="json" if log_format == "json" else "text",
        warm_pool=warm_pool,
    )
    errors = Console(stderr=True)
    supervisor = Supervisor(config)
    # names another running launch holds are taken by the next free number (qwen-1 -> qwen-3)
    names = ", ".join(supervisor.reserve_names())
    errors.print(
        f"aiswarm launch: {names} on {broker_url} ({mode}); logs in {settings.home / 'logs'}",
        highlight=False,
        soft_wrap=True,
    )
    problems = supervisor.preflight()
    for name, lines in problems.items():
        for line in lines:
            errors.print(f"aiswarm launch: {name} takes no work: {line}", highlight=False, soft_wrap=True)
    from launcher.a2a_worker import A2AWorker, load_remote_agents

    remote = [A2AWorker(spec, broker_url, admin_token) for spec in load_remote_agents(settings.home)]
    if len(problems) == len(plans) and not remote:
        raise LaunchError(
            "no agent can work: fix the problems above (`aiswarm doctor` checks them), then relaunch"
        )
    if remote:
        errors.print(
            "aiswarm launch: remote A2A agents "
            + ", ".join(f"{w.spec.agent_name} ({w.spec.persona})" for w in remote),
            highlight=False,
        )
    show_ui = not no_ui and sys.stdout.isatty()
    asyncio.run(_supervise(supervisor, show_ui, remote))
    errors.print("aiswarm launch: stopped", highlight=False)


async def _supervise(supervisor: Supervisor, show_ui: bool, remote: list[A2AWorker] | None = None) -> None:
    from launcher.status_view import show_live

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.stop)
    ui = asyncio.create_task(show_live(supervisor)) if show_ui else None
    forwarders = [asyncio.create_task(worker.run(), name=worker.spec.agent_name) for worker in remote or []]
    try:
        await supervisor.run()
    finally:
        for forwarder in forwarders:
            forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await forwarder
        if ui is not None:
            ui.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ui


def logs(
    agent: Annotated[str | None, typer.Argument(help="The agent's name, e.g. qwen-1.")] = None,
    task: Annotated[
        int | None,
        typer.Option(
            "--task",
            help="Every line about this task, from the broker and each agent that tried it, in time order.",
        ),
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --task: print the JSON lines as they are.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Print an agent's log ($AISWARM_HOME/logs/<agent>.log), or with --task the story of one task."""
    from aiswarm_server.tasklog import format_task_line, task_lines

    logs_dir = _settings(home).home / "logs"
    if task is not None:
        lines = task_lines(logs_dir, task) if logs_dir.is_dir() else []
        if not lines:
            raise LaunchError(
                f"no JSON log lines about task {task} in {logs_dir}: run `aiswarm serve` and `aiswarm launch` "
                "with AISWARM_LOG_FORMAT=json to record them."
            )
        for line in lines:
            sys.stdout.write((json.dumps(line) if as_json else format_task_line(line)) + "\n")
        return
    if agent is None:
        raise LaunchError("name an agent (`aiswarm logs qwen-1`) or a task (`aiswarm logs --task 12`).")
    path = logs_dir / f"{agent}.log"
    if not path.exists():
        raise LaunchError(f"no log for agent {agent!r} at {path}: has it been launched with this --home?")
    with open(path, encoding="utf-8", errors="replace") as fh:
        sys.stdout.write(fh.read())
        sys.stdout.flush()
        while follow:
            line = fh.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.3)


def doctor(
    cli: Annotated[
        list[str] | None, typer.Option("--cli", help="Only this CLI (repeatable). \\[default: all]")
    ] = None,
    url: Annotated[str | None, typer.Option(envvar="AISWARM_URL", help="Broker MCP URL to check.")] = None,
    home: HomeOption = None,
) -> None:
    """Check the CLIs (installed, version, Node, logins) and the broker."""
    from aiswarm_server.broker_client import local_broker_url
    from launcher.adapters import GenericCliError, UnknownCliError, register_configured_clis
    from launcher.doctor import render_doctor, run_doctor

    settings = _settings(home)
    try:
        register_configured_clis(settings.home / "config.toml")
        report = run_doctor(settings.home, broker_url=url or local_broker_url(settings), names=cli or None)
    except (GenericCliError, UnknownCliError) as error:
        raise LaunchError(str(error)) from None
    render_doctor(report)


def install_cli(
    name: Annotated[str, typer.Argument(help="qwen, gemini or opencode.")],
    home: HomeOption = None,
) -> None:
    """Install a pinned CLI (and Node 22 if needed) into $AISWARM_HOME/clis/<name>."""
    from launcher.adapters.install import InstallError
    from launcher.adapters.install import install_cli as install

    try:
        result = install(name, _settings(home).home)
    except InstallError as error:
        raise LaunchError(str(error)) from None
    done = "installed" if result.installed_now else "already installed"
    sys.stdout.write(f"{result.package}@{result.version} {done}: {result.binary}\n")
