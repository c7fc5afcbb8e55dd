-- 0001: agents, tasks with dependencies and attempts, per-agent events, tokens.
CREATE TABLE agents (
    name            TEXT PRIMARY KEY,
    cli             TEXT NOT NULL DEFAULT 'unknown',
    persona         TEXT,
    capabilities    TEXT NOT NULL DEFAULT '[]',       -- JSON array, sorted
    pid             INTEGER,
    status          TEXT NOT NULL DEFAULT 'idle',     -- idle | busy | lost
    current_task_id INTEGER,
    cursor          INTEGER NOT NULL DEFAULT 0,       -- last event id the agent acknowledged
    registered_at   REAL NOT NULL,
    last_seen_at    REAL NOT NULL
);

CREATE TABLE tasks (
    id               INTEGER PRIMARY KEY,
    title            TEXT NOT NULL,
    prompt           TEXT NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,      -- higher runs first
    persona          TEXT,
    capabilities     TEXT NOT NULL DEFAULT '[]',
    working_dir      TEXT,
    max_attempts     INTEGER NOT NULL,
    timeout_seconds  INTEGER NOT NULL,
    status           TEXT NOT NULL,
    claimed_by       TEXT,
    fence_token      INTEGER NOT NULL DEFAULT 0,      -- +1 on every claim
    claimed_at       REAL,
    deadline_at      REAL,                            -- claimed_at + timeout_seconds
    lease_expires_at REAL,                            -- never later than deadline_at
    failures         INTEGER NOT NULL DEFAULT 0,
    progress         TEXT,
    result           TEXT,
    data             TEXT,                            -- JSON object
    error            TEXT,
    submitted_by     TEXT NOT NULL DEFAULT '',
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    finished_at      REAL
);
CREATE INDEX tasks_pending ON tasks (priority DESC, id) WHERE status = 'pending';
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE status = 'claimed';
CREATE INDEX tasks_by_status ON tasks (status, id);

CREATE TABLE task_deps (
    task_id    INTEGER NOT NULL REFERENCES tasks (id),
    depends_on INTEGER NOT NULL REFERENCES tasks (id),
    PRIMARY KEY (task_id, depends_on)
) WITHOUT ROWID;
CREATE INDEX task_deps_reverse ON task_deps (depends_on, task_id);

CREATE TABLE attempts (
    task_id     INTEGER NOT NULL REFERENCES tasks (id),
    number      INTEGER NOT NULL,
    agent       TEXT NOT NULL,
    fence_token INTEGER NOT NULL,
    claimed_at  REAL NOT NULL,
    finished_at REAL,
    outcome     TEXT NOT NULL,
    error       TEXT,
    PRIMARY KEY (task_id, number)
) WITHOUT ROWID;

CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    agent      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    task_id    INTEGER,
    detail     TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
CREATE INDEX events_by_agent ON events (agent, id);

CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY,                      -- sha256 of the token; the token itself is never stored
    role       TEXT NOT NULL,
    agent      TEXT,
    label      TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    revoked_at REAL
);
