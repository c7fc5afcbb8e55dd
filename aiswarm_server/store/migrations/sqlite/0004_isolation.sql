-- 0004: isolation. A task submitted from a git checkout records the submitter's HEAD and branch; an attempt in a
-- worktree records its branch and directory; the merge queue records how the work came back.
ALTER TABLE tasks ADD COLUMN isolation TEXT NOT NULL DEFAULT 'auto';    -- none | worktree | auto
ALTER TABLE tasks ADD COLUMN files TEXT NOT NULL DEFAULT '[]';          -- JSON array: declared paths or globs
ALTER TABLE tasks ADD COLUMN base_commit TEXT;                          -- the submitter's HEAD at submit
ALTER TABLE tasks ADD COLUMN target_branch TEXT;                        -- the submitter's branch (NULL: detached)
ALTER TABLE tasks ADD COLUMN branch TEXT;                               -- aiswarm/task-<id>
ALTER TABLE tasks ADD COLUMN workspace TEXT;                            -- the attempt's directory in its worktree
ALTER TABLE tasks ADD COLUMN merge_state TEXT;                          -- pending | merged | conflict | manual | discarded
ALTER TABLE tasks ADD COLUMN merge_detail TEXT;
ALTER TABLE tasks ADD COLUMN conflict_files TEXT NOT NULL DEFAULT '[]'; -- JSON array
ALTER TABLE tasks ADD COLUMN diff_stat TEXT;
