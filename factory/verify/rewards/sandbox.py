"""Run untrusted programs (model-written code) confined, with limits, and clean up everything afterwards.

Each `Sandbox` owns a fresh work dir (the program's). Every run is a new process forked by the zygote
(sandbox_zygote: one interpreter per verifier process, started once, that holds no sample's data; it forks a couple
of processes ahead of need, so a run starts with one message), used for that run only, as the leader of its own
session and process group; the process confines itself (sandbox_confine: rlimits on CPU, memory, file size,
processes and open files; Landlock: write only its work dir, read only the interpreter and system libraries, no
TCP; seccomp: no sockets but AF_UNIX, no new processes unless allowed, no leaving the group, no signals to other
processes; as root, every capability dropped; death with the verifier) and only then runs the program. The parent
enforces a wall-clock timeout and an output cap, and always kills the whole group when the run ends
(sandbox_watch). Python programs run in the confined interpreter itself; anything else (a C++ binary, a compiler)
is exec'd after confinement, so the design admits other languages.

Function and assert tests run as two processes (`run_harnessed`): the candidate (the program, serving calls) and
the harness (sandbox_harness: the trusted side that calls it and runs the test), each confined, each with its own
work dir, connected by a socket pair; the verdict comes from the harness, on a channel the program never holds.

Why hand-written: the well-kept sandboxes of the field need root daemons or containers (nsjail, firejail, docker,
gVisor), and the code-eval harnesses of TRL/open-r1/LiveCodeBench either call out to a remote service or only set
rlimits and monkeypatch `os` in-process, which does not stop a program from writing files or opening sockets.
"""
from __future__ import annotations

import ctypes
import functools
import marshal
import os
import platform
import secrets
import shutil
import socket
import stat
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from factory.verify.rewards import sandbox_wire as wire
from factory.verify.rewards.sandbox_watch import Proc, RunResult, watch
from factory.verify.rewards.sandbox_zygote_client import Zygote, ZygoteError, zygote_for

__all__ = ["HarnessRun", "Limits", "RunResult", "Sandbox", "SandboxUnavailable", "capabilities"]


class SandboxUnavailable(RuntimeError):
    """This machine cannot confine programs as required (old kernel, unsupported architecture)."""


@dataclass(frozen=True)
class Limits:
    """Per run. `max_processes` = 1 forbids new processes (threads stay allowed)."""

    cpu_s: float = 10.0
    wall_s: float = 20.0
    memory_mb: int = 1024
    file_size_mb: int = 16
    max_processes: int = 1
    max_threads: int = 32
    open_files: int = 64
    max_output_bytes: int = 1 << 20


@dataclass
class HarnessRun:
    candidate: RunResult
    harness: RunResult
    results: list | None  # the harness's per-case report (plain data), None when it sent none


@functools.cache
def capabilities() -> dict:
    """What confinement this machine offers; `usable` is False when the sandbox would refuse to run."""
    arch = platform.machine()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = int(libc.syscall(444, None, 0, 1)) if sys.platform == "linux" else -1
    abi = max(abi, 0)
    usable = sys.platform == "linux" and arch in ("x86_64", "aarch64") and abi > 0
    why = None if usable else (
        "not Linux" if sys.platform != "linux" else
        f"unsupported architecture {arch}" if arch not in ("x86_64", "aarch64") else
        "kernel without Landlock (needs Linux >= 5.13 with landlock in the LSM list)")
    return {"usable": usable, "why_not": why, "arch": arch, "landlock_abi": abi, "seccomp": sys.platform == "linux",
            "root_caps_dropped": os.geteuid() == 0,
            "tcp_blocked_by": ["seccomp"] + (["landlock"] if abi >= 4 else []),
            "signals_scoped": abi >= 6}


def _rm_tree(path: str) -> None:
    def unlock(func, p, _exc):  # a program may have chmod'ed its files or dirs to 000
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)  # a real dir: rmtree never follows links
            if not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=unlock)


def _stdin_fd(stdin: bytes | None) -> int:
    if not stdin:
        return os.open(os.devnull, os.O_RDONLY)
    fh = tempfile.TemporaryFile()  # outside the sandbox dir: the program sees only its own input
    fh.write(stdin)
    fh.flush()
    fd = os.dup(fh.fileno())
    fh.close()
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class Sandbox:
    """A temp dir plus confined runs inside it; use as a context manager (the dir is removed on exit)."""

    def __init__(self, limits: Limits = Limits(), python: str | None = None, require_landlock: bool = True):
        caps = capabilities()
        if require_landlock and not caps["usable"]:
            raise SandboxUnavailable(f"cannot confine programs here: {caps['why_not']}")
        self.limits = limits
        self.python = python or sys.executable
        self.require_landlock = require_landlock
        self.dir: str | None = None  # the program's work dir (it may write there)
        self._harness_dir: str | None = None  # the harness's (the program cannot reach it)

    def __enter__(self) -> "Sandbox":
        self.dir = tempfile.mkdtemp(prefix="factory-sbx-")
        return self

    def __exit__(self, *exc) -> None:
        for path in (self.dir, self._harness_dir):
            if path:
                _rm_tree(path)
        self.dir = self._harness_dir = None

    def write(self, name: str, data: str | bytes) -> str:
        """Write a file into the work dir; never through a link an earlier run may have planted."""
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"sandbox: {name!r} is not a plain file name")
        path = os.path.join(self.dir, name)
        if os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                _rm_tree(path)
            else:
                os.unlink(path)
        raw = data if isinstance(data, bytes) else data.encode("utf-8")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        return path

    def run_python(self, filename: str, mode: str = "script", stdin: bytes | None = None,
                   limits: Limits | None = None) -> RunResult:
        """Run `filename` (already written) as a script: `python solution.py`, confined."""
        if mode != "script":
            raise ValueError("function/assert tests run through run_harnessed (a separate trusted harness)")
        spec = {"python": {"mode": "script", "filename": filename}}
        return self._run_one(spec, stdin, limits)

    def run_exec(self, argv: list[str], stdin: bytes | None = None, limits: Limits | None = None,
                 extra_read: list[str] | None = None) -> RunResult:
        """Run a binary (e.g. a compiled program, `./a.out`, or a compiler) after confinement."""
        argv = list(argv)
        if not os.path.isabs(argv[0]):
            found = os.path.join(self.dir, argv[0]) if "/" in argv[0] else shutil.which(argv[0])
            if not found:
                raise FileNotFoundError(f"sandbox: no program {argv[0]!r}")
            argv[0] = found
        return self._run_one({"argv": argv, "extra_read": extra_read or []}, stdin, limits)

    def run_harnessed(self, filename: str, job: dict, limits: Limits | None = None,
                      harness_limits: Limits | None = None) -> HarnessRun:
        """The program `filename` (already written) as the candidate, `job` run by the trusted harness.

        `job`: {"mode": "function"|"assert", "name", "case_timeout_s", "setup"?, "cases"? | "test", "entry_point"}.
        Expected outputs never belong in `job`: the parent compares the values the harness reports."""
        if self._harness_dir is None:
            self._harness_dir = tempfile.mkdtemp(prefix="factory-sbx-harness-")
        lim = limits or self.limits
        cand_end, harn_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent_end, harness_ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        job_frame = wire.frame(marshal.dumps(job))
        parent_end.setblocking(False)
        try:  # queued before the fork: the harness finds its job waiting (what does not fit follows below)
            sent = parent_end.send(job_frame)
        except BlockingIOError:
            sent = 0
        try:
            cand, harness = self._start_many([
                ({"python": {"mode": "candidate", "filename": filename}}, None, lim, [cand_end.fileno()], None),
                ({"python": {"mode": "harness"}, "workdir": self._harness_dir}, None, harness_limits or lim,
                 [harness_ctl.fileno(), harn_end.fileno()], parent_end)])
        except BaseException:
            parent_end.close()
            raise
        finally:
            for s in (cand_end, harn_end, harness_ctl):
                s.close()
        try:
            if sent < len(job_frame):
                parent_end.settimeout(harness.limits.wall_s)
                parent_end.sendall(job_frame[sent:])
        except OSError:
            pass  # the harness died early: its exit status tells why
        state: dict = {}

        def finished() -> bool:  # the harness's report is in: nothing either process does next can change it
            frames = wire.split_frames(bytes(harness.ctl_buf)) if harness.ctl_buf else []
            if frames and "results" not in state:
                try:
                    state["results"] = wire.decode(frames[0])
                except wire.WireError:
                    state["results"] = None
            return "results" in state

        def need_status() -> bool:  # only a failure is explained by how the processes ended
            res = state.get("results")
            return type(res) is not list or any(type(r) is not dict or r.get("status") != "ok" for r in res)

        cand_res, harness_res = watch([cand, harness], primary=harness, finished=finished, need_status=need_status)
        for res in (cand_res, harness_res):
            self._check_confined(res)
        finished()
        results = state.get("results")
        return HarnessRun(cand_res, harness_res, results if type(results) is list else None)

    @staticmethod
    def new_nonce() -> str:
        return secrets.token_hex(16)

    # --- plumbing -------------------------------------------------------------------------------------------
    def _zygote(self) -> Zygote:
        return zygote_for(self.python)

    def _start_many(self, runs: list[tuple]) -> list[Proc]:
        """Start runs of (spec, stdin, limits, channel fds, parent's control socket or None) in one exchange."""
        if not self.dir:
            raise RuntimeError("Sandbox used outside its `with` block")
        try:
            zygote = self._zygote().ensure()
        except ZygoteError as exc:
            raise SandboxUnavailable(str(exc)) from exc
        requests, ours, theirs = [], [], []
        try:
            for spec, stdin, lim, channels, _ctl in runs:
                spec = {"workdir": self.dir, **spec, "limits": asdict(lim), "require_landlock": self.require_landlock}
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                status_r, status_w = os.pipe()
                ours.append((out_r, err_r, status_r))
                fds = [_stdin_fd(stdin), out_w, err_w, *channels, status_w]
                theirs += [fds[0], out_w, err_w, status_w]
                requests.append((spec, fds))
            start = time.monotonic()
            pids = zygote.spawn_many(requests)
        except BaseException as exc:
            for fd in (fd for triple in ours for fd in triple):
                os.close(fd)
            if isinstance(exc, ZygoteError):
                raise SandboxUnavailable(str(exc)) from exc
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        return [Proc(pid, run[2], *mine, start, ctl=run[4]) for pid, run, mine in zip(pids, runs, ours)]

    def _run_one(self, spec: dict, stdin: bytes | None, limits: Limits | None) -> RunResult:
        (proc,) = self._start_many([(spec, stdin, limits or self.limits, [], None)])
        (result,) = watch([proc])
        self._check_confined(result)
        return result

    @staticmethod
    def _check_confined(result: RunResult) -> None:
        if result.confine_error and "confinement failed" in result.confine_error:
            raise SandboxUnavailable(result.confine_error)
