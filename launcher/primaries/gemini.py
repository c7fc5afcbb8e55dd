"""gemini-cli: ``mcpServers`` in ``~/.gemini/settings.json`` or ``.gemini/settings.json`` in the project.

``GEMINI_CLI_HOME=DIR`` moves the user file to ``DIR/.gemini/settings.json``. Streamable HTTP is ``httpUrl`` (``url``
means SSE); ``timeout`` is per tool call in milliseconds. A project's settings load only in a trusted folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from typing_extensions import override

from launcher.primaries.base import DESCRIPTION, AiswarmServer, JsonClient, Scope


class GeminiClient(JsonClient):
    """gemini-cli (``gemini``)."""

    name = "gemini"
    title = "gemini-cli"
    settings_dir = ".gemini"

    @override
    def user_config_path(self, home: Path, environ: Mapping[str, str]) -> Path:
        moved_to = environ.get("GEMINI_CLI_HOME")
        return (Path(moved_to).expanduser() if moved_to else home) / ".gemini" / "settings.json"

    @override
    def project_config_path(self, directory: Path) -> Path:
        return directory / self.settings_dir / "settings.json"

    @override
    def server_entry(self, server: AiswarmServer) -> dict[str, Any]:
        if server.transport == "http":
            entry: dict[str, Any] = {"httpUrl": server.url, "headers": server.authorization}
        else:
            entry = {"command": server.command[0], "args": list(server.command[1:])}
            if server.env:
                entry["env"] = dict(server.env)
        entry |= {"timeout": server.tool_timeout_ms, "description": DESCRIPTION}
        return entry

    @override
    def after_install_hint(self, scope: Scope) -> str | None:
        if scope is Scope.PROJECT:
            return (
                f"restart {self.title} in that directory; it loads project settings only in a trusted folder"
            )
        return f"restart {self.title} to load it (`/mcp` lists it)"
