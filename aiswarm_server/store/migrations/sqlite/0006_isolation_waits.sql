-- 0006: isolation, continued. A task whose declared files overlap a running task's (or whose dependency's work is
-- not merged yet) is not run: the claim hands it back and it waits 'blocked' with waited_on saying why, holding no
-- agent; the sweeper makes it pending once nothing is in its way. waited_on stays after the wait (the attempt then
-- starts from the target branch's tip). resolves: the conflicting task whose conflict this task resolves.
ALTER TABLE tasks ADD COLUMN waited_on TEXT;
ALTER TABLE tasks ADD COLUMN resolves INTEGER;
CREATE INDEX tasks_waiting ON tasks (id) WHERE status = 'blocked' AND waited_on IS NOT NULL AND retry_at IS NULL;
CREATE INDEX tasks_merge_pending ON tasks (id) WHERE merge_state = 'pending';
