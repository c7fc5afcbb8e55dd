"""JSON-lines logs that follow a task: one line per event, each naming the task, attempt, fence, agent and CLI.

With ``AISWARM_LOG_FORMAT=json`` the broker writes a line for every task change it makes to
``$AISWARM_HOME/logs/broker.jsonl`` and the launcher writes each agent's lines to ``logs/<agent>.jsonl``.
``aiswarm logs --task N`` (:func:`task_lines`) merges the lines about one task from all of them in time order.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiswarm_server.broker import Broker, BrokerNews
from aiswarm_server.models import Task, TaskStatus

BROKER_LOG = "broker.jsonl"
JSON_LOG_SUFFIX = ".jsonl"
TASK_FIELDS = ("task_id", "attempt", "fence", "agent", "cli")

task_log = logging.getLogger("aiswarm.tasks")


def json_log_line(created: float, level: str, source: str, message: str, fields: dict[str, Any]) -> str:
    """One log line as JSON: time, level, source (``broker`` or the agent's name), message, and the task fields."""
    line: dict[str, Any] = {
        "ts": round(created, 6),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z",
        "level": level,
        "source": source,
        "message": message,
    }
    line.update({name: fields[name] for name in TASK_FIELDS if fields.get(name) is not None})
    return json.dumps(line, ensure_ascii=False)


class JsonLinesFormatter(logging.Formatter):
    """Log records as :func:`json_log_line` lines, with the task fields passed as ``extra``."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        message = record.getMessage()
        if record.exc_info:
            message += " (" + self.formatException(record.exc_info).splitlines()[-1] + ")"
        fields = {name: getattr(record, name, None) for name in TASK_FIELDS}
        return json_log_line(record.created, record.levelname.lower(), self.source, message, fields)


def json_file_handler(path: Path, source: str) -> logging.Handler:
    """A handler appending JSON lines to ``path`` (its directory created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonLinesFormatter(source))
    return handler


class BrokerTaskLog:
    """The broker's observer that writes a JSON line per task change to ``logs/broker.jsonl``."""

    def __init__(self, logs_dir: Path) -> None:
        self.handler = json_file_handler(logs_dir / BROKER_LOG, "broker")
        self._logger = logging.getLogger("aiswarm")

    def attach(self, broker: Broker) -> None:
        """Start writing: the broker's own warnings go to the file too."""
        self._logger.addHandler(self.handler)
        task_log.setLevel(logging.INFO)
        broker.observers.append(self.observe)

    def close(self) -> None:
        """Stop writing and close the file."""
        self._logger.removeHandler(self.handler)
        self.handler.close()

    def observe(self, news: BrokerNews) -> None:
        """Write the lines one change deserves (another broker writes its own changes to its own log)."""
        if news.kind == "remote":
            return
        usage = news.usage
        if usage is not None and usage.task_id is not None:
            task_log.info(
                "task #%s model usage: %s request(s), %s input and %s output tokens from %s",
                usage.task_id, usage.requests, usage.input_tokens, usage.output_tokens, usage.provider,
                extra={"task_id": usage.task_id, "agent": news.agent, "cli": news.cli},
            )  # fmt: skip
        change = news.change
        for task in change.created:
            _line(task, f"submitted: {task.title!r} ({task.status.value}, persona {task.persona or 'any'})")
        task = change.task
        if task is not None:
            who = {"agent": news.agent, "cli": news.cli}
            match news.kind:
                case "claimed":
                    _line(task, f"claimed by {news.agent}", **who)
                case "progress":
                    _line(task, f"progress from {news.agent}: {task.progress}", **who)
                case "merge":
                    _line(task, f"merge {task.merge_state}: {task.merge_detail}")
                case "released" if task.waiting:
                    _line(task, f"handed back by {news.agent}; waits: {task.waited_on}", **who)
                case "completed" | "released" | "cancelled" | "swept" if task.status is TaskStatus.PENDING:
                    _line(task, f"{_verb(news)}; back in the queue", **who)
                case _:
                    _line(task, f"{_verb(news)}; now {task.status.value}", **who)
        requeued = [t for t in change.claimable if task is None or t.id != task.id]
        if news.kind == "swept":
            for lost in requeued:
                _line(lost, "lease expired; back in the queue")
        if news.kind == "waited":
            for ready in requeued:
                _line(ready, "nothing in its way any more; back in the queue")
        finished = [i for i in change.finished if task is None or i != task.id]
        for task_id in finished:
            task_log.info(
                "task #%s ended with this change (%s)", task_id, news.kind, extra={"task_id": task_id}
            )


def _verb(news: BrokerNews) -> str:
    return {
        "completed": f"reported by {news.agent}",
        "released": f"released by {news.agent}",
        "cancelled": "cancelled",
        "swept": "lease expired",
    }.get(news.kind, news.kind)


def _line(task: Task, message: str, **fields: str | None) -> None:
    extra: dict[str, Any] = {"task_id": task.id}
    if task.fence_token:
        extra["attempt"] = task.fence_token  # each claim is one attempt and takes the next fence token
        extra["fence"] = task.fence_token
    extra.update({k: v for k, v in fields.items() if v is not None})
    if task.status is TaskStatus.FAILED or task.status is TaskStatus.DEAD:
        message += f": {task.error}"
    task_log.info("task #%s %s", task.id, message, extra=extra)


def read_json_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects in a ``.jsonl`` file; lines that are not JSON objects are skipped."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for text in handle:
            try:
                line = json.loads(text)
            except ValueError:
                continue
            if isinstance(line, dict):
                yield line


def task_lines(logs_dir: Path, task_id: int) -> list[dict[str, Any]]:
    """Every line about ``task_id`` from the broker's and every agent's JSON log, oldest first."""
    lines = [
        line
        for path in sorted(logs_dir.glob(f"*{JSON_LOG_SUFFIX}"))
        for line in read_json_lines(path)
        if line.get("task_id") == task_id
    ]
    lines.sort(key=lambda line: float(line.get("ts", 0.0)))
    return lines


def format_task_line(line: dict[str, Any]) -> str:
    """One merged line for the terminal: time, source, attempt and fence, message."""
    tags = " ".join(f"{name}={line[name]}" for name in ("attempt", "fence", "cli") if name in line)
    return f"{line.get('time', '')} {line.get('source', '?'):<16} {line.get('message', '')}" + (
        f"  [{tags}]" if tags else ""
    )
