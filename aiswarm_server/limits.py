"""What callers may ask for: one home for each bound, read by the tools' argument schemas, the broker's checks,
the settings and the CLI alike."""

from __future__ import annotations

TITLE_MAX_CHARS = 200
PRIORITY_MIN = -1000
PRIORITY_MAX = 1000
MAX_ATTEMPTS_LIMIT = 100
TASK_TIMEOUT_LIMIT_SECONDS = 7 * 86_400
RETRY_DELAY_LIMIT_SECONDS = 86_400
RETRY_BACKOFF_MAX = 10
LABEL_MAX_CHARS = 64  # agent names, personas, capabilities, CLI names, batch keys
MAX_CAPABILITIES = 32
DEPENDENCIES_MAX = 200
PATH_MAX_CHARS = 4096
ID_MAX = 2**62  # task ids and fence tokens
COUNT_MAX = 2**31  # process ids, paging offsets
CURSOR_MAX_CHARS = 40
REASON_MAX_CHARS = 500
PROGRESS_MAX_CHARS = 2000
LIST_LIMIT_MAX = 500
QUESTION_MAX_CHARS = 4000  # a worker's question to the primary
QUESTION_OPTIONS_MAX = 10  # choices a question may offer
OPTION_MAX_CHARS = 200
ANSWER_MAX_CHARS = 20_000
JSON_REPLY_WAIT_MAX_SECONDS = 280
"""The longest wait in a 2025-11-25 call. Those calls are answered as one JSON reply with nothing sent before it, and
Node's fetch (undici: gemini-cli's, qwen-code's and opencode's MCP client) gives up on a response whose headers
have not come within 300 s; the 2026-07-28 path streams and has no such bound."""
ANSWER_WAIT_DEFAULT_SECONDS = 50  # ask_primary's own wait: inside every client's tool-call cap (Codex: 60 s)
ANSWER_WITHIN_DEFAULT_SECONDS = 600  # how long a question stays open unless the worker asks for less or more
ANSWER_WITHIN_MAX_SECONDS = 86_400
