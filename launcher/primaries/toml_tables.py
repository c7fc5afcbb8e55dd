"""Editing one ``[table]`` of a TOML config file as text, leaving every other line as it was.

The standard library reads TOML (``tomllib``) but does not write it, and rewriting a user's file from parsed values
would drop their comments and layout. So a :class:`TomlDocument` finds the table's header line and the lines that
belong to it (up to the next header, without the comments that introduce the next table), and replaces, appends
or deletes only those. Every edit is checked by parsing the result with ``tomllib`` and comparing it with the
value it should have; an edit that cannot be made safely is refused.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

_HEADER = re.compile(r"^[ \t]*\[(?P<array>\[)?(?P<keys>[^\[\]#]*)\]\]?[ \t]*(?:#.*)?$")
_KEY_PART = re.compile(
    r"""[ \t]*(?:(?P<bare>[A-Za-z0-9_-]+)|"(?P<basic>(?:[^"\\]|\\.)*)"|'(?P<literal>[^']*)')[ \t]*"""
)
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class TomlEditError(ValueError):
    """The text is not valid TOML, or the table cannot be edited safely as text."""


def _split_keys(raw: str) -> tuple[str, ...] | None:
    parts: list[str] = []
    pos = 0
    while True:
        match = _KEY_PART.match(raw, pos)
        if match is None:
            return None
        if match.group("bare") is not None:
            parts.append(match.group("bare"))
        elif match.group("basic") is not None:
            parts.append(json.loads(f'"{match.group("basic")}"'))
        else:
            parts.append(match.group("literal"))
        pos = match.end()
        if pos == len(raw):
            return tuple(parts)
        if raw[pos] != ".":
            return None
        pos += 1


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else _string(name)


def _string(text: str) -> str:
    # JSON's escapes are all valid in a TOML basic string; DEL must be escaped in TOML but not in JSON.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007F")


def render_value(value: Any) -> str:
    """A TOML value on one line: strings, numbers, booleans, arrays and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(render_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {render_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


class TomlDocument:
    """A TOML document edited one table at a time."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.value = self._load(text)

    @staticmethod
    def _load(text: str) -> dict[str, Any]:
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise TomlEditError(str(error)) from None

    @property
    def has_comments(self) -> bool:
        return any(line.lstrip().startswith("#") for line in self._lines())

    def get(self, path: Sequence[str]) -> Any:
        """The value at ``path``, or ``None`` when absent."""
        current: Any = self.value
        for key in path:
            if not isinstance(current, dict) or key not in current:
                return None
            current = current[key]
        return current

    def set_table(self, path: Sequence[str], body: Mapping[str, Any]) -> None:
        """Write ``[path]`` with ``body`` (one ``key = value`` line each), replacing the table if it exists."""
        expected = copy.deepcopy(self.value)
        target = expected
        for i, key in enumerate(path[:-1]):
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise TomlEditError(f"{'.'.join(path[: i + 1])} is not a table")
        target[path[-1]] = copy.deepcopy(dict(body))
        newline = self._newline
        block = [f"[{'.'.join(_key(k) for k in path)}]{newline}"]
        block += [f"{_key(k)} = {render_value(v)}{newline}" for k, v in body.items()]
        lines = self._lines()
        spans = self._table_spans(lines, tuple(path))
        if spans:
            (main_start, main_end), subtables = spans[0], spans[1:]
            doomed = self._doomed_lines(lines, subtables)
            kept: list[str] = []
            for index, line in enumerate(lines):
                if index == main_start:
                    kept += block
                elif not main_start < index < main_end and index not in doomed:
                    kept.append(line)
            text = "".join(kept)
        elif self.get(path) is not None:
            raise TomlEditError(f"[{'.'.join(path)}] is not written as a table header; edit it by hand")
        else:
            text = self.text
            if text and not text.endswith("\n"):
                text += newline
            if text.strip() and not text.endswith(newline * 2):
                text += newline
            text += "".join(block)
        self._commit(text, expected)

    def remove_table(self, path: Sequence[str]) -> bool:
        """Delete ``[path]`` and its sub-tables; False if the document has no such table."""
        if self.get(path) is None:
            return False
        spans = self._table_spans(self._lines(), tuple(path))
        if not spans:
            raise TomlEditError(f"[{'.'.join(path)}] is not written as a table header; edit it by hand")
        expected = copy.deepcopy(self.value)
        parent = expected
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
        lines = self._lines()
        last_in_file = not any(line.strip() for line in lines[max(end for _, end in spans) :])
        lines = [line for index, line in enumerate(lines) if index not in self._doomed_lines(lines, spans)]
        text = "".join(lines)
        for depth in range(len(path) - 1, 0, -1):
            # A super-table defined only by our header ([mcp_servers] by [mcp_servers.aiswarm]) goes with it.
            holder = expected
            for key in path[: depth - 1]:
                holder = holder[key]
            if holder[path[depth - 1]] or self._table_spans(lines, tuple(path[:depth])):
                break
            del holder[path[depth - 1]]
        if last_in_file:
            # The table was the last thing in the file (as an append leaves it): drop the blank lines it left.
            text = text.rstrip("\r\n") + self._newline if text.strip() else ""
        self._commit(text, expected)
        return True

    # ---------------------------------------------------------------------------------------- internals
    @property
    def _newline(self) -> str:
        return "\r\n" if "\r\n" in self.text else "\n"

    def _lines(self) -> list[str]:
        return re.findall(r"[^\n]*\n|[^\n]+$", self.text)

    def _commit(self, text: str, expected: dict[str, Any]) -> None:
        if self._load(text) != expected:
            raise TomlEditError("the edit did not produce the expected content; the file was left unchanged")
        self.text = text
        self.value = expected

    @staticmethod
    def _doomed_lines(lines: list[str], spans: list[tuple[int, int]]) -> set[int]:
        """The lines to delete with ``spans``: theirs, blank lines only between them, and one blank of a pair."""
        doomed = {index for start, end in spans for index in range(start, end)}
        content = [index for index, line in enumerate(lines) if line.strip()]
        for index, line in enumerate(lines):
            if line.strip() or index in doomed:
                continue
            before = [i for i in content if i < index]
            after = [i for i in content if i > index]
            if before and after and before[-1] in doomed and after[0] in doomed:
                doomed.add(index)
        for index in sorted(doomed):
            if index + 1 in doomed or index + 1 >= len(lines) or lines[index + 1].strip():
                continue
            start = index
            while start - 1 in doomed:
                start -= 1
            if start > 0 and not lines[start - 1].strip():
                doomed.add(index + 1)  # the run had a blank line on each side: keep one
        return doomed

    def _table_spans(self, lines: list[str], path: tuple[str, ...]) -> list[tuple[int, int]]:
        """Line ranges of ``[path]`` and its sub-tables, each from its header to its last key line."""
        headers: list[tuple[int, tuple[str, ...] | None, bool]] = []
        multiline: str | None = None
        for index, line in enumerate(lines):
            if multiline is None:
                match = _HEADER.match(line.rstrip("\r\n"))
                if match:
                    headers.append((index, _split_keys(match.group("keys")), bool(match.group("array"))))
            for delimiter in ('"""', "'''"):
                if (multiline is None or multiline == delimiter) and line.count(delimiter) % 2 == 1:
                    multiline = delimiter if multiline is None else None
        exact: list[tuple[int, int]] = []
        subtables: list[tuple[int, int]] = []
        for position, (index, keys, is_array) in enumerate(headers):
            if is_array or keys is None or keys[: len(path)] != path:
                continue
            stop = headers[position + 1][0] if position + 1 < len(headers) else len(lines)
            end = index + 1
            for line_index in range(index + 1, stop):
                stripped = lines[line_index].strip()
                if stripped and not stripped.startswith("#"):
                    end = line_index + 1
            (exact if keys == path else subtables).append((index, end))
        return exact[:1] + subtables if exact else []
