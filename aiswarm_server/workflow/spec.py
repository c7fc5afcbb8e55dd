"""What a workflow file may say, validated with pydantic; every mistake is one line naming where it is.

A workflow file looks like::

    name: parser
    working_dir: .              # relative to this file; default: where `aiswarm run` is started
    defaults:
      retry: {attempts: 3, delay: 10s, backoff: 2}
      timeout: 30m
    tasks:
      - key: design
        title: Sketch the parser API
        persona: researcher
        prompt: Write docs/parser-api.md describing ...
      - key: parser
        title: Implement the parser
        persona: implementer
        depends_on: [design]
        prompt: Implement src/parser.py following docs/parser-api.md ...
        review:                 # implement -> review -> fix, at most `rounds` reviews
          persona: reviewer
          rounds: 3
          prompt: Review src/parser.py against docs/parser-api.md ...
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from aiswarm_server.errors import BrokerError

KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_DURATION = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


class WorkflowError(BrokerError):
    """A workflow file cannot be used; the message is one line saying where and what to write instead."""


def _seconds(value: Any) -> Any:
    """``30``, ``"30s"``, ``"5m"``, ``"1.5h"``, ``"2d"`` -> seconds; anything else is left for pydantic to refuse."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration: write seconds (30) or 30s, 5m, 2h, 1d")
        return float(match["number"]) * _UNITS[match["unit"] or "s"]
    return value


Duration = Annotated[float, BeforeValidator(_seconds)]


class RetryPolicy(BaseModel):
    """How often a task is tried and how long the broker waits between tries."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(default=3, ge=1, le=100, description="Tries in all, the first included.")
    delay: Duration = Field(default=0.0, ge=0, le=86_400, description="Wait before the first retry.")
    backoff: float = Field(
        default=1.0, ge=1, le=10, description="Each further retry waits this many times longer."
    )


class ReviewLoop(BaseModel):
    """Implement -> review -> fix, at most ``rounds`` reviews; a step whose last review still asks for changes
    ends ``review_exhausted``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="What the reviewer checks.")
    persona: str | None = Field(default="reviewer", max_length=64)
    rounds: int = Field(default=3, ge=1, le=20)
    fix_persona: str | None = Field(
        default=None,
        max_length=64,
        description="Who fixes what the review found; default: the task's persona.",
    )


class Defaults(BaseModel):
    """Settings every task gets unless it says otherwise."""

    model_config = ConfigDict(extra="forbid")

    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout: Duration = Field(default=1800.0, ge=1, le=604_800)
    persona: str | None = Field(default=None, max_length=64)
    priority: int = Field(default=0, ge=-1000, le=1000)


class Step(BaseModel):
    """One task of the workflow."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=KEY_PATTERN)
    title: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1)
    persona: str | None = Field(default=None, max_length=64)
    capabilities: list[str] = Field(default_factory=list, max_length=32)
    depends_on: list[str] = Field(default_factory=list)
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    timeout: Duration | None = Field(default=None, ge=1, le=604_800)
    retry: RetryPolicy | None = None
    review: ReviewLoop | None = None
    working_dir: str | None = None

    def fingerprint(self) -> str:
        """Changes whenever what the step asks for changes, so a re-run redoes an edited step."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class Workflow(BaseModel):
    """A DAG of tasks, each with its persona, dependencies, retry policy and optional review loop."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=KEY_PATTERN)
    description: str = ""
    working_dir: str | None = None
    defaults: Defaults = Field(default_factory=Defaults)
    tasks: list[Step] = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _a_dag_of_known_keys(self) -> Workflow:
        keys = [step.key for step in self.tasks]
        seen: set[str] = set()
        for step in self.tasks:
            if step.key in seen:
                raise ValueError(f"two tasks have the key {step.key!r}: give each task its own key")
            seen.add(step.key)
        for step in self.tasks:
            for dep in step.depends_on:
                if dep not in seen:
                    raise ValueError(
                        f"task {step.key!r} depends on {dep!r}, which is no task's key (keys: {', '.join(keys)})"
                    )
                if dep == step.key:
                    raise ValueError(f"task {step.key!r} depends on itself")
        cycle = _find_cycle({step.key: step.depends_on for step in self.tasks})
        if cycle:
            raise ValueError(
                f"the dependencies form a cycle: {' -> '.join(cycle)}; remove one of these links"
            )
        return self

    def step(self, key: str) -> Step:
        """The step with this key."""
        return next(step for step in self.tasks if step.key == key)

    def in_dependency_order(self) -> list[Step]:
        """The steps, each after everything it depends on (file order where free)."""
        done: set[str] = set()
        ordered: list[Step] = []
        while len(ordered) < len(self.tasks):
            for step in self.tasks:
                if step.key not in done and all(d in done for d in step.depends_on):
                    ordered.append(step)
                    done.add(step.key)
        return ordered


def _find_cycle(graph: dict[str, list[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return []


def parse_workflow(text: str, source: str = "workflow") -> Workflow:
    """Validate a workflow given as YAML text; raise :class:`WorkflowError` with one line naming the spot."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise WorkflowError(
            f"{source}:{where}: {problem} (check the indentation and quoting there)"
        ) from None
    if not isinstance(raw, dict):
        raise WorkflowError(f"{source}: a workflow is a mapping with `name:` and `tasks:` (a list of tasks)")
    try:
        return Workflow.model_validate(raw)
    except ValidationError as error:
        raise WorkflowError(f"{source}: {describe_validation_error(error, raw)}") from None


def load_workflow(path: Path) -> Workflow:
    """Read and validate a workflow file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise WorkflowError(f"cannot read {path}: {error.strerror or error}") from None
    return parse_workflow(text, str(path))


def describe_validation_error(error: ValidationError, raw: Any) -> str:
    """The first problem pydantic found, as ``tasks[2] (key 'parser').retry.delay: ...``."""
    first = error.errors()[0]
    parts: list[str] = []
    node: Any = raw
    for loc in first["loc"]:
        if isinstance(loc, int):
            label = f"[{loc}]"
            node = node[loc] if isinstance(node, list) and loc < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("key"), str):
                label += f" (key {node['key']!r})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(loc))
            node = node.get(loc) if isinstance(node, dict) else None
    where = "".join(parts)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "is not a field a workflow knows; check its spelling against the README's workflow example"
    elif first["type"] == "missing":
        message = "is required"
    return f"{where}: {message}" if where else message
