"""Launcher commands added to the ``aiswarm`` app: launch, logs, doctor, install-cli."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the launcher's sub-commands to the main CLI."""
