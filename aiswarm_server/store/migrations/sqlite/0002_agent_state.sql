-- 0002: what the launcher reports about an agent (cooling down, circuit open ...), and the tokens every run used.
ALTER TABLE agents ADD COLUMN state TEXT NOT NULL DEFAULT '';        -- '' | cooling | circuit_open | reset
ALTER TABLE agents ADD COLUMN state_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN state_until REAL;                      -- when the cool-down ends or the next probe runs

CREATE TABLE usage (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id       INTEGER,
    attempt       INTEGER,
    agent         TEXT NOT NULL,
    cli           TEXT NOT NULL,
    provider      TEXT NOT NULL DEFAULT '',
    model         TEXT NOT NULL DEFAULT '',
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens  INTEGER NOT NULL DEFAULT 0,
    requests      INTEGER,
    recorded_at   REAL NOT NULL
);
CREATE INDEX usage_by_time ON usage (recorded_at);
CREATE INDEX usage_by_task ON usage (task_id);

-- Quota pools: the request budgets agents sharing a credential spend (the launcher keeps the counting rules).
CREATE TABLE quota_pools (
    name       TEXT PRIMARY KEY,
    state      TEXT NOT NULL,                         -- JSON object, as the launcher wrote it
    updated_at REAL NOT NULL
);
