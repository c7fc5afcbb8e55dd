-- 0002: what the launcher reports about an agent (cooling down, circuit open ...), and the tokens every run used.
ALTER TABLE agents ADD COLUMN state text NOT NULL DEFAULT '';        -- '' | cooling | circuit_open | reset
ALTER TABLE agents ADD COLUMN state_reason text NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN state_until double precision;          -- when the cool-down ends or the next probe runs

CREATE TABLE usage (
    id            bigserial PRIMARY KEY,
    task_id       bigint,
    attempt       integer,
    agent         text NOT NULL,
    cli           text NOT NULL,
    provider      text NOT NULL DEFAULT '',
    model         text NOT NULL DEFAULT '',
    input_tokens  bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens bigint NOT NULL DEFAULT 0,
    total_tokens  bigint NOT NULL DEFAULT 0,
    requests      integer,
    recorded_at   double precision NOT NULL
);
CREATE INDEX usage_by_time ON usage (recorded_at);
CREATE INDEX usage_by_task ON usage (task_id);

-- Quota pools: the request budgets agents sharing a credential spend (the launcher keeps the counting rules).
CREATE TABLE quota_pools (
    name       text PRIMARY KEY,
    state      jsonb NOT NULL,                         -- as the launcher wrote it
    updated_at double precision NOT NULL
);
