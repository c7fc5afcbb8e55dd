"""qwen-code (``@qwen-code/qwen-code``): settings in ``$QWEN_HOME/settings.json``.

Private home (``QWEN_HOME=$AISWARM_HOME/agents/<name>``)::

    settings.json      written by aiswarm (0600): MCP entry, limits, retries, privacy
    oauth_creds.json   copy of the user's ~/.qwen/oauth_creds.json (Qwen OAuth login)
    .env               -> the user's ~/.qwen/.env, when present

qwen replaces ``oauth_creds.json`` by rename when it refreshes the token, and the refresh may
rotate the refresh token, leaving the user's copy dead. So the file is copied in before each run
(when the user's is newer) and, while the run goes on and after it, a refreshed copy is carried back
to the user's file: atomically, only when newer and a JSON object (``CliAdapter.return_logins``).
The next agent to start then copies the live token in instead of refreshing with a spent one.
"""

from __future__ import annotations

import json
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
    endpoint_kind,
    http_mcp_servers,
    last_json_value,
    no_usage_statistics,
    pick,
)
from launcher.providers import ProviderKind

SETTINGS_VERSION = 4
"""qwen 0.24 rewrites a settings file without ``$version: 4`` on first run; writing it avoids that."""

_CARRIED_SETTINGS = (
    "security.auth",
    "model.name",
    "model.baseUrl",
    "model.generationConfig",
    "modelProviders",
    "env",
    "proxy",
)
"""Keys of the user's ~/.qwen/settings.json that choose the login and model: copied into the agent's settings."""


_AUTH_TYPE = {
    ProviderKind.OPENAI_COMPATIBLE: "openai",
    ProviderKind.GEMINI_API: "gemini",
    ProviderKind.ANTHROPIC_COMPATIBLE: "anthropic",
}
"""``security.auth.selectedType`` for each kind of provider."""

_PROVIDER_ENV = {
    ProviderKind.OPENAI_COMPATIBLE: ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"),
    ProviderKind.GEMINI_API: ("GOOGLE_GEMINI_BASE_URL", "GEMINI_API_KEY", "GEMINI_MODEL"),
    ProviderKind.ANTHROPIC_COMPATIBLE: ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_MODEL"),
}
"""The variables qwen reads a provider's base URL, key and model from, per kind."""


class QwenAdapter(CliAdapter):
    """qwen-code, headless with ``-p PROMPT --yolo --output-format json``."""

    name: ClassVar[str] = "qwen"
    exit_codes: ClassVar[Mapping[int, tuple[OutcomeKind, str]]] = {
        53: (OutcomeKind.TURN_LIMIT, "qwen stopped at the session turn limit (exit 53)"),
        55: (OutcomeKind.TURN_LIMIT, "qwen stopped at the wall-time or tool-call limit (exit 55)"),
    }
    starts_warm: ClassVar[bool] = True
    rate_limit_lines: ClassVar[tuple[re.Pattern[str], ...]] = (re.compile(r"Retrying in \d+\s*s", re.I),)

    def user_config_dir(self, user_home: Path, env: Mapping[str, str] | None = None) -> Path:
        """The user's own qwen directory: their ``$QWEN_HOME`` if set, else ``~/.qwen``."""
        own = (env or {}).get("QWEN_HOME")
        return Path(own).expanduser() if own else user_home / ".qwen"

    def _settings_path(self, root: Path) -> Path:
        return root / "settings.json"

    def _home_env(self, agent: AgentSpec, root: Path) -> dict[str, str]:
        return {"QWEN_HOME": str(root)}

    def _build_settings(
        self, agent: AgentSpec, root: Path, env: Mapping[str, str], carried: list[CarriedCredential]
    ) -> dict[str, Any]:
        user_dir = self.user_config_dir(agent.resolved_user_home(), env)
        self._carry_files(user_dir, root, [("oauth", "oauth_creds.json")], "copy", carried, write_back=True)
        self._carry_files(user_dir, root, [("dotenv", ".env")], "symlink", carried)
        settings = self._carry_user_settings(user_dir / "settings.json", _CARRIED_SETTINGS, carried)
        self._carry_env_keys(agent, env, carried)
        model = chosen_model(agent)
        ours: dict[str, Any] = {
            "$version": SETTINGS_VERSION,
            "mcpServers": http_mcp_servers(agent, alwaysLoadTools=True),
            # The idle timeout must outlast the longest tool call, or qwen abandons a parked wait.
            "mcp": {"toolIdleTimeoutMs": agent.tool_timeout_ms + 60_000},
            **no_usage_statistics(),
            "general": {"enableAutoUpdate": False},
            "model": {
                "maxSessionTurns": agent.max_turns,
                "maxWallTimeSeconds": agent.max_wall_seconds,
                # Measured: maxRetries 2 / 2 s / 4 s gives up on a permanent 429 in ~70 s instead of ~45 min.
                "generationConfig": {
                    "maxRetries": max(agent.model_max_attempts - 1, 1),
                    "retryInitialDelayMs": 2000,
                    "retryMaxDelayMs": 4000,
                    "customHeaders": {AGENT_HEADER: agent.name},
                },
            },
        }
        if model:
            ours["model"]["name"] = model
        if agent.endpoint is not None:
            ours["security"] = {"auth": {"selectedType": _AUTH_TYPE[endpoint_kind(agent)]}}
            settings.pop("modelProviders", None)
        return deep_merge(settings, ours)

    def _run_env(self, agent_home: AgentHome) -> dict[str, str]:
        # QWEN_CODE_NO_RELAUNCH: qwen otherwise re-execs Node to raise its heap limit (measured 2.3 s -> 1.6 s to
        # the first model request, with the compile cache); a headless task stays far below Node's default heap.
        env = {"QWEN_USAGE_STATISTICS_ENABLED": "false", "QWEN_CODE_NO_RELAUNCH": "true"}
        endpoint = agent_home.spec.endpoint
        if endpoint is not None:
            base_var, key_var, model_var = _PROVIDER_ENV[endpoint.kind]
            env[key_var] = endpoint.api_key
            if endpoint.base_url:
                env[base_var] = endpoint.base_url
            model = chosen_model(agent_home.spec)
            if model:
                env[model_var] = model
        return env

    def _arguments(self, agent_home: AgentHome, prompt: str, model: str | None) -> list[str]:
        args = ["-p", prompt, "--yolo", "--output-format", "json"]
        return [*args, "--model", model] if model else args

    def _warm_arguments(self, agent_home: AgentHome, model: str | None) -> list[str]:
        # Without -p, qwen reads its prompt from a piped stdin after config.initialize() and the MCP servers.
        args = ["--yolo", "--output-format", "json"]
        return [*args, "--model", model] if model else args

    def _credential_files(self, user_home: Path, env: Mapping[str, str]) -> Iterable[tuple[str, Path]]:
        return [("qwen-oauth", self.user_config_dir(user_home, env) / "oauth_creds.json")]

    def _credential_env_vars(self) -> tuple[str, ...]:
        return ("OPENAI_API_KEY", "DASHSCOPE_API_KEY", "ANTHROPIC_API_KEY")

    def _settings_credentials(self, user_home: Path, env: Mapping[str, str]) -> list[CredentialFinding]:
        path = self.user_config_dir(user_home, env) / "settings.json"
        chosen = pick(read_json_object(path), "security.auth.selectedType", "security.auth.apiKey", "env")
        found: list[CredentialFinding] = []
        selected = chosen.get("security", {}).get("auth", {}).get("selectedType")
        if isinstance(selected, str):
            found.append(
                CredentialFinding(kind="settings", detail=f"{path}: security.auth.selectedType={selected}")
            )
        if chosen.get("security", {}).get("auth", {}).get("apiKey"):
            found.append(CredentialFinding(kind="settings-api-key", detail=f"{path}: security.auth.apiKey"))
        keys = (
            [k for k in chosen.get("env", {}) if k.endswith("_API_KEY")]
            if isinstance(chosen.get("env"), dict)
            else []
        )
        found += [CredentialFinding(kind="settings-api-key", detail=f"{path}: env.{k}") for k in keys]
        return found

    def _error_text(self, stdout: str, stderr: str) -> str:
        texts: list[str] = []
        events = last_json_value(stdout)
        for event in events if isinstance(events, list) else [events]:
            if isinstance(event, dict) and event.get("type") == "result" and event.get("is_error"):
                error = event.get("error")
                texts.append(json.dumps(error) if error else str(event.get("subtype")))
        tail = last_json_value(stderr)
        if isinstance(tail, dict) and isinstance(tail.get("error"), dict):
            texts.append(str(tail["error"].get("message", "")))
        elif stderr.strip() and texts:
            texts.append(stderr.strip().splitlines()[-1])
        return " | ".join(t for t in texts if t)

    def final_answer(self, stdout: str) -> str:
        """The ``result`` of the successful ``result`` event in qwen's JSON event array."""
        events = last_json_value(stdout)
        for event in reversed(events if isinstance(events, list) else [events]):
            if isinstance(event, dict) and event.get("type") == "result":
                text = event.get("result")
                return text if isinstance(text, str) and not event.get("is_error") else ""
        return ""

    def parse_usage(self, stdout: str) -> TokenUsage | None:
        """From the ``result`` event of qwen's JSON event array: ``usage.input_tokens`` etc."""
        events = last_json_value(stdout)
        for event in reversed(events if isinstance(events, list) else [events]):
            if (
                isinstance(event, dict)
                and event.get("type") == "result"
                and isinstance(event.get("usage"), dict)
            ):
                usage = event["usage"]
                inp = int(usage.get("input_tokens") or 0)
                out = int(usage.get("output_tokens") or 0)
                cached = int(usage.get("cache_read_input_tokens") or usage.get("cached_tokens") or 0)
                total = int(usage.get("total_tokens") or inp + out)
                turns = event.get("num_turns")
                return TokenUsage(
                    input_tokens=inp,
                    output_tokens=out,
                    cached_tokens=cached,
                    total_tokens=total,
                    requests=turns if isinstance(turns, int) else None,
                )
        return None
