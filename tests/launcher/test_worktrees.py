"""Worktrees per task attempt and the merge queue, on real git repositories in temporary directories."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.isolation.files import first_overlap, normalize_declared
from launcher.isolation.include import parse_include
from launcher.isolation.merge import MergeOutcome, merge_task
from launcher.isolation.repository import GitContext, git_context, repository_key
from launcher.isolation.worktrees import Worktree, Worktrees, kept_branches

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def git_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A known author, and no system or global git configuration from the machine."""
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-global-gitconfig"))
    for key, value in {
        "GIT_AUTHOR_NAME": "Test User",
        "GIT_AUTHOR_EMAIL": "user@example.test",
        "GIT_COMMITTER_NAME": "Test User",
        "GIT_COMMITTER_EMAIL": "user@example.test",
    }.items():
        monkeypatch.setenv(key, value)


def run_git(cwd: Path, *args: str) -> str:
    """Run git as the user would in ``cwd``; its stdout."""
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The user's checkout: branch main, three committed files, a gitignored node_modules."""
    root = tmp_path / "project"
    root.mkdir()
    run_git(root, "init", "-q", "-b", "main")
    write(root / "a.txt", "alpha\n")
    write(root / "b.txt", "beta\n")
    write(root / "src" / "app.py", "print('app')\n")
    write(root / ".gitignore", "node_modules/\n.env\n")
    run_git(root, "add", "-A")
    run_git(root, "commit", "-q", "-m", "initial")
    return root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "aiswarm-home"


@pytest.fixture
def worktrees(home: Path) -> Worktrees:
    return Worktrees(home)


async def context(directory: Path) -> GitContext:
    found = await git_context(directory)
    assert found is not None
    return found


async def new_worktree(worktrees: Worktrees, ctx: GitContext, task_id: int, fence: int = 1) -> Worktree:
    worktree, problems = await worktrees.create(
        checkout=ctx.checkout, common_dir=ctx.common_dir, task_id=task_id, fence=fence, base=ctx.head
    )
    assert problems == ()
    return worktree


async def finish(worktrees: Worktrees, worktree: Worktree, title: str) -> None:
    """What the launcher does after a successful attempt: commit, drop the worktree (the branch stays)."""
    await worktrees.commit(worktree, title)
    await worktrees.discard(worktree)


def status(root: Path) -> list[str]:
    """``git status --porcelain`` lines, leading spaces kept."""
    done = subprocess.run(
        ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
    )
    return done.stdout.splitlines()


# --- where a directory sits in git -------------------------------------------------------------------------


async def test_git_context_names_checkout_subdir_head_and_branch(repo: Path) -> None:
    ctx = await context(repo / "src")
    assert ctx.checkout == repo.resolve()
    assert ctx.common_dir == (repo / ".git").resolve()
    assert ctx.subdir == "src"
    assert ctx.head == run_git(repo, "rev-parse", "HEAD")
    assert ctx.branch == "main"
    run_git(repo, "checkout", "-q", "--detach")
    assert (await context(repo)).branch is None


async def test_no_git_context_outside_a_repository_or_before_the_first_commit(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert await git_context(plain) is None
    assert await git_context(tmp_path / "missing") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    run_git(empty, "init", "-q")
    assert await git_context(empty) is None


def test_repository_key_is_readable_and_differs_per_location(tmp_path: Path) -> None:
    one = repository_key(tmp_path / "x" / "app" / ".git")
    two = repository_key(tmp_path / "y" / "app" / ".git")
    assert one.startswith("app-") and two.startswith("app-") and one != two
    assert one == repository_key(tmp_path / "x" / "app" / ".git")


# --- worktrees ---------------------------------------------------------------------------------------------


async def test_worktree_lives_under_the_home_on_its_branch_from_the_recorded_base(
    repo: Path, home: Path, worktrees: Worktrees
) -> None:
    ctx = await context(repo)
    write(repo / "a.txt", "the user moved on\n")
    run_git(repo, "commit", "-q", "-am", "user commit after submit")
    worktree = await new_worktree(worktrees, ctx, task_id=7, fence=2)
    assert worktree.path == home / "worktrees" / repository_key(ctx.common_dir) / "task-7-2"
    assert worktree.branch == worktrees.branch(7)
    assert run_git(worktree.path, "rev-parse", "HEAD") == ctx.head  # the submitter's HEAD, not the tip now
    assert (worktree.path / "a.txt").read_text() == "alpha\n"
    assert run_git(worktree.path, "symbolic-ref", "--short", "HEAD") == worktrees.branch(7)
    assert status(repo) == []  # the user's checkout does not see it
    assert worktree.directory("src") == worktree.path / "src"


async def test_commit_names_the_task_and_keeps_what_the_cli_committed(
    repo: Path, worktrees: Worktrees
) -> None:
    ctx = await context(repo)
    worktree = await new_worktree(worktrees, ctx, task_id=3)
    write(worktree.path / "c.txt", "gamma\n")
    run_git(worktree.path, "add", "c.txt")
    run_git(worktree.path, "commit", "-q", "-m", "the CLI's own commit")
    write(worktree.path / "a.txt", "alpha, edited\n")
    write(worktree.path / "new" / "d.txt", "delta\n")
    commit = await worktrees.commit(worktree, "Edit a and add d")
    assert commit.committed
    log = run_git(worktree.path, "log", "--format=%s", f"{ctx.head}..HEAD").splitlines()
    assert log == ["aiswarm task 3: Edit a and add d", "the CLI's own commit"]
    assert set(commit.files) == {"a.txt", "c.txt", "new/d.txt"}
    assert "3 files changed" in commit.diff_stat
    assert status(worktree.path) == []


async def test_commit_without_changes_leaves_the_branch_at_its_base(repo: Path, worktrees: Worktrees) -> None:
    ctx = await context(repo)
    worktree = await new_worktree(worktrees, ctx, task_id=4)
    commit = await worktrees.commit(worktree, "Nothing to do")
    assert not commit.committed and commit.head == ctx.head and commit.files == ()


async def test_commit_works_without_any_git_identity(
    repo: Path, worktrees: Worktrees, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = await context(repo)
    worktree = await new_worktree(worktrees, ctx, task_id=5)
    for key in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("EMAIL", "")
    run_git(repo, "config", "user.useConfigOnly", "true")
    write(worktree.path / "a.txt", "changed\n")
    commit = await worktrees.commit(worktree, "No identity configured")
    assert commit.committed
    assert run_git(worktree.path, "log", "-1", "--format=%an <%ae>") == "aiswarm <aiswarm@localhost>"


async def test_a_new_attempt_discards_the_stale_one_and_starts_again_from_the_base(
    repo: Path, worktrees: Worktrees
) -> None:
    ctx = await context(repo)
    stale = await new_worktree(worktrees, ctx, task_id=9, fence=1)
    write(stale.path / "a.txt", "half-done by a worker that was killed\n")
    await worktrees.commit(stale, "stale attempt")
    fresh = await new_worktree(worktrees, ctx, task_id=9, fence=2)
    assert not stale.path.exists()
    assert run_git(fresh.path, "rev-parse", "HEAD") == ctx.head
    assert (fresh.path / "a.txt").read_text() == "alpha\n"
    assert [(w.task_id, w.fence) for w in worktrees.records(ctx.common_dir)] == [(9, 2)]
    listed = run_git(repo, "worktree", "list", "--porcelain")
    assert "task-9-1" not in listed and "task-9-2" in listed


async def test_discard_removes_worktree_and_optionally_the_branch(repo: Path, worktrees: Worktrees) -> None:
    ctx = await context(repo)
    worktree = await new_worktree(worktrees, ctx, task_id=11)
    write(worktree.path / "scratch.txt", "untracked\n")
    await worktrees.discard(worktree)
    assert not worktree.path.exists()
    assert run_git(repo, "branch", "--list", worktrees.branch(11)) != ""
    worktree = await new_worktree(worktrees, ctx, task_id=11, fence=2)
    await worktrees.discard(worktree, delete_branch=True)
    assert run_git(repo, "branch", "--list", worktrees.branch(11)) == ""
    assert run_git(repo, "worktree", "list").count("\n") == 0  # only the user's checkout


async def test_two_homes_on_one_repository_never_share_a_task_branch(
    repo: Path, worktrees: Worktrees, tmp_path: Path
) -> None:
    ctx = await context(repo)
    other = Worktrees(tmp_path / "another-home")  # a second broker's home: its task 7 is another task
    ours = await new_worktree(worktrees, ctx, task_id=7)
    theirs = await new_worktree(other, ctx, task_id=7)
    assert (
        ours.branch != theirs.branch and ours.branch.endswith("/task-7") and theirs.branch.endswith("/task-7")
    )
    write(ours.path / "a.txt", "ours\n")
    write(theirs.path / "a.txt", "theirs\n")
    await finish(worktrees, ours, "ours")
    await finish(other, theirs, "theirs")
    assert await kept_branches(ctx.common_dir, worktrees.tag) == [ours.branch]
    assert await kept_branches(ctx.common_dir, other.tag) == [theirs.branch]
    result = await merge_task(worktrees, common_dir=ctx.common_dir, task_id=7, target="main")
    assert result.outcome is MergeOutcome.MERGED and (repo / "a.txt").read_text() == "ours\n"
    assert run_git(repo, "show", f"{theirs.branch}:a.txt") == "theirs"  # the other home's work is untouched
    assert (
        Worktrees(tmp_path / "aiswarm-home" / ".." / "aiswarm-home").tag == worktrees.tag
    )  # the path, resolved


async def test_prune_removes_unkept_attempts_and_what_a_crash_left(repo: Path, worktrees: Worktrees) -> None:
    ctx = await context(repo)
    kept = await new_worktree(worktrees, ctx, task_id=1)
    finished = await new_worktree(worktrees, ctx, task_id=2)
    crashed = worktrees.repository_dir(ctx.common_dir) / "task-3-1"
    run_git(repo, "worktree", "add", "-q", "--detach", str(crashed))  # a launcher died before its record
    scratch = worktrees.repository_dir(ctx.common_dir) / "merge-4"
    run_git(repo, "worktree", "add", "-q", "--detach", str(scratch))  # a merge died mid-rebase
    removed = await worktrees.prune(lambda task_id, fence: task_id == 1)
    assert set(removed) == {finished.path, crashed, scratch}
    assert kept.path.is_dir() and not finished.path.exists() and not crashed.exists() and not scratch.exists()
    listed = run_git(repo, "worktree", "list", "--porcelain")
    assert listed.count("worktree ") == 2 and str(kept.path) in listed


async def test_prune_forgets_a_repository_that_is_gone(
    repo: Path, worktrees: Worktrees, tmp_path: Path
) -> None:
    ctx = await context(repo)
    await new_worktree(worktrees, ctx, task_id=1)
    directory = worktrees.repository_dir(ctx.common_dir)
    shutil.rmtree(repo)
    assert await worktrees.prune(lambda task_id, fence: True) == [directory]
    assert not directory.exists()


# --- .worktreeinclude ---------------------------------------------------------------------------------------


def test_include_file_format() -> None:
    parsed = parse_include("# deps\n\nnode_modules/\n./.venv\ncopy .env\n../outside\n/abs\n.git/hooks\n")
    assert [(e.pattern, e.copy) for e in parsed.entries] == [
        ("node_modules", False),
        (".venv", False),
        (".env", True),
    ]
    assert len(parsed.problems) == 3
    assert all("line" in p and "relative to its top" in p for p in parsed.problems)


async def test_worktreeinclude_links_dirs_copies_marked_and_never_commits_them(
    repo: Path, worktrees: Worktrees
) -> None:
    write(repo / "node_modules" / "left-pad" / "index.js", "module.exports = 1\n")
    write(repo / "packages" / "ui" / "node_modules" / "x.js", "x\n")
    write(repo / ".env", "SECRET=1\n")
    write(repo / ".worktreeinclude", "node_modules\npackages/*/node_modules\ncopy .env\na.txt\nmissing\n")
    ctx = await context(repo)
    worktree = await new_worktree(worktrees, ctx, task_id=1)
    assert set(worktree.seeded) == {"node_modules", "packages/ui/node_modules", ".env"}  # a.txt is tracked
    linked = worktree.path / "node_modules"
    assert linked.is_symlink() and (linked / "left-pad" / "index.js").read_text() == "module.exports = 1\n"
    assert (worktree.path / "packages" / "ui" / "node_modules").is_symlink()
    copied = worktree.path / ".env"
    assert not copied.is_symlink() and copied.read_text() == "SECRET=1\n"
    copied.write_text("SECRET=changed by the task\n")
    assert (repo / ".env").read_text() == "SECRET=1\n"
    write(worktree.path / "b.txt", "beta, edited\n")
    commit = await worktrees.commit(worktree, "edit b")
    assert commit.files == ("b.txt",)
    await worktrees.discard(worktree, delete_branch=True)
    assert (repo / "node_modules" / "left-pad" / "index.js").is_file()  # removal never follows the link
    assert (repo / "packages" / "ui" / "node_modules" / "x.js").is_file()


async def test_worktreeinclude_problems_are_reported_not_fatal(repo: Path, worktrees: Worktrees) -> None:
    write(repo / ".worktreeinclude", "../elsewhere\n")
    ctx = await context(repo)
    worktree, problems = await worktrees.create(
        checkout=ctx.checkout, common_dir=ctx.common_dir, task_id=1, fence=1, base=ctx.head
    )
    assert worktree.path.is_dir() and worktree.seeded == ()
    assert len(problems) == 1 and "line 1" in problems[0]


# --- merging -----------------------------------------------------------------------------------------------


async def test_fast_forward_updates_the_users_checkout_and_keeps_their_edit_to_another_file(
    repo: Path, worktrees: Worktrees
) -> None:
    ctx = await context(repo)
    worktree = await new_worktree(worktrees, ctx, task_id=1)
    write(worktree.path / "a.txt", "alpha, by the task\n")
    await finish(worktrees, worktree, "edit a")
    write(repo / "b.txt", "beta, the user's unsaved work\n")
    write(repo / "src" / "app.py", "print('staged by the user')\n")
    run_git(repo, "add", "src/app.py")
    result = await merge_task(worktrees, common_dir=ctx.common_dir, task_id=1, target="main")
    assert result.outcome is MergeOutcome.MERGED, result.reason
    assert "fast-forward" in result.reason and result.files == ("a.txt",)
    assert run_git(repo, "rev-parse", "HEAD") == result.commit
    assert run_git(repo, "log", "-1", "--format=%s") == "aiswarm task 1: edit a"
    assert (repo / "a.txt").read_text() == "alpha, by the task\n"  # the user's files follow the branch
    assert (repo / "b.txt").read_text() == "beta, the user's unsaved work\n"
    assert sorted(status(repo)) == [" M b.txt", "M  src/app.py"]
    assert run_git(repo, "branch", "--list", worktrees.branch(1)) == ""


async def test_a_moved_target_is_rebased_onto_and_history_stays_linear(
    repo: Path, worktrees: Worktrees
) -> None:
    ctx = await context(repo)
    worktree = await new_worktree(worktrees, ctx, task_id=1)
    write(worktree.path / "a.txt", "alpha, by the task\n")
    await finish(worktrees, worktree, "edit a")
    write(repo / "b.txt", "beta, committed by the user meanwhile\n")
    run_git(repo, "commit", "-q", "-am", "user work")
    user_tip = run_git(repo, "rev-parse", "HEAD")
    result = await merge_task(worktrees, common_dir=ctx.common_dir, task_id=1, target="main")
    assert result.outcome is MergeOutcome.MERGED, result.reason
    assert "rebased" in result.reason
    assert run_git(repo, "rev-parse", "HEAD^") == user_tip
    assert run_git(repo, "rev-list", "--merges", "HEAD") == ""
    assert (repo / "a.txt").read_text() == "alpha, by the task\n"
    assert (repo / "b.txt").read_text() == "beta, committed by the user meanwhile\n"
    assert status(repo) == []


async def test_same_lines_conflict_keeps_the_branch_names_the_files_and_touches_nothing(
    repo: Path, worktrees: Worktrees
) -> None:
    ctx = await context(repo)
    first = await new_worktree(worktrees, ctx, task_id=1)
    second = await new_worktree(worktrees, ctx, task_id=2)
    write(first.path / "a.txt", "alpha, the first task's way\n")
    write(second.path / "a.txt", "alpha, the second task's way\n")
    await finish(worktrees, first, "first")
    await finish(worktrees, second, "second")
    write(repo / "b.txt", "the user's own edit\n")
    assert (
        await merge_task(worktrees, common_dir=ctx.common_dir, task_id=1, target="main")
    ).outcome == "merged"
    head = run_git(repo, "rev-parse", "HEAD")
    branch_tip = run_git(repo, "rev-parse", worktrees.branch(2))
    result = await merge_task(worktrees, common_dir=ctx.common_dir, task_id=2, target="main")
    assert result.outcome is MergeOutcome.CONFLICT
    assert result.files == ("a.txt",) and "a.txt" in result.reason and worktrees.branch(2) in result.reason
    assert run_git(repo, "rev-parse", "HEAD") == head
    assert run_git(repo, "rev-parse", worktrees.branch(2)) == branch_tip
    assert (repo / "a.txt").read_text() == "alpha, the first task's way\n"
    assert (repo / "b.txt").read_text() == "the user's own edit\n"
    assert status(repo) == [" M b.txt"]
    assert [p.name for p in worktrees.repository_dir(ctx.common_dir).iterdir() if p.is_dir()] == []


async def test_uncommitted_user_changes_to_a_touched_file_block_the_merge(
    repo: Path, worktrees: Worktrees
) -> None:
    ctx = await context(repo)
    worktree = await new_worktree(worktrees, ctx, task_id=1)
    write(worktree.path / "a.txt", "alpha, by the task\n")
    write(worktree.path / "fresh.txt", "new file\n")
    await finish(worktrees, worktree, "edit a, add fresh")
    write(repo / "a.txt", "alpha, the user is editing this\n")
    write(repo / "fresh.txt", "the user's own untracked file\n")
    result = await merge_task(worktrees, common_dir=ctx.common_dir, task_id=1, target="main")
    assert result.outcome is MergeOutcome.CONFLICT
    assert result.files == ("a.txt", "fresh.txt") and "commit or stash" in result.reason
    assert run_git(repo, "rev-parse", "HEAD") == ctx.head
    assert (repo / "a.txt").read_text() == "alpha, the user is editing this\n"
    assert (repo / "fresh.txt").read_text() == "the user's own untracked file\n"
    assert run_git(repo, "branch", "--list", worktrees.branch(1)) != ""
    run_git(repo, "checkout", "-q", "--", "a.txt")
    (repo / "fresh.txt").unlink()
    again = await merge_task(worktrees, common_dir=ctx.common_dir, task_id=1, target="main")
    assert again.outcome is MergeOutcome.MERGED and (repo / "fresh.txt").read_text() == "new file\n"


async def test_an_operation_in_progress_in_the_users_checkout_blocks_the_merge(
    repo: Path, worktrees: Worktrees
) -> None:
    ctx = await context(repo)
    worktree = await new_worktree(worktrees, ctx, task_id=1)
    write(worktree.path / "a.txt", "alpha, by the task\n")
    await finish(worktrees, worktree, "edit a")
    (repo / ".git" / "MERGE_HEAD").write_text(ctx.head + "\n")
    result = await merge_task(worktrees, common_dir=ctx.common_dir, task_id=1, target="main")
    assert result.outcome is MergeOutcome.CONFLICT and "a merge is in progress" in result.reason
    assert run_git(repo, "rev-parse", "main") == ctx.head


async def test_a_target_nobody_has_checked_out_just_moves(repo: Path, worktrees: Worktrees) -> None:
    ctx = await context(repo)
    worktree = await new_worktree(worktrees, ctx, task_id=1)
    write(worktree.path / "a.txt", "alpha, by the task\n")
    await finish(worktrees, worktree, "edit a")
    run_git(repo, "checkout", "-q", "-b", "elsewhere")
    write(repo / "a.txt", "the user's uncommitted edit on another branch\n")
    result = await merge_task(worktrees, common_dir=ctx.common_dir, task_id=1, target="main")
    assert result.outcome is MergeOutcome.MERGED and result.checkouts_updated == ()
    assert run_git(repo, "show", "main:a.txt") == "alpha, by the task"
    assert (repo / "a.txt").read_text() == "the user's uncommitted edit on another branch\n"


async def test_a_task_that_changed_nothing_merges_as_nothing(repo: Path, worktrees: Worktrees) -> None:
    ctx = await context(repo)
    worktree = await new_worktree(worktrees, ctx, task_id=1)
    await finish(worktrees, worktree, "no-op")
    result = await merge_task(worktrees, common_dir=ctx.common_dir, task_id=1, target="main")
    assert result.outcome is MergeOutcome.MERGED and "nothing to merge" in result.reason
    assert run_git(repo, "rev-parse", "HEAD") == ctx.head


async def test_merging_a_branch_that_is_gone_says_so(repo: Path, worktrees: Worktrees) -> None:
    ctx = await context(repo)
    result = await merge_task(worktrees, common_dir=ctx.common_dir, task_id=99, target="main")
    assert result.outcome is MergeOutcome.CONFLICT and "does not exist" in result.reason


async def test_concurrent_merges_of_four_tasks_all_land_one_at_a_time(
    repo: Path, worktrees: Worktrees
) -> None:
    ctx = await context(repo)
    for task_id in range(1, 5):
        worktree = await new_worktree(worktrees, ctx, task_id=task_id)
        write(worktree.path / f"part{task_id}.txt", f"part {task_id}\n")
        await finish(worktrees, worktree, f"part {task_id}")
    results = await asyncio.gather(
        *(merge_task(worktrees, common_dir=ctx.common_dir, task_id=t, target="main") for t in range(1, 5))
    )
    assert [r.outcome for r in results] == [MergeOutcome.MERGED] * 4, [r.reason for r in results]
    assert sorted(p.name for p in repo.glob("part*.txt")) == [f"part{t}.txt" for t in range(1, 5)]
    assert run_git(repo, "rev-list", "--count", f"{ctx.head}..HEAD") == "4"
    assert run_git(repo, "rev-list", "--merges", "HEAD") == "" and status(repo) == []
    assert run_git(repo, "branch", "--list", "aiswarm/*") == ""


async def test_a_dependent_started_from_the_merged_target_sees_its_dependency(
    repo: Path, worktrees: Worktrees
) -> None:
    ctx = await context(repo)
    dependency = await new_worktree(worktrees, ctx, task_id=1)
    write(dependency.path / "api.py", "def api(): ...\n")
    await finish(worktrees, dependency, "api")
    merged = await merge_task(worktrees, common_dir=ctx.common_dir, task_id=1, target="main")
    assert merged.commit is not None
    dependent, _ = await worktrees.create(
        checkout=ctx.checkout, common_dir=ctx.common_dir, task_id=2, fence=1, base=merged.commit
    )
    assert (dependent.path / "api.py").read_text() == "def api(): ...\n"


async def test_the_repository_lock_holds_across_processes(repo: Path, worktrees: Worktrees) -> None:
    ctx = await context(repo)
    worktree = await new_worktree(worktrees, ctx, task_id=1)
    write(worktree.path / "a.txt", "alpha, by the task\n")
    await finish(worktrees, worktree, "edit a")
    lock_path = worktrees.lock(ctx.common_dir).path
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX);"
        " print('held', flush=True); sys.stdin.read()",
        str(lock_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert (await holder.stdout.readline()).strip() == b"held"
        merging = asyncio.create_task(
            merge_task(worktrees, common_dir=ctx.common_dir, task_id=1, target="main")
        )
        await asyncio.sleep(1.0)  # whatever the machine's speed, the merge cannot pass a lock held elsewhere
        assert not merging.done()
        assert run_git(repo, "rev-parse", "HEAD") == ctx.head
        holder.stdin.close()
        result = await asyncio.wait_for(merging, timeout=60)
        assert result.outcome is MergeOutcome.MERGED
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()


# --- declared files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs", "overlap"),
    [
        (["src/app.py"], ["src/app.py"], True),
        (["src/app.py"], ["src/other.py"], False),
        (["src"], ["src/app.py"], True),
        (["src/"], ["src/deep/x.py"], True),
        (["src/*.py"], ["src/app.py"], True),
        (["src/*.py"], ["src/app.js"], False),
        (["src/*.py"], ["src/deep/x.py"], False),
        (["src/**/*.py"], ["src/deep/x.py"], True),
        (["**/test_*.py"], ["tests/test_a.py"], True),
        (["**/test_*.py"], ["tests/conftest.py"], False),
        (["**/*.md"], ["src/app.py"], False),
        (["**/*.md"], ["docs"], True),
        (["docs/**"], ["docs"], True),
        (["v1.2"], ["v1.2/notes"], False),
        (["v1.2/"], ["v1.2/notes"], True),
        ([".github"], [".github/workflows/ci.yml"], True),
        (["docs/*.md"], ["docs/a*"], True),
        (["a*b"], ["*c"], False),
        (["a*b"], ["a*"], True),
        (["file[0-9].txt"], ["file5.txt"], True),
        (["file[0-9].txt"], ["fileX.txt"], False),
        (["file[!0-9].txt"], ["fileX.txt"], True),
        (["x?"], ["xy"], True),
        (["x?"], ["x"], False),
        (["lib", "docs"], ["tests", "docs/index.md"], True),
        ([], ["anything"], False),
        ([""], ["anything"], True),
    ],
)
def test_declared_files_overlap(ours: list[str], theirs: list[str], overlap: bool) -> None:
    assert (first_overlap(ours, theirs) is not None) is overlap
    assert (first_overlap(theirs, ours) is not None) is overlap


def test_declared_files_are_made_relative_to_the_repository_top() -> None:
    assert normalize_declared("./app.py", "src") == "src/app.py"
    assert normalize_declared("../README.md", "src") == "README.md"
    assert normalize_declared("lib/", ".") == "lib/"
    assert normalize_declared("lib/", "pkg") == "pkg/lib/"
    assert normalize_declared(".", ".") == ""
    assert first_overlap(["lib", "docs"], ["docs/x"]) == ("docs", "docs/x")
