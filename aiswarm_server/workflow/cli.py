"""``aiswarm run FLOW.yaml``: submit a workflow, follow it live, print a summary; a re-run skips completed steps."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
import yaml
from rich.console import Console
from rich.table import Table

from aiswarm_server.broker_calls import local_broker_url, local_token
from aiswarm_server.config import BrokerSettings
from aiswarm_server.post_client import PostClient
from aiswarm_server.workflow.runner import FlowRunner, FlowSummary, StepOutcome
from aiswarm_server.workflow.spec import Workflow, load_workflow

console = Console()


def register(app: typer.Typer) -> None:
    """Attach ``run`` and ``plan`` to the main CLI."""
    app.command("run")(run)
    app.command("plan")(plan)


def record_path(home: Path, flow: Workflow, source: Path) -> Path:
    """Where the runs of this workflow file keep their record (one per file and flow name)."""
    where = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:10]
    return home / "flows" / f"{flow.name}-{where}.json"


def run(
    flow_file: Annotated[Path, typer.Argument(help="The workflow file (YAML).", metavar="FLOW.yaml")],
    working_dir: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Directory the tasks work in; the file's `working_dir` is relative to the file. [default: current]",
        ),
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Run every step again, ignoring earlier runs.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Only validate the file and show its steps.")
    ] = False,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            envvar="AISWARM_HOME",
            help="aiswarm home: database, tokens, logs. [default: ~/.aiswarm]",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", envvar="AISWARM_URL", help="Broker MCP URL. [default: the broker serving --home]"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run a workflow file: submit its tasks, follow them live, drive review loops, print a summary."""
    flow = load_workflow(flow_file)
    if check:
        _show_plan(flow)
        return
    settings = BrokerSettings(home=home.expanduser()) if home is not None else BrokerSettings()
    _run_flow(flow, flow_file, settings, url, working_dir, fresh=fresh, as_json=as_json)


def _run_flow(
    flow: Workflow,
    flow_file: Path,
    settings: BrokerSettings,
    url: str | None,
    working_dir: Path | None,
    *,
    fresh: bool,
    as_json: bool,
) -> None:
    if flow.working_dir is not None and working_dir is None:
        base = (flow_file.resolve().parent / flow.working_dir).resolve()
    else:
        base = (working_dir or Path.cwd()).resolve()
    if not base.is_dir():
        raise typer.BadParameter(f"{base} is not a directory: create it or pass --dir")

    def say(line: str) -> None:
        if not as_json:
            console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim]  {line}", highlight=False)

    async def go() -> FlowSummary:
        token = local_token(settings.home, "admin")
        async with PostClient(url or local_broker_url(settings), token) as broker:
            runner = FlowRunner(
                flow, broker, record_path(settings.home, flow, flow_file), base, on_event=say, fresh=fresh
            )
            return await runner.run()

    try:
        summary = asyncio.run(go())
    except KeyboardInterrupt:
        console.print(
            "interrupted: the submitted tasks keep running; run the same command again to follow them"
        )
        raise typer.Exit(130) from None
    if as_json:
        sys.stdout.write(json.dumps(summary.as_dict(), indent=2) + "\n")
    else:
        _show_summary(summary)
    if not summary.succeeded:
        raise typer.Exit(1)


def _show_plan(flow: Workflow, out: Console = console) -> None:
    table = Table("key", "title", "persona", "depends on", "retry", "review", box=None)
    for step in flow.in_dependency_order():
        retry = step.retry or flow.defaults.retry
        review = f"{step.review.persona or 'any'} x{step.review.rounds}" if step.review else ""
        table.add_row(
            step.key,
            step.title[:50],
            step.persona or flow.defaults.persona or "",
            ", ".join(step.depends_on),
            f"{retry.attempts} tries, {retry.delay:g}s x{retry.backoff:g}",
            review,
        )
    out.print(f"{flow.name}: {len(flow.tasks)} task(s), valid")
    out.print(table)


_STYLE = {
    StepOutcome.COMPLETED: "green",
    StepOutcome.REVIEW_EXHAUSTED: "yellow",
    StepOutcome.SKIPPED: "dim",
}


def _show_summary(summary: FlowSummary) -> None:
    table = Table("key", "outcome", "reviews", "tasks", "detail", box=None)
    for step in summary.steps:
        outcome = step.outcome.value + (" (earlier run)" if step.reused else "")
        table.add_row(
            step.key,
            f"[{_STYLE.get(step.outcome, 'red')}]{outcome}[/]",
            str(step.reviews) if step.reviews else "",
            " ".join(f"#{i}" for i in step.task_ids),
            step.detail[:80],
        )
    done = sum(s.outcome is StepOutcome.COMPLETED for s in summary.steps)
    console.print(f"\n{summary.name}: {done} of {len(summary.steps)} step(s) completed")
    console.print(table)


def plan(
    request: Annotated[str, typer.Argument(help="What you want done, in your own words.")],
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint",
            envvar="AISWARM_PLANNER_URL",
            help="OpenAI-compatible base URL (…/v1). [default: base_url under [planner] in config.toml]",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(envvar="AISWARM_PLANNER_MODEL", help="Model name. [default: [planner] model]"),
    ] = None,
    key_env: Annotated[
        str | None, typer.Option("--key-env", help="Environment variable holding the endpoint's API key.")
    ] = None,
    write: Annotated[
        Path | None,
        typer.Option("--write", help="Write the plan as a workflow file (run it with `aiswarm run`)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Submit the plan without asking.")] = False,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Ask the model again even if the answer is cached.")
    ] = False,
    working_dir: Annotated[
        Path | None, typer.Option("--dir", help="Directory the tasks work in. [default: current]")
    ] = None,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            envvar="AISWARM_HOME",
            help="aiswarm home: database, tokens, logs. [default: ~/.aiswarm]",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", envvar="AISWARM_URL", help="Broker MCP URL. [default: the broker serving --home]"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's summary as JSON.")] = False,
) -> None:
    """Turn a request into a workflow with a model, show it, and submit it (or write it to a file)."""
    from aiswarm_server.workflow.planner import context_text, make_plan, planner_config

    settings = BrokerSettings(home=home.expanduser()) if home is not None else BrokerSettings()
    config = planner_config(settings.home, endpoint, model, key_env)
    context = context_text(_personas(settings.home), asyncio.run(_agents(settings, url)))
    made = make_plan(request, config, context, settings.home / "plans" / "cache", fresh=fresh)
    if not made.cached:
        asyncio.run(_record_planner_usage(settings, url, config.base_url, config.model, made.usage))
    out = console if not as_json else Console(stderr=True)
    _show_plan(made.workflow, out)
    used = ", ".join(f"{k} {v}" for k, v in made.usage.items() if k.endswith("tokens"))
    out.print(
        f"from the cache ({made.cache_path})"
        if made.cached
        else f"model {config.model}: {used or 'no usage reported'}"
    )
    text = yaml.safe_dump(made.workflow.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
    if write is not None:
        write.write_text(text, encoding="utf-8")
        out.print(f"wrote {write}; run it with `aiswarm run {write}`")
        if not yes:
            return
    if not yes:
        if not sys.stdin.isatty():
            out.print("not submitted: pass --yes to submit, or --write FILE to keep it")
            return
        if not typer.confirm("Submit this plan?"):
            return
    flow_file = write or settings.home / "plans" / f"{made.workflow.name}-{made.cache_path.stem}.yaml"
    if write is None:
        flow_file.write_text(text, encoding="utf-8")
    _run_flow(
        made.workflow, flow_file, settings, url, working_dir or Path.cwd(), fresh=False, as_json=as_json
    )


async def _record_planner_usage(
    settings: BrokerSettings, url: str | None, base_url: str, model: str, usage: dict[str, int]
) -> None:
    """Keep the planner's model request with the workers' (``aiswarm usage``), when a broker answers."""
    from aiswarm_server.broker_calls import BrokerCallError, BrokerUnreachable
    from aiswarm_server.models import UsageRecord

    record = UsageRecord(
        agent="planner",
        cli="planner",
        provider=urlsplit(base_url).hostname or "",
        model=model[:200],
        input_tokens=max(0, usage.get("prompt_tokens", 0)),
        output_tokens=max(0, usage.get("completion_tokens", 0)),
        total_tokens=max(0, usage.get("total_tokens", 0)),
        requests=1,
    )
    try:
        token = local_token(settings.home, "admin")
        async with PostClient(url or local_broker_url(settings), token) as broker:
            await broker.record_usage(record)
    except (BrokerUnreachable, BrokerCallError):
        return


def _personas(home: Path) -> list[tuple[str, str]]:
    try:
        from launcher.personas import PersonaError, load_personas
    except ImportError:
        return []
    try:
        return [(p.name, p.description) for p in sorted(load_personas(home).values(), key=lambda p: p.name)]
    except PersonaError:
        return []


async def _agents(settings: BrokerSettings, url: str | None) -> list[tuple[str, str | None, str]]:
    """The registered agents, if a broker answers (the plan can still be made without one)."""
    from aiswarm_server.broker_calls import BrokerUnreachable

    try:
        token = local_token(settings.home, "admin")
        async with PostClient(url or local_broker_url(settings), token) as broker:
            agents = (await broker.list_agents()).agents
    except BrokerUnreachable:
        return []
    return [(a.name, a.persona, a.status.value) for a in agents]
