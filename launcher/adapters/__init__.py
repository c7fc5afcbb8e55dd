"""Agent CLI adapters: one module per CLI, looked up by name.

Adding a CLI (claude-code, codex, Antigravity ``agy`` ...) is one new module with a
``CliAdapter`` subclass, one pin in ``launcher.adapters.install.PINNED_CLIS`` and one line in ``_ADAPTERS``.
"""

from __future__ import annotations

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
from launcher.adapters.opencode import OpencodeAdapter
from launcher.adapters.qwen import QwenAdapter

_ADAPTERS: dict[str, type[CliAdapter]] = {
    QwenAdapter.name: QwenAdapter,
    GeminiAdapter.name: GeminiAdapter,
    OpencodeAdapter.name: OpencodeAdapter,
    CodexAdapter.name: CodexAdapter,
    ClaudeAdapter.name: ClaudeAdapter,
}


class UnknownCliError(LookupError):
    """No adapter has this name."""


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
    "ModelEndpoint",
    "OpencodeAdapter",
    "OutcomeKind",
    "QwenAdapter",
    "RunOutcome",
    "TokenUsage",
    "UnknownCliError",
    "get_adapter",
    "known_adapters",
]
