"""Model providers as configuration: which model service each agent's CLI talks to, and with which key.

The providers are named in ``$AISWARM_HOME/config.toml`` (the same file holds the broker's settings)::

    [providers.openrouter]
    kind = "openai-compatible"
    base_url = "https://openrouter.ai/api/v1"
    model = "qwen/qwen3-coder:free"
    key_env = "OPENROUTER_API_KEY"      # or: key_keyring = "openrouter" (OS keyring, service "aiswarm")
    requests_per_day = 50

    [providers.gemini-key]
    kind = "gemini-api"
    model = "gemini-2.5-flash"
    key_env = "GEMINI_API_KEY"

and chosen per agent with ``aiswarm launch --cli qwen@openrouter:2,gemini@gemini-key:2``. Every value can be
overridden from the environment (``AISWARM_PROVIDERS__OPENROUTER__MODEL=...``). ``--model-endpoint URL`` is the
one-line provider for every CLI (a local OpenAI-compatible server, the scripted model of the tests).

A key is read from its source when an agent's home is written (and again by each probe), never stored in the
config, never logged; an adapter writes it into the agent's home only where its CLI reads it (mode 0600) or
passes it in the CLI's environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import SettingsConfigDict

from aiswarm_server.config import ConfigFileError, HomeSettings, config_file

KEYRING_SERVICE = "aiswarm"
"""The OS keyring service aiswarm's provider keys are stored under (``keyring set aiswarm openrouter``)."""

COMMAND_LINE_PROVIDER = "endpoint"
"""The provider name ``--model-endpoint`` gives every agent."""

PROBE_TIMEOUT_SECONDS = 10.0

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ProviderKind(StrEnum):
    """The API a provider speaks (or the CLI's own login)."""

    OPENAI_COMPATIBLE = "openai-compatible"
    GEMINI_API = "gemini-api"
    ANTHROPIC_COMPATIBLE = "anthropic-compatible"
    CLI_LOGIN = "cli-login"


SPOKEN_BY: dict[str, frozenset[ProviderKind]] = {
    "qwen": frozenset(
        {ProviderKind.OPENAI_COMPATIBLE, ProviderKind.GEMINI_API, ProviderKind.ANTHROPIC_COMPATIBLE}
    ),
    "gemini": frozenset({ProviderKind.GEMINI_API}),
    "opencode": frozenset(
        {ProviderKind.OPENAI_COMPATIBLE, ProviderKind.GEMINI_API, ProviderKind.ANTHROPIC_COMPATIBLE}
    ),
}
"""The provider kinds each CLI can be pointed at (besides its own login, which every CLI has)."""


class ProviderError(ValueError):
    """A provider is misconfigured or its key cannot be read; the message is one line saying what to do."""


class Provider(BaseModel):
    """One model provider from the config file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="", pattern=rf"{_NAME}|^$")
    kind: ProviderKind
    base_url: str | None = None
    """The API root: ``https://openrouter.ai/api/v1`` (OpenAI-style, with ``/v1``), the bare host for Gemini and
    Anthropic APIs. None: the kind's public default."""
    model: str | None = None
    key_env: str | None = None
    """The environment variable holding the key."""
    key_keyring: str | None = None
    """The key's user name in the OS keyring under service ``aiswarm``."""
    requests_per_minute: int | None = Field(default=None, ge=1)
    requests_per_day: int | None = Field(default=None, ge=1)
    quota_resets_at: str = Field(default="00:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    """UTC ``HH:MM`` at which the day's budget starts again (Gemini's free tier: 07:00 or 08:00, midnight Pacific)."""

    @model_validator(mode="after")
    def _one_key_source(self) -> Provider:
        if self.key_env and self.key_keyring:
            raise ValueError("give key_env or key_keyring, not both")
        if self.kind is not ProviderKind.CLI_LOGIN and not (self.key_env or self.key_keyring):
            raise ValueError('needs a key source: key_env = "VAR" or key_keyring = "NAME"')
        return self

    def api_key(self, env: Mapping[str, str] | None = None) -> str:
        """The key, read now from its source; ProviderError (one line) when it is not there."""
        if self.kind is ProviderKind.CLI_LOGIN:
            return ""
        if self.key_env:
            value = (os.environ if env is None else env).get(self.key_env, "")
            if not value.strip():
                raise ProviderError(
                    f"provider {self.name}: ${self.key_env} is not set; export it, or name another key source "
                    f"in {CONFIG_HINT}"
                )
            return value.strip()
        return _keyring_key(self.name, self.key_keyring or "")

    def endpoint(self, env: Mapping[str, str] | None = None) -> ModelEndpoint | None:
        """The endpoint an agent's CLI is written to use (None for the CLI's own login)."""
        if self.kind is ProviderKind.CLI_LOGIN:
            return None
        return ModelEndpoint(
            provider=self.name,
            kind=self.kind,
            base_url=self.base_url,
            api_key=self.api_key(env),
            model=self.model or "",
        )


CONFIG_HINT = "$AISWARM_HOME/config.toml"


class ModelEndpoint(BaseModel):
    """What one agent's CLI is pointed at: a provider's API, its key (read from the key source) and model."""

    model_config = ConfigDict(frozen=True)

    provider: str = COMMAND_LINE_PROVIDER
    kind: ProviderKind = ProviderKind.OPENAI_COMPATIBLE
    base_url: str | None = None
    """OpenAI-style ``.../v1`` for an OpenAI-compatible provider; the bare host for Gemini and Anthropic APIs;
    None for the kind's public default."""
    api_key: str = Field(default="aiswarm", repr=False)
    model: str = "aiswarm-model"


class ProvidersSettings(HomeSettings):
    """The ``[providers.*]`` tables of the config file (environment: ``AISWARM_PROVIDERS__<NAME>__<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="AISWARM_", env_nested_delimiter="__", extra="ignore")

    home: Path | None = None
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)


def load_providers(home: Path) -> dict[str, Provider]:
    """The providers named in ``home``'s config file and environment; ProviderError (one line) on a bad one."""
    try:
        raw = ProvidersSettings(home=home).providers
    except ConfigFileError as error:
        raise ProviderError(str(error)) from None
    except (ValidationError, ValueError) as error:
        raise ProviderError(f"{config_file(home)}: {_first_error(error)}") from None
    providers: dict[str, Provider] = {}
    for name, table in raw.items():
        try:
            providers[name] = Provider.model_validate({**table, "name": name})
        except ValidationError as error:
            raise ProviderError(f"{config_file(home)}: [providers.{name}] {_first_error(error)}") from None
    return providers


def endpoint_provider(url: str, cli: str, api_key: str, model: str) -> ModelEndpoint:
    """``--model-endpoint URL`` as ``cli`` wants it: ``.../v1`` for OpenAI-style CLIs, the bare host for gemini."""
    bare = url.rstrip("/").removesuffix("/v1")
    if cli == "gemini":
        return ModelEndpoint(kind=ProviderKind.GEMINI_API, base_url=bare, api_key=api_key, model=model)
    return ModelEndpoint(
        kind=ProviderKind.OPENAI_COMPATIBLE, base_url=bare + "/v1", api_key=api_key, model=model
    )


def check_spoken(cli: str, provider: Provider) -> None:
    """ProviderError when ``cli`` cannot talk to ``provider``'s kind of API."""
    spoken = SPOKEN_BY.get(cli)
    if provider.kind is ProviderKind.CLI_LOGIN or spoken is None or provider.kind in spoken:
        return
    kinds = ", ".join(sorted(k.value for k in spoken))
    raise ProviderError(
        f"{cli} cannot use provider {provider.name} ({provider.kind.value}): {cli} speaks {kinds}"
    )


class ProbeResult(BaseModel):
    """What a provider's models listing said."""

    ok: bool
    detail: str
    status: int | None = None


def probe(endpoint: ModelEndpoint, *, headers: Mapping[str, str] | None = None) -> ProbeResult:
    """List the provider's models (no model request is spent): is it reachable and is the key accepted?"""
    import httpx  # here: importing httpx (and the CLI it loads) costs every `aiswarm` command 40 ms otherwise

    url, request_headers = _models_request(endpoint)
    try:
        response = httpx.get(
            url, headers={**request_headers, **(headers or {})}, timeout=PROBE_TIMEOUT_SECONDS
        )
    except httpx.HTTPError as error:
        return ProbeResult(
            ok=False, detail=f"{endpoint.provider}: no answer from {url} ({type(error).__name__})"
        )
    if response.status_code in (401, 403):
        return ProbeResult(
            ok=False,
            status=response.status_code,
            detail=f"{endpoint.provider}: the key was refused (HTTP {response.status_code}): check its key source",
        )
    if response.status_code == 429:
        return ProbeResult(ok=False, status=429, detail=f"{endpoint.provider}: rate limited (HTTP 429)")
    if response.status_code >= 400:
        return ProbeResult(
            ok=False,
            status=response.status_code,
            detail=f"{endpoint.provider}: {url} answered HTTP {response.status_code}",
        )
    return ProbeResult(ok=True, status=response.status_code, detail=f"{endpoint.provider}: models listed")


_PUBLIC_BASE = {
    ProviderKind.OPENAI_COMPATIBLE: "https://api.openai.com/v1",
    ProviderKind.GEMINI_API: "https://generativelanguage.googleapis.com",
    ProviderKind.ANTHROPIC_COMPATIBLE: "https://api.anthropic.com",
}


def public_base_url(kind: ProviderKind) -> str:
    """Where a provider of ``kind`` without a ``base_url`` is reached (the kind's public API)."""
    return _PUBLIC_BASE[kind]


def _models_request(endpoint: ModelEndpoint) -> tuple[str, dict[str, str]]:
    base = (endpoint.base_url or public_base_url(endpoint.kind)).rstrip("/")
    if endpoint.kind is ProviderKind.GEMINI_API:
        return f"{base}/v1beta/models", {"x-goog-api-key": endpoint.api_key}
    if endpoint.kind is ProviderKind.ANTHROPIC_COMPATIBLE:
        return f"{base}/v1/models", {"x-api-key": endpoint.api_key, "anthropic-version": "2023-06-01"}
    return f"{base}/models", {"Authorization": f"Bearer {endpoint.api_key}"}


def _keyring_key(provider: str, user: str) -> str:
    try:
        import keyring
        from keyring.errors import KeyringError
    except ImportError:  # pragma: no cover - keyring is a dependency; a broken install says so
        raise ProviderError(
            f"provider {provider}: the keyring package is missing; reinstall aiswarm"
        ) from None
    try:
        value = keyring.get_password(KEYRING_SERVICE, user)
    except KeyringError as error:
        raise ProviderError(
            f"provider {provider}: the OS keyring is not available ({_one_line(str(error))}); use key_env instead"
        ) from None
    if not value:
        raise ProviderError(
            f"provider {provider}: no key {user!r} in the OS keyring; store it with `keyring set {KEYRING_SERVICE} {user}`"
        )
    return value


def _first_error(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = re.sub(r"^Value error, ", "", first["msg"])
        return f"{where}: {message}" if where else message
    return _one_line(str(error))


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
