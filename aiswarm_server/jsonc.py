"""Editing a JSON or JSONC (JSON with comments) config file in place, one member at a time.

The agent CLIs keep their settings in files the user also edits by hand: comments (gemini, qwen and opencode
accept them), key order and indentation are theirs. A :class:`JsoncDocument` parses the text into values *and*
source spans, and changes only the bytes of the member it sets or removes; everything else stays byte for byte.
Every edit is checked by parsing the result again and comparing it with the value it should have.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\.)*"')
_LINE_COMMENT = re.compile(r"[ \t]*//[^\r\n]*")
_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}


class JsoncError(ValueError):
    """The text is not valid JSON(C), or an edit cannot be made; ``line`` and ``column`` are 1-based."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(f"{where}{message}")
        self.line = line
        self.column = column


@dataclass
class _Node:
    kind: Literal["object", "array", "scalar"]
    start: int
    end: int
    value: Any
    members: list[_Member] = field(default_factory=list)


@dataclass
class _Member:
    key: str
    key_start: int
    value: _Node


class _Parser:
    """Recursive descent over JSON plus ``//`` and ``/* */`` comments and trailing commas."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 1 if text.startswith("\ufeff") else 0
        self.comments: list[tuple[int, int]] = []

    def fail(self, message: str, pos: int | None = None) -> JsoncError:
        at = self.pos if pos is None else pos
        line = self.text.count("\n", 0, at) + 1
        column = at - (self.text.rfind("\n", 0, at) + 1) + 1
        return JsoncError(message, line, column)

    def skip(self) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                end = len(text) if end < 0 else end
                self.comments.append((self.pos, end))
                self.pos = end
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.fail("unterminated /* comment")
                self.comments.append((self.pos, end + 2))
                self.pos = end + 2
            else:
                return

    def document(self) -> _Node | None:
        self.skip()
        if self.pos >= len(self.text):
            return None
        root = self.value()
        self.skip()
        if self.pos < len(self.text):
            raise self.fail("unexpected text after the end of the document")
        return root

    def value(self) -> _Node:
        self.skip()
        if self.pos >= len(self.text):
            raise self.fail("unexpected end of file")
        char = self.text[self.pos]
        if char == "{":
            return self.object()
        if char == "[":
            return self.array()
        start = self.pos
        if char == '"':
            text = self.string()
            return _Node("scalar", start, self.pos, text)
        number = _NUMBER.match(self.text, self.pos)
        if number:
            self.pos = number.end()
            return _Node("scalar", start, self.pos, json.loads(number.group()))
        for word, literal in _LITERALS.items():
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return _Node("scalar", start, self.pos, literal)
        raise self.fail(f"unexpected character {char!r}")

    def string(self) -> str:
        match = _STRING.match(self.text, self.pos)
        if match is None:
            raise self.fail("unterminated string, or a control character inside one")
        try:
            text = json.loads(match.group())
        except json.JSONDecodeError as error:
            raise self.fail(f"invalid string: {error.msg}") from None
        self.pos = match.end()
        return text

    def object(self) -> _Node:
        node = _Node("object", self.pos, self.pos, {})
        self.pos += 1
        while True:
            self.skip()
            if self.text.startswith("}", self.pos):
                break
            if not self.text.startswith('"', self.pos):
                raise self.fail("expected a quoted key or '}'")
            key_start = self.pos
            key = self.string()
            self.skip()
            if not self.text.startswith(":", self.pos):
                raise self.fail("expected ':' after the key")
            self.pos += 1
            value = self.value()
            node.members.append(_Member(key, key_start, value))
            node.value[key] = value.value
            self.skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith("}", self.pos):
                raise self.fail("expected ',' or '}'")
        self.pos += 1
        node.end = self.pos
        return node

    def array(self) -> _Node:
        node = _Node("array", self.pos, self.pos, [])
        self.pos += 1
        while True:
            self.skip()
            if self.text.startswith("]", self.pos):
                break
            item = self.value()
            node.value.append(item.value)
            self.skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith("]", self.pos):
                raise self.fail("expected ',' or ']'")
        self.pos += 1
        node.end = self.pos
        return node


class JsoncDocument:
    """A JSON(C) document whose top level is an object; edits keep every other byte of the text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._parse()

    @property
    def value(self) -> dict[str, Any]:
        """The document as Python values (an empty file reads as ``{}``)."""
        return self._root.value if self._root is not None else {}

    @property
    def has_comments(self) -> bool:
        """Whether the text holds any ``//`` or ``/* */`` comment."""
        return bool(self._comments)

    def get(self, path: Sequence[str]) -> Any:
        """The value at ``path`` (keys from the top), or ``None`` when absent."""
        current: Any = self.value
        for key in path:
            if not isinstance(current, dict) or key not in current:
                return None
            current = current[key]
        return current

    def set(self, path: Sequence[str], value: Any) -> None:
        """Set the member at ``path`` to ``value``, creating the objects on the way."""
        expected = copy.deepcopy(self.value)
        target = expected
        for i, key in enumerate(path[:-1]):
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise JsoncError(f"{'.'.join(path[: i + 1])} is not an object")
        target[path[-1]] = value
        if self._root is None:
            self._replace_all(self._render(expected, "") + self._newline)
        else:
            self._set_in(self._root, list(path), value)
        self._verify(expected)

    def remove(self, path: Sequence[str], *, prune_empty_parents: bool = True) -> bool:
        """Remove the member at ``path``; then parents it leaves empty (and free of comments). False if absent."""
        if self._root is None or not self._has_member(path):
            return False
        expected = copy.deepcopy(self.value)
        parents = [expected]
        for key in path[:-1]:
            parents.append(parents[-1][key])
        del parents[-1][path[-1]]
        depth = len(path) - 1
        while prune_empty_parents and depth > 0 and not parents[depth]:
            if self._object_has_comments(path[:depth]):
                break
            del parents[depth - 1][path[depth - 1]]
            depth -= 1
        self._delete_member(list(path[: depth + 1]) if depth < len(path) - 1 else list(path))
        self._verify(expected)
        return True

    # ---------------------------------------------------------------------------------------- internals
    def _parse(self) -> None:
        parser = _Parser(self.text)
        root = parser.document()
        if root is not None and root.kind != "object":
            raise parser.fail("the top level must be a JSON object", root.start)
        self._root = root
        self._comments = parser.comments
        self._newline = "\r\n" if "\r\n" in self.text else "\n"
        self._unit = self._indent_unit()

    def _replace_all(self, text: str) -> None:
        self.text = text
        self._parse()

    def _splice(self, start: int, end: int, replacement: str) -> None:
        self._replace_all(self.text[:start] + replacement + self.text[end:])

    def _verify(self, expected: dict[str, Any]) -> None:
        if self.value != expected:
            raise JsoncError("the edit did not produce the expected content; the file was left unchanged")

    def _indent_unit(self) -> str:
        match = re.search(r"\n([ \t]+)\"", self.text)
        return match.group(1) if match else "  "

    def _line_indent(self, pos: int) -> str:
        line_start = self.text.rfind("\n", 0, pos) + 1
        match = re.match(r"[ \t]*", self.text[line_start:pos])
        return match.group() if match else ""

    def _render(self, value: Any, indent: str) -> str:
        rendered = json.dumps(value, indent=self._unit, ensure_ascii=False)
        return rendered.replace("\n", self._newline + indent)

    def _comment_between(self, start: int, end: int) -> bool:
        return any(start <= c_start and c_end <= end for c_start, c_end in self._comments)

    def _find(self, path: Sequence[str]) -> tuple[_Node, _Member | None]:
        """The object holding the last key of ``path`` and that key's member (the last, as JSON.parse reads)."""
        node = self._root
        assert node is not None
        for i, key in enumerate(path):
            member = next((m for m in reversed(node.members) if m.key == key), None)
            if i == len(path) - 1 or member is None:
                return node, member if i == len(path) - 1 else None
            if member.value.kind != "object":
                raise JsoncError(f"{'.'.join(path[: i + 1])} is not an object")
            node = member.value
        raise AssertionError("empty path")

    def _has_member(self, path: Sequence[str]) -> bool:
        try:
            return self._find(path)[1] is not None
        except JsoncError:
            return False

    def _object_has_comments(self, path: Sequence[str]) -> bool:
        _, member = self._find(path)
        return member is not None and self._comment_between(member.value.start, member.value.end)

    def _set_in(self, root: _Node, path: list[str], value: Any) -> None:
        node = root
        for i, key in enumerate(path):
            member = next((m for m in reversed(node.members) if m.key == key), None)
            if member is None:
                nested: Any = value
                for inner in reversed(path[i + 1 :]):
                    nested = {inner: nested}
                self._insert(node, key, nested)
                return
            if i == len(path) - 1:
                indent = self._line_indent(member.key_start)
                self._splice(member.value.start, member.value.end, self._render(value, indent))
                return
            if member.value.kind != "object":
                raise JsoncError(f"{'.'.join(path[: i + 1])} is not an object")
            node = member.value

    def _insert(self, node: _Node, key: str, value: Any) -> None:
        text, newline = self.text, self._newline
        if node.members:
            last = node.members[-1]
            first = node.members[0]
            inline = "\n" not in text[node.start : first.key_start]
            if inline:
                addition = f", {json.dumps(key, ensure_ascii=False)}: {json.dumps(value, ensure_ascii=False)}"
            else:
                indent = self._line_indent(last.key_start)
                member = f"{json.dumps(key, ensure_ascii=False)}: {self._render(value, indent)}"
                comment = _LINE_COMMENT.match(text, last.value.end)
                if comment:  # keep the last member's line comment on its line: comma before it, member after
                    kept = text[last.value.end : comment.end()]
                    self._splice(last.value.end, comment.end(), f",{kept}{newline}{indent}{member}")
                    return
                addition = f",{newline}{indent}{member}"
            self._splice(last.value.end, last.value.end, addition)
            return
        outer = self._line_indent(node.start)
        indent = outer + self._unit
        member = f"{json.dumps(key, ensure_ascii=False)}: {self._render(value, indent)}"
        inner_start, inner_end = node.start + 1, node.end - 1
        if text[inner_start:inner_end].strip():  # only comments inside: keep them, add the member after '{'
            self._splice(inner_start, inner_start, f"{newline}{indent}{member}")
        else:
            self._splice(inner_start, inner_end, f"{newline}{indent}{member}{newline}{outer}")

    def _next_token(self, pos: int) -> int:
        """Position of the first character at or after ``pos`` that is not whitespace or comment."""
        parser = _Parser(self.text)
        parser.pos = pos
        parser.skip()
        return parser.pos

    def _own_lines(self, start: int, end: int) -> tuple[int, int]:
        """Widen ``[start, end)`` to whole lines when nothing else shares them."""
        line_start = self.text.rfind("\n", 0, start) + 1
        if self.text[line_start:start].strip() == "":
            start = line_start
        rest = re.match(r"[ \t]*(\r?\n)?", self.text[end:])
        if rest and rest.group(1):
            end += rest.end()
        return start, end

    def _delete_member(self, path: list[str]) -> None:
        node, member = self._find(path)
        assert member is not None
        index = next(i for i, m in enumerate(node.members) if m is member)
        text = self.text
        if len(node.members) == 1:
            if not self._comment_between(node.start, node.end):
                self._splice(node.start + 1, node.end - 1, "")
                return
            end = member.value.end
            after = self._next_token(end)
            if text.startswith(",", after):
                end = after + 1
            self._splice(*self._own_lines(member.key_start, end), "")
            return
        if index > 0:
            previous = node.members[index - 1]
            comma = self._next_token(previous.value.end)
            if not self._comment_between(comma, member.key_start):
                # The exact inverse of an insertion after the previous member.
                self._splice(comma, member.value.end, "")
                return
            start, end = self._own_lines(member.key_start, member.value.end)
            self._splice(start, end, "")
            self._splice(comma, comma + 1, "")
            return
        following = node.members[1]
        if not self._comment_between(member.key_start, following.key_start):
            self._splice(member.key_start, following.key_start, "")
            return
        comma = self._next_token(member.value.end)
        self._splice(*self._own_lines(member.key_start, comma + 1), "")
