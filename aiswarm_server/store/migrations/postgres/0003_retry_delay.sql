-- 0003: a failed task waits before its next attempt: retry_delay_seconds * retry_backoff ^ (failures - 1).
-- While it waits it is 'blocked' with retry_at set; the sweeper makes it pending again once retry_at has passed.
ALTER TABLE tasks ADD COLUMN retry_delay_seconds double precision NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN retry_backoff double precision NOT NULL DEFAULT 1;
ALTER TABLE tasks ADD COLUMN retry_at double precision;
CREATE INDEX tasks_retries ON tasks (retry_at) WHERE retry_at IS NOT NULL;
