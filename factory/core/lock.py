"""One writer per stage folder: an OS-level lock (`flock`) on `DIR/<stage>/.lock`.

The lock is taken when a stage starts writing its folder and held while it runs (re-entrant within the process);
the kernel releases it when the process dies, kill -9 included, so a stale lock file never blocks a rerun. A second
writer is refused at once (`StageLocked`), naming the holder's pid and host. A start that fails before anything was
committed leaves the folder as it found it: a folder (and its parents) created by this start is removed again.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_NAME = ".lock"
_held: dict[str, list] = {}  # real path of a locked folder -> [fd, depth]


class StageLocked(RuntimeError):
    """Another process is writing this stage folder."""


def holder(folder: Path) -> str | None:
    """'pid N on host H (since T)' of the process writing `folder` now, or None when no process holds it."""
    path = Path(folder) / LOCK_NAME
    if os.path.realpath(folder) in _held or not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return _describe(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _describe(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        info = {}
    if not info:
        return "pid unknown: it is just starting"
    return f"pid {info.get('pid')} on host {info.get('host')}, since {info.get('since')}"


_UNSUPPORTED = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP}


def _warn_unlocked(folder: Path, exc: OSError) -> None:
    import sys

    print(f"warning: {folder}: this file system does not support flock ({exc.strerror}); the folder is written "
          f"without a writer lock, so make sure only one process writes it", file=sys.stderr)


def _acquire(folder: Path) -> int:
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:  # a file system without flock (Lustre mounted without -o flock)
                _warn_unlocked(folder, exc)
                return fd
            who = _describe(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise StageLocked(f"{folder} is being written by another factory process ({who}); wait for it to "
                              f"finish or stop it, then rerun (one writer per stage folder)") from None
        try:  # the file we locked must still be the one at `path` (a finishing writer unlinks it)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
    return fd


def acquire(folder: Path) -> None:
    """Take the lock of `folder` for the rest of this process (or until `release`); re-entrant."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _held:
        if not _still_ours(_held[key][0], folder):  # the folder was removed under our lock: lock it afresh
            os.close(_held[key][0])
            folder.mkdir(parents=True, exist_ok=True)
            _held[key][0] = _acquire(folder)
        _held[key][1] += 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    _held[key] = [_acquire(folder), 1]


def _still_ours(fd: int, folder: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(Path(folder) / LOCK_NAME).st_ino
    except FileNotFoundError:
        return False


def release(folder: Path) -> None:
    """Give one hold of `folder`'s lock back; the last one unlinks the lock file and unlocks."""
    key = os.path.realpath(folder)
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _held[key]
    if _still_ours(entry[0], folder):  # a folder swapped into place since holds no lock of ours (or another's)
        with contextlib.suppress(FileNotFoundError):
            (Path(folder) / LOCK_NAME).unlink()
    os.close(entry[0])


def is_held(folder: Path) -> bool:
    return os.path.realpath(folder) in _held


def has_shards(folder: Path) -> bool:
    """Whether a shard-runner folder holds committed work (a ledger line, a part or counts.json)."""
    folder = Path(folder)
    ledger = folder / "ledger.jsonl"
    return ((ledger.exists() and ledger.stat().st_size > 0) or (folder / "counts.json").exists()
            or any(folder.glob("part-*.parquet")))


def clear_folder(folder: Path) -> None:
    """Remove everything in `folder` but its lock file (`--new-run`: the lock stays held)."""
    for entry in Path(folder).iterdir() if Path(folder).is_dir() else ():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _missing_root(folder: Path) -> Path | None:
    """The highest folder of `folder`'s path that does not exist yet (None: `folder` exists)."""
    root = None
    for path in (folder, *folder.parents):
        if path.exists():
            break
        root = path
    return root


def _only_stale_lock(folder: Path) -> bool:
    """A folder a killed start left behind: nothing in it but its lock file."""
    return folder.is_dir() and [e.name for e in folder.iterdir()] == [LOCK_NAME]


@contextlib.contextmanager
def stage_lock(folder: Path, committed: Callable[[Path], bool] = has_shards) -> Iterator[None]:
    """Hold `folder`'s lock while the block runs. If the block fails and nothing was committed (`committed`),
    the folders this start created are removed again, so a failed start leaves the run folder as it found it."""
    folder = Path(folder)
    nested = is_held(folder)
    created = None if nested else (_missing_root(folder) or (folder if _only_stale_lock(folder) else None))
    acquire(folder)
    try:
        yield
    except BaseException:
        if created is not None and not committed(folder):
            shutil.rmtree(folder, ignore_errors=True)
            for path in (folder, *folder.parents):  # then the parents this start created, if still empty
                if path == created.parent:
                    break
                with contextlib.suppress(OSError):
                    path.rmdir()
        raise
    finally:
        release(folder)
