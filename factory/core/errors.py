"""What the CLI prints instead of a traceback: one message per failure that says what happened, where (path or key)
and what to do. `explain` returns None for an exception it knows nothing about; the CLI then prints its type and
message and points at `--debug`. A leaf module: standard library only (vLLM's and torch's errors are recognised by
class name, so nothing heavy is imported to explain them)."""
from __future__ import annotations

import errno
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)  # pyarrow's OSErrors carry the errno in the text only
_UNFINISHED = re.compile(r"^(?P<path>.+?): the stage has not finished")


@dataclass(frozen=True)
class Context:
    """What the command was asked to do: the pipeline file, the run folder and the command that ran (for the
    'what to run' part of a message)."""

    command: str = "run"
    config: Path | None = None
    run_dir: Path | None = None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _errno(exc: BaseException) -> int | None:
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    match = _ERRNO_IN_TEXT.search(str(exc)) if isinstance(exc, OSError) else None
    return int(match.group(1)) if match else None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _free(path: Path) -> str:
    """Free space on the filesystem holding `path` (its nearest existing folder)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return _size(shutil.disk_usage(probe).free)
    except OSError:
        return "unknown"


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 1 << 62


def _where(exc: OSError, ctx: Context) -> Path:
    """The path the failed write named; else (pyarrow's and plain writes name none) the folder of the run, or of
    one of its stage folders, whose filesystem has the least space left."""
    name = exc.filename or exc.filename2
    if name:
        return Path(name)
    run_dir = ctx.run_dir or Path.cwd()
    candidates = [run_dir] + (sorted(p for p in run_dir.iterdir() if p.is_dir()) if run_dir.is_dir() else [])
    return min(candidates, key=_free_bytes)


def _os_error(exc: OSError, ctx: Context) -> str | None:
    code = _errno(exc)
    path = _where(exc, ctx)
    if code in _FULL:
        return (f"disk full writing {path} ({_free(path)} free on that filesystem): free some space there or write "
                f"the run elsewhere with --out; rerunning the same command resumes from the last committed shard")
    if code == errno.EFBIG:
        return (f"file too large writing {path}: the file size limit (ulimit -f) or the filesystem's maximum file "
                f"size was reached; raise the limit or write the run elsewhere with --out (rerunning resumes)")
    if code in _READ_ONLY:
        why = "is on a read-only filesystem" if code == errno.EROFS else "is not writable by this user"
        return (f"cannot write {path}: it {why}; make the folder writable or write the run elsewhere with "
                f"--out DIR")
    return None


def _command(ctx: Context, stage: str) -> str:
    config = ctx.config or "PIPELINE.yaml"
    out = f" -o {ctx.run_dir}" if ctx.run_dir else ""
    return f"`factory {stage} -c {config}{out}` (or `factory run {config}{out}` for every stage in order)"


def _unfinished(exc: BaseException, ctx: Context) -> str | None:
    match = _UNFINISHED.match(str(exc))
    if not match:
        return None
    path = Path(match["path"])
    stage = path.name
    if not path.is_dir() or not any(path.iterdir()):
        return f"{path}: the {stage} stage never ran (no output there); run it first: {_command(ctx, stage)}"
    parts = len(list(path.glob("part-*.parquet")))
    return (f"{path}: the {stage} stage stopped part-way ({parts} shard(s) committed, no counts.json); rerun it to "
            f"finish — it resumes where it stopped: {_command(ctx, stage)}")


def _engine_dead(exc: BaseException, ctx: Context) -> str | None:
    if not any(type(e).__name__ == "EngineDeadError" for e in _chain(exc)):
        return None
    hint = ("its own error is in the log above, in the lines marked 'EngineCore' (often: out of memory, or an RPC "
            "timeout on an overloaded machine); rerunning the same command resumes from the last committed shard, "
            "nothing committed is lost")
    top = str(exc).strip()
    if top.startswith("the vLLM engine died"):  # the teacher's own account (how often, its restart limit)
        return f"{top.splitlines()[0]}; {hint}"
    return f"the vLLM engine died ({type(exc).__name__}): {hint}"


def _checkpoint_mismatch(exc: BaseException, ctx: Context) -> str | None:
    text = str(exc)
    if not isinstance(exc, RuntimeError) or "size mismatch" not in text:
        return None
    detail = next((line.strip() for line in text.splitlines() if "size mismatch" in line and "for " in line), "")
    where = f"{ctx.run_dir / 'sft'}" if ctx.run_dir else "the sft folder"
    return (f"the checkpoint in {where} does not fit the configured student ({detail.rstrip('.')}): the model or "
            f"LoRA shape changed since it was saved; rerun with --new-run to train afresh, or restore the old "
            f"settings to resume")


def explain(exc: BaseException, ctx: Context) -> str | None:
    """A user-facing message for `exc`, or None when it is not a failure this module knows."""
    for link in _chain(exc):
        if isinstance(link, OSError):
            message = _os_error(link, ctx)
            if message:
                return message
    for check in (_unfinished, _engine_dead, _checkpoint_mismatch):
        message = check(exc, ctx)
        if message:
            return message
    return None


def fallback(exc: BaseException) -> str:
    """The message for an unknown failure: its type and first line, and how to see the traceback."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}\n(rerun with --debug for the full traceback)"
