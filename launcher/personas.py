"""Personas: Markdown files with YAML front matter, given to a worker CLI as its standing instructions.

Search order (a later directory overrides a persona of the same name):

1. the built-in personas: ``launcher/builtin_personas/`` in an installed wheel, else the repository's ``personas/``;
2. the user's ``$AISWARM_HOME/personas/``.

A file looks like::

    ---
    name: reviewer
    description: Reviews a change and reports findings
    capabilities: [review, python]
    preferred_cli: qwen
    preferred_model: null
    deny_tools: ["github__create_*"]   # MCP gateway tools it must not see (allow_tools: only these)
    ---
    Instructions for the agent...
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import launcher

_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class PersonaError(ValueError):
    """A persona file is malformed; the message names the file and the field."""


class Persona(BaseModel):
    """One persona: who the agent is, what it can do, and the instructions it works by."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    description: str = Field(min_length=1)
    capabilities: list[str] = Field(default_factory=list)
    preferred_cli: str | None = None
    preferred_model: str | None = None
    allow_tools: list[str] = Field(default_factory=list)
    """Gateway tools (``<server>__<tool>``, globs) this persona may use; empty: all that are not denied."""
    deny_tools: list[str] = Field(default_factory=list)
    """Gateway tools this persona never sees, e.g. ``["github__create_*", "github__delete_*"]``."""
    instructions: str = Field(min_length=1)
    source: Path | None = None

    @field_validator("capabilities")
    @classmethod
    def _capabilities_are_words(cls, value: list[str]) -> list[str]:
        bad = [c for c in value if not c or not c.replace("-", "").replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"capabilities must be single words (letters, digits, - or _), got {bad}")
        return [c.lower() for c in value]

    @field_validator("preferred_cli")
    @classmethod
    def _cli_is_known(cls, value: str | None) -> str | None:
        from launcher.adapters import known_adapters

        if value is not None and value not in known_adapters():
            raise ValueError(f"unknown CLI {value!r}; known CLIs are {', '.join(known_adapters())}")
        return value


def builtin_persona_dirs() -> list[Path]:
    """Where the built-in personas live: the wheel's ``launcher/builtin_personas``, else the checkout's ``personas/``."""
    package_dir = Path(launcher.__file__).resolve().parent
    for candidate in (package_dir / "builtin_personas", package_dir.parent / "personas"):
        if candidate.is_dir():
            return [candidate]
    return []


def persona_dirs(home: Path | None) -> list[Path]:
    """Built-in directories first, then ``<home>/personas`` (later overrides earlier)."""
    dirs = builtin_persona_dirs()
    if home is not None and (home / "personas").is_dir():
        dirs.append(home / "personas")
    return dirs


def parse_persona(path: Path) -> Persona:
    """Read and validate one persona file; raise PersonaError naming the file and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PersonaError(f"{path}: cannot read: {exc.strerror or exc}") from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise PersonaError(f"{path}: must start with a '---' line opening the YAML front matter")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise PersonaError(f"{path}: front matter is not closed by a '---' line") from None
    try:
        meta = yaml.safe_load("\n".join(lines[1:end])) or {}
    except yaml.YAMLError as exc:
        raise PersonaError(f"{path}: front matter is not valid YAML: {_one_line(str(exc))}") from None
    if not isinstance(meta, dict):
        raise PersonaError(f"{path}: front matter must be a mapping of fields, got {type(meta).__name__}")
    if "instructions" in meta:
        raise PersonaError(
            f"{path}: field 'instructions': write the instructions as the body, after the front matter"
        )
    body = "\n".join(lines[end + 1 :]).strip()
    try:
        return Persona.model_validate({**meta, "instructions": body, "source": path})
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in err['loc']) or '?'}': {err['msg']}" for err in exc.errors()
        )
        raise PersonaError(f"{path}: {problems}") from None


def load_personas(home: Path | None = None) -> dict[str, Persona]:
    """Every persona by name, built-ins overridden by ``<home>/personas``. Raises PersonaError on a bad file."""
    personas: dict[str, Persona] = {}
    for directory in persona_dirs(home):
        seen: dict[str, Path] = {}
        for path in sorted(directory.glob("*.md")):
            if path.name.lower() == "readme.md":
                continue
            persona = parse_persona(path)
            if persona.name in seen:
                raise PersonaError(
                    f"{path}: field 'name': {persona.name!r} is already defined in {seen[persona.name]}"
                )
            seen[persona.name] = path
            personas[persona.name] = persona
    return personas


def get_persona(name: str, home: Path | None = None) -> Persona:
    """The persona called ``name``; raise PersonaError listing the known ones if there is none."""
    personas = load_personas(home)
    try:
        return personas[name]
    except KeyError:
        raise PersonaError(
            f"unknown persona {name!r}: known personas are {', '.join(sorted(personas))}"
        ) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())
