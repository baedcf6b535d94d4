"""The trusted side of a function/assert run: a confined process of its own that never loads the program.

It reads its job from the parent (descriptor 3), tells the candidate process (descriptor 4) to load the program, and
then either calls the named function once per case (`function` tests; the decoded return values go back to the
parent, which compares them with the expected outputs it alone holds) or runs the prompt's setup and HumanEval
`check(candidate)` here (`assert` tests), where `candidate` — and the entry point's name, which some tests call
directly — is `CandidateProxy`: it sends the arguments to the candidate process and returns what comes back,
decoded by sandbox_wire into exact builtin objects made here. Every comparison a test makes therefore runs this
process's own builtin `==` on plain data; no object of the program takes part, and the program can neither see the
test, nor patch this process (builtins, modules, frames), nor reach the result channel to the parent.

A leaf module (no `factory` import): inside the sandbox the zygote loaded it under the plain name `sandbox_harness`.
"""
from __future__ import annotations

import builtins
import marshal
import socket
import time

try:
    import sandbox_child as child
    import sandbox_wire as wire
except ImportError:
    from factory.verify.rewards import sandbox_child as child
    from factory.verify.rewards import sandbox_wire as wire

PARENT_FD, CANDIDATE_FD = 3, 4
GRACE_S = 0.5  # how long past its own timer a candidate may take to answer before it counts as stuck
STATUSES = ("ok", "assertion", "timeout", "memory", "error", "compile_error")


class LoadFailed(BaseException):
    """The program did not load (a BaseException: a test's `except Exception` must not swallow it)."""


class CandidateFailed(Exception):
    """Raised into the test where the candidate raised or returned something not plain. When the program raised a
    builtin exception, the one raised here is also of that class, so that a test expecting (say) a ValueError sees
    one; it is made here, from the name the program reported, like any value."""

    def __init__(self, status: str, error: str):
        super().__init__(error)
        self.status, self.error = status, error


class CandidateGone(BaseException):
    """The candidate timed out or exited: like the timer of an in-process harness, no `except Exception` in the
    test can swallow it."""

    def __init__(self, status: str, error: str):
        super().__init__(error)
        self.status, self.error = status, error


def _failure(status: str, error: str) -> BaseException:
    if status in ("timeout", "exited"):
        return CandidateGone(status, error)
    name = error.split(":", 1)[0].strip()
    base = getattr(builtins, name, None) if name.isidentifier() else None
    if isinstance(base, type) and issubclass(base, Exception) and base is not Exception:
        try:
            return type(name, (CandidateFailed, base), {})(status, error)
        except TypeError:  # a builtin whose layout does not mix: the plain failure
            pass
    return CandidateFailed(status, error)


class CandidateProxy:
    """`candidate` as the test sees it: arguments out (marshal), a strictly decoded return value back."""

    def __init__(self, chan: socket.socket, load_timeout_s: float = 0.0):
        self.chan = chan
        self.load_timeout_s = load_timeout_s  # the first answer also waits for the program to load
        self.load_failure: dict | None = None
        self.answered = False
        self.failure: CandidateFailed | CandidateGone | None = None  # the first one: it decides the verdict when the test fails
        self.stuck = False

    def request(self, msg: dict, timeout_s: float) -> dict:
        """One exchange; a failure is returned as {"status", "error"} (never raised)."""
        if self.load_failure is not None:
            return self.load_failure
        if self.stuck:
            return {"status": "timeout", "error": "the program did not answer an earlier call in time"}
        if not self.answered:
            timeout_s += self.load_timeout_s
        try:
            body = marshal.dumps(msg)
        except ValueError as exc:
            return {"status": "error", "error": f"the test passes an argument that cannot be sent: {exc}"}
        try:
            wire.send(self.chan, body)
        except OSError:
            pass  # gone: what it sent before it went (a load failure) is still there to read
        try:
            reply = wire.decode(wire.recv(self.chan, deadline=time.monotonic() + timeout_s + GRACE_S))
        except wire.WireTimeout:
            self.stuck = True
            return {"status": "timeout", "error": f"no answer within {timeout_s:g} s"}
        except (wire.WireClosed, ConnectionError):
            return {"status": "exited", "error": "the program exited before answering"}
        except wire.WireError as exc:
            return {"status": "error", "error": f"unreadable reply: {exc}"}
        if type(reply) is not dict or reply.get("status") not in STATUSES:
            return {"status": "error", "error": "malformed reply"}
        err = reply.get("error")
        reply["error"] = err[:400] if type(err) is str else None
        if reply.get("stage") == "load" and not self.answered:
            self.load_failure = reply
        if not self.answered and self.deadline:  # loaded: from now on the test has its own time, no more
            self.deadline = min(self.deadline, time.monotonic() + self.check_timeout_s)
            child.signal.setitimer(child.signal.ITIMER_REAL, max(0.001, self.deadline - time.monotonic()))
        self.answered = True
        return reply

    def call(self, args, kwargs, timeout_s: float) -> dict:
        return self.request({"args": list(args), "kwargs": dict(kwargs), "timeout_s": timeout_s}, timeout_s)

    def __call__(self, *args, **kwargs):
        reply = self.call(args, kwargs, max(0.01, self.deadline - time.monotonic()))
        if self.load_failure is not None:
            raise LoadFailed()
        if reply["status"] == "ok":
            return reply.get("value")
        failure = _failure(reply["status"], reply.get("error") or reply["status"])
        self.failure = self.failure or failure
        raise failure

    deadline = 0.0  # assert mode: the end of check()'s time
    check_timeout_s = 0.0


def _run_function(proxy: CandidateProxy, job: dict) -> list[dict]:
    results = []
    for i, case in enumerate(job["cases"]):
        reply = proxy.call(case.get("args", []), case.get("kwargs", {}), job["case_timeout_s"])
        if proxy.load_failure is not None:
            break
        results.append({"case": i, "status": reply["status"], "value": reply.get("value"),
                        "error": reply.get("error")})
    return results


def _prepare_assert(proxy: CandidateProxy, job: dict) -> tuple[str, dict, str | None]:
    """Run the prompt's setup and define the test (while the candidate loads: the two run side by side)."""
    namespace: dict = {"__name__": "harness_test"}

    def prepare():
        if job.get("setup"):
            exec(compile(job["setup"], "setup.py", "exec"), namespace)
        namespace[job["entry_point"]] = proxy  # tests that call the function by name call the candidate too
        exec(compile(job["test"], "test.py", "exec"), namespace)

    status, _, err = child.guarded(prepare, job["case_timeout_s"])
    return status, namespace, err


def _run_assert(proxy: CandidateProxy, job: dict, namespace: dict) -> list[dict]:
    timeout = job["case_timeout_s"]
    # The window covers the program's load (until its first answer, see CandidateProxy.request), then the test.
    proxy.check_timeout_s = timeout
    proxy.deadline = time.monotonic() + 2 * timeout
    status, _, err = child.guarded(lambda: namespace["check"](proxy), 2 * timeout)
    if status != "ok" and proxy.failure is not None and status not in ("timeout", "assertion"):
        status, err = proxy.failure.status, proxy.failure.error  # the candidate's failure ended the test
    return [{"case": 0, "status": status, "value": None, "error": err}]


def run_harness(spec: dict) -> None:  # noqa: ARG001 - the job comes on the parent's channel
    parent = socket.socket(fileno=PARENT_FD)
    job = marshal.loads(wire.recv(parent, cap=1 << 31))  # from the parent: trusted
    chan = socket.socket(fileno=CANDIDATE_FD)
    chan.settimeout(job["case_timeout_s"] + GRACE_S)  # a candidate that stops reading cannot block a send for long
    proxy = CandidateProxy(chan, load_timeout_s=job["case_timeout_s"])
    load = {"setup": job.get("setup", ""), "name": job["name"], "leetcode": job["mode"] == "function",
            "timeout_s": job["case_timeout_s"]}
    try:
        wire.send(proxy.chan, marshal.dumps(load))  # the first call follows without waiting for the load
    except OSError:
        pass  # the candidate is gone: the first exchange says so
    if job["mode"] == "function":
        results = _run_function(proxy, job)
    else:
        status, namespace, err = _prepare_assert(proxy, job)
        results = _run_assert(proxy, job, namespace) if status == "ok" else [
            {"case": 0, "status": status, "value": None, "error": f"in the test's setup: {err}"}]
    if proxy.load_failure is None and not proxy.answered:
        proxy.request({"ping": True}, job["case_timeout_s"])  # a test that never called it: did it load?
    if proxy.load_failure is not None:
        fail = proxy.load_failure
        results = [{"case": -1, "status": fail["status"], "value": None, "error": fail.get("error")}]
    proxy.chan.close()
    wire.send(parent, wire.encode(results, max_depth=wire.MAX_DEPTH + 5))
