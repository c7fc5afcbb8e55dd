"""Isolation: a git worktree per task attempt, and a merge queue that brings the work back.

``repository`` finds a directory's repository and the submitter's HEAD; ``worktrees`` creates, commits, discards
and prunes the worktrees under the aiswarm home; ``include`` seeds them with gitignored dependencies from
``.worktreeinclude``; ``merge`` brings a task's branch onto its target; ``files`` decides whether two tasks'
declared files overlap. Everything is done by the real ``git`` binary (``git``).
"""
