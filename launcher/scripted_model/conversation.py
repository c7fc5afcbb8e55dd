"""The conversation a model request carries, independent of the wire protocol.

Both protocol adapters (OpenAI chat completions, Gemini ``generateContent``) turn a request
into a :class:`Conversation`, the policy reads it and answers with a :class:`Step`, and the
adapter encodes that step back into the protocol's response shape.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolDeclaration:
    """A tool the CLI offers the model: its name as the model sees it and its JSON schema."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def properties(self) -> dict[str, Any]:
        """The declared parameters (``properties`` of the schema)."""
        props = self.parameters.get("properties")
        return props if isinstance(props, dict) else {}

    @property
    def required(self) -> list[str]:
        """The names of required parameters."""
        req = self.parameters.get("required")
        return [r for r in req if isinstance(r, str)] if isinstance(req, list) else []


@dataclass(frozen=True)
class ToolCall:
    """A call the model asked for earlier in the conversation."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolResult:
    """What the CLI sent back for one tool call, flattened to text.

    ``is_error`` is set when the protocol marks the result as an error; the text of a
    failed call usually says so too (``Error: ...``).
    """

    call_id: str
    name: str
    text: str
    is_error: bool = False


@dataclass
class Conversation:
    """Everything the policy may look at: system text, user texts, tools, and the tool history."""

    system: str = ""
    user_texts: list[str] = field(default_factory=list)
    tools: list[ToolDeclaration] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    results: list[ToolResult] = field(default_factory=list)
    response_schema: dict[str, Any] | None = None

    @property
    def prompt(self) -> str:
        """All user-written text, in order (the instructions the agent was given)."""
        return "\n\n".join(self.user_texts)

    def tool(self, name: str) -> ToolDeclaration | None:
        """The declared tool with exactly this name, if any."""
        return next((t for t in self.tools if t.name == name), None)

    def history(self) -> list[tuple[ToolCall, ToolResult | None]]:
        """Each earlier tool call with its result (matched by id, else by order), oldest first."""
        call_ids = {c.id for c in self.calls if c.id}
        by_id = {r.call_id: r for r in self.results if r.call_id in call_ids}
        unmatched = [r for r in self.results if r.call_id not in call_ids]
        pairs: list[tuple[ToolCall, ToolResult | None]] = []
        for call in self.calls:
            result = by_id.get(call.id)
            if result is None and unmatched:
                result = unmatched.pop(0)
            pairs.append((call, result))
        return pairs


_UNTRUSTED = re.compile(r"</?untrusted_context>")


def result_payload(text: str) -> dict[str, Any] | None:
    """The first JSON object inside a tool result's text, or ``None``.

    Tool results arrive wrapped in different ways: plain JSON text (qwen, opencode), or JSON
    inside ``<untrusted_context>...</untrusted_context>`` (gemini), sometimes after a line of
    prose. A JSON object whose only interesting content is a JSON string (``{"output": "..."}``)
    is unwrapped too.
    """
    cleaned = _UNTRUSTED.sub("", text)
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", cleaned):
        try:
            value, _ = decoder.raw_decode(cleaned, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            for key in ("output", "result", "text"):
                inner = value.get(key)
                if len(value) == 1 and isinstance(inner, str):
                    nested = result_payload(inner)
                    if nested is not None:
                        return nested
            return value
    return None
