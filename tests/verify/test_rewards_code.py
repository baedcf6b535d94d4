"""Code accuracy: every verdict, the three test formats, APPS/LiveCodeBench/HumanEval converters, and HumanEval
canonical solutions (a sample; all 164 run in bench/verify_code.py) passing while broken ones fail."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from factory.verify.rewards.code import (CodeConfig, TestFormatError, humaneval_canonical_reply, humaneval_to_prompt,
                                  parse_tests, score_code, stdout_matches, convert_apps_tests, convert_lcb_tests,
                                  values_match)
from factory.verify.rewards.sandbox import capabilities

pytestmark = pytest.mark.skipif(not capabilities()["usable"], reason="no sandbox on this machine")

BENCH = Path(__file__).resolve().parents[2].parent / "shared/data/benchmarks"
CFG = CodeConfig(case_timeout_s=2, memory_mb=512)
ADD_STDIO = json.dumps({"type": "stdio", "cases": [{"input": "1 2\n", "output": "3\n"},
                                                   {"input": "10 -4\n", "output": "6\n"}]})


def py(code: str) -> str:
    return f"Here you go.\n\n```python\n{code}\n```\n"


# --- stdio ---------------------------------------------------------------------------------------------------
def test_stdio_passed():
    r = score_code(py("a, b = map(int, input().split())\nprint(a + b)"), ADD_STDIO, CFG)
    assert (r.verdict, r.reward, r.details) == ("passed", 1.0, {"tests_passed": 2, "tests_total": 2}), r


def test_stdio_wrong_answer_partial_reward():
    r = score_code(py("a, b = map(int, input().split())\nprint(3)"), ADD_STDIO, CFG)
    assert (r.verdict, r.reward) == ("wrong_answer", 0.5), r
    assert "expected 6" in r.reason and "got 3" in r.reason


def test_stdio_runtime_error():
    r = score_code(py("raise ValueError('boom')"), ADD_STDIO, CFG)
    assert (r.verdict, r.reward) == ("runtime_error", 0.0) and "ValueError: boom" in r.reason, r


def test_stdio_timeout():
    r = score_code(py("while True:\n    pass"), ADD_STDIO, CodeConfig(case_timeout_s=1, stop_on_first_failure=True))
    assert (r.verdict, r.reward) == ("timeout", 0.0), r


def test_stdio_compile_error():
    r = score_code(py("def f(:\n    pass"), ADD_STDIO, CFG)
    assert (r.verdict, r.reward) == ("compile_error", 0.0) and "SyntaxError" in r.reason, r


def test_no_code_and_no_tests():
    assert score_code("I would write a loop.", ADD_STDIO, CFG).verdict == "no_code"
    assert score_code("```python\nprint(1)", ADD_STDIO, CFG).verdict == "no_code"  # unterminated fence
    assert score_code(py("print(3)"), None, CFG).verdict == "no_tests"
    r = score_code(py("print(3)"), '{"type": "stdio", "cases": [{"input": "1"}]}', CFG)
    assert r.verdict == "no_tests" and "tests.cases[0]" in r.reason
    r = score_code(py("print(3)"), "not json", CFG)
    assert r.verdict == "no_tests" and "not JSON" in r.reason


def test_last_python_block_is_used():
    reply = "```python\nprint('draft')\n```\nbetter:\n```text\nnot code\n```\n" + py(
        "a, b = map(int, input().split())\nprint(a + b)")
    assert score_code(reply, ADD_STDIO, CFG).verdict == "passed"


def test_stdout_comparison_rules():
    assert stdout_matches("3  \n\n", "3\n", 1e-6)
    assert stdout_matches("0.3333333", "0.333333333", 1e-6)
    assert not stdout_matches("0.34", "0.333", 1e-6)
    assert not stdout_matches("1 2", "1 2 3", 1e-6)
    assert values_match([1, 2.0000000001], [1, 2], 1e-6)
    assert not values_match(True, 1, 1e-6)
    assert not values_match({"a": 1}, {"a": 2}, 1e-6)


# --- function calls ------------------------------------------------------------------------------------------
FN_TESTS = json.dumps({"type": "function", "fn_name": "add", "cases": [
    {"args": [1, 2], "output": 3}, {"args": [[1], [2]], "output": [1, 2]}, {"args": [0.1, 0.2], "output": 0.3}]})


def test_function_passed_and_leetcode_class():
    assert score_code(py("def add(a, b):\n    return a + b"), FN_TESTS, CFG).verdict == "passed"
    cls = "class Solution:\n    def add(self, a, b):\n        return a + b"
    assert score_code(py(cls), FN_TESTS, CFG).verdict == "passed"


def test_function_wrong_runtime_timeout_per_case():
    code = ("def add(a, b):\n    if isinstance(a, list):\n        raise KeyError('x')\n"
            "    if isinstance(a, float):\n        while True: pass\n    return a - b")
    r = score_code(py(code), FN_TESTS, CodeConfig(case_timeout_s=1))
    assert r.verdict == "wrong_answer" and r.reward == 0.0, r
    assert r.details == {"tests_passed": 0, "tests_total": 3}
    code = "def add(a, b):\n    if isinstance(a, list):\n        raise KeyError('x')\n    return a + b"
    r = score_code(py(code), FN_TESTS, CFG)
    assert (r.verdict, round(r.reward, 3)) == ("runtime_error", 0.667) and "KeyError" in r.reason, r
    code = "def add(a, b):\n    while True: pass"
    r = score_code(py(code), FN_TESTS, CodeConfig(case_timeout_s=0.5))
    assert r.verdict == "timeout" and r.reward == 0.0, r


def test_function_missing_and_crash_at_load():
    r = score_code(py("def plus(a, b):\n    return a + b"), FN_TESTS, CFG)
    assert r.verdict == "runtime_error" and "no function named 'add'" in r.reason
    r = score_code(py("import nonexistent_module_xyz\ndef add(a, b):\n    return a + b"), FN_TESTS, CFG)
    assert r.verdict == "runtime_error" and "ModuleNotFoundError" in r.reason, r
    r = score_code(py("def add(a, b) return a"), FN_TESTS, CFG)
    assert r.verdict == "compile_error"


def test_printing_fake_results_does_not_pass():
    code = ('import json, sys\n'
            'for i, v in enumerate([3, [1, 2], 0.3]):\n'
            '    print(json.dumps({"nonce": "guess", "case": i, "status": "ok", "value": v}))\n'
            '    sys.stdout.flush()\n'
            'import os\nos._exit(0)\n'
            'def add(a, b):\n    return 0')
    r = score_code(py(code), FN_TESTS, CFG)
    assert r.verdict != "passed" and r.reward == 0.0, r


def test_function_values_compare_as_json_would_show_them():
    """Returned values cross as exact builtin types and are compared here the way the JSON expected outputs read:
    tuples as lists, sets sorted, keys as strings; a value that is not plain data is a runtime error."""
    tests = json.dumps({"type": "function", "fn_name": "f", "cases": [
        {"args": [], "output": [1, 2]}, {"args": [], "output": {"1": [3]}}]})
    assert score_code(py("def f():\n    return (1, 2)"), tests, CFG).reward == 0.5
    code = "calls = []\ndef f():\n    calls.append(1)\n    return (1, 2) if len(calls) == 1 else {1: {3}}"
    assert score_code(py(code), tests, CFG).verdict == "passed"
    r = score_code(py("def f():\n    return range(2)"), tests, CFG)
    assert r.verdict == "runtime_error" and "not plain data" in r.reason, r


# --- asserts (HumanEval) -------------------------------------------------------------------------------------
def _humaneval() -> list[dict]:
    return [json.loads(line) for line in (BENCH / "humaneval.jsonl").open()]


def test_humaneval_sample_canonical_pass_and_broken_fail():
    rows = random.Random(0).sample(_humaneval(), 20)
    for row in rows:
        prompt = humaneval_to_prompt(row)
        good = score_code(humaneval_canonical_reply(row), prompt["tests"], CFG)
        assert good.verdict == "passed", (row["task_id"], good.reason)
        wrong = score_code(py(row["prompt"] + "    return object()\n"), prompt["tests"], CFG)
        assert wrong.verdict == "wrong_answer" or wrong.verdict == "runtime_error", (row["task_id"], wrong)
        crash = score_code(py(row["prompt"] + "    raise RuntimeError('broken')\n"), prompt["tests"], CFG)
        assert crash.verdict == "runtime_error", (row["task_id"], crash)


def test_humaneval_prompt_record_and_early_exit():
    row = _humaneval()[0]
    prompt = humaneval_to_prompt(row)
    assert prompt["domain"] == "code" and prompt["prompt_id"] == "HumanEval/0"
    assert parse_tests(prompt["tests"]).type == "assert"
    # a program that exits 0 before the tests run does not pass
    r = score_code(py("import os\nos._exit(0)"), prompt["tests"], CFG)
    assert r.verdict == "runtime_error" and r.reward == 0.0, r
    r = score_code(py("import sys\nsys.exit(0)"), prompt["tests"], CFG)
    assert r.verdict == "runtime_error", r
    r = score_code(py("def has_close_elements(numbers, threshold):\n    return True\n"), prompt["tests"], CFG)
    assert r.verdict == "wrong_answer", r
    r = score_code(py("def has_close_elements(numbers, threshold) return"), prompt["tests"], CFG)
    assert r.verdict == "compile_error", r


# --- converters ----------------------------------------------------------------------------------------------
def test_apps_stdio_and_function_formats():
    apps_io = {"inputs": ["3\n1 2 3\n", ["2", "5 5"]], "outputs": ["6\n", "10\n"]}
    code = "input()\nprint(sum(map(int, input().split())))"
    assert score_code(py(code), json.dumps(apps_io), CFG).verdict == "passed"  # raw APPS JSON is accepted
    apps_fn = {"fn_name": "double", "inputs": [[2], [[1, 2]]], "outputs": [[4], [[1, 2, 1, 2]]]}
    suite = convert_apps_tests(apps_fn)
    assert suite["cases"][1] == {"args": [[1, 2]], "output": [1, 2, 1, 2]}
    assert score_code(py("def double(x):\n    return x * 2"), json.dumps(apps_fn), CFG).verdict == "passed"


def test_livecodebench_formats():
    functional = [{"input": "[1, 2, 3]\n2", "output": "5", "testtype": "functional"}]
    tests = convert_lcb_tests(functional, fn_name="f")
    assert tests["cases"] == [{"args": [[1, 2, 3], 2], "output": 5}]
    code = "class Solution:\n    def f(self, nums, k):\n        return sum(nums[-k:])"
    assert score_code(py(code), json.dumps(tests), CFG).verdict == "passed"
    stdin = [{"input": "4\n", "output": "16\n", "testtype": "stdin"}]
    assert score_code(py("print(int(input()) ** 2)"), json.dumps(stdin), CFG).verdict == "passed"
    with pytest.raises(TestFormatError, match="func_name"):
        convert_lcb_tests(functional)


@pytest.mark.skipif(not shutil.which("g++"), reason="no g++")
def test_cpp_stdio_passed_and_compile_error():
    tests = json.dumps({"type": "stdio", "language": "cpp", "cases": [{"input": "1 2\n", "output": "3\n"}]})
    code = "#include <iostream>\nint main(){long a,b;std::cin>>a>>b;std::cout<<a+b<<std::endl;}"
    reply = f"```cpp\n{code}\n```"
    assert score_code(reply, tests, CFG).verdict == "passed"
    r = score_code("```cpp\nint main( { return 0 }\n```", tests, CFG)
    assert r.verdict == "compile_error" and "error" in r.reason, r


ATTACKS = {
    "fork bomb": "import os\nwhile True:\n    os.fork()",
    "unbounded allocation": "x = []\nwhile True:\n    x.append(bytearray(10**7))",
    "infinite loop": "while True:\n    pass",
    "write outside": "open('/tmp/factory-attack.txt', 'w').write('x')",
    "socket": "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)",
    "huge output": "while True:\n    print('x' * 100000)",
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_through_the_reward_are_recorded_and_the_run_goes_on(name):
    r = score_code(py(ATTACKS[name]), ADD_STDIO, CodeConfig(case_timeout_s=1, memory_mb=256,
                                                            max_output_bytes=100_000, stop_on_first_failure=True))
    assert r.verdict in ("runtime_error", "timeout") and r.reward == 0.0, (name, r)
    assert r.reason
    assert not Path("/tmp/factory-attack.txt").exists()
    ok = score_code(py("a, b = map(int, input().split())\nprint(a + b)"), ADD_STDIO, CFG)
    assert ok.verdict == "passed"
