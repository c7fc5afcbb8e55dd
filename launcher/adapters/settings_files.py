"""Settings documents in the formats the CLIs read: TOML (codex, generic CLIs) beside base's JSON.

The standard library reads TOML but does not write it. An agent's settings file is written whole
by aiswarm (never edited in place), so plain rendering is enough: top-level values first, then one
``[table]`` per mapping, with mappings inside a table written as inline tables unless they hold
tables themselves. Every rendering is parsed back with ``tomllib`` and compared to the document.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from launcher.adapters.base import _write_atomically  # pyright: ignore[reportPrivateUsage]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class SettingsFormatError(ValueError):
    """A document holds a value its file format cannot carry."""


def toml_text(document: Mapping[str, Any]) -> str:
    """``document`` as TOML text (raises SettingsFormatError for values TOML has no form for, such as None)."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in document.items() if not isinstance(v, Mapping)]
    for path, body in _tables(document, ()):
        if lines:
            lines.append("")
        lines.append(f"[{'.'.join(_key(k) for k in path)}]")
        lines += [f"{_key(k)} = {_value(v)}" for k, v in body.items()]
    text = "\n".join(lines) + "\n" if lines else ""
    if tomllib.loads(text) != json.loads(json.dumps(document)):
        raise SettingsFormatError("the settings do not survive a TOML round trip")
    return text


def write_private_toml(path: Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` as TOML, atomically, with mode 0600 (it may hold tokens)."""
    _write_atomically(path, toml_text(document).encode("utf-8"))


def set_path(document: dict[str, Any], path: Sequence[str], value: Any) -> dict[str, Any]:
    """``document`` with ``value`` at the key ``path`` (intermediate objects created or replaced); returns it."""
    if not path:
        raise ValueError("a key path needs at least one key")
    node = document
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value
    return document


def _tables(
    node: Mapping[str, Any], path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    for key, value in node.items():
        if not isinstance(value, Mapping):
            continue
        body = {k: v for k, v in value.items() if not _holds_tables(v)}
        nested = {k: v for k, v in value.items() if _holds_tables(v)}
        if body or not nested:
            yield (*path, key), body
        yield from _tables(nested, (*path, key))


def _holds_tables(value: Any) -> bool:
    """A mapping that must be a ``[table]`` of its own: it holds another mapping."""
    return isinstance(value, Mapping) and any(isinstance(v, Mapping) for v in value.values())


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are all valid in a TOML basic string; DEL must be escaped in TOML but not in JSON.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise SettingsFormatError(f"TOML has no form for {type(value).__name__} values")
