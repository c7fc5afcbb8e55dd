"""Broker settings: one pydantic-settings model, every field with an ``AISWARM_*`` environment fallback."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from typing_extensions import override

DEFAULT_PORT = 8765
# The CLIs abort a tool call after 600 s (gemini, qwen) and qwen also after 5 idle minutes, so the
# longest wait the broker grants stays well inside both; the launcher sets client timeouts above it.
MAX_WAIT_SECONDS = 290
DEFAULT_WAIT_SECONDS = 240


def default_home() -> Path:
    """``~/.aiswarm``: the home when neither ``--home`` nor ``AISWARM_HOME`` names one."""
    return Path.home() / ".aiswarm"


CONFIG_FILE = "config.toml"
"""The settings file in the aiswarm home: broker settings at its top level, model providers in ``[providers.*]``."""


def config_file(home: Path) -> Path:
    """``$AISWARM_HOME/config.toml``."""
    return home / CONFIG_FILE


class ConfigFileError(ValueError):
    """The home's ``config.toml`` cannot be read; the message names the file, the place and what to do."""


class _ConfigFileSource(TomlConfigSettingsSource):
    """``config.toml`` as a settings source, refusing a file that is not TOML in one line naming it."""

    @override
    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        try:
            return super()._read_file(file_path)
        except tomllib.TOMLDecodeError as error:
            raise ConfigFileError(
                f"{file_path}: not valid TOML, {error}; fix it and run the command again"
            ) from None
        except UnicodeDecodeError:
            raise ConfigFileError(f"{file_path}: not UTF-8 text; fix it and run the command again") from None


class HomeSettings(BaseSettings):
    """Settings read, lowest precedence first, from defaults, ``$AISWARM_HOME/config.toml``, ``AISWARM_*``, options."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Options (init), then the environment, then the home's ``config.toml``."""
        given: dict[str, Any] = init_settings()
        home = given.get("home") or os.environ.get("AISWARM_HOME")
        path = config_file(Path(home).expanduser() if home else default_home())
        return (init_settings, env_settings, _ConfigFileSource(settings_cls, toml_file=path))


def redact_database_url(url: str) -> str:
    """A database URL fit for messages and logs: the password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{netloc[1]}").geturl()


class BrokerSettings(HomeSettings):
    """How the broker runs. Read from ``config.toml`` in the home, then ``AISWARM_*`` variables; options override."""

    model_config = SettingsConfigDict(env_prefix="AISWARM_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="Where the database, tokens and logs live.")
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(
        default=DEFAULT_PORT, ge=0, le=65535, description="TCP port of the HTTP server (0 picks one)."
    )
    allow_remote: bool = Field(default=False, description="Required to bind to a non-loopback address.")
    durability: Literal["normal", "full"] = Field(
        default="normal",
        description="SQLite synchronous mode: NORMAL survives process crashes, FULL also power loss.",
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "A PostgreSQL database to keep the state in (postgresql://user@host:5432/db), which several brokers "
            "may share. Unset: the SQLite file in the home."
        ),
    )
    lease_seconds: float = Field(
        default=300.0, gt=0, le=86_400, description="How long a claim holds without a renewal."
    )
    agent_lost_seconds: float = Field(
        default=600.0, gt=0, le=86_400, description="An agent not heard from for this long is marked lost."
    )
    sweep_interval_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How often leases and agents are checked."
    )
    offer_seconds: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="A woken agent that does not claim its task within this is passed over.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="json: also write a JSON line per task change to $AISWARM_HOME/logs/broker.jsonl "
        "(`aiswarm logs --task N` merges them with the agents').",
    )
    max_wait_seconds: int = Field(default=MAX_WAIT_SECONDS, ge=1, le=590)
    max_prompt_chars: int = Field(default=200_000, ge=1)
    max_result_chars: int = Field(default=1_000_000, ge=1)
    max_batch: int = Field(default=200, ge=1)
    max_request_bytes: int = Field(
        default=8 * 2**20,
        ge=64 * 2**10,
        description="Largest HTTP request body accepted at /mcp; larger ones get 413 before being parsed.",
    )
    default_max_attempts: int = Field(default=3, ge=1, le=100)
    default_task_timeout_seconds: int = Field(default=1800, ge=1)
    merge_hook: str | None = Field(
        default=None,
        description="The command `aiswarm launch --merge hook` runs for a completed task's branch instead of "
        "merging it (e.g. to open a pull request); see the README's isolation section.",
    )
    merge_hook_timeout_seconds: float = Field(default=300.0, gt=0, le=3600)
    resolve_conflicts: bool = Field(
        default=False,
        description="Resubmit a task whose merge conflicts with its target as one 'resolve the conflict' task "
        "(implementer persona when one runs); its conflict is not resubmitted again.",
    )

    @field_validator("host")
    @classmethod
    def _host_is_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("host must not be empty; use 127.0.0.1")
        return value.strip()

    @field_validator("database_url")
    @classmethod
    def _database_url_is_postgres(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in ("postgresql", "postgres"):
            shown = f"a {scheme}:// URL" if scheme else "not a URL"
            raise ValueError(
                f"AISWARM_DATABASE_URL is {shown}; only PostgreSQL is supported there, as "
                "postgresql://user:password@host:5432/database. Unset it to use the SQLite file in AISWARM_HOME."
            )
        return value

    @model_validator(mode="after")
    def _remote_needs_flag(self) -> BrokerSettings:
        if not self.is_loopback and not self.allow_remote:
            raise ValueError(
                f"refusing to bind to {self.host}: it is not a loopback address. "
                "Pass --allow-remote (AISWARM_ALLOW_REMOTE=1) if you mean it; tokens stay required."
            )
        if self.agent_lost_seconds <= self.max_wait_seconds:
            # A parked wait is the agent being alive; it must not be declared lost while it waits.
            self.agent_lost_seconds = float(self.max_wait_seconds + 30)
        return self

    @property
    def is_loopback(self) -> bool:
        """Whether ``host`` is a loopback address (or ``localhost``)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def database_path(self) -> Path:
        """The SQLite file, used when no ``database_url`` is set."""
        return self.home / "aiswarm.db"

    @property
    def database_label(self) -> str:
        """Where the state lives, for people: the SQLite path or the PostgreSQL URL without its password."""
        return redact_database_url(self.database_url) if self.database_url else str(self.database_path)

    @property
    def url(self) -> str:
        """The MCP URL for ``host`` and ``port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/mcp"
