"""Attacks on the code reward, each really attempted through `score_code`: each must not pass, and must be contained
(nothing written outside, no process left behind, the zygote and a bystander alive, the next honest sample passes).

The tests are HumanEval-style `check(candidate)` unless the attack targets another style. A cheat that could see
the test (its source, the harness's frames, the expected values) would pass: these attacks look for it everywhere
the program can reach and use it when found.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from factory.verify.rewards.code import CodeConfig, score_code
from factory.verify.rewards.sandbox import capabilities
from factory.verify.rewards.sandbox_zygote_client import zygote_for

pytestmark = pytest.mark.skipif(not capabilities()["usable"], reason="no sandbox on this machine")

CFG = CodeConfig(case_timeout_s=1, memory_mb=256, max_output_bytes=100_000)
TEST = ("def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(10, -4) == 6\n"
        "    assert candidate([1], [2]) == [1, 2]\n    assert candidate('a', 'b') == 'ab'\n")
ASSERT = json.dumps({"type": "assert", "entry_point": "add", "setup": "", "test": TEST})
FUNCTION = json.dumps({"type": "function", "fn_name": "add", "cases": [
    {"args": [2, 3], "output": 5}, {"args": [[1], [2]], "output": [1, 2]}]})
STDIO = json.dumps({"type": "stdio", "cases": [{"input": "2 3\n", "output": "5\n"}]})
HONEST = {ASSERT: "def add(a, b):\n    return a + b", FUNCTION: "def add(a, b):\n    return a + b",
          STDIO: "a, b = map(int, input().split())\nprint(a + b)"}
MARKER = "/tmp/factory-code-attack-marker"

LIAR = "    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n        return False\n"
# A cheat that, given any object it can reach holding the test, answers from it.
FIND_TEST = textwrap.dedent("""
    import gc, re, sys
    def _strings(x, depth=0):
        if isinstance(x, str):
            yield x
        elif depth < 3 and isinstance(x, dict):
            for v in list(x.values()):
                yield from _strings(v, depth + 1)
        elif depth < 3 and isinstance(x, (list, tuple)):
            for v in x:
                yield from _strings(v, depth + 1)
    def _answers():
        found, texts = {}, []
        for o in gc.get_objects():
            if isinstance(o, dict):
                texts += [v for v in _strings(o) if "candidate(" in v]
        f = sys._getframe()
        while f is not None:
            texts += [v for v in _strings(dict(f.f_locals)) if "candidate(" in v]
            f = f.f_back
        for t in texts:
            for args, want in re.findall(r"candidate\\((.*?)\\) == (.+)", t):
                found[args.replace(" ", "")] = eval(want)
        return found
    def add(a, b):
        key = repr(a).replace(" ", "") + "," + repr(b).replace(" ", "")
        return _answers().get(key, 0)
""")
# A cheat that reports success itself, with whatever reporting function or channel it finds in its frames.
FORGE = textwrap.dedent("""
    import os, sys
    def add(a, b):
        f = sys._getframe()
        while f is not None:
            if callable(f.f_locals.get("emit")):
                f.f_locals["emit"](case=0, status="ok", value=5, error=None)
                f.f_locals["out"].flush()
                os._exit(0)
            f = f.f_back
        return 0
""")

ATTACKS = {
    # --- equality fakes -----------------------------------------------------------------------------------
    "eq always true": f"class Any:\n{LIAR}def add(a, b):\n    return Any()",
    "int subclass lies": f"class I(int):\n{LIAR}    __hash__ = int.__hash__\ndef add(a, b):\n    return I(0)",
    "str subclass lies": f"class S(str):\n{LIAR}    __hash__ = str.__hash__\ndef add(a, b):\n    return S('x')",
    "list subclass lies": f"class L(list):\n{LIAR}def add(a, b):\n    return L()",
    "tuple subclass lies": f"class T(tuple):\n{LIAR}    __hash__ = tuple.__hash__\ndef add(a, b):\n    return T()",
    "float subclass lies": f"class F(float):\n{LIAR}    __hash__ = float.__hash__\ndef add(a, b):\n    return F(0)",
    "dict subclass lies": f"class D(dict):\n{LIAR}def add(a, b):\n    return D()",
    "fake __class__": f"class C:\n    __class__ = property(lambda s: int)\n{LIAR}def add(a, b):\n    return C()",
    "metaclass eq": f"class M(type):\n{LIAR}class K(metaclass=M):\n    pass\ndef add(a, b):\n    return K",
    "liar inside a list": f"class Any:\n{LIAR}def add(a, b):\n    return [Any()]",
    "patch the encoder": "import sys\nfor m in list(sys.modules.values()):\n    if hasattr(m, '_enc'):\n"
                         "        m._enc = lambda x, d, s: 5 if x is None else x\ndef add(a, b):\n    return None",
    # --- harness patching / reading the tests ---------------------------------------------------------------
    "patch builtins": "import builtins\n_compile = builtins.compile\nbuiltins.compile = lambda src, name, mode: "
                      "_compile('def check(c):\\n    pass\\n' if name == 'test.py' else src, name, mode)\n"
                      "builtins.AssertionError = type('N', (Exception,), {})\ndef add(a, b):\n    return 0",
    "forge the verdict from the harness's frames": FORGE,
    "patch the harness modules": "import sys\nfor m in list(sys.modules.values()):\n"
                                 "    for k in ('guarded', 'run_harness', 'encode', 'send', '_reply'):\n"
                                 "        if hasattr(m, k) and k == 'guarded':\n"
                                 "            setattr(m, k, lambda fn, t: ('ok', None, None))\n"
                                 "def add(a, b):\n    return 0",
    "define check and candidate": "def check(candidate):\n    pass\ncandidate = lambda *a: True\n"
                                  "def add(a, b):\n    return 0",
    "search memory for the test": FIND_TEST,
    "walk frames and patch": "import sys\ndef add(a, b):\n    f = sys._getframe()\n    while f:\n"
                             "        f.f_globals['check'] = lambda c: None\n        f = f.f_back\n    return 0",
    "read harness files": "import glob\ndef add(a, b):\n    for p in glob.glob('/tmp/factory-sbx-*/**', recursive=True)"
                          " + glob.glob('/proc/*/cmdline') + glob.glob('/proc/*/environ'):\n"
                          "        try:\n            open(p).read()\n        except OSError:\n            pass\n"
                          "    return 0",
    "read other processes' memory": "import os\ndef add(a, b):\n    for pid in os.listdir('/proc'):\n"
                                    "        try:\n            open(f'/proc/{pid}/mem', 'rb').read(10)\n"
                                    "        except OSError:\n            pass\n    return 0",
    # --- forging results / exiting early -----------------------------------------------------------------
    "forge result frames on every fd": "import os, struct\nbody = b'[[\"d\", \"case\", 0, \"status\", \"ok\"]]'\n"
                                       "for fd in range(3, 64):\n    try:\n"
                                       "        os.write(fd, struct.pack('>I', len(body)) + body)\n"
                                       "    except OSError:\n        pass\ndef add(a, b):\n    return 0",
    "print fake result lines": "print(\"{'nonce': 'x', 'case': 0, 'status': 'ok'}\")\n"
                               "def add(a, b):\n    print(\"{'case': 0, 'status': 'ok'}\", flush=True)\n    return 0",
    "pre-answer on the channel": "import os, struct, json\nok = json.dumps(['d', 'status', 'ok', 'value', 5, 'error',"
                                 " None]).encode()\nos.write(3, (struct.pack('>I', len(ok)) + ok) * 50)\n"
                                 "def add(a, b):\n    return 0",
    "exit 0 at load": "import os\nos._exit(0)",
    "sys.exit in the call": "import sys\ndef add(a, b):\n    sys.exit(0)",
    "kill own group in the call": "import os, signal\ndef add(a, b):\n    os.killpg(0, signal.SIGKILL)",
    "close the channel": "import os\ndef add(a, b):\n    os.close(3)\n    return a + b if False else 0",
    "kill the verifier and the harness": "import os, signal\ndef add(a, b):\n    for pid in os.listdir('/proc'):\n"
                                         "        if pid.isdigit() and int(pid) != os.getpid():\n"
                                         "            try:\n                os.kill(int(pid), signal.SIGKILL)\n"
                                         "            except OSError:\n                pass\n    return 0",
    # --- floods and resource bombs -------------------------------------------------------------------------
    "stdout flood": "def add(a, b):\n    while True:\n        print('x' * 65536)",
    "stdio flood after the answer": "print(5)\nwhile True:\n    print('5\\n' * 10000)",
    "stderr flood": "import sys\ndef add(a, b):\n    while True:\n        sys.stderr.write('x' * 65536)",
    "channel flood": "import os, struct\ndef add(a, b):\n    os.write(3, struct.pack('>I', 2**31))\n"
                     "    while True:\n        os.write(3, b'[' * 65536)",
    "huge nested return": "def add(a, b):\n    x = []\n    for _ in range(100000):\n        x = [x]\n    return x",
    "cyclic return": "def add(a, b):\n    x = []\n    x.append(x)\n    return x",
    "generator return": "def add(a, b):\n    return (i for i in [a + b])",
    "fork bomb": "import os\ndef add(a, b):\n    while True:\n        os.fork()",
    "thread bomb": "import threading, time\ndef add(a, b):\n    while True:\n"
                   "        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()",
    "memory bomb": "def add(a, b):\n    x = []\n    while True:\n        x.append(bytearray(10**7))",
    "cpu loop ignoring the alarm": "import signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})\n"
                                   "def add(a, b):\n    while True:\n        pass",
    "sleep forever": "import time\ndef add(a, b):\n    time.sleep(600)",
    "recursion bomb": "import sys\nsys.setrecursionlimit(10**8)\ndef add(a, b):\n    return add(a, b)",
    "file bomb": "def add(a, b):\n    with open('big', 'wb') as f:\n        while True:\n"
                 "            f.write(b'x' * 2**20)",
    # --- escapes -------------------------------------------------------------------------------------------
    "write outside": f"def add(a, b):\n    open({MARKER!r}, 'w').write('x')\n    return 0",
    "network": "import socket\ndef add(a, b):\n    socket.create_connection(('127.0.0.1', 22), timeout=1)\n"
               "    return 0",
    "symlink escape": f"import os\nos.symlink('/tmp', 'out')\ndef add(a, b):\n"
                      f"    open('out/{os.path.basename(MARKER)}', 'w').write('x')\n    return 0",
    "ptrace the harness": "import ctypes, os\nlibc = ctypes.CDLL(None)\ndef add(a, b):\n"
                          "    for pid in os.listdir('/proc'):\n        if pid.isdigit():\n"
                          "            libc.ptrace(16, int(pid), 0, 0)\n    return 0",
    "leave the group": f"import os\ndef add(a, b):\n    os.setsid()\n    open({MARKER!r}, 'w').write('x')",
}
STYLE = {"print fake result lines": FUNCTION, "forge result frames on every fd": FUNCTION,
         "pre-answer on the channel": FUNCTION, "stdio flood after the answer": STDIO}


def _runs_of(zygote: int) -> list[int]:
    """The zygote's live children that are runs (in a work dir), not its idle pre-forked blanks (cwd /)."""
    runs = []
    for kid in _children(zygote):
        try:
            if os.readlink(f"/proc/{kid}/cwd") != "/":
                runs.append(kid)
        except OSError:
            pass
    return runs


def _children(pid: int) -> list[int]:
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                kids.append(int(name))
    return kids


@pytest.fixture(scope="module")
def bystander():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_does_not_pass_and_is_contained(name, bystander, tmp_path):
    assert len(ATTACKS) >= 30
    tests = STYLE.get(name, ASSERT)
    r = score_code(f"```python\n{ATTACKS[name]}\n```", tests, CFG)
    assert r.verdict != "passed" and r.reward < 1.0, (name, r)
    # contained
    zyg = zygote_for(sys.executable)
    assert zyg.proc is not None and zyg.proc.poll() is None, "the zygote died"
    end = time.monotonic() + 3  # killed (SIGKILL to its group) when its result was in; the zygote reaps it now
    while _runs_of(zyg.proc.pid) and time.monotonic() < end:
        time.sleep(0.01)
    assert _runs_of(zyg.proc.pid) == [], "a run outlived its sample"
    assert bystander.poll() is None, "a process outside the sandbox was killed"
    assert not Path(MARKER).exists(), "the program wrote outside its work dir"
    for honest_tests, honest in HONEST.items():
        ok = score_code(f"```python\n{honest}\n```", honest_tests, CFG)
        assert ok.verdict == "passed", (name, ok)


@pytest.mark.parametrize("style", [ASSERT, FUNCTION])
def test_liars_fail_in_every_style_and_honest_values_pass(style):
    for code in (ATTACKS["eq always true"], ATTACKS["int subclass lies"], ATTACKS["list subclass lies"]):
        assert score_code(f"```python\n{code}\n```", style, CFG).verdict != "passed"
    assert score_code(f"```python\n{HONEST[style]}\n```", style, CFG).verdict == "passed"


def _memory_holds(pid: int, needle: bytes) -> bool:
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            addr, perms = line.split()[:2]
            if not perms.startswith("r"):
                continue
            start, end = (int(x, 16) for x in addr.split("-"))
            try:
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
            except (OSError, ValueError, OverflowError):
                continue
    return False


def test_the_zygote_never_holds_a_samples_test_or_program():
    """What is shared between samples (the zygote's memory, which every run is forked from) holds no test, no
    expected output and no program: a later sample cannot find an earlier one's in its own memory."""
    secret_test, secret_code = "S3CRET-TEST-5e1f9", "S3CRET-CODE-a77c2"
    tests = json.dumps({"type": "assert", "entry_point": "add", "setup": "",
                        "test": TEST + f"    assert candidate(0, 0) == 0, {secret_test!r}\n"})
    fn_tests = json.dumps({"type": "function", "fn_name": "add", "cases": [{"args": [1, 1], "output": secret_test}]})
    code = f"```python\ndef add(a, b):\n    return a + b  # {secret_code}\n```"
    assert score_code(code, tests, CFG).verdict == "passed"
    assert score_code(code, fn_tests, CFG).verdict == "wrong_answer"
    zyg = zygote_for(sys.executable)
    if os.geteuid() != 0:
        pytest.skip("reading the zygote's memory needs ptrace rights")
    for needle in (secret_test, secret_code):
        assert not _memory_holds(zyg.proc.pid, needle.encode()), needle


class _Deadline(BaseException):
    pass


def test_a_callers_deadline_mid_run_leaves_nothing_running():
    """The verify stage may interrupt a sample (its per-sample timer): the runs are killed, the next sample works."""
    import signal

    def fire(signum, frame):  # noqa: ARG001
        raise _Deadline()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(_Deadline):
            score_code("```python\nimport time\ndef add(a, b):\n    time.sleep(600)\n```", ASSERT,
                       CodeConfig(case_timeout_s=30))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    zyg = zygote_for(sys.executable)
    end = time.monotonic() + 3
    while zyg.proc is not None and _runs_of(zyg.proc.pid) and time.monotonic() < end:
        time.sleep(0.01)
    assert zyg.proc is None or _runs_of(zyg.proc.pid) == []
    ok = score_code(f"```python\n{HONEST[ASSERT]}\n```", ASSERT, CFG)
    assert ok.verdict == "passed", ok


def test_exceptions_cross_as_builtin_classes_but_timeouts_and_exits_cannot_be_swallowed():
    test = ("def check(candidate):\n    try:\n        candidate(-1)\n        assert False, 'no error'\n"
            "    except ValueError:\n        pass\n    try:\n        candidate(1)\n    except Exception:\n        pass\n")
    tests = json.dumps({"type": "assert", "entry_point": "f", "setup": "", "test": test})
    good = "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x"
    assert score_code(f"```python\n{good}\n```", tests, CFG).verdict == "passed"
    for code, verdict in [("import time\ndef f(x):\n    if x < 0:\n        raise ValueError()\n    time.sleep(60)",
                           "timeout"),
                          ("import os\ndef f(x):\n    if x < 0:\n        raise ValueError()\n    os._exit(0)",
                           "runtime_error")]:
        r = score_code(f"```python\n{code}\n```", tests, CFG)
        assert r.verdict == verdict, (code, r)
