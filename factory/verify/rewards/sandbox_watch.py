"""The parent's watch over confined processes: read their output under a cap, enforce wall-clock deadlines, collect
their exit status (sent by the zygote, which reaps them), and kill each one's whole process group at the end.

Several processes can be watched together (a candidate and the harness that calls it): the watch ends when the
`primary` one (the harness) is done, or when all are; every process still running then is killed.
"""
from __future__ import annotations

import marshal
import os
import selectors
import signal
import time
from dataclasses import dataclass, field

from factory.verify.rewards.sandbox_wire import CONFINE_ERROR_EXIT

GRACE_S = 0.5  # how long pipes held open by leftovers are read after the leader exited
STATUS_WAIT_S = 5.0  # how long the zygote may take to report a killed process


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


class Proc:
    """One confined process as the parent sees it: its pipes, its deadline, what came back."""

    def __init__(self, pid: int, limits, out_fd: int, err_fd: int, status_fd: int, start: float,
                 ctl=None, ctl_cap: int = 64 << 20):
        self.pid, self.limits, self.start = pid, limits, start
        self.deadline = start + limits.wall_s
        self.bufs = {out_fd: bytearray(), err_fd: bytearray()}
        self.out_fd, self.err_fd, self.status_fd = out_fd, err_fd, status_fd
        self.ctl, self.ctl_buf, self.ctl_cap = ctl, bytearray(), ctl_cap
        self.open_fds = {out_fd, err_fd} | ({ctl.fileno()} if ctl is not None else set())
        self.exit: tuple | None = None  # (wait status, user CPU s, system CPU s), as the zygote reaped it
        self.reported = False
        self.exited_at: float | None = None
        self.timed_out = self.exceeded = self.killed = False

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.killed = True

    def close(self) -> None:
        for fd in (self.out_fd, self.err_fd, self.status_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.ctl is not None:
            self.ctl.close()

    @property
    def done(self) -> bool:
        if not self.reported:
            return False
        return not self.open_fds or self.killed or time.monotonic() - self.exited_at > GRACE_S

    def read(self, fd: int, sel: selectors.BaseSelector) -> None:
        if fd == self.status_fd:
            data = os.read(fd, 4096)
            self.exit = marshal.loads(data) if data else None  # no report: the zygote died (it kills its runs)
            self.reported, self.exited_at = True, time.monotonic()
            sel.unregister(fd)
            return
        try:
            chunk = self.ctl.recv(1 << 20) if self.ctl is not None and fd == self.ctl.fileno() else os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            sel.unregister(fd)
            self.open_fds.discard(fd)
            return
        if fd in self.bufs:
            buf, cap = self.bufs[fd], self.limits.max_output_bytes
        else:
            buf, cap = self.ctl_buf, self.ctl_cap
        if len(buf) + len(chunk) > cap:
            self.exceeded = True
            self.kill()
        buf += chunk[: max(0, cap - len(buf))]

    def result(self) -> RunResult:
        status, utime, stime = self.exit or (signal.SIGKILL, 0.0, 0.0)
        rc = os.waitstatus_to_exitcode(status)
        cpu, lim = utime + stime, self.limits
        res = RunResult(returncode=rc, pid=self.pid, stdout=bytes(self.bufs[self.out_fd]),
                        stderr=bytes(self.bufs[self.err_fd]), wall_s=(self.exited_at or time.monotonic()) - self.start,
                        cpu_s=cpu, output_exceeded=self.exceeded)
        if self.timed_out:
            res.timed_out = True
            res.notes.append(f"wall-clock limit {lim.wall_s:g} s")
        elif rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and cpu >= int(lim.cpu_s + 0.999) - 0.5):
            res.timed_out = True
            res.notes.append(f"CPU limit {lim.cpu_s:g} s")
        if self.exceeded:
            res.notes.append(f"output over {lim.max_output_bytes} bytes")
        if rc == CONFINE_ERROR_EXIT:
            res.confine_error = res.stderr_tail()
        return res


def watch(procs: list[Proc], primary: Proc | None = None, finished=None, need_status=None) -> list[RunResult]:
    """Run the watch until `primary` (or every process) is done, or `finished()` says the result is in; kill all
    groups; collect each one's exit status unless `need_status()` says it cannot matter; one result each."""
    sel = selectors.DefaultSelector()
    owner: dict[int, Proc] = {}
    for p in procs:
        if p.ctl is not None:
            p.ctl.setblocking(False)
        for fd in (*p.open_fds, p.status_fd):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
            owner[fd] = p
    hard_end = max(p.deadline for p in procs) + STATUS_WAIT_S
    try:
        while True:
            now = time.monotonic()
            for p in procs:
                if not p.reported and not p.killed and now >= p.deadline:
                    p.timed_out = True
                    p.kill()
            if (primary is not None and primary.done) or all(p.done for p in procs) or now > hard_end:
                break
            if finished is not None and finished():
                break
            timeout = max(0.0, min([p.deadline - now for p in procs if not p.reported] + [0.1]))
            for key, _ in sel.select(timeout=timeout):
                owner[key.fd].read(key.fd, sel)
        for p in procs:  # anything still running (e.g. the candidate once its harness is done) is killed now
            p.kill()
        end = time.monotonic() + (STATUS_WAIT_S if need_status is None or need_status() else 0.0)
        while any(not p.reported for p in procs) and time.monotonic() < end:
            for key, _ in sel.select(timeout=0.1):
                owner[key.fd].read(key.fd, sel)  # statuses, and what is left in the pipes of killed processes
    finally:  # also on an exception here (e.g. a per-sample deadline of the caller): nothing is left running
        sel.close()
        for p in procs:
            if not p.killed:
                p.kill()
            p.close()
    return [p.result() for p in procs]
