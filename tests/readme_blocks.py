"""The README's sections, code blocks and shell commands, for tests that check the README against the code."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of the section headed ``## title`` (up to the next heading of the same level)."""
    parts = README.split(f"\n## {title}\n", 1)
    assert len(parts) == 2, f"README has no section '## {title}'"
    return parts[1].split("\n## ", 1)[0]


def code_blocks(text: str, language: str) -> list[str]:
    """The bodies of the fenced blocks in ``text`` opened with ```` ```language ````, indented ones included."""
    return [
        "\n".join(line.removeprefix(indent) for line in body.splitlines())
        for indent, body in re.findall(rf"^( *)```{language}\n(.*?)^\1```$", text, flags=re.M | re.S)
    ]


def commands(block: str) -> list[str]:
    """A shell block's commands: one a line, without the comment after them."""
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]
