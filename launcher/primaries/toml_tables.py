"""Editing one ``[table]`` of a TOML config file with tomlkit, leaving every other line as it was.

tomlkit parses a document with its comments and layout and writes back what it read. One habit of its needs
correcting: the comments and blank lines in front of a table header belong, in tomlkit, to the table *before*
that header. So the table aiswarm replaces, adds or removes hands those lines on: a replaced table's go to its
replacement, an added table takes the comments that introduce the table after it, a removed table gives the
comments it carried back to the table before it. Every edit is checked by reading the result with ``tomllib``
and comparing it with the value it should have; an edit that cannot be made safely is refused.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import tomlkit
from tomlkit.container import Container
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Comment, Item, Key, Table, Whitespace


class TomlEditError(ValueError):
    """The text is not valid TOML, or the table cannot be edited safely."""


class TomlDocument:
    """A TOML document edited one table at a time."""

    def __init__(self, text: str) -> None:
        self._document = _parse(text)
        self._newline = "\r\n" if "\r\n" in text else "\n"

    @property
    def text(self) -> str:
        """The document's text."""
        return self._document.as_string()

    @property
    def value(self) -> dict[str, Any]:
        """The document as plain Python values."""
        return self._document.unwrap()

    @property
    def has_comments(self) -> bool:
        """Whether any line of the document is a comment."""
        return any(line.lstrip().startswith("#") for line in self.text.splitlines())

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
        table = tomlkit.table()
        for key, value in body.items():
            table[key] = _inline(value)
        parent = self._parent(path, create=True)
        old = self._table(parent, path)
        parent[path[-1]] = table
        if old is not None:
            _take_trailing(table)  # tomlkit's own blank line: the replaced table's lines follow instead
            _append(table, _take_trailing(old))
        elif _tables(self._document)[-1] is not table:
            # The comments just above the next header introduce that table: they move below the new one.
            run, start, end = _run_before(self._document, table)
            moved = _from_comment([item for _, item in run[start:end]])
            del run[end - len(moved) : end]
            _append(table, [Whitespace("\n"), *moved])
            if moved and start < end - len(moved):
                table.trivia.indent = ""  # the blank lines left above part it from the table before
        self._check()

    def remove_table(self, path: Sequence[str]) -> bool:
        """Delete ``[path]`` and its sub-tables; False if the document has no such table."""
        if self.get(path) is None:
            return False
        parent = self._parent(path, create=False)
        old = self._table(parent, path)
        assert old is not None
        last_in_file = _tables(self._document)[-1] in (old, *_tables(old))
        trailing = _take_trailing(old)
        kept = _from_comment(trailing)  # they introduce the next table: they stay where they were
        run, _, end = _run_before(self._document, old)
        del parent[path[-1]]
        self._prune(path)
        run[end:end] = [(None, item) for item in kept]
        if last_in_file:
            # The table was the last thing in the file (as an addition leaves it): drop the blank lines it left.
            text = self.text
            self._document = _parse(text.rstrip("\r\n") + self._newline if text.strip() else "")
        self._check()
        return True

    # ---------------------------------------------------------------------------------------- internals
    def _parent(self, path: Sequence[str], *, create: bool) -> Container | Table:
        """The table holding ``path[-1]``; refused when the way there is not written as table headers."""
        node: Container | Table = self._document
        for i, key in enumerate(path[:-1]):
            child = node.get(key)
            if child is None and create:
                node[key] = child = tomlkit.table(is_super_table=True)
            if not isinstance(child, Table) or _dotted(node, key):
                raise TomlEditError(_by_hand(path[: i + 1]))
            node = child
        return node

    def _table(self, parent: Container | Table, path: Sequence[str]) -> Table | None:
        """The table at ``path`` (None when absent); refused when it is not written as a table header."""
        item = parent.get(path[-1])
        if item is None:
            return None
        if not isinstance(item, Table) or _dotted(parent, path[-1]):
            raise TomlEditError(_by_hand(path))
        return item

    def _prune(self, path: Sequence[str]) -> None:
        """Drop the super-tables only our header defined (``[mcp_servers]`` by ``[mcp_servers.aiswarm]``)."""
        for depth in range(len(path) - 1, 0, -1):
            parent = self._parent(path[:depth], create=False)
            table = parent.get(path[depth - 1])
            if not isinstance(table, Table) or not table.is_super_table() or len(table):
                return
            del parent[path[depth - 1]]

    def _check(self) -> None:
        """Re-read the edited text: it must say what tomlkit holds (the edits above only move comments)."""
        text = self.text
        if self._newline == "\r\n":
            text = re.sub(r"(?<!\r)\n", "\r\n", text)  # tomlkit writes what it adds with "\n"
        try:
            written = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            written = None
        if written != self.value:
            raise TomlEditError("the edit did not produce the expected content; the file was left unchanged")
        self._document = _parse(text)


def _parse(text: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except TOMLKitError as error:
        raise TomlEditError(str(error)) from None


def _by_hand(path: Sequence[str]) -> str:
    return f"[{'.'.join(path)}] is not written as a table header; edit it by hand"


def _dotted(parent: Container | Table, key: str) -> bool:
    """Whether ``key`` is written in ``parent`` as a dotted key (``a.b = 1``) rather than a header."""
    return any(k is not None and k.key == key and k.is_dotted() for k, _ in _body(parent))


def _inline(value: Any) -> Any:
    """``value`` with every mapping as an inline table, so an entry is one block of ``key = value`` lines."""
    if isinstance(value, Mapping):
        table = tomlkit.inline_table()
        for key, inner in value.items():  # pyright: ignore[reportUnknownVariableType]
            table[str(key)] = _inline(inner)  # pyright: ignore[reportUnknownArgumentType]
        return table
    if isinstance(value, list | tuple):
        return [_inline(inner) for inner in value]  # pyright: ignore[reportUnknownVariableType]
    return value


Body = list[tuple[Key | None, Item]]


def _body(node: Container | Table) -> Body:
    return node.body if isinstance(node, Container) else node.value.body


def _tables(node: Container | Table) -> list[Table]:
    """Every table under ``node`` (super-tables included) in the order they are written."""
    found: list[Table] = []
    for _, item in _body(node):
        if isinstance(item, Table):
            found += [item, *_tables(item)]
    return found


def _entries(body: Body) -> Iterator[tuple[Body, int]]:
    """Every ``(body, index)`` under ``body`` in the order the document is written."""
    for index, (_, item) in enumerate(body):
        yield body, index
        if isinstance(item, Table):
            yield from _entries(item.value.body)


def _trivia(entry: tuple[Key | None, Item]) -> bool:
    return entry[0] is None and isinstance(entry[1], Whitespace | Comment)


def _run_before(document: tomlkit.TOMLDocument, table: Table) -> tuple[Body, int, int]:
    """Where the blank lines and comments written just above ``table``'s header are: ``body[start:end]``."""
    entries = list(_entries(document.body))
    at = next(i for i, (body, index) in enumerate(entries) if body[index][1] is table)
    before = at - 1
    while before >= 0 and _super_table(entries[before][0][entries[before][1]][1]):
        before -= 1  # a super-table writes no header of its own
    if before < 0:
        return document.body, 0, 0
    body, end = entries[before][0], entries[before][1] + 1
    start = end
    while start > 0 and _trivia(body[start - 1]):
        start -= 1
    return body, start, end


def _super_table(item: Item) -> bool:
    return isinstance(item, Table) and item.is_super_table()


def _take_trailing(table: Table) -> list[Item]:
    """Take the blank lines and comments after the last key of ``table`` (or of its last sub-table) out of it."""
    body = [table, *_tables(table)][-1].value.body
    start = len(body)
    while start > 0 and _trivia(body[start - 1]):
        start -= 1
    taken = [item for _, item in body[start:]]
    del body[start:]
    return taken


def _from_comment(items: list[Item]) -> list[Item]:
    """The part of a run of blank lines and comments from its first comment on."""
    first = next((i for i, item in enumerate(items) if isinstance(item, Comment)), len(items))
    return items[first:]


def _append(table: Table, items: list[Item]) -> None:
    """Put ``items`` (blank lines and comments) after the last key of ``table``."""
    table.value.body.extend((None, item) for item in items)
