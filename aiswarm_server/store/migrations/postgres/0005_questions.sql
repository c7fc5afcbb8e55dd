-- 0005: questions. A worker asks the primary about the task it holds, under its attempt's fence; the primary's
-- answer (or the deadline) closes it. tasks.question_id points at the open one, so task listings read the
-- questions table only for tasks that have one.
CREATE TABLE questions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id     bigint NOT NULL REFERENCES tasks (id),
    fence_token bigint NOT NULL,                      -- the attempt that asked
    agent       text NOT NULL,
    question    text NOT NULL,
    options     text[] NOT NULL DEFAULT '{}',         -- choices
    on_timeout  text NOT NULL,                        -- continue | fail
    status      text NOT NULL DEFAULT 'open',         -- open | answered | expired | withdrawn
    asked_at    double precision NOT NULL,
    deadline_at double precision NOT NULL,
    answer      text,
    answered_by text,
    answered_at double precision
);
CREATE INDEX questions_by_task ON questions (task_id, id);
CREATE INDEX questions_open ON questions (deadline_at) WHERE status = 'open';
ALTER TABLE tasks ADD COLUMN question_id bigint;       -- the open question, NULL when none
-- The submitter's policy for its workers' questions (NULL: the question's own, else the broker's defaults).
ALTER TABLE tasks ADD COLUMN answer_within_seconds integer;   -- how long a question on it stays open
ALTER TABLE tasks ADD COLUMN on_unanswered text;           -- continue | fail
