"""Code accuracy: take the program from the reply, run it against the prompt's tests in the sandbox.

Test format (the `tests` column, JSON). One object of one of three types:

    {"type": "stdio", "cases": [{"input": "1 2\\n", "output": "3\\n"}, ...], "language": "python"}
    {"type": "function", "fn_name": "add", "cases": [{"args": [1, 2], "kwargs": {}, "output": 3}, ...]}
    {"type": "assert", "entry_point": "add", "setup": "from typing import List\\n", "test": "def check(candidate): ..."}

Optional on all: "timeout_s" (per case), "memory_mb". `stdio` runs each case in a fresh process (like a judge) and
compares the captured stdout here; `language` may be "python" or "cpp" for stdio. `function` and `assert` run as two
confined processes (sandbox.Sandbox.run_harnessed): the program, as a candidate that serves calls, and a trusted
harness that never loads it. `function` calls `fn_name` (or `Solution().fn_name`, LeetCode style) once per case with
a per-case timer; the return value crosses back through a strict codec (exact builtin types only, rebuilt on the
trusted side) and is compared here with the expected output, which no sandboxed process ever holds. `assert` is
HumanEval's shape: the candidate runs `setup` (the prompt's imports and helpers) then the program; the harness runs
`setup`, then `test`, then `check(candidate)`, where `candidate` (and the entry point's name) is a proxy to the
program: every comparison the test makes is the harness's own `==` on plain data, so no object of the program can
decide it, and the program can neither see the test nor reach the verdict's channel.

APPS/TACO (`{"inputs": [...], "outputs": [...], "fn_name"?}`) and LiveCodeBench (`[{"input", "output",
"testtype"}]`) tests are accepted as they are, through `convert_apps_tests` / `convert_lcb_tests`.

Verdicts: passed | wrong_answer | runtime_error | timeout | compile_error | no_code | no_tests; the reward is the
fraction of cases passed (1.0 only for passed).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from factory.verify.config import CodeConfig
from factory.verify.rewards.extract import last_code_block
from factory.verify.rewards.result import RewardResult
from factory.verify.rewards.sandbox import HarnessRun, Limits, RunResult, Sandbox
from factory.verify.rewards.sandbox_wire import COMPILE_ERROR_EXIT

CODE_VERDICTS = ("passed", "wrong_answer", "runtime_error", "timeout", "compile_error", "no_code", "no_tests")
LANGUAGE_TAGS = {"python": ("python", "py", "python3"), "cpp": ("cpp", "c++", "cc", "cxx")}


class TestFormatError(ValueError):
    """The tests JSON of a prompt is not in a known format; the message names the field."""

    __test__ = False  # not a pytest class


@dataclass
class TestSuite:
    __test__ = False

    type: Literal["stdio", "function", "assert"]
    cases: list[dict] = field(default_factory=list)
    fn_name: str | None = None
    entry_point: str | None = None
    setup: str = ""
    test: str = ""
    language: str = "python"
    timeout_s: float | None = None
    memory_mb: int | None = None

    @property
    def n_cases(self) -> int:
        return 1 if self.type == "assert" else len(self.cases)


# --------------------------------------------------------------------------------------------------------------
# Formats and converters
# --------------------------------------------------------------------------------------------------------------
def _text(value: Any) -> str:
    if isinstance(value, list):  # APPS sometimes stores stdin as a list of lines
        return "\n".join(map(str, value))
    return value if isinstance(value, str) else json.dumps(value)


def convert_apps_tests(obj: dict | str) -> dict:
    """APPS/TACO `input_output` ({"inputs", "outputs", "fn_name"?}) → our format."""
    obj = json.loads(obj) if isinstance(obj, str) else obj
    inputs, outputs = obj.get("inputs"), obj.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise TestFormatError("APPS tests: 'inputs' and 'outputs' must be lists of the same length")
    if obj.get("fn_name"):
        cases = []
        for args, out in zip(inputs, outputs):
            # APPS wraps the expected return value in a one-element list.
            expected = out[0] if isinstance(out, list) and len(out) == 1 else out
            cases.append({"args": args if isinstance(args, list) else [args], "output": expected})
        return {"type": "function", "fn_name": obj["fn_name"], "cases": cases}
    return {"type": "stdio", "cases": [{"input": _text(i), "output": _text(o)} for i, o in zip(inputs, outputs)]}


def convert_lcb_tests(cases: list | str, fn_name: str | None = None) -> dict:
    """LiveCodeBench test cases ([{"input", "output", "testtype": "stdin"|"functional"}]) → our format.

    Functional inputs are one JSON value per line (the arguments); outputs one JSON value."""
    cases = json.loads(cases) if isinstance(cases, str) else cases
    if not isinstance(cases, list) or not cases:
        raise TestFormatError("LiveCodeBench tests: expected a non-empty list of cases")
    kinds = {c.get("testtype", "stdin") for c in cases}
    if kinds == {"functional"}:
        if not fn_name:
            raise TestFormatError("LiveCodeBench functional tests need the function name (metadata func_name)")
        out = []
        for c in cases:
            args = [json.loads(line) for line in c["input"].split("\n") if line.strip()]
            out.append({"args": args, "output": json.loads(c["output"])})
        return {"type": "function", "fn_name": fn_name, "cases": out}
    if kinds == {"stdin"}:
        return {"type": "stdio", "cases": [{"input": c["input"], "output": c["output"]} for c in cases]}
    raise TestFormatError(f"LiveCodeBench tests: mixed or unknown testtype {sorted(kinds)}")


def convert_humaneval_tests(row: dict) -> dict:
    return {"type": "assert", "entry_point": row["entry_point"], "setup": row["prompt"], "test": row["test"]}


def humaneval_to_prompt(row: dict) -> dict:
    """A HumanEval row → a prompt record (schemas/prompt.yaml) whose tests run its `check(candidate)`."""
    problem = ("Complete the following Python function. Reply with the whole function in one ```python block.\n\n"
               f"```python\n{row['prompt']}```")
    return {"prompt_id": row["task_id"], "source": "humaneval", "domain": "code", "problem": problem,
            "answer": None, "tests": json.dumps(convert_humaneval_tests(row)), "language": "en",
            "metadata": json.dumps({"entry_point": row["entry_point"], "task_id": row["task_id"]})}


def humaneval_canonical_reply(row: dict) -> str:
    """The answer part a perfect model would write: the prompt plus the canonical body, fenced."""
    return f"Here is the function.\n\n```python\n{row['prompt']}{row['canonical_solution']}```\n"


def parse_tests(raw: str | dict | list | None) -> TestSuite | None:
    """Read the `tests` column; None when there are no tests; TestFormatError naming the bad field."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TestFormatError(f"tests: not JSON ({exc})") from exc
    if isinstance(raw, list):
        raw = convert_lcb_tests(raw)
    if not isinstance(raw, dict):
        raise TestFormatError(f"tests: expected a JSON object, got {type(raw).__name__}")
    if "type" not in raw and "inputs" in raw:
        raw = convert_apps_tests(raw)
    kind = raw.get("type")
    extra = {"timeout_s": raw.get("timeout_s"), "memory_mb": raw.get("memory_mb")}
    if kind == "stdio":
        cases = raw.get("cases")
        if not isinstance(cases, list) or not cases:
            raise TestFormatError("tests.cases: a non-empty list is required for type 'stdio'")
        for i, c in enumerate(cases):
            if not isinstance(c, dict) or "input" not in c or "output" not in c:
                raise TestFormatError(f"tests.cases[{i}]: needs 'input' and 'output'")
        language = raw.get("language", "python")
        if language not in LANGUAGE_TAGS:
            raise TestFormatError(f"tests.language: {language!r} is not one of {sorted(LANGUAGE_TAGS)}")
        return TestSuite("stdio", [{"input": _text(c["input"]), "output": _text(c["output"])} for c in cases],
                         language=language, **extra)
    if kind == "function":
        cases, fn = raw.get("cases"), raw.get("fn_name")
        if not fn or not isinstance(fn, str):
            raise TestFormatError("tests.fn_name: required for type 'function'")
        if not isinstance(cases, list) or not cases:
            raise TestFormatError("tests.cases: a non-empty list is required for type 'function'")
        for i, c in enumerate(cases):
            if not isinstance(c, dict) or "output" not in c or not isinstance(c.get("args", []), list):
                raise TestFormatError(f"tests.cases[{i}]: needs 'args' (a list) and 'output'")
        return TestSuite("function", cases, fn_name=fn, **extra)
    if kind == "assert":
        for key in ("entry_point", "test"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise TestFormatError(f"tests.{key}: required for type 'assert'")
        return TestSuite("assert", entry_point=raw["entry_point"], setup=raw.get("setup") or "", test=raw["test"],
                         **extra)
    raise TestFormatError(f"tests.type: {kind!r} is not one of 'stdio', 'function', 'assert'")


# --------------------------------------------------------------------------------------------------------------
# Comparison (in the parent, never in the sandbox)
# --------------------------------------------------------------------------------------------------------------
def _float(tok: str) -> float | None:
    try:
        return float(tok)
    except ValueError:
        return None


def stdout_matches(got: str, expected: str, tol: float) -> bool:
    """Judge-style: equal up to trailing spaces/newlines, else token by token with numbers within `tol`."""
    g = [ln.rstrip() for ln in got.strip().splitlines()]
    e = [ln.rstrip() for ln in expected.strip().splitlines()]
    if g == e:
        return True
    gt, et = got.split(), expected.split()
    if len(gt) != len(et):
        return False
    for a, b in zip(gt, et):
        if a == b:
            continue
        fa, fb = _float(a), _float(b)
        if fa is None or fb is None or not math.isclose(fa, fb, rel_tol=tol, abs_tol=tol):
            return False
    return True


def values_match(got: Any, expected: Any, tol: float) -> bool:
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(got) is type(expected) and got == expected
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        return got == expected or math.isclose(got, expected, rel_tol=tol, abs_tol=tol)
    if isinstance(expected, list) and isinstance(got, list):
        return len(got) == len(expected) and all(values_match(a, b, tol) for a, b in zip(got, expected))
    if isinstance(expected, dict) and isinstance(got, dict):
        return got.keys() == expected.keys() and all(values_match(got[k], expected[k], tol) for k in expected)
    return got == expected


def _short(value: Any, n: int = 60) -> str:
    s = value if isinstance(value, str) else json.dumps(value, default=repr)
    s = s.replace("\n", "\\n")
    return s if len(s) <= n else s[:n] + "…"


# --------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------
@dataclass
class CaseOutcome:
    verdict: str  # passed | wrong_answer | runtime_error | timeout | compile_error
    detail: str = ""


def _failure_of(run: RunResult, what: str) -> CaseOutcome | None:
    if run.timed_out:
        return CaseOutcome("timeout", f"{what}: {'; '.join(run.notes)}")
    if run.output_exceeded:
        return CaseOutcome("runtime_error", f"{what}: {'; '.join(run.notes)}")
    if run.returncode == COMPILE_ERROR_EXIT:
        return CaseOutcome("compile_error", run.stderr_tail(300))
    if run.returncode != 0:
        sig = f"killed by signal {-run.returncode}" if run.returncode < 0 else f"exit status {run.returncode}"
        tail = run.stderr_tail(300).splitlines()
        return CaseOutcome("runtime_error", f"{what}: {sig}" + (f": {tail[-1]}" if tail else ""))
    return None


def _limits(cfg: CodeConfig, suite: TestSuite, n_cases: int = 1) -> Limits:
    """Limits of one process running `n_cases` cases (the harness also times each case itself)."""
    per_case = suite.timeout_s or cfg.case_timeout_s
    slack = 0.0 if n_cases == 1 else 1.0  # one case: the CPU limit is the case's timeout
    return Limits(cpu_s=min(cfg.max_total_s, per_case * n_cases + slack),
                  wall_s=min(cfg.max_total_s, per_case * n_cases * 1.5 + 1.0),
                  memory_mb=suite.memory_mb or cfg.memory_mb, file_size_mb=cfg.file_size_mb,
                  max_output_bytes=cfg.max_output_bytes)


def _run_stdio(sb: Sandbox, code: str, suite: TestSuite, cfg: CodeConfig) -> list[CaseOutcome]:
    outcomes: list[CaseOutcome] = []
    lim = _limits(cfg, suite)
    if suite.language == "cpp":
        sb.write("main.cpp", code)
        build = sb.run_exec([cfg.cpp_compiler, *cfg.cpp_flags, "-o", "main", "main.cpp"],
                            limits=Limits(cpu_s=cfg.compile_timeout_s, wall_s=cfg.compile_timeout_s * 2,
                                          memory_mb=max(2048, lim.memory_mb), file_size_mb=256, max_processes=16,
                                          max_output_bytes=cfg.max_output_bytes))
        if build.returncode != 0 or build.timed_out:
            return [CaseOutcome("compile_error", build.stderr_tail(300) or "; ".join(build.notes))] * suite.n_cases
    else:
        sb.write("solution.py", code)
    for i, case in enumerate(suite.cases):
        stdin = case["input"].encode()
        run = sb.run_exec(["./main"], stdin=stdin, limits=lim) if suite.language == "cpp" else \
            sb.run_python("solution.py", "script", stdin=stdin, limits=lim)
        failure = _failure_of(run, f"case {i}")
        if failure and failure.verdict == "compile_error":
            return [failure] * suite.n_cases
        if failure is None:
            got = run.stdout.decode("utf-8", errors="replace")
            if stdout_matches(got, case["output"], cfg.float_tolerance):
                outcomes.append(CaseOutcome("passed"))
            else:
                failure = CaseOutcome("wrong_answer", f"case {i}: expected {_short(case['output'])}, "
                                                      f"got {_short(got)}")
        if failure:
            outcomes.append(failure)
            if cfg.stop_on_first_failure:
                break
    return outcomes


_STATUS_VERDICT = {"timeout": "timeout", "assertion": "wrong_answer", "memory": "runtime_error",
                   "error": "runtime_error", "compile_error": "compile_error"}


def _as_json(value: Any) -> Any:
    """Function tests' expected outputs are JSON: compare a returned value the way JSON would show it (tuples as
    lists, sets as sorted lists, keys as strings). Runs in the parent, on plain data the harness decoded."""
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _as_json(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        items = [_as_json(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (bytes, complex)):
        return repr(value)
    return value


def _harness_job(suite: TestSuite, per_case: float) -> dict:
    if suite.type == "function":  # the expected outputs stay here: the harness only reports what came back
        return {"mode": "function", "name": suite.fn_name, "case_timeout_s": per_case,
                "cases": [{"args": c.get("args", []), "kwargs": c.get("kwargs", {})} for c in suite.cases]}
    return {"mode": "assert", "name": suite.entry_point, "entry_point": suite.entry_point, "setup": suite.setup,
            "test": suite.test, "case_timeout_s": per_case}


def _case_failure(obj: dict, run: HarnessRun, what: str) -> CaseOutcome | None:
    status = obj.get("status")
    if status == "exited":
        return _failure_of(run.candidate, what) or CaseOutcome(
            "runtime_error", f"{what}: the program exited before reporting it")
    if status != "ok":
        return CaseOutcome(_STATUS_VERDICT.get(status, "runtime_error"), f"{what}: {obj.get('error')}")
    return None


def _run_harness(sb: Sandbox, code: str, suite: TestSuite, cfg: CodeConfig) -> list[CaseOutcome]:
    """Function and assert tests: the program runs as a candidate process; a separate harness process (which never
    loads it) calls it and runs the test on plain data; the verdict comes from the harness, never the program."""
    sb.write("solution.py", code)
    n = suite.n_cases
    lim = _limits(cfg, suite, n)
    harness_lim = replace(lim, cpu_s=lim.cpu_s + 2, wall_s=lim.wall_s + 2)  # it outlasts the candidate's limits
    run = sb.run_harnessed("solution.py", _harness_job(suite, suite.timeout_s or cfg.case_timeout_s), lim,
                           harness_lim)
    if run.results is None:  # the harness reported nothing: killed, or the candidate's failure took it down
        failure = _failure_of(run.candidate, "the program") or _failure_of(run.harness, "the test harness")
        return [failure or CaseOutcome("runtime_error", "the test harness reported nothing")] * n
    lines = {obj["case"]: obj for obj in run.results if type(obj) is dict and type(obj.get("case")) is int}
    if -1 in lines:  # the program failed before any case could run
        obj = lines[-1]
        failure = _case_failure(obj, run, "while loading the program") if obj.get("status") == "exited" else \
            CaseOutcome(_STATUS_VERDICT.get(obj.get("status"), "runtime_error"), obj.get("error") or "")
        return [failure] * n
    outcomes = []
    for i in range(n):
        obj = lines.get(i)
        if obj is None:
            outcomes.append(CaseOutcome("runtime_error", f"case {i}: the harness did not report it"))
        elif failure := _case_failure(obj, run, f"case {i}"):
            outcomes.append(failure)
        elif suite.type == "function" and not values_match(_as_json(obj.get("value")), suite.cases[i]["output"],
                                                           cfg.float_tolerance):
            outcomes.append(CaseOutcome("wrong_answer", f"case {i}: expected {_short(suite.cases[i]['output'])}, "
                                                        f"got {_short(_as_json(obj.get('value')))}"))
        else:
            outcomes.append(CaseOutcome("passed"))
    return outcomes


def run_tests(code: str, suite: TestSuite, cfg: CodeConfig) -> list[CaseOutcome]:
    with Sandbox(_limits(cfg, suite)) as sb:
        if suite.type == "stdio":
            return _run_stdio(sb, code, suite, cfg)
        return _run_harness(sb, code, suite, cfg)


def score_code(answer_text: str, tests: str | dict | None, cfg: CodeConfig | None = None) -> RewardResult:
    """Code accuracy of one reply; reward = fraction of test cases passed."""
    cfg = cfg or CodeConfig()
    try:
        suite = parse_tests(tests)
    except (TestFormatError, KeyError, TypeError, json.JSONDecodeError) as exc:
        return RewardResult(0.0, "no_tests", f"the prompt's tests are unreadable: {exc}")
    if suite is None:
        return RewardResult(0.0, "no_tests", "the prompt has no tests")
    language = suite.language if suite.type == "stdio" else "python"
    code, how = last_code_block(answer_text or "", LANGUAGE_TAGS[language])
    if code is None or not code.strip():
        return RewardResult(0.0, "no_code", how if code is None else f"{how} is empty")
    outcomes = run_tests(code, suite, cfg)
    total = suite.n_cases
    passed = sum(o.verdict == "passed" for o in outcomes)
    details = {"tests_passed": passed, "tests_total": total}
    if passed == total:
        return RewardResult(1.0, "passed", f"all {total} test case(s) passed ({how})", code, details)
    first = next(o for o in outcomes if o.verdict != "passed") if len(outcomes) else CaseOutcome("runtime_error")
    reason = f"{passed}/{total} test case(s) passed; first failure: {first.verdict} — {first.detail}"
    return RewardResult(passed / total, first.verdict, reason, code, details)
