-- 0004: isolation. A task submitted from a git checkout records the submitter's HEAD and branch; an attempt in a
-- worktree records its branch and directory; the merge queue records how the work came back.
ALTER TABLE tasks ADD COLUMN isolation text NOT NULL DEFAULT 'auto';    -- none | worktree | auto
ALTER TABLE tasks ADD COLUMN files text[] NOT NULL DEFAULT '{}';        -- declared paths or globs
ALTER TABLE tasks ADD COLUMN base_commit text;                          -- the submitter's HEAD at submit
ALTER TABLE tasks ADD COLUMN target_branch text;                        -- the submitter's branch (NULL: detached)
ALTER TABLE tasks ADD COLUMN branch text;                               -- aiswarm/task-<id>
ALTER TABLE tasks ADD COLUMN workspace text;                            -- the attempt's directory in its worktree
ALTER TABLE tasks ADD COLUMN merge_state text;                          -- pending | merged | conflict | manual | discarded
ALTER TABLE tasks ADD COLUMN merge_detail text;
ALTER TABLE tasks ADD COLUMN conflict_files text[] NOT NULL DEFAULT '{}';
ALTER TABLE tasks ADD COLUMN diff_stat text;
