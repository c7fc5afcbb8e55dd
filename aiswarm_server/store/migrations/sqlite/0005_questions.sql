-- 0005: questions. A worker asks the primary about the task it holds, under its attempt's fence; the primary's
-- answer (or the deadline) closes it. tasks.question_id points at the open one, so task listings read the
-- questions table only for tasks that have one.
CREATE TABLE questions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id     INTEGER NOT NULL REFERENCES tasks (id),
    fence_token INTEGER NOT NULL,                     -- the attempt that asked
    agent       TEXT NOT NULL,
    question    TEXT NOT NULL,
    options     TEXT NOT NULL DEFAULT '[]',           -- JSON array of choices
    on_timeout  TEXT NOT NULL,                        -- continue | fail
    status      TEXT NOT NULL DEFAULT 'open',         -- open | answered | expired | withdrawn
    asked_at    REAL NOT NULL,
    deadline_at REAL NOT NULL,
    answer      TEXT,
    answered_by TEXT,
    answered_at REAL
);
CREATE INDEX questions_by_task ON questions (task_id, id);
CREATE INDEX questions_open ON questions (deadline_at) WHERE status = 'open';
ALTER TABLE tasks ADD COLUMN question_id INTEGER;      -- the open question, NULL when none
-- The submitter's policy for its workers' questions (NULL: the question's own, else the broker's defaults).
ALTER TABLE tasks ADD COLUMN answer_within_seconds INTEGER;   -- how long a question on it stays open
ALTER TABLE tasks ADD COLUMN on_unanswered TEXT;           -- continue | fail
