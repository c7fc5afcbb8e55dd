"""OpenCode: ``mcp.<name>`` in ``$XDG_CONFIG_HOME/opencode/opencode.json`` or ``opencode.json`` in the project.

Entries are ``{"type": "remote", "url", "headers", "enabled", "timeout"}`` or ``{"type": "local", "command": [...],
"environment"}``; without ``timeout`` (ms) opencode gives up on a tool call after 60 s. The files are JSONC: an
``opencode.jsonc`` is edited instead when it is the one that exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from typing_extensions import override

from launcher.primaries.base import AiswarmServer, JsonClient

SCHEMA_URL = "https://opencode.ai/config.json"


def _json_or_jsonc(directory: Path, stem: str) -> Path:
    plain, with_comments = directory / f"{stem}.json", directory / f"{stem}.jsonc"
    return with_comments if with_comments.exists() and not plain.exists() else plain


class OpencodeClient(JsonClient):
    """OpenCode (``opencode``)."""

    name = "opencode"
    title = "OpenCode"
    servers_key = ("mcp",)
    scaffold: ClassVar[dict[str, Any]] = {"$schema": SCHEMA_URL}

    @override
    def user_config_path(self, home: Path, environ: Mapping[str, str]) -> Path:
        config_home = environ.get("XDG_CONFIG_HOME")
        base = Path(config_home).expanduser() if config_home else home / ".config"
        return _json_or_jsonc(base / "opencode", "opencode")

    @override
    def project_config_path(self, directory: Path) -> Path:
        return _json_or_jsonc(directory, "opencode")

    @override
    def server_entry(self, server: AiswarmServer) -> dict[str, Any]:
        if server.transport == "http":
            return {
                "type": "remote",
                "url": server.url,
                "headers": server.authorization,
                "enabled": True,
                "timeout": server.tool_timeout_ms,
            }
        entry: dict[str, Any] = {"type": "local", "command": list(server.command)}
        if server.env:
            entry["environment"] = dict(server.env)
        entry |= {"enabled": True, "timeout": server.tool_timeout_ms}
        return entry
