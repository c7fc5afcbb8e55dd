"""A scripted stand-in for the paid model, so the real agent CLIs can run end to end offline.

It speaks OpenAI chat completions (qwen-code, opencode) and the Gemini API (gemini-cli),
decides each step with :mod:`~launcher.scripted_model.policy` from the conversation it
receives, counts requests per agent and kind, and can inject faults (HTTP 429 ...).
See :mod:`~launcher.scripted_model.task_grammar` for how tasks must be written.
"""

from __future__ import annotations

from launcher.scripted_model.app import create_app
from launcher.scripted_model.policy import Answer, CallTool, StepKind, decide
from launcher.scripted_model.server import ScriptedModelServer
from launcher.scripted_model.state import FaultSpec, ModelState

__all__ = [
    "Answer",
    "CallTool",
    "FaultSpec",
    "ModelState",
    "ScriptedModelServer",
    "StepKind",
    "create_app",
    "decide",
]
