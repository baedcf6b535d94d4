"""Run untrusted programs (model-written code) confined, with limits, and clean up everything afterwards.

Each `Sandbox` owns a fresh work dir (the program's) and a private dir (the parent's: run specs, the child's code).
Every run starts `sandbox_child` in the work dir as the leader of its own session and process group; the child
confines itself (rlimits on CPU, memory, file size, processes and open files; Landlock: write only the work dir,
read only the interpreter and system libraries, no TCP; seccomp: no sockets but AF_UNIX, no new processes unless
allowed, no leaving the group, no signals to other processes; as root, every capability dropped; death with the
parent) and only then runs the program. The parent enforces a wall-clock timeout and an output cap, and always
kills the whole group when the run ends. Python programs run in the confined interpreter itself (no second
interpreter start); anything else (a C++ binary, a compiler) is exec'd after confinement, so the design admits
other languages.

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
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from factory.verify.rewards import sandbox_child

CHILD = str(Path(sandbox_child.__file__).resolve())
# The child runs from a code object compiled once here (marshal, same interpreter): a script given by path would be
# compiled from source on every run, and importlib would cost more than the confinement itself.
BOOTSTRAP = ("import sys, marshal; g = {'__name__': 'factory_sandbox_child'}; "
             "exec(marshal.loads(open(sys.argv[1], 'rb').read()), g); g['main'](sys.argv[2])")


@functools.cache
def _child_code() -> bytes:
    return marshal.dumps(compile(Path(CHILD).read_text(), CHILD, "exec"))


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
class RunResult:
    returncode: int  # negative: killed by that signal
    pid: int  # of the run's leader, which was also its process group id
    stdout: bytes
    stderr: bytes
    wall_s: float
    cpu_s: float
    timed_out: bool = False  # wall clock or CPU limit
    output_exceeded: bool = False
    confine_error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_exceeded

    def stderr_tail(self, chars: int = 400) -> str:
        text = self.stderr.decode("utf-8", errors="replace").strip()
        return text if len(text) <= chars else "…" + text[-chars:]


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


def _env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}


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
        self._private: str | None = None  # spec files and the child's code: the parent's alone

    def __enter__(self) -> "Sandbox":
        self.dir = tempfile.mkdtemp(prefix="factory-sbx-")
        self._private = tempfile.mkdtemp(prefix="factory-sbx-private-")
        self._child = os.path.join(self._private, "child.marshal")
        with open(self._child, "wb") as fh:
            fh.write(_child_code())
        return self

    def __exit__(self, *exc) -> None:
        for path in (self.dir, self._private):
            if path:
                _rm_tree(path)
        self.dir = self._private = None

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
                   limits: Limits | None = None, **python: object) -> RunResult:
        """Run `filename` (already written) as a script, or through the function/assert harness."""
        return self._launch({"python": {"mode": mode, "filename": filename, **python}}, stdin, limits)

    def run_exec(self, argv: list[str], stdin: bytes | None = None, limits: Limits | None = None,
                 extra_read: list[str] | None = None) -> RunResult:
        """Run a binary (e.g. a compiled program, `./a.out`, or a compiler) after confinement."""
        argv = list(argv)
        if not os.path.isabs(argv[0]):
            found = os.path.join(self.dir, argv[0]) if "/" in argv[0] else shutil.which(argv[0])
            if not found:
                raise FileNotFoundError(f"sandbox: no program {argv[0]!r}")
            argv[0] = found
        return self._launch({"argv": argv, "extra_read": extra_read or []}, stdin, limits)

    @staticmethod
    def new_nonce() -> str:
        return secrets.token_hex(16)

    def _launch(self, spec: dict, stdin: bytes | None, limits: Limits | None) -> RunResult:
        if not self.dir:
            raise RuntimeError("Sandbox used outside its `with` block")
        lim = limits or self.limits
        spec = {**spec, "workdir": self.dir, "limits": asdict(lim), "require_landlock": self.require_landlock,
                "parent_pid": os.getpid()}
        spec_path = os.path.join(self._private, f"spec-{secrets.token_hex(6)}")
        with open(spec_path, "wb") as fh:
            marshal.dump(spec, fh)
        stdin_file = tempfile.TemporaryFile()  # outside the sandbox dir: the program sees only its own input
        if stdin:
            stdin_file.write(stdin)
            stdin_file.seek(0)
        start = time.monotonic()
        try:
            argv = [self.python, "-I", "-B", "-c", BOOTSTRAP, self._child, spec_path]
            if os.path.realpath(self.python) != os.path.realpath(sys.executable):  # marshal is per-version
                argv = [self.python, "-I", "-B", CHILD, spec_path]
            proc = subprocess.Popen(argv, cwd=self.dir, env=_env(self.dir),
                                    stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True, close_fds=True)
        finally:
            stdin_file.close()
        reaped: list = []
        try:
            out, err, timed_out, exceeded = self._collect(proc, start + lim.wall_s, lim.max_output_bytes, reaped)
        finally:
            self._kill_group(proc.pid)
            os.unlink(spec_path)
        status, usage = reaped[0] if reaped else os.wait4(proc.pid, 0)[1:]
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        proc.stderr.close()
        wall = time.monotonic() - start
        cpu = usage.ru_utime + usage.ru_stime
        rc = proc.returncode
        result = RunResult(returncode=rc, pid=proc.pid, stdout=out, stderr=err, wall_s=wall, cpu_s=cpu,
                           output_exceeded=exceeded)
        if timed_out:
            result.timed_out = True
            result.notes.append(f"wall-clock limit {lim.wall_s:g} s")
        elif rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and cpu >= int(lim.cpu_s + 0.999) - 0.5):
            result.timed_out = True
            result.notes.append(f"CPU limit {lim.cpu_s:g} s")
        if exceeded:
            result.notes.append(f"output over {lim.max_output_bytes} bytes")
        if rc == sandbox_child.CONFINE_ERROR_EXIT:
            result.confine_error = result.stderr_tail()
            if "confinement failed" in result.confine_error:
                raise SandboxUnavailable(result.confine_error)
        return result

    @staticmethod
    def _collect(proc: subprocess.Popen, deadline: float, cap: int, reaped: list) -> tuple[bytes, bytes, bool, bool]:
        """Read stdout/stderr until both close, the deadline passes, or more than `cap` bytes arrive on one.

        The leader is reaped here with wait4 (not Popen.poll) to keep its resource usage; (status, rusage) is
        appended to `reaped` when that happens."""
        bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        sel = selectors.DefaultSelector()
        for f in (proc.stdout, proc.stderr):
            os.set_blocking(f.fileno(), False)
            sel.register(f.fileno(), selectors.EVENT_READ)
        timed_out = exceeded = False
        exited_at: float | None = None
        try:
            while sel.get_map():
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                if exited_at is None:
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        reaped.append((status, usage))
                        exited_at = now
                if exited_at is not None and now - exited_at > 0.5:
                    break  # the leader is gone; something it left behind holds the pipes: it is killed below
                for key, _ in sel.select(timeout=min(0.1, deadline - now)):
                    try:
                        chunk = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    buf = bufs[key.fd]
                    if len(buf) + len(chunk) > cap:
                        exceeded = True
                    buf += chunk[: max(0, cap - len(buf))]
                if exceeded:
                    break
        finally:
            sel.close()
        pause = 0.001
        while not (timed_out or exceeded or reaped):  # pipes closed, the program may still be running
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                reaped.append((status, usage))
            elif time.monotonic() >= deadline:
                timed_out = True
            else:
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), timed_out, exceeded

    @staticmethod
    def _kill_group(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
