"""The launcher's one error: a command cannot go ahead, and the message (one line) says what to do instead."""

from __future__ import annotations

from aiswarm_server.cli import CliError


class LaunchError(CliError):
    """A launcher command cannot go ahead; ``aiswarm``'s entry point prints the message as one line."""
