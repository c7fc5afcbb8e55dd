"""The ``aiswarm install-client`` command: options, output, and nothing else (the work is in the clients)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from aiswarm_server.cli import HomeOption
from aiswarm_server.config import default_home
from launcher.primaries.base import BACKUPS_DIR, ClientConfigError, Scope

_GIT_IGNORED, _GIT_NOT_IGNORED = 0, 1


def install_client(
    name: Annotated[str, typer.Argument(help="The client: claude, codex, gemini, opencode or qwen.")],
    directory: Annotated[
        Path | None,
        typer.Argument(
            help="The project directory, with --project. \\[default: current]", show_default=False
        ),
    ] = None,
    project: Annotated[
        bool, typer.Option("--project", help="Edit the project's config in DIR instead of your user config.")
    ] = False,
    stdio: Annotated[
        bool,
        typer.Option(
            "--stdio",
            envvar="AISWARM_CLIENT_STDIO",
            help="Configure `aiswarm mcp` as a local command instead of the broker's HTTP URL.",
        ),
    ] = False,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", envvar="AISWARM_URL", help="Broker MCP URL. \\[default: the broker serving --home]"
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            envvar="AISWARM_TOKEN_FILE",
            help="File holding the token to use. \\[default: $AISWARM_HOME/primary.token]",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the change as a unified diff; write nothing.")
    ] = False,
    remove: Annotated[bool, typer.Option("--remove", help="Take aiswarm's entry out again.")] = False,
    home: HomeOption = None,
) -> None:
    """Add aiswarm to a coding agent's MCP config (user scope, or --project DIR), with the primary token.

    The file is merged, not replaced: a timestamped backup of it goes to $AISWARM_HOME/backups first (never into
    the project). --remove undoes it.
    """
    from launcher.primaries import get_client
    from launcher.primaries.server import resolve_server

    client = get_client(name)
    if directory is not None and not project:
        raise ClientConfigError(
            f"{directory}: a directory is only taken with --project (--project {directory})"
        )
    project_dir = (directory or Path.cwd()).expanduser().absolute()
    if project and not project_dir.is_dir():
        raise ClientConfigError(f"--project {project_dir}: not a directory")
    scope = Scope.PROJECT if project else Scope.USER
    path = client.config_path(scope, project_dir, os.environ)
    aiswarm_home = (home or default_home()).expanduser().absolute()
    if remove:
        change = client.plan_removal(path)
    else:
        server = resolve_server(
            home=aiswarm_home, stdio=stdio or not client.speaks_http, url=url, token_file=token_file
        )
        change = client.plan_install(path, server)
    where = f"{client.title}'s {scope.value} config {change.path}"
    if not change.changed:
        done = "aiswarm is not in" if remove else "aiswarm is already installed, unchanged, in"
        typer.echo(f"{done} {where}")
        return
    if dry_run:
        sys.stdout.write(change.diff())
        typer.echo(f"(dry run: {change.path} was not changed)")
        return
    backup = change.apply(aiswarm_home / BACKUPS_DIR)
    kept = f" (backup: {backup})" if backup is not None else ""
    if remove:
        gone = "; the file held nothing else and was deleted" if change.after is None else ""
        typer.echo(f"removed aiswarm from {where}{gone}{kept}")
        return
    typer.echo(f"installed aiswarm in {where}{kept}")
    if scope is Scope.PROJECT and change.secret:
        typer.echo(
            f"note: {change.path} holds your primary token{_version_control_advice(change.path, project_dir)}"
        )
    hint = client.after_install_hint(scope)
    if hint:
        typer.echo(hint)


def _version_control_advice(path: Path, project_dir: Path) -> str:
    """What to do about a project config file holding the token, as git sees it (``git check-ignore``)."""
    try:
        checked = subprocess.run(
            ["git", "-C", str(path.parent), "check-ignore", "-q", str(path)],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        checked = None
    returncode = checked.returncode if checked is not None else None
    if returncode == _GIT_IGNORED:
        return " (git ignores it here)"
    if returncode == _GIT_NOT_IGNORED:
        return f": git would commit it, so add {_relative(path, project_dir)} to .gitignore (or use --stdio: no token in the file)"
    return ": keep it out of version control (or use --stdio: no token in the file)"


def _relative(path: Path, directory: Path) -> str:
    try:
        return str(path.relative_to(directory.resolve()))
    except ValueError:
        return str(path)
