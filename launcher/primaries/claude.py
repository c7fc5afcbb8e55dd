"""Claude Code: ``mcpServers`` in ``~/.claude.json`` (user scope) or ``.mcp.json`` in the project root.

``CLAUDE_CONFIG_DIR`` moves the user file to ``$CLAUDE_CONFIG_DIR/.claude.json``. Claude Code speaks streamable
HTTP (``"type": "http"`` with ``headers``) and honours a per-server ``timeout`` in milliseconds for tool calls.
Claude Code rewrites ``~/.claude.json`` while it runs: install while it is stopped, or restart it afterwards.

MCP Tasks need no setting: Claude Code (2.1.332, read from its bundle) declares the
``io.modelcontextprotocol/tasks`` extension by default in interactive sessions, over ``type: "http"`` entries, and the broker answers its submits with task handles;
``CLAUDE_CODE_DISABLE_MCP_TASKS`` turns that off, and headless ``claude -p`` does not declare it (it calls
``wait_for_tasks``). The ``timeout`` still matters for that long call.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from typing_extensions import override

from launcher.primaries.base import AiswarmServer, JsonClient, Scope


class ClaudeCodeClient(JsonClient):
    """Claude Code (``claude``)."""

    name = "claude"
    title = "Claude Code"

    @override
    def user_config_path(self, home: Path, environ: Mapping[str, str]) -> Path:
        moved_to = environ.get("CLAUDE_CONFIG_DIR")
        return (Path(moved_to).expanduser() if moved_to else home) / ".claude.json"

    @override
    def project_config_path(self, directory: Path) -> Path:
        return directory / ".mcp.json"

    @override
    def server_entry(self, server: AiswarmServer) -> dict[str, Any]:
        if server.transport == "http":
            return {
                "type": "http",
                "url": server.url,
                "headers": server.authorization,
                "timeout": server.tool_timeout_ms,
            }
        entry: dict[str, Any] = {
            "type": "stdio",
            "command": server.command[0],
            "args": list(server.command[1:]),
        }
        if server.env:
            entry["env"] = dict(server.env)
        entry["timeout"] = server.tool_timeout_ms
        return entry

    @override
    def after_install_hint(self, scope: Scope) -> str | None:
        if scope is Scope.PROJECT:
            return "restart Claude Code in that directory and approve the project server when it asks"
        return "restart Claude Code to load it (`claude mcp list` shows it)"
