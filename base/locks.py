"""One writer per folder: a kernel lock (flock) on a hidden file inside it.

The kernel drops the lock when the holding process dies, even by kill -9, so a lock never goes
stale and is never removed by hand. The ranks of one msrun launch share the lock: they record
their launch (the scheduler's address) as the holder; any other process, or the ranks of another
launch, is refused with `OSError(EBUSY)` naming the folder, which every command prints as
`error: FOLDER: ...` (exit 2). Only a holder removes the lock file (with the folder it created);
a process that locked the removed file meanwhile finds the path no longer names it and is refused.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".segmenter.lock"
_SHARE_WAIT_S = 10.0  # how long a later rank waits for the first rank to record the launch


def _launch_id() -> str:
    """Who may share the lock: one msrun launch, else this process alone.

    msrun gives its scheduler and every worker, on every node, the scheduler's address
    (MS_SCHED_HOST, MS_SCHED_PORT), which no other live launch can bind. Not the parent pid: msrun
    exits right after spawning unless given --join=True, so its ranks become children of init like
    those of every other launch, and the ranks on two nodes never share a parent."""
    port = os.environ.get("MS_SCHED_PORT")
    if port and (os.environ.get("MS_WORKER_NUM") or os.environ.get("MS_ROLE")):
        return f"msrun:{os.environ.get('MS_SCHED_HOST', '')}:{port}"
    return f"pid:{os.getpid()}"


def _busy(folder: Path, what: str) -> OSError:
    return OSError(errno.EBUSY, f"another {what} is writing here (wait for it to finish, or use another folder)",
                   str(folder))


@contextmanager
def folder_lock(folder, what: str):
    """Hold `folder`'s lock for the block; `what` names the command in the refusal ("train").

    The folder must exist. Where the lock file cannot be created (a read-only folder), nothing can
    write there either, so the block runs unlocked and its own writes report the real error."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    me = _launch_id()
    try:
        _acquire(fd, folder, what, me)
        if not _still_named(fd, path):
            raise _busy(folder, what)
        yield
    finally:
        os.close(fd)


def file_identity(path_or_fd) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a path or an open descriptor: one file under any name (a hard link, a
    symlink, another spelling); None if the path does not exist."""
    try:
        st = os.stat(path_or_fd)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _still_named(fd: int, path: Path) -> bool:
    """Whether `path` is still the file locked through `fd` (its holder may have removed it)."""
    return file_identity(path) == file_identity(fd)


def _acquire(fd: int, folder: Path, what: str, me: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if not me.startswith("msrun:"):
            raise _busy(folder, what) from None
        _join(fd, folder, what, me)
        return
    os.ftruncate(fd, 0)
    os.pwrite(fd, me.encode(), 0)
    if me.startswith("msrun:"):  # let the launch's other ranks in; others still see a holder
        fcntl.flock(fd, fcntl.LOCK_SH)


def _join(fd: int, folder: Path, what: str, me: str) -> None:
    """A later rank of the launch that holds the lock shares it; anyone else is refused."""
    deadline = time.monotonic() + _SHARE_WAIT_S
    while True:
        holder = os.pread(fd, 256, 0).decode(errors="replace")
        if holder == me:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass  # the first rank has not downgraded yet
        if time.monotonic() > deadline:
            raise _busy(folder, what)
        time.sleep(0.05)
