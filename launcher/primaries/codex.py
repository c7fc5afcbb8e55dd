"""Codex: ``[mcp_servers.aiswarm]`` in ``~/.codex/config.toml`` or ``.codex/config.toml`` in the project.

``CODEX_HOME`` moves the user file to ``$CODEX_HOME/config.toml``. Codex speaks streamable HTTP (``url``, with static
headers in ``http_headers``; it refuses an inline ``bearer_token``) and stdio (``command``, ``args``, ``env``). Its
tool calls time out after 60 s unless ``tool_timeout_sec`` says otherwise. Codex rejects unknown keys in a server
table, so the entry holds only keys it documents. A project's config loads only in a trusted project.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from typing_extensions import override

from launcher.primaries.base import (
    SERVER_NAME,
    STDIO_STARTUP_SECONDS,
    AiswarmServer,
    ClientConfigError,
    McpClient,
    Scope,
)
from launcher.primaries.toml_tables import TomlDocument, TomlEditError

SERVERS_TABLE = "mcp_servers"


class CodexClient(McpClient):
    """OpenAI Codex CLI (``codex``)."""

    name = "codex"
    title = "Codex"

    @override
    def user_config_path(self, home: Path, environ: Mapping[str, str]) -> Path:
        moved_to = environ.get("CODEX_HOME")
        return (Path(moved_to).expanduser() if moved_to else home / ".codex") / "config.toml"

    @override
    def project_config_path(self, directory: Path) -> Path:
        return directory / ".codex" / "config.toml"

    @override
    def server_entry(self, server: AiswarmServer) -> dict[str, Any]:
        seconds = server.tool_timeout_ms // 1000
        if server.transport == "http":
            return {"url": server.url, "http_headers": server.authorization, "tool_timeout_sec": seconds}
        entry: dict[str, Any] = {"command": server.command[0], "args": list(server.command[1:])}
        if server.env:
            entry["env"] = dict(server.env)
        return entry | {"startup_timeout_sec": STDIO_STARTUP_SECONDS, "tool_timeout_sec": seconds}

    def _document(self, path: Path, text: str) -> TomlDocument:
        try:
            return TomlDocument(text)
        except TomlEditError as error:
            raise ClientConfigError(
                f"{path}: not valid TOML, {error}; fix it first, nothing was changed"
            ) from None

    @override
    def with_entry(self, path: Path, text: str | None, entry: dict[str, Any]) -> str:
        document = self._document(path, text or "")
        if document.get((SERVERS_TABLE, SERVER_NAME)) == entry:
            return document.text
        try:
            document.set_table((SERVERS_TABLE, SERVER_NAME), entry)
        except TomlEditError as error:
            raise ClientConfigError(f"{path}: cannot add aiswarm's entry: {error}") from None
        return document.text

    @override
    def without_entry(self, path: Path, text: str) -> str | None:
        document = self._document(path, text)
        try:
            removed = document.remove_table((SERVERS_TABLE, SERVER_NAME))
        except TomlEditError as error:
            raise ClientConfigError(f"{path}: cannot remove aiswarm's entry: {error}") from None
        if removed and not document.value and not document.has_comments:
            return None
        return document.text

    @override
    def after_install_hint(self, scope: Scope) -> str | None:
        if scope is Scope.PROJECT:
            return "restart Codex in that directory; it reads .codex/config.toml only in a trusted project"
        return "restart Codex to load it (`codex mcp list` shows it)"
