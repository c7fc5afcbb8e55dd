"""Declared files: the paths or globs a task says it will change, and whether two tasks' declarations overlap.

A declared entry is a path or a glob relative to the task's directory (``app.py``, ``src/api/``,
``tests/test_*.py``, ``docs/**/*.md``); ``*``, ``?`` and ``[...]`` match within one name, ``**`` any number of
names. An entry whose last name has an extension (``app.py``, ``*.md``) names files; any other entry (``src``,
``.github``, ``docs/**``) names a directory and everything below it, as does any entry written with a trailing
``/`` (``v1.2/``). Two declarations overlap when some path could be covered by both; the answer is exact except
between two ``[...]`` classes, which are taken to overlap (a false "overlap" only makes one task wait).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from functools import cache


def normalize_declared(entry: str, subdir: str = ".") -> str:
    """``entry`` relative to the top of the repository, for a task whose directory is ``subdir`` in it."""
    cleaned = entry.strip().removeprefix("./")
    joined = posixpath.normpath(posixpath.join(subdir, cleaned or "."))
    if joined == ".":
        return ""
    return joined + "/" if cleaned.endswith("/") else joined


def first_overlap(ours: Sequence[str], theirs: Sequence[str]) -> tuple[str, str] | None:
    """The first pair of entries (ours, theirs) that overlap, or None when the declarations are disjoint."""
    for mine in ours:
        for other in theirs:
            if _paths_overlap(*_segments(mine), *_segments(other)):
                return mine, other
    return None


def _segments(entry: str) -> tuple[tuple[str, ...], bool]:
    """The names of an entry (``**`` runs collapsed) and whether it covers everything below it."""
    names: list[str] = []
    for name in entry.split("/"):
        if name in ("", "."):
            continue
        if name == "**" and names and names[-1] == "**":
            continue
        names.append(name)
    last = names[-1] if names else ""
    directory = entry.endswith("/") or not names or "." not in last[1:]
    return tuple(names), directory


@cache
def _paths_overlap(a: tuple[str, ...], a_dir: bool, b: tuple[str, ...], b_dir: bool) -> bool:
    """Whether some path is covered by both entries (a directory entry covers everything below it)."""
    if not a or not b:
        rest = a or b
        covering = a_dir if not a else b_dir
        return covering or all(name == "**" for name in rest)
    if a[0] == "**":  # it matches no name, or takes b's next name and goes on
        return _paths_overlap(a[1:], a_dir, b, b_dir) or _paths_overlap(a, a_dir, b[1:], b_dir)
    if b[0] == "**":
        return _paths_overlap(a, a_dir, b[1:], b_dir) or _paths_overlap(a[1:], a_dir, b, b_dir)
    return _names_overlap(a[0], b[0]) and _paths_overlap(a[1:], a_dir, b[1:], b_dir)


def _tokens(name: str) -> tuple[str, ...]:
    """A glob name as tokens: ``*``, ``?``, a ``[...]`` class, or one literal character."""
    tokens: list[str] = []
    i = 0
    while i < len(name):
        char = name[i]
        if char == "[":
            end = name.find("]", i + 2)
            if end != -1:
                tokens.append(name[i : end + 1])
                i = end + 1
                continue
        tokens.append(char)
        i += 1
    return tuple(tokens)


def _class_matches(token: str, char: str) -> bool:
    """Whether the ``[...]`` class ``token`` matches ``char``."""
    body = token[1:-1]
    negate = body[:1] in ("!", "^")
    body = body[1:] if negate else body
    hit = False
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            hit = hit or body[i] <= char <= body[i + 2]
            i += 3
        else:
            hit = hit or body[i] == char
            i += 1
    return hit != negate


def _chars_overlap(x: str, y: str) -> bool:
    """Whether one character can match both single-character tokens."""
    if x == "?" or y == "?":
        return True
    x_class, y_class = len(x) > 1 and x[0] == "[", len(y) > 1 and y[0] == "["
    if x_class and y_class:
        return True
    if x_class:
        return _class_matches(x, y)
    if y_class:
        return _class_matches(y, x)
    return x == y


@cache
def _names_overlap(x: str, y: str) -> bool:
    """Whether some single name matches both globs (a search over pairs of positions in the two patterns)."""
    a, b = _tokens(x), _tokens(y)
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    while todo:
        i, j = todo.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == "*":
            todo.append((i + 1, j))
            if j < len(b) and b[j] != "*":
                todo.append((i, j + 1))
        if j < len(b) and b[j] == "*":
            todo.append((i, j + 1))
            if i < len(a) and a[i] != "*":
                todo.append((i + 1, j))
        if i < len(a) and j < len(b) and a[i] != "*" and b[j] != "*" and _chars_overlap(a[i], b[j]):
            todo.append((i + 1, j + 1))
    return False
