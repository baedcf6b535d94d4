"""The verifier's handle on its zygote (sandbox_zygote): start it once per process and interpreter, ask it to fork.

One zygote per (verifier process, interpreter): a verifier that forks workers gives each worker its own zygote (the
key holds the pid), so no two processes ever share one control socket. If the zygote dies (killed, or the thread
that started it ended, which fires its PDEATHSIG), the next spawn starts a new one.
"""
from __future__ import annotations

import atexit
import functools
import marshal
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Order matters: each module imports only those before it (under their plain names).
CHILD_MODULES = ("sandbox_wire", "sandbox_confine", "sandbox_child", "sandbox_harness", "sandbox_zygote")
BOOTSTRAP = ("import sys, marshal\n"
             "for _name, _code in marshal.loads(open(sys.argv[1], 'rb').read()):\n"
             "    _m = type(sys)(_name); _m.__file__ = _name + '.py'; sys.modules[_name] = _m\n"
             "    exec(compile(_code, _m.__file__, 'exec') if isinstance(_code, str) else _code, _m.__dict__)\n"
             "del _name, _code, _m\n"
             "sys.modules['sandbox_zygote'].main(sys.argv[2], sys.argv[3])\n")
START_TIMEOUT_S = 60.0


@functools.cache
def _blob(same_interpreter: bool) -> bytes:
    """The child-side modules: compiled once here (marshal, same interpreter) or as source for another Python."""
    mods = []
    for name in CHILD_MODULES:
        path = HERE / f"{name}.py"
        src = path.read_text()
        mods.append((name, compile(src, str(path), "exec") if same_interpreter else src))
    return marshal.dumps(mods)


def zygote_env() -> dict[str, str]:
    """The environment of the zygote, hence of every run (each run sets HOME and TMPDIR to its own work dir)."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "TMPDIR": "/nonexistent",
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}


class ZygoteError(RuntimeError):
    pass


class Zygote:
    def __init__(self, python: str):
        self.python = python
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        private = tempfile.mkdtemp(prefix="factory-sbx-zygote-")
        try:
            blob = os.path.join(private, "modules.marshal")
            same = os.path.realpath(self.python) == os.path.realpath(sys.executable)
            with open(blob, "wb") as fh:
                fh.write(_blob(same))
            self.proc = subprocess.Popen(
                [self.python, "-I", "-B", "-c", BOOTSTRAP, blob, str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()], cwd="/", env=zygote_env(), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, start_new_session=True)
            theirs.close()
            ours.settimeout(START_TIMEOUT_S)
            if ours.recv(16) != b"ready":
                raise ZygoteError("the sandbox zygote did not start")
        except BaseException:
            theirs.close()
            ours.close()
            self._reap()
            raise
        finally:
            shutil.rmtree(private, ignore_errors=True)
        self.sock = ours

    def _reap(self) -> None:
        if self.proc is not None:
            try:
                self.proc.kill()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.proc = None

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()  # EOF: the zygote kills what still runs and exits
            self.sock = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            self._reap()

    def ensure(self) -> "Zygote":
        """Start the zygote now if it is not running (so that its start is not timed as part of a run)."""
        with self.lock:
            if self.sock is None:
                try:
                    self._start()
                except (OSError, ValueError) as exc:
                    raise ZygoteError(f"the sandbox zygote could not be started: {exc}") from exc
        return self

    def spawn(self, spec: dict, fds: list[int]) -> int:
        """Fork a confined run of `spec`; `fds` = stdin, stdout, stderr, channels…, and last the status pipe."""
        return self.spawn_many([(spec, fds)])[0]

    def spawn_many(self, runs: list[tuple[dict, list[int]]]) -> list[int]:
        """Several runs in one exchange (the requests are sent together, then the pids read back in order)."""
        requests = [marshal.dumps({"spec": spec}) for spec, _ in runs]
        with self.lock:
            for _attempt in range(2):
                try:
                    if self.sock is None:
                        self._start()
                    for request, (_, fds) in zip(requests, runs):
                        socket.send_fds(self.sock, [request], fds)
                    pids = [marshal.loads(self.sock.recv(64)) for _ in runs]
                    if all(isinstance(pid, int) for pid in pids):
                        return pids
                except (OSError, EOFError, ValueError, TypeError):
                    pass
                except BaseException:  # interrupted mid-exchange (e.g. a caller's deadline): replies would be
                    self.stop()        # read by the next spawn, so this zygote (and what it runs) goes
                    raise
                self.stop()
        raise ZygoteError("the sandbox zygote could not be started, or died")


_ZYGOTES: dict[tuple[int, str], Zygote] = {}
_LOCK = threading.Lock()


def zygote_for(python: str) -> Zygote:
    key = (os.getpid(), os.path.realpath(python))
    with _LOCK:
        zyg = _ZYGOTES.get(key)
        if zyg is None:
            zyg = _ZYGOTES[key] = Zygote(python)
        return zyg


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # the parent's may have been held by another thread at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _stop_all() -> None:
    for (pid, _), zyg in list(_ZYGOTES.items()):
        if pid == os.getpid():
            zyg.stop()
