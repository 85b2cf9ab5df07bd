"""Advisory folder locks: one pilot process writes a folder at a time.

A job that writes a folder (`pilot animate`'s run folder, a shot being exported, `pilot demo
--out`, a weights export, `pilot train`'s checkpoint and timelapse folders) holds
`folder_lock` for its lifetime; a second process started on the same folder (two terminals, a
rerun while the first is still going) fails at once with one line naming the folder and the pid
that holds it, instead of racing the first on resume records, settings and frames.

The lock is `fcntl.flock` on a hidden file (`LOCK_FILE` inside the folder, or `.NAME.lock`
beside it): the kernel releases it when the holder's process ends, however it ends, so a crash
or a kill never leaves a stale lock (children it forked share the lock until they end too:
when the recorded holder has ended, the lock is waited for, up to `ORPHAN_WAIT_S`); the file
is deleted on release (one left by a killed process is harmless and reused). Advisory: it only
stops other pilot processes. Where the platform has no `fcntl` (Windows) the lock does
nothing. Imports only the standard library (Blender's Python uses it).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock does nothing
    fcntl = None

LOCK_FILE = ".pilot-lock"  # the lock file inside a locked folder: never a frame or an output


class FolderInUseError(ValueError):
    """Another pilot process holds the lock of a folder this one would write."""


def lock_path(folder: str | os.PathLike, *, beside: bool = False) -> Path:
    """The lock file of `folder`: `folder/.pilot-lock`, or with `beside` the sibling
    `.NAME.lock` (for a folder that is replaced as a whole)."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.lock") if beside else folder / LOCK_FILE


@contextlib.contextmanager
def folder_lock(
    folder: str | os.PathLike, what: str | None = None, *, beside: bool = False
) -> Iterator[Path]:
    """Hold the advisory lock of `folder` for the block (module docstring); yields the lock
    file's path.

    The folder (with `beside`, its parent) is created, and removed again on release when this
    call made it and it is still empty. The lock file holds the holder's pid,
    for the message another process gets.

    Args:
        folder: The folder the job writes.
        what: How the message names it (default: the folder's path).
        beside: Lock `.NAME.lock` beside the folder instead of a file inside it.

    Raises:
        FolderInUseError: another process holds the lock ("OUT.run is in use by another pilot
            process (pid 1234); wait for it or stop it").
    """
    path = lock_path(folder, beside=beside)
    made = not path.parent.is_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield path
        return
    fd = _acquire(path, what or str(folder))
    try:
        yield path
    finally:
        try:
            path.unlink(missing_ok=True)  # still ours: a waiter re-checks the inode it locked
        finally:
            os.close(fd)  # releases the lock
        if made:  # a job that failed before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                path.parent.rmdir()


ORPHAN_WAIT_S = 15.0  # how long a lock left to the children of an ended holder is waited for


def _ended(pid: str) -> bool:
    """Whether the process of the pid a lock file records is gone (a reused pid reads alive)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (ValueError, OSError):  # no pid recorded, or another user's process
        return False
    return False


def _acquire(path: Path, what: str) -> int:
    """Open and flock `path` (exclusive, non-blocking); return its descriptor, with our pid
    written in it.

    A holder that has ended but whose forked children still hold the lock (the children share
    the locked file: a `pilot train` killed with `kill -9` leaves its DataLoader workers for a
    second or few) is waited for, up to `ORPHAN_WAIT_S`.
    """
    deadline = time.monotonic() + ORPHAN_WAIT_S
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if not _ended(pid):
                raise FolderInUseError(
                    f"{what} is in use by another pilot process (pid {pid}); wait for it or stop it"
                ) from None
            if time.monotonic() > deadline:
                raise FolderInUseError(
                    f"{what} is still locked by child processes of pilot process {pid}, which "
                    "has ended; wait for them to end or stop them"
                ) from None
            time.sleep(0.1)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder deleted the file as we opened it: lock the new one
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)
