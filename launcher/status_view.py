"""The live status table of ``aiswarm launch``: one row per agent, refreshed in place."""

from __future__ import annotations

import asyncio
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from launcher.supervisor import AgentState, Supervisor

_COLOURS = {
    AgentState.RUNNING: "green",
    AgentState.IDLE: "cyan",
    AgentState.COOLING: "yellow",
    AgentState.CIRCUIT_OPEN: "red",
    AgentState.BACKOFF: "red",
    AgentState.STOPPING: "magenta",
    AgentState.STOPPED: "dim",
}


def status_table(supervisor: Supervisor, now: float | None = None) -> Table:
    """The agents' table: agent, CLI, persona, state, current task, runs, tokens, last error, cool-down."""
    now = time.time() if now is None else now
    title = "aiswarm launch: draining (Ctrl-C again to kill)" if supervisor.stopping else "aiswarm launch"
    table = Table(title=title, box=None, title_justify="left")
    for column in ("agent", "cli", "persona", "state", "task", "runs", "tokens", "cool-down", "last error"):
        table.add_column(column)
    for view in supervisor.views.values():
        colour = _COLOURS.get(view.state, "white")
        cooling = max(0.0, view.cool_down_until - now)
        table.add_row(
            view.name,
            view.cli,
            view.persona or "",
            f"[{colour}]{view.state.value}[/{colour}]" + (f" ({view.circuit})" if view.circuit else ""),
            f"#{view.task_id}" if view.task_id else "",
            str(view.runs),
            str(view.tokens or ""),
            f"{cooling:.0f}s" if cooling else "",
            view.last_error,
        )
    return table


async def show_live(supervisor: Supervisor, console: Console | None = None, refresh: float = 0.5) -> None:
    """Redraw the table until cancelled."""
    with Live(status_table(supervisor), console=console, refresh_per_second=4, transient=False) as live:
        while True:
            await asyncio.sleep(refresh)
            live.update(status_table(supervisor))
