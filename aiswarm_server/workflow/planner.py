"""``aiswarm plan "REQUEST"``: a model at an OpenAI-compatible endpoint turns a request into a workflow.

The model is sent the request, the personas and the agents that are registered, and asked for a workflow as JSON
(the same format as a workflow file). Its answer is validated as a :class:`Workflow` (a DAG of known keys); a
malformed answer is refused in one line. Answers are cached in ``$AISWARM_HOME/plans/`` by a hash of everything
sent, so an identical request costs no second model call; each cache entry keeps the model's token use.

The endpoint comes from ``[planner]`` in ``$AISWARM_HOME/config.toml`` (``base_url``, ``model``, ``key_env``) or the
command's options.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aiswarm_server.errors import BrokerError
from aiswarm_server.workflow.spec import Workflow, describe_validation_error

_FENCED = re.compile(r"```(?:json|yaml)?\s*\n(?P<body>.*?)\n```", re.DOTALL)
_INSTRUCTIONS = """You are the aiswarm planner. Turn the user's request into a workflow for a swarm of coding agents.

Answer with one JSON object and nothing else (a ```json fenced block is fine):
{"name": "short-name", "tasks": [
  {"key": "unique-key", "title": "Short title", "prompt": "Everything the agent needs to do this task",
   "persona": "one of the personas below, or null", "depends_on": ["keys of tasks that must finish first"],
   "retry": {"attempts": 2}, "review": {"persona": "reviewer", "rounds": 2, "prompt": "What to check"}}
]}
Rules: keys are letters, digits, '.', '_' or '-'; depends_on names earlier keys only (no cycles); give each task a
self-contained prompt; add "review" only where a second look pays off; split work so independent tasks can run in
parallel.
"""


class PlannerError(BrokerError):
    """The plan cannot be made or is not a valid workflow; one line saying what to do."""


class PlannerConfig(BaseModel):
    """Where the planner's model is: an OpenAI-compatible endpoint (``.../v1``)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(pattern=r"^https?://")
    model: str = "gpt-oss-120b"
    key_env: str | None = None
    timeout_seconds: float = Field(default=120.0, gt=0, le=1800)

    def api_key(self) -> str:
        """The key from ``key_env`` (empty for a local server that needs none)."""
        if self.key_env is None:
            return ""
        value = os.environ.get(self.key_env, "").strip()
        if not value:
            raise PlannerError(
                f"planner: ${self.key_env} is not set; export it or change key_env in config.toml"
            )
        return value


def planner_config(home: Path, base_url: str | None, model: str | None, key_env: str | None) -> PlannerConfig:
    """``[planner]`` from the home's config file, with the command's options on top."""
    table: dict[str, Any] = {}
    path = home / "config.toml"
    if path.exists():
        try:
            table = dict(tomllib.loads(path.read_text(encoding="utf-8")).get("planner", {}))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise PlannerError(f"{path}: {error}") from None
    for key, value in (("base_url", base_url), ("model", model), ("key_env", key_env)):
        if value is not None:
            table[key] = value
    if "base_url" not in table:
        raise PlannerError(
            "no planner endpoint: pass --endpoint http://host:port/v1 or set base_url under [planner] in "
            f"{path}"
        )
    try:
        return PlannerConfig.model_validate(table)
    except ValidationError as error:
        raise PlannerError(f"planner settings: {describe_validation_error(error, table)}") from None


@dataclass(frozen=True)
class Plan:
    """A validated plan, where it came from, and what it cost."""

    workflow: Workflow
    cached: bool
    usage: dict[str, int]
    cache_path: Path


def context_text(personas: list[tuple[str, str]], agents: list[tuple[str, str | None, str]]) -> str:
    """The personas and agents, as the model is told about them."""
    lines = ['Personas (use these names in "persona"):']
    lines += [f"- {name}: {description}" for name, description in personas] or [
        "- (none: leave persona null)"
    ]
    lines.append("Agents registered now (name, persona, status):")
    lines += [f"- {name}, {persona or 'any persona'}, {status}" for name, persona, status in agents] or [
        "- (none yet: they may be launched later)"
    ]
    return "\n".join(lines)


def make_plan(
    request: str, config: PlannerConfig, context: str, cache_dir: Path, *, fresh: bool = False
) -> Plan:
    """Ask the model for a workflow (or take it from the cache) and validate it."""
    if not request.strip():
        raise PlannerError(
            'the request is empty: say what you want done, e.g. aiswarm plan "Add tests for parser.py"'
        )
    system = f"{_INSTRUCTIONS}\n{context}"
    key = hashlib.sha256(json.dumps([config.base_url, config.model, system, request]).encode()).hexdigest()[
        :24
    ]
    cache_path = cache_dir / f"{key}.json"
    if not fresh and cache_path.exists():
        entry = json.loads(cache_path.read_text(encoding="utf-8"))
        return Plan(Workflow.model_validate(entry["workflow"]), True, entry.get("usage", {}), cache_path)
    answer, usage = _ask(config, system, request)
    workflow = parse_plan(answer)
    cache_dir.mkdir(parents=True, exist_ok=True)
    entry = {
        "request": request,
        "model": config.model,
        "usage": usage,
        "workflow": workflow.model_dump(mode="json"),
    }
    cache_path.write_text(json.dumps(entry, indent=2), encoding="utf-8")
    return Plan(workflow, False, usage, cache_path)


def _ask(config: PlannerConfig, system: str, request: str) -> tuple[str, dict[str, int]]:
    headers = {"Authorization": f"Bearer {key}"} if (key := config.api_key()) else {}
    body = {
        "model": config.model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": request}],
        "temperature": 0,
    }
    url = config.base_url.rstrip("/") + "/chat/completions"
    try:
        with httpx.Client(timeout=config.timeout_seconds) as http:
            response = http.post(url, json=body, headers=headers)
    except httpx.HTTPError as error:
        raise PlannerError(
            f"cannot reach the planner model at {url}: {error or type(error).__name__}"
        ) from None
    if response.status_code != 200:
        raise PlannerError(
            f"the planner model at {url} answered HTTP {response.status_code}: {response.text[:200]}"
        )
    try:
        reply = response.json()
        content = reply["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        raise PlannerError(
            f"the planner model at {url} did not answer like an OpenAI chat completion"
        ) from None
    usage = {k: int(v) for k, v in (reply.get("usage") or {}).items() if isinstance(v, int)}
    return content, usage


def parse_plan(answer: str) -> Workflow:
    """The model's answer as a validated workflow; PlannerError in one line when it is not one."""
    fenced = _FENCED.search(answer)
    text = fenced["body"] if fenced else answer.strip()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise PlannerError(
            f"the model's answer is not JSON ({error.msg} at line {error.lineno}); run again, or use a stronger "
            "model (--model)"
        ) from None
    if not isinstance(raw, dict):
        raise PlannerError("the model's answer is not a workflow object with `name` and `tasks`; run again")
    try:
        return Workflow.model_validate(raw)
    except ValidationError as error:
        raise PlannerError(
            f"the model's plan is not a valid workflow: {describe_validation_error(error, raw)}; run again, or use "
            "a stronger model (--model)"
        ) from None
