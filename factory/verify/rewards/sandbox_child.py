"""What a confined process runs once the zygote has forked and confined it (sandbox_zygote): the program's side.

Three jobs, as the spec says:

- `script`: run the program like `python solution.py` (fresh `__main__`, its folder first on sys.path); the parent
  compares what it printed (stdio tests).
- `candidate`: load the program (after the prompt's `setup`), then serve calls of one function on descriptor 3,
  the channel to its driver (the harness process of sandbox_harness): each call's arguments come in as marshal from
  the trusted side; each return value goes back through the strict codec of sandbox_wire (exact builtin types only;
  a subclass or an object of the program's own is refused, and the reply is decoded again on the trusted side, so
  no object the program made reaches the comparison). This process holds no test and no expected output: nothing in
  it decides pass or fail, so nothing it patches (builtins, modules, frames, this file's functions) can.
- `harness`: the trusted side (sandbox_harness), in a process of its own that never loads the program.

A leaf module (no `factory` import): inside the sandbox the zygote loaded it under the plain name `sandbox_child`.
"""
from __future__ import annotations

import _signal as signal
import marshal
import os
import socket
import sys

try:
    import sandbox_wire as wire
except ImportError:
    from factory.verify.rewards import sandbox_wire as wire

COMPILE_ERROR_EXIT = wire.COMPILE_ERROR_EXIT
CONFINE_ERROR_EXIT = wire.CONFINE_ERROR_EXIT
CHANNEL_FD = 3


class _CaseTimeout(BaseException):
    pass


def _on_alarm(signum, frame):  # noqa: ARG001
    raise _CaseTimeout()


def describe(exc: BaseException) -> str:
    try:
        text = f"{type(exc).__name__}: {exc}"
    except BaseException:  # noqa: BLE001 - a program's exception whose __str__ fails
        text = type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


def guarded(fn, timeout_s: float) -> tuple[str, object, str | None]:
    """Run fn() under a wall-clock alarm; every failure of untrusted code is a (status, None, error) result."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(timeout_s, 0.001))
    try:
        return "ok", fn(), None
    except _CaseTimeout:
        return "timeout", None, f"over {timeout_s:g} s"
    except AssertionError as exc:
        return "assertion", None, describe(exc) if str(exc) else "AssertionError"
    except MemoryError:
        return "memory", None, "MemoryError"
    except SystemExit as exc:
        return "error", None, f"SystemExit({exc.code})"
    except BaseException as exc:  # noqa: BLE001
        return "error", None, describe(exc)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _read_source(spec: dict) -> str:
    with open(os.path.join(spec["workdir"], spec["python"]["filename"]), encoding="utf-8", errors="replace") as fh:
        return fh.read()


def run_script(spec: dict) -> None:
    py = spec["python"]
    try:
        code = compile(_read_source(spec), py["filename"], "exec")
    except (SyntaxError, ValueError) as exc:
        sys.stderr.write(f"compile error: {describe(exc)}\n")
        sys.stderr.flush()
        os._exit(COMPILE_ERROR_EXIT)
    sys.argv = [py["filename"]]
    sys.path.insert(0, spec["workdir"])
    main = type(sys)("__main__")
    main.__file__ = py["filename"]
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)
    finally:  # like the interpreter's exit: wait for the program's threads, run its atexit functions
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        import atexit

        atexit._run_exitfuncs()


def _reply(chan: socket.socket, status: str, value=None, error: str | None = None, stage: str = "call") -> None:
    try:
        body = wire.encode({"status": status, "value": value, "error": error, "stage": stage})
    except wire.WireError as exc:
        body = wire.encode({"status": "error", "value": None,
                            "error": f"returned a value that is not plain data ({exc}): only exact int, float, "
                                     "bool, str, bytes, None, list, tuple, dict, set, frozenset, complex"})
    wire.send(chan, body)


def _load(chan: socket.socket, spec: dict, job: dict):
    """Compile and run the program; the function to call, or None once the failure is reported (a success is not
    reported: the harness sends its first call right behind the program, and its answer says the load went well)."""
    try:
        code = compile(_read_source(spec), spec["python"]["filename"], "exec")
    except (SyntaxError, ValueError) as exc:
        _reply(chan, "compile_error", error=describe(exc), stage="load")
        return None
    namespace: dict = {"__name__": "solution", "__builtins__": __builtins__}
    sys.path.insert(0, spec["workdir"])

    def load():
        if job.get("setup"):
            exec(compile(job["setup"], "setup.py", "exec"), namespace)
        exec(code, namespace)

    status, _, err = guarded(load, job["timeout_s"])
    if status != "ok":
        _reply(chan, status, error=f"while loading the program: {err}", stage="load")
        return None
    name = job["name"]
    fn = namespace.get(name)
    if not callable(fn) and job.get("leetcode") and isinstance(namespace.get("Solution"), type):
        status, fn, err = guarded(lambda: getattr(namespace["Solution"](), name, None), job["timeout_s"])
    if not callable(fn):
        _reply(chan, "error", error=f"no function named {name!r} in the program", stage="load")
        return None
    return fn


def run_candidate(spec: dict) -> None:
    chan = socket.socket(fileno=CHANNEL_FD)
    job = marshal.loads(wire.recv(chan, cap=1 << 30))  # from the harness: trusted
    fn = _load(chan, spec, job)
    if fn is None:
        return
    while True:
        try:
            call = marshal.loads(wire.recv(chan, cap=1 << 30))
        except wire.WireClosed:
            return
        if call.get("ping"):  # a test that never called the program: is it loaded?
            _reply(chan, "ok")
            continue
        status, value, err = guarded(lambda c=call: fn(*c["args"], **c["kwargs"]), call["timeout_s"])
        _reply(chan, status, value, err)


def run(spec: dict) -> None:
    mode = spec["python"]["mode"]
    if mode == "script":
        run_script(spec)
    elif mode == "candidate":
        run_candidate(spec)
    elif mode == "harness":
        try:
            import sandbox_harness as harness
        except ImportError:
            from factory.verify.rewards import sandbox_harness as harness
        harness.run_harness(spec)
    else:
        raise ValueError(f"unknown python mode {mode!r}")
