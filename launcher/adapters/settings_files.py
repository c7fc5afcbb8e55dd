"""Settings documents in the formats the CLIs read besides JSON: TOML (codex, CLIs described in the config file).

An agent's settings file is written whole by aiswarm, never edited in place, so the document is rendered as it
is (``tomlkit``: mappings become ``[tables]``) and written privately like every other file that holds a token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import ConvertError

from aiswarm_server.files import write_private


class SettingsFormatError(ValueError):
    """A document holds a value its file format cannot carry (TOML has no null)."""


def toml_text(document: Mapping[str, Any]) -> str:
    """``document`` as TOML text; SettingsFormatError for a value TOML has no form for, such as None."""
    try:
        return tomlkit.dumps(document)
    except ConvertError as error:
        raise SettingsFormatError(f"TOML cannot hold this value: {error}") from None


def write_private_toml(path: Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` as TOML, atomically, with mode 0600 (it may hold tokens)."""
    write_private(path, toml_text(document))


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
