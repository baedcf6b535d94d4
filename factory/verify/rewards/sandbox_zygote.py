"""The zygote: one long-lived interpreter per verifier process that forks a fresh confined process for every run.

Started by `factory.verify.rewards.sandbox` as `python -I -B -c BOOTSTRAP BLOB FD PARENT_PID`, where BLOB holds the
sandbox's child-side modules compiled once by the parent (this one, sandbox_confine, sandbox_wire, sandbox_child,
sandbox_harness), registered under their plain names. It imports the modules programs commonly use, then serves
spawn requests on the control socket FD: a small spec (run kind, work dir, limits; never a program, a test or an
expected output) plus the run's descriptors (stdin, stdout, stderr, channels, and a status pipe).

What is shared between runs, and why it is safe: only this process's memory image as it was before the fork — the
interpreter, the preloaded stdlib modules and the sandbox's own code; each run is a new process (fork), so whatever a
program changes (modules, builtins, files it opens, its memory) dies with it, and the next run forks again from
this untouched image. The zygote never runs untrusted code, never holds a sample's data (programs and tests reach
the forked process through its own channels after the fork), and cannot be reached by a run: the child closes the
control socket and every other inherited descriptor before it confines itself, runs in its own session, and its
Landlock domain, seccomp filter and signal scoping are its own, made after the fork (sandbox_confine). Two things
are done once here for all runs, both restrictions that a process can never undo: as root, the capability bounding
set and securebits are dropped; and a couple of children are forked ahead of need ("blanks", below), each used for
one run only.

The zygote reaps its children and writes each one's wait status and CPU time to that run's status pipe, which the
child itself never holds, so a program cannot forge how it ended. It dies with the verifier (PDEATHSIG), and its
children die with it.
"""
from __future__ import annotations

import _signal as signal
import ctypes
import fcntl
import marshal
import os
import select
import socket
import sys
import time

try:  # inside the sandbox the bootstrap registered the modules under their plain names
    import sandbox_child as child_mod
    import sandbox_confine as confine_mod
    import sandbox_wire as wire
except ImportError:  # pragma: no cover - imported from the repository (e.g. by linters)
    from factory.verify.rewards import sandbox_child as child_mod
    from factory.verify.rewards import sandbox_confine as confine_mod
    from factory.verify.rewards import sandbox_wire as wire

PRELOAD = ("typing", "collections", "math", "re", "itertools", "functools", "heapq", "bisect", "string", "copy",
           "operator", "json", "traceback", "threading", "fractions", "decimal", "statistics", "hashlib")
_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a module missing here is merely imported later, by the run
            pass
    confine_mod._static_read_paths()
    confine_mod.drop_root_bounding()  # irreversible and inherited: each fork skips it (see sandbox_confine)
    import gc

    gc.collect()
    gc.freeze()  # fewer pages touched (copied) after each fork


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        sys.stderr.write(f"{code}\n")
    except Exception:  # noqa: BLE001
        pass
    return 1


def _own_session(zygote_pid: int) -> None:
    """First thing in a forked child: no zygote signal plumbing, its own session, death with the zygote."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    _libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # die with the zygote, which dies with the verifier
    if os.getppid() != zygote_pid:
        os._exit(wire.CONFINE_ERROR_EXIT)


def _child(req: dict, fds: list[int], prepared: dict | None = None) -> None:
    """In the forked child, in its own session: own descriptors only, confined; then the run. Never returns."""
    keep = fds[:-1]  # the last is the status pipe: the zygote's alone
    rules = (prepared or {}).get("landlock")
    carried = keep + ([rules[0]] if rules else [])
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 200) for fd in carried]
    for i, fd in enumerate(high):
        os.dup2(fd, i)
    os.closerange(len(carried), 1 << 20)  # the control socket, the status pipes, every other run's descriptor
    if rules:  # the prepared ruleset, now at the descriptor after the run's own (closed once applied)
        prepared = {"landlock": (len(keep), *rules[1:])}
    spec = req["spec"]
    os.chdir(spec["workdir"])
    os.environ.update(HOME=spec["workdir"], TMPDIR=spec["workdir"])
    try:
        confine_mod.confine(spec, prepared)
    except Exception as exc:  # noqa: BLE001
        os.write(2, f"sandbox confinement failed: {exc}\n".encode())
        os._exit(wire.CONFINE_ERROR_EXIT)
    code = 0
    try:
        if spec.get("argv"):
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            os.execv(spec["argv"][0], spec["argv"])
        child_mod.run(spec)
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # noqa: BLE001 - like the interpreter: print the traceback, exit 1
        code = 1
        try:
            import traceback

            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass
    os._exit(code)


BACKSTOP_S = 10.0  # a run still alive this long past its wall limit is killed here (the parent normally does it)


def _reap(running: dict[int, int]) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        fd = running.pop(pid, None)
        if fd is not None:
            try:
                os.write(fd, marshal.dumps((status, usage.ru_utime, usage.ru_stime)))
            except OSError:
                pass
            os.close(fd)


def _spawn(req: dict, fds: list[int]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            _own_session(req["zygote_pid"])
            _child(req, fds)
        finally:
            os._exit(wire.CONFINE_ERROR_EXIT)
    for fd in fds[:-1]:
        os.close(fd)
    return pid


# --- pre-forked children ---------------------------------------------------------------------------------------
# A blank is forked ahead of need (while the zygote is idle, so on the machine's other core while runs go on), and
# waits in its own session with the run-independent part of its confinement prepared (sandbox_confine.prepare). A
# run then costs one message instead of a fork. It is forked from the same untouched image as a run would be, holds
# only its socket to the zygote until its run arrives, and closes it (and every other inherited descriptor) before
# it confines itself: a blank is a fresh process like any other, used once.
POOL_SIZE = 2


def _blank_main(sock: socket.socket, zygote_pid: int) -> None:
    _own_session(zygote_pid)
    mine = fcntl.fcntl(sock.detach(), fcntl.F_DUPFD, 3)  # detached: no object left to close it behind our back
    os.dup2(mine, 3)
    os.closerange(4, 1 << 20)  # the zygote's control socket, other blanks', runs' status pipes
    sock = socket.socket(fileno=3)
    try:
        prepared = confine_mod.prepare()
    except Exception:  # noqa: BLE001 - the run then confines itself from scratch
        prepared = None
    data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 16)
    if not data:
        os._exit(0)
    sock.detach()  # descriptor 3 is _child's to reuse or close
    _child(marshal.loads(data), fds, prepared)


def _make_blank() -> tuple[int, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    zygote_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            _blank_main(theirs, zygote_pid)
        finally:
            os._exit(wire.CONFINE_ERROR_EXIT)
    theirs.close()
    return pid, ours


def _hand_to_blank(pool: list, data: bytes, fds: list[int]) -> int | None:
    while pool:
        pid, sock = pool.pop(0)
        try:
            socket.send_fds(sock, [data], fds)
            sent = True
        except OSError:  # it died: the next one, or a fork
            sent = False
        sock.close()
        if sent:
            for fd in fds[:-1]:
                os.close(fd)
            return pid
    return None


def _refill(pool: list, ctl: socket.socket) -> None:
    while len(pool) < POOL_SIZE and not select.select([ctl], [], [], 0)[0]:  # a request comes first
        pool.append(_make_blank())


def _shutdown(running: dict[int, int], pool: list) -> None:
    for pid in [*running, *(p for p, _ in pool)]:
        try:
            os.killpg(pid, 9)
        except OSError:
            pass
    os._exit(0)


def main(ctl_fd: str, parent_pid: str) -> None:
    _libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
    if os.getppid() != int(parent_pid):
        os._exit(1)
    ctl = socket.socket(fileno=int(ctl_fd))
    ctl.setblocking(True)
    _preload()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    running: dict[int, int] = {}
    ends: dict[int, float] = {}  # pid -> when the backstop kills it
    pool: list[tuple[int, socket.socket]] = []
    ctl.sendall(b"ready")
    while True:
        now = time.monotonic()
        for pid in [p for p, end in ends.items() if end <= now or p not in running]:
            if pid in running:
                try:
                    os.killpg(pid, 9)
                except OSError:
                    pass
            del ends[pid]
        timeout = max(0.0, min(ends.values()) - now) if ends else None
        ready = select.select([ctl, wake_r], [], [], timeout)[0]
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        _reap(running)
        if ctl not in ready:
            continue
        data, fds, _flags, _addr = socket.recv_fds(ctl, 1 << 16, 16)
        if not data:  # the verifier is gone or done: so are its runs
            _shutdown(running, pool)
        req = marshal.loads(data)  # from the verifier: trusted
        req["zygote_pid"] = os.getpid()
        pid = _hand_to_blank(pool, marshal.dumps(req), fds) or _spawn(req, fds)
        running[pid] = fds[-1]
        ends[pid] = time.monotonic() + float(req["spec"]["limits"]["wall_s"]) + BACKSTOP_S
        ctl.sendall(marshal.dumps(pid))
        _refill(pool, ctl)
