"""Agent CLI adapters: one module per CLI, looked up by name.

Adding a CLI is one new module with a ``CliAdapter`` subclass, one pin in
``launcher.adapters.install.PINNED_CLIS`` and one line in ``_ADAPTERS``; or, with no Python at all, a
``[clis.<name>]`` table in the config file (:mod:`launcher.adapters.generic`), registered at start-up
by :func:`register_configured_clis`.
"""

from __future__ import annotations

from pathlib import Path

from launcher.adapters.base import (
    AgentHome,
    AgentSpec,
    CarriedCredential,
    CliAdapter,
    CredentialFinding,
    ModelEndpoint,
    OutcomeKind,
    RunOutcome,
    TokenUsage,
)
from launcher.adapters.claude import ClaudeAdapter
from launcher.adapters.codex import CodexAdapter
from launcher.adapters.gemini import GeminiAdapter
from launcher.adapters.generic import GenericCliError, configured_adapters
from launcher.adapters.opencode import OpencodeAdapter
from launcher.adapters.qwen import QwenAdapter

_ADAPTERS: dict[str, type[CliAdapter]] = {
    QwenAdapter.name: QwenAdapter,
    GeminiAdapter.name: GeminiAdapter,
    OpencodeAdapter.name: OpencodeAdapter,
    CodexAdapter.name: CodexAdapter,
    ClaudeAdapter.name: ClaudeAdapter,
}


_BUILT_IN = frozenset(_ADAPTERS)


class UnknownCliError(LookupError):
    """No adapter has this name."""


def register_adapter(adapter: type[CliAdapter]) -> None:
    """Make ``adapter`` known by its name (a CLI described in the config file); built-in names stay built in."""
    if adapter.name in _BUILT_IN:
        raise GenericCliError(
            f"[clis.{adapter.name}] would replace the built-in {adapter.name} adapter: give the CLI another name"
        )
    _ADAPTERS[adapter.name] = adapter


def register_configured_clis(config_file: Path) -> list[str]:
    """Register every CLI described in ``config_file``'s ``[clis]`` table; returns their names.

    Raises GenericCliError with one line naming the table and field that is wrong.
    """
    adapters = configured_adapters(config_file)
    for adapter in adapters:
        register_adapter(adapter)
    return [a.name for a in adapters]


def known_adapters() -> list[str]:
    """Names of every CLI aiswarm can launch."""
    return sorted(_ADAPTERS)


def get_adapter(name: str) -> CliAdapter:
    """The adapter for CLI ``name`` (``qwen``, ``gemini``, ``opencode``)."""
    try:
        return _ADAPTERS[name]()
    except KeyError:
        raise UnknownCliError(f"unknown CLI {name!r}: known CLIs are {', '.join(known_adapters())}") from None


__all__ = [
    "AgentHome",
    "AgentSpec",
    "CarriedCredential",
    "ClaudeAdapter",
    "CliAdapter",
    "CodexAdapter",
    "CredentialFinding",
    "GeminiAdapter",
    "GenericCliError",
    "ModelEndpoint",
    "OpencodeAdapter",
    "OutcomeKind",
    "QwenAdapter",
    "RunOutcome",
    "TokenUsage",
    "UnknownCliError",
    "get_adapter",
    "known_adapters",
    "register_adapter",
    "register_configured_clis",
]
