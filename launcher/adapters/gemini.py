"""gemini-cli (``@google/gemini-cli``): settings in ``$GEMINI_CLI_HOME/.gemini/settings.json``.

``GEMINI_CLI_HOME`` replaces the home directory for everything gemini keeps, so the private
home mirrors ``~/.gemini`` (``GEMINI_CLI_HOME=$AISWARM_HOME/agents/<name>``)::

    .gemini/settings.json           written by aiswarm (0600): MCP entry, attempts, turns, privacy
    .gemini/oauth_creds.json        copy of the user's (gemini rewrites it in place on token refresh)
    .gemini/gemini-credentials.json copy of the user's (encrypted-file token storage), when present
    .gemini/google_accounts.json    -> the user's (which Google account is signed in)
    .gemini/.env                    -> the user's ~/.gemini/.env, when present
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from aiswarm_server.files import read_json_object
from launcher.adapters.base import (
    AGENT_HEADER,
    AgentHome,
    AgentSpec,
    CarriedCredential,
    CliAdapter,
    CredentialFinding,
    OutcomeKind,
    TokenUsage,
    chosen_model,
    deep_merge,
    http_mcp_servers,
    last_json_value,
    no_usage_statistics,
    pick,
)

_CARRIED_SETTINGS = ("security.auth", "model.name", "billing")
"""Keys of the user's ~/.gemini/settings.json that choose the login and model."""

_COPIED = (("oauth", "oauth_creds.json"), ("encrypted-token-file", "gemini-credentials.json"))
_LINKED = (("google-accounts", "google_accounts.json"), ("dotenv", ".env"))


class GeminiAdapter(CliAdapter):
    """gemini-cli, headless with ``-p PROMPT --output-format json --yolo``."""

    name: ClassVar[str] = "gemini"
    exit_codes: ClassVar[Mapping[int, tuple[OutcomeKind, str]]] = {
        173: (OutcomeKind.RATE_LIMITED, "gemini gave up on a rate-limited model (exit 173 = HTTP 429)"),
        41: (OutcomeKind.AUTH_FAILURE, "gemini is not logged in or its credentials were refused (exit 41)"),
        42: (OutcomeKind.CONFIG_ERROR, "gemini rejected its input (exit 42)"),
        53: (OutcomeKind.TURN_LIMIT, "gemini stopped at the session turn limit (exit 53)"),
        55: (
            OutcomeKind.CONFIG_ERROR,
            "gemini refused an untrusted folder (exit 55): GEMINI_CLI_TRUST_WORKSPACE missing",
        ),
    }
    starts_warm: ClassVar[bool] = True
    rate_limit_lines: ClassVar[tuple[re.Pattern[str], ...]] = (re.compile(r"Retrying after", re.I),)

    def user_config_dir(self, user_home: Path, env: Mapping[str, str] | None = None) -> Path:
        """The user's own ``.gemini`` directory (under their ``$GEMINI_CLI_HOME`` if set)."""
        own = (env or {}).get("GEMINI_CLI_HOME")
        return (Path(own).expanduser() if own else user_home) / ".gemini"

    def _settings_path(self, root: Path) -> Path:
        return root / ".gemini" / "settings.json"

    def _home_env(self, agent: AgentSpec, root: Path) -> dict[str, str]:
        return {"GEMINI_CLI_HOME": str(root)}

    def _build_settings(
        self, agent: AgentSpec, root: Path, env: Mapping[str, str], carried: list[CarriedCredential]
    ) -> dict[str, Any]:
        user_dir = self.user_config_dir(agent.resolved_user_home(), env)
        private_dir = root / ".gemini"
        private_dir.mkdir(parents=True, exist_ok=True)
        self._carry_files(user_dir, private_dir, _COPIED, "copy", carried)
        self._carry_files(user_dir, private_dir, _LINKED, "symlink", carried)
        settings = self._carry_user_settings(user_dir / "settings.json", _CARRIED_SETTINGS, carried)
        self._carry_env_keys(agent, env, carried)
        ours: dict[str, Any] = {
            "mcpServers": http_mcp_servers(agent),
            **no_usage_statistics(),
            "general": {
                # Default 10 attempts with backoff took ~4 minutes on a permanent 429 (measured).
                "maxAttempts": min(max(agent.model_max_attempts, 1), 10),
                "enableAutoUpdate": False,
                "enableAutoUpdateNotification": False,
            },
            "model": {"maxSessionTurns": agent.max_turns},
        }
        model = chosen_model(agent)
        if model:
            ours["model"]["name"] = model
        if agent.endpoint is not None:
            # The base URL is honoured only with the API-key auth type.
            ours["security"] = {"auth": {"selectedType": "gemini-api-key"}}
        return deep_merge(settings, ours)

    def _run_env(self, agent_home: AgentHome) -> dict[str, str]:
        env = {
            "GEMINI_CLI_TRUST_WORKSPACE": "true",
            "GEMINI_CLI_CUSTOM_HEADERS": f"{AGENT_HEADER}: {agent_home.spec.name}",
            "GEMINI_TELEMETRY_ENABLED": "false",
            # gemini otherwise starts a second Node process to raise its heap limit: measured 1.7 s -> 1.1 s to the
            # first model request (with the compile cache); a headless task stays far below Node's default heap.
            "GEMINI_CLI_NO_RELAUNCH": "true",
        }
        endpoint = agent_home.spec.endpoint
        if endpoint is not None:
            env["GEMINI_API_KEY"] = endpoint.api_key
            if endpoint.base_url:
                env["GOOGLE_GEMINI_BASE_URL"] = endpoint.base_url
        return env

    def _arguments(self, agent_home: AgentHome, prompt: str, model: str | None) -> list[str]:
        args = ["-p", prompt, "--output-format", "json", "--yolo"]
        return [*args, "--model", model] if model else args

    def _warm_arguments(self, agent_home: AgentHome, model: str | None) -> list[str]:
        # Without -p, gemini reads its prompt from a piped stdin after config.initialize() (settings, MCP servers,
        # tools): measured 0.1-0.2 s from the prompt to the first model request, against 1.1 s for a cold start.
        args = ["--output-format", "json", "--yolo"]
        return [*args, "--model", model] if model else args

    def _credential_files(self, user_home: Path, env: Mapping[str, str]) -> Iterable[tuple[str, Path]]:
        user_dir = self.user_config_dir(user_home, env)
        return [
            ("google-oauth", user_dir / "oauth_creds.json"),
            ("google-oauth-encrypted", user_dir / "gemini-credentials.json"),
        ]

    def _credential_env_vars(self) -> tuple[str, ...]:
        return ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS")

    def _settings_credentials(self, user_home: Path, env: Mapping[str, str]) -> list[CredentialFinding]:
        path = self.user_config_dir(user_home, env) / "settings.json"
        selected = (
            pick(read_json_object(path), "security.auth.selectedType").get("security", {}).get("auth", {})
        )
        if isinstance(selected.get("selectedType"), str):
            return [
                CredentialFinding(
                    kind="settings", detail=f"{path}: security.auth.selectedType={selected['selectedType']}"
                )
            ]
        return []

    def _error_text(self, stdout: str, stderr: str) -> str:
        for text in (stdout, stderr):
            value = last_json_value(text)
            if isinstance(value, dict) and isinstance(value.get("error"), dict):
                error = value["error"]
                return f"{error.get('message', '')} (code {error.get('code')})"
        return ""

    def final_answer(self, stdout: str) -> str:
        """The ``response`` of gemini's JSON output."""
        value = last_json_value(stdout)
        response = value.get("response") if isinstance(value, dict) else None
        return response if isinstance(response, str) else ""

    def parse_usage(self, stdout: str) -> TokenUsage | None:
        """From ``stats.models.<model>.tokens`` (prompt, candidates, cached, total) summed over models."""
        value = last_json_value(stdout)
        models = value.get("stats", {}).get("models") if isinstance(value, dict) else None
        if not isinstance(models, dict) or not models:
            return None
        usage = TokenUsage(requests=0)
        for metrics in models.values():
            if not isinstance(metrics, dict):
                continue
            tokens = metrics.get("tokens") or {}
            usage.input_tokens += int(tokens.get("prompt") or tokens.get("input") or 0)
            usage.output_tokens += int(tokens.get("candidates") or 0)
            usage.cached_tokens += int(tokens.get("cached") or 0)
            usage.total_tokens += int(tokens.get("total") or 0)
            usage.requests = (usage.requests or 0) + int((metrics.get("api") or {}).get("totalRequests") or 0)
        return usage
