"""qwen-code: gemini-cli's settings format in ``~/.qwen/settings.json`` or ``.qwen/settings.json`` in the project.

``QWEN_HOME=DIR`` moves the user file to ``DIR/settings.json``. The entry also says ``alwaysLoadTools``: without
it qwen hides MCP tools behind its own tool-search tool.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from typing_extensions import override

from launcher.primaries.base import AiswarmServer
from launcher.primaries.gemini import GeminiClient


class QwenClient(GeminiClient):
    """qwen-code (``qwen``)."""

    name = "qwen"
    title = "qwen-code"
    settings_dir = ".qwen"

    @override
    def user_config_path(self, home: Path, environ: Mapping[str, str]) -> Path:
        moved_to = environ.get("QWEN_HOME")
        return Path(moved_to).expanduser() / "settings.json" if moved_to else home / ".qwen" / "settings.json"

    @override
    def server_entry(self, server: AiswarmServer) -> dict[str, Any]:
        return super().server_entry(server) | {"alwaysLoadTools": True}
