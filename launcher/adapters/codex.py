"""codex (``@openai/codex``): settings in ``$CODEX_HOME/config.toml``.

Private home (``CODEX_HOME=$AISWARM_HOME/agents/<name>``)::

    config.toml   written by aiswarm (0600): MCP entry, model provider, bounded retries, no analytics
    auth.json     copy of the user's ``~/.codex/auth.json`` (ChatGPT login or stored API key)

codex refreshes a ChatGPT login's tokens in ``auth.json`` and may rotate the refresh token, so the
file is copied in and a refreshed copy carried back (``CliAdapter.return_logins``), as for qwen.
codex keeps its own state (sessions, logs, SQLite files) beside them; ``--ephemeral`` keeps a
worker's runs from piling up sessions.

With a custom endpoint the model provider ``aiswarm`` speaks the Responses API at the endpoint's
``.../v1`` with the key in ``AISWARM_MODEL_API_KEY`` (never written to disk). codex puts the
broker's tools in the namespace ``mcp__aiswarm``; it has no write-file tool of its own and edits
through its shell. Headless runs skip approvals and the sandbox, as ``--yolo`` does for qwen.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from typing_extensions import override

from launcher.adapters.base import (
    AGENT_HEADER,
    MCP_SERVER_NAME,
    AgentHome,
    AgentSpec,
    CarriedCredential,
    CliAdapter,
    CredentialFinding,
    TokenUsage,
    bearer_headers,
    chosen_model,
    deep_merge,
    json_lines,
)
from launcher.adapters.settings_files import write_private_toml

ENDPOINT_PROVIDER = "aiswarm"
"""codex's ``model_providers`` id for the custom endpoint."""

OPENAI_API = "https://api.openai.com/v1"
"""The endpoint's base URL when it names none (a key for OpenAI's own API)."""

ENDPOINT_KEY_VARIABLE = "AISWARM_MODEL_API_KEY"
"""The variable the endpoint's API key is passed in (``env_key`` of the provider)."""

_CARRIED_SETTINGS = (
    "model",
    "model_provider",
    "model_providers",
    "model_reasoning_effort",
    "profile",
    "profiles",
)
"""Keys of the user's ``config.toml`` that choose the login and model: copied into the agent's config."""


class CodexAdapter(CliAdapter):
    """codex, headless with ``exec --json --ephemeral --dangerously-bypass-approvals-and-sandbox PROMPT``."""

    name: ClassVar[str] = "codex"

    def user_config_dir(self, user_home: Path, env: Mapping[str, str] | None = None) -> Path:
        """The user's own codex directory: their ``$CODEX_HOME`` if set, else ``~/.codex``."""
        own = (env or {}).get("CODEX_HOME")
        return Path(own).expanduser() if own else user_home / ".codex"

    @override
    def _settings_path(self, root: Path) -> Path:
        return root / "config.toml"

    @override
    def _write_settings(self, path: Path, settings: dict[str, Any]) -> None:
        write_private_toml(path, settings)

    @override
    def _home_env(self, agent: AgentSpec, root: Path) -> dict[str, str]:
        return {"CODEX_HOME": str(root)}

    @override
    def _build_settings(
        self, agent: AgentSpec, root: Path, env: Mapping[str, str], carried: list[CarriedCredential]
    ) -> dict[str, Any]:
        user_dir = self.user_config_dir(agent.resolved_user_home(), env)
        self._carry_files(user_dir, root, [("auth-file", "auth.json")], "copy", carried, write_back=True)
        settings = self._carry_user_toml(user_dir / "config.toml", carried)
        self._carry_env_keys(agent, env, carried)
        retries = max(agent.model_max_attempts - 1, 1)
        ours: dict[str, Any] = {
            "check_for_update_on_startup": False,
            "mcp_servers": {
                MCP_SERVER_NAME: {
                    "url": agent.broker_url,
                    "http_headers": bearer_headers(agent),
                    "tool_timeout_sec": agent.tool_timeout_ms // 1000,
                    "startup_timeout_sec": 30,
                }
            },
            # codex 0.171 defers MCP tools behind its tool_search by default: a worker needs the broker's at once.
            "features": {"tool_search_always_defer_mcp_tools": False},
            "analytics": {"enabled": False},
            "feedback": {"enabled": False},
            "history": {"persistence": "none"},
        }
        model = chosen_model(agent)
        if model:
            ours["model"] = model
        if agent.endpoint is not None:
            for key in ("model_provider", "profile", "profiles"):
                settings.pop(key, None)
            ours["model_provider"] = ENDPOINT_PROVIDER
            ours["model_providers"] = {
                ENDPOINT_PROVIDER: {
                    "name": "aiswarm model endpoint",
                    "base_url": agent.endpoint.base_url or OPENAI_API,
                    "env_key": ENDPOINT_KEY_VARIABLE,
                    "wire_api": "responses",
                    "http_headers": {AGENT_HEADER: agent.name},
                    # Measured: with codex's defaults a permanent 401 or 429 took 5 reconnects before it gave up.
                    "request_max_retries": retries,
                    "stream_max_retries": retries,
                }
            }
        return deep_merge(settings, ours)

    def _carry_user_toml(self, path: Path, carried: list[CarriedCredential]) -> dict[str, Any]:
        """The login and model choices of the user's ``config.toml``; {} when missing or unreadable."""
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        settings = {k: v for k, v in document.items() if k in _CARRIED_SETTINGS}
        if settings:
            carried.append(CarriedCredential(kind="settings", source=str(path), how="settings"))
        return settings

    @override
    def _run_env(self, agent_home: AgentHome) -> dict[str, str]:
        endpoint = agent_home.spec.endpoint
        return {ENDPOINT_KEY_VARIABLE: endpoint.api_key} if endpoint is not None else {}

    @override
    def _arguments(self, agent_home: AgentHome, prompt: str, model: str | None) -> list[str]:
        args = [
            "exec",
            "--json",
            "--ephemeral",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",
        ]
        return [*args, "--model", model, prompt] if model else [*args, prompt]

    @override
    def _credential_files(self, user_home: Path, env: Mapping[str, str]) -> Iterable[tuple[str, Path]]:
        return [("codex-auth", self.user_config_dir(user_home, env) / "auth.json")]

    @override
    def _credential_env_vars(self) -> tuple[str, ...]:
        return ("CODEX_API_KEY", "OPENAI_API_KEY")

    @override
    def _settings_credentials(self, user_home: Path, env: Mapping[str, str]) -> list[CredentialFinding]:
        path = self.user_config_dir(user_home, env) / "config.toml"
        provider = self._carry_user_toml(path, []).get("model_provider")
        if isinstance(provider, str) and provider != "openai":
            return [CredentialFinding(kind="settings", detail=f"{path}: model_provider={provider}")]
        return []

    @override
    def _error_text(self, stdout: str, stderr: str) -> str:
        """The message of codex's ``turn.failed`` event (or its last ``error`` event)."""
        failed = [e for e in json_lines(stdout) if e.get("type") in ("turn.failed", "error")]
        for event in reversed(failed):
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else event.get("message")
            if isinstance(message, str) and message and not message.startswith("Reconnecting"):
                return message
        return ""

    @override
    def final_answer(self, stdout: str) -> str:
        """The text of codex's last ``agent_message`` item."""
        answer = ""
        for event in json_lines(stdout):
            item = event.get("item") if event.get("type") == "item.completed" else None
            if (
                isinstance(item, dict)
                and item.get("type") == "agent_message"
                and isinstance(item.get("text"), str)
            ):
                answer = item["text"]
        return answer

    @override
    def parse_usage(self, stdout: str) -> TokenUsage | None:
        """Summed over the ``turn.completed`` events: ``usage.input_tokens``, ``cached_input_tokens``, output."""
        usage: TokenUsage | None = None
        for event in json_lines(stdout):
            tokens = event.get("usage") if event.get("type") == "turn.completed" else None
            if not isinstance(tokens, dict):
                continue
            usage = usage or TokenUsage()
            inp = int(tokens.get("input_tokens") or 0)
            out = int(tokens.get("output_tokens") or 0)
            usage.input_tokens += inp
            usage.output_tokens += out
            usage.cached_tokens += int(tokens.get("cached_input_tokens") or 0)
            usage.total_tokens += inp + out
        return usage
