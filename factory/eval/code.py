"""Code benchmarks for `factory eval`, scored by the verify stage's sandbox (factory.verify.rewards.code).

Formats (`benchmarks[].format`), each row mapped onto {id, problem, answer: None, tests}:

- humaneval: task_id, prompt, entry_point, test (canonical_solution unused): the model completes the function;
  the tests run HumanEval's `check(candidate)` (the verify stage's `assert` tests).
- livecodebench: question_id, question_content, starter_code, public_test_cases, private_test_cases (plain JSON,
  or LiveCodeBench's compressed form), metadata (func_name for functional tests): stdin/stdout or function calls.
- apps: problem_id, question, input_output (APPS/TACO JSON: stdin/stdout, or fn_name calls), starter_code.
- code: problem_column + tests_column, tests in any shape the verify stage reads.

cons@k for code votes over the extracted programs (equal up to whitespace and case, `metrics.normalize_answer`);
T=0.6 samples rarely coincide, so it is mostly the first sample's correctness.
"""
from __future__ import annotations

import base64
import io
import json
import pickle
import zlib

from factory.verify.rewards import code as rc
from factory.verify.rewards.extract import last_code_block

FIELDS = {"humaneval": ("task_id", "prompt", "entry_point", "test"),
          "livecodebench": ("question_id", "question_content", "public_test_cases"),
          "apps": ("problem_id", "question", "input_output")}
OPTIONAL = {"humaneval": (), "livecodebench": ("starter_code", "private_test_cases", "metadata"),
            "apps": ("starter_code",)}
LCB_STDIN = ("Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test on "
             "the sample inputs). Enclose your code within delimiters as follows.\n```python\n# YOUR CODE HERE\n```")
LCB_STARTER = ("You will use the following starter code to write the solution to the problem and enclose your code "
               "within delimiters.\n```python\n{starter}\n```")


class _StringsOnly(pickle.Unpickler):
    """LiveCodeBench pickles a JSON string; refuse anything that names a class or function."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing {module}.{name}: only a pickled string is accepted")


def _lcb_cases(raw: str | list) -> list:
    if isinstance(raw, list):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        data = _StringsOnly(io.BytesIO(zlib.decompress(base64.b64decode(raw)))).load()
        return json.loads(data) if isinstance(data, str) else data


def _humaneval(raw: dict) -> tuple[str, str, dict]:
    prompt = rc.humaneval_to_prompt(raw)
    return str(raw["task_id"]), prompt["problem"], rc.convert_humaneval_tests(raw)


def _livecodebench(raw: dict) -> tuple[str, str, dict]:
    cases = _lcb_cases(raw["public_test_cases"]) + (_lcb_cases(raw["private_test_cases"])
                                                    if raw.get("private_test_cases") else [])
    meta = raw.get("metadata") or {}
    meta = json.loads(meta) if isinstance(meta, str) and meta.strip() else meta if isinstance(meta, dict) else {}
    starter = (raw.get("starter_code") or "").strip()
    problem = ("You will be given a question (problem specification) and will generate a correct Python program "
               "that matches the specification and passes all tests.\n\n"
               f"Question: {raw['question_content']}\n\n" + (LCB_STARTER.format(starter=starter) if starter
                                                            else LCB_STDIN))
    return str(raw["question_id"]), problem, rc.convert_lcb_tests(cases, fn_name=meta.get("func_name"))


def _apps(raw: dict) -> tuple[str, str, dict]:
    tests = rc.convert_apps_tests(raw["input_output"])
    starter = (raw.get("starter_code") or "").strip()
    how = "Use Call-Based format" if tests["type"] == "function" else "Use Standard Input format"
    problem = (f"{raw['question'].strip()}\n\n" + (f"```python\n{starter}\n```\n\n" if starter else "")
               + f"{how}. Reply with the whole program in one ```python block.")
    return str(raw["problem_id"]), problem, tests


def _plain(raw: dict, problem_column: str, tests_column: str) -> tuple[str, str, dict | list | str]:
    return "", str(raw[problem_column]), raw[tests_column]


def code_fields(fmt: str, problem_column: str, tests_column: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) columns of a code format."""
    if fmt == "code":
        return (problem_column, tests_column), ()
    return FIELDS[fmt], OPTIONAL[fmt]


def code_row(fmt: str, raw: dict, *, problem_column: str = "problem", tests_column: str = "tests",
             timeout_s: float | None = None) -> tuple[str, str, str]:
    """(id, problem, tests JSON) of one benchmark row; ValueError, KeyError or TestFormatError when it is unusable.

    The tests are parsed once here, so a benchmark whose tests the sandbox could not read fails at load time."""
    build = {"humaneval": _humaneval, "livecodebench": _livecodebench, "apps": _apps}.get(fmt)
    row_id, problem, tests = build(raw) if build else _plain(raw, problem_column, tests_column)
    if isinstance(tests, str):
        tests = json.loads(tests)
    if isinstance(tests, list):
        tests = rc.convert_lcb_tests(tests)
    if isinstance(tests, dict) and "type" not in tests and "inputs" in tests:
        tests = rc.convert_apps_tests(tests)
    if not isinstance(tests, dict):
        raise rc.TestFormatError(f"tests: expected a JSON object, got {type(tests).__name__}")
    if timeout_s is not None:
        tests = {**tests, "timeout_s": timeout_s}
    text = json.dumps(tests)
    rc.parse_tests(text)
    return row_id, problem, text


def extracted_program(answer_text: str | None, tests: str | None) -> str | None:
    """The program the sandbox ran for one reply (the last fenced block of the tests' language), for cons@k."""
    language = "python"
    if tests:
        try:
            suite = rc.parse_tests(tests)
        except (rc.TestFormatError, ValueError, KeyError, TypeError):
            suite = None
        if suite is not None and suite.type == "stdio":
            language = suite.language
    code, _how = last_code_block(answer_text or "", rc.LANGUAGE_TAGS[language])
    return code if code and code.strip() else None
