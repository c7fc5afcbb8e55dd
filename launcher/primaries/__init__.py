"""Putting aiswarm into a primary agent's MCP config: ``aiswarm install-client NAME``.

One module per client (``claude``, ``codex``, ``gemini``, ``opencode``, ``qwen``), each a :class:`McpClient`
subclass; the shared work (parse, plan, diff, backup, atomic write, removal) lives in :mod:`launcher.primaries.base`.
Adding a client is one module and one line in ``_CLIENTS``.
"""

from __future__ import annotations

import typer

from launcher.primaries.base import AiswarmServer, ClientConfigError, ConfigChange, McpClient, Scope
from launcher.primaries.claude import ClaudeCodeClient
from launcher.primaries.codex import CodexClient
from launcher.primaries.gemini import GeminiClient
from launcher.primaries.opencode import OpencodeClient
from launcher.primaries.qwen import QwenClient

_CLIENTS: dict[str, type[McpClient]] = {
    client.name: client
    for client in (ClaudeCodeClient, CodexClient, GeminiClient, OpencodeClient, QwenClient)
}


def known_clients() -> list[str]:
    """Names ``install-client`` accepts."""
    return sorted(_CLIENTS)


def get_client(name: str) -> McpClient:
    """The client called ``name``, or a one-line refusal listing the known ones."""
    try:
        return _CLIENTS[name.strip().lower()]()
    except KeyError:
        raise ClientConfigError(
            f"unknown client {name!r}: known clients are {', '.join(known_clients())}"
        ) from None


def install_client_command(app: typer.Typer) -> None:
    """Register ``install-client`` on ``app``."""
    from launcher.primaries.command import install_client

    app.command("install-client")(install_client)


__all__ = [
    "AiswarmServer",
    "ClientConfigError",
    "ConfigChange",
    "McpClient",
    "Scope",
    "get_client",
    "install_client_command",
    "known_clients",
]
