"""Code benchmarks through `factory eval`, scored by the real sandbox: HumanEval's canonical solutions pass and broken
ones fail, LiveCodeBench and APPS shapes, the sandbox timeout, bad benchmark files, and the R1 table + recipe.

The replies come from the shared fake teacher (no model: the point is the scoring path eval uses)."""
from __future__ import annotations

import base64
import json
import pickle
import time
import zlib
from pathlib import Path

import pytest
from _fake_teacher import RecordingTeacher

from factory.config import PipelineConfig, load_pipeline
from factory.core.shards import iter_stage_rows
from factory.eval.benchmarks import BenchmarkError, load_benchmark
from factory.eval.config import BenchmarkConfig
from factory.eval.stage import run_eval
from factory.eval.table import column_of
from factory.generate.teachers import GenResult, GenSample
from factory.verify.rewards.code import humaneval_canonical_reply

RECIPE = Path(__file__).resolve().parents[2] / "pipelines" / "recipes" / "eval-r1-table.yaml"
THINK = "Let me write it.\n</think>\n\n"


class ReplyTeacher(RecordingTeacher):
    """The fake teacher, answering each prompt with its own replies (one per sample; the last repeats)."""

    def __init__(self, tokenizer, replies: dict[str, list[str]]):
        super().__init__(tokenizer)
        self.replies = replies

    def generate(self, requests, sampling):
        for req in requests:
            self.requests.append(req)
            texts = self.replies[req.key]
            samples = [GenSample(text=THINK + texts[min(i, len(texts) - 1)], finish_reason="stop",
                                 completion_tokens=7) for i in range(sampling.n)]
            yield GenResult(key=req.key, samples=samples, prompt_tokens=10, latency_s=0.0)


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir)


def humaneval_rows(benchmarks_dir, n: int) -> list[dict]:
    return [json.loads(line) for line in (benchmarks_dir / "humaneval.jsonl").open()][:n]


def pipeline(benchmarks: list[dict], verify: dict | None = None, **over) -> PipelineConfig:
    return PipelineConfig.model_validate({"prompts": [{"kind": "arithmetic", "n": 1}], "verify": verify or {}, "eval": {
        "models": [{"name": "m", "path": "embedded"}], "benchmarks": benchmarks, "k": 2, "max_tokens": 64, **over}})


def evaluate(tmp_path, cfg, teacher) -> tuple[list[dict], dict]:
    run_eval(cfg, tmp_path, teachers={"m": teacher})
    rows = sorted(iter_stage_rows(tmp_path / "eval", "eval"), key=lambda r: (r["prompt_id"], r["sample_idx"]))
    summary = {r["benchmark"]: r for r in json.loads((tmp_path / "eval" / "summary.json").read_text())}
    return rows, summary


def test_humaneval_canonical_scores_one_broken_scores_zero(tmp_path, tokenizer, benchmarks_dir):
    source = humaneval_rows(benchmarks_dir, 4)
    bench = {"name": "humaneval", "path": str(benchmarks_dir / "humaneval.jsonl"), "format": "humaneval", "limit": 4}
    good = {f"humaneval/{r['task_id']}": [humaneval_canonical_reply(r)] for r in source}
    rows, summary = evaluate(tmp_path / "good", pipeline([bench]), ReplyTeacher(tokenizer, good))
    assert len(rows) == 8 and {r["accuracy_verdict"] for r in rows} == {"passed"}, rows[0]["accuracy_reason"]
    assert summary["humaneval"]["pass@1"] == 1.0 and summary["humaneval"]["cons@k"] == 1.0
    entry = {f"humaneval/{r['task_id']}": r["entry_point"] for r in source}
    assert all(f"def {entry[r['prompt_id']]}(" in r["extracted_answer"] for r in rows)  # the program run
    assert all(json.loads(r["tests"])["type"] == "assert" and r["domain"] == "code" for r in rows)

    broken = {k: [f"```python\n{r['prompt']}    return None\n```",
                  f"```python\n{r['prompt']}    raise RuntimeError('broken')\n```"] for k, r in zip(good, source)}
    rows, summary = evaluate(tmp_path / "broken", pipeline([bench]), ReplyTeacher(tokenizer, broken))
    assert summary["humaneval"]["pass@1"] == 0.0 and summary["humaneval"]["cons@k"] == 0.0
    assert {r["accuracy_verdict"] for r in rows if r["sample_idx"] == 1} == {"runtime_error"}
    assert all(r["accuracy_verdict"] in ("wrong_answer", "runtime_error") for r in rows)

    # pass@1 over k: one canonical and one broken sample per problem; cons@k follows the first (ties="first");
    # scored in two worker processes, in order
    mixed = {k: [good[k][0], broken[k][1]] for k in good}
    cfg = pipeline([bench], verify={"workers": 2})
    rows, summary = evaluate(tmp_path / "mixed", cfg, ReplyTeacher(tokenizer, mixed))
    assert summary["humaneval"]["pass@1"] == 0.5 and summary["humaneval"]["cons@k"] == 1.0
    assert [r["accuracy_verdict"] for r in rows] == ["passed", "runtime_error"] * 4
    _, summary = evaluate(tmp_path / "tie", pipeline([bench], vote_ties="wrong"), ReplyTeacher(tokenizer, mixed))
    assert summary["humaneval"]["cons@k"] == 0.0


def _lcb_private(cases: list[dict]) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


def code_files(tmp_path) -> tuple[Path, Path]:
    lcb = [{"question_id": "sq", "question_content": "Read n, print n squared.", "starter_code": "",
            "public_test_cases": json.dumps([{"input": "3\n", "output": "9\n", "testtype": "stdin"}]),
            "private_test_cases": _lcb_private([{"input": "12\n", "output": "144\n", "testtype": "stdin"}]),
            "metadata": "{}"},
           {"question_id": "add", "question_content": "Return a + b.", "metadata": json.dumps({"func_name": "add"}),
            "starter_code": "class Solution:\n    def add(self, a: int, b: int) -> int:\n        ",
            "public_test_cases": json.dumps([{"input": "1\n2", "output": "3", "testtype": "functional"}]),
            "private_test_cases": json.dumps([{"input": "5\n-5", "output": "0", "testtype": "functional"}])}]
    apps = [{"problem_id": 7, "question": "Print the sum of the numbers on the line.", "starter_code": "",
             "input_output": json.dumps({"inputs": ["1 2 3\n", "10\n"], "outputs": ["6\n", "10\n"]})},
            {"problem_id": 8, "question": "Double x.", "starter_code": "def double(x):\n",
             "input_output": json.dumps({"fn_name": "double", "inputs": [[2], [[1]]], "outputs": [[4], [[1, 1]]]})}]
    paths = tmp_path / "lcb.jsonl", tmp_path / "apps.jsonl"
    for path, rows in zip(paths, (lcb, apps)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def test_livecodebench_and_apps_shapes_through_eval(tmp_path, tokenizer):
    lcb, apps = code_files(tmp_path)
    py = "```python\n{}\n```".format
    replies = {"lcb/sq": [py("n = int(input())\nprint(n * n)"), py("print(int(input()) * 2)")],
               "lcb/add": [py("class Solution:\n    def add(self, a, b):\n        return a + b"),
                           py("class Solution:\n    def add(self, a, b):\n        return a - b")],
               "apps/7": [py("print(sum(map(int, input().split())))"), py("print(0)")],
               "apps/8": [py("def double(x):\n    return x * 2"), py("def double(x):\n    return x")]}
    cfg = pipeline([{"name": "lcb", "path": str(lcb), "format": "livecodebench"},
                    {"name": "apps", "path": str(apps), "format": "apps"}])
    rows, summary = evaluate(tmp_path / "run", cfg, ReplyTeacher(tokenizer, replies))
    by = {(r["prompt_id"], r["sample_idx"]): r for r in rows}
    assert all(by[(pid, 0)]["accuracy_verdict"] == "passed" for pid in replies), [
        by[(pid, 0)]["accuracy_reason"] for pid in replies]
    assert all(by[(pid, 1)]["reward_accuracy"] < 1 for pid in replies)
    assert json.loads(by[("lcb/sq", 0)]["tests"])["cases"][1] == {"input": "12\n", "output": "144\n"}  # private
    assert json.loads(by[("lcb/add", 0)]["tests"])["type"] == "function"
    assert "starter code" in by[("lcb/add", 0)]["problem"] and "Call-Based" in by[("apps/8", 0)]["problem"]
    assert summary["lcb"]["pass@1"] == 0.5 and summary["apps"]["pass@1"] == 0.5


def test_sandbox_timeout_is_honoured(tmp_path, tokenizer, benchmarks_dir):
    row = humaneval_rows(benchmarks_dir, 1)[0]
    bench = {"name": "he", "path": str(benchmarks_dir / "humaneval.jsonl"), "format": "humaneval", "limit": 1,
             "timeout_s": 0.5}
    spin = {f"he/{row['task_id']}": [f"```python\n{row['prompt']}    while True:\n        pass\n```"]}
    start = time.monotonic()
    rows, summary = evaluate(tmp_path, pipeline([bench], k=1), ReplyTeacher(tokenizer, spin))
    assert rows[0]["accuracy_verdict"] == "timeout" and summary["he"]["pass@1"] == 0.0, rows[0]["accuracy_reason"]
    assert json.loads(rows[0]["tests"])["timeout_s"] == 0.5
    assert time.monotonic() - start < 4.5  # the default case limit (5 s) would not have fired yet


def test_bad_code_benchmark_files_are_named(tmp_path, benchmarks_dir):
    rows = humaneval_rows(benchmarks_dir, 3)
    no_test = tmp_path / "no_test.jsonl"
    no_test.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "test"}) + "\n" for r in rows))
    with pytest.raises(BenchmarkError, match=r"no_test.jsonl has no column\(s\) test .*format humaneval needs"):
        load_benchmark(BenchmarkConfig(name="he", path=str(no_test), format="humaneval"))
    one_missing = tmp_path / "one_missing.jsonl"
    broken = [rows[0], {**rows[1], "entry_point": None}, rows[2]]
    one_missing.write_text("".join(json.dumps(r) + "\n" for r in broken))
    with pytest.raises(BenchmarkError, match=r"one_missing.jsonl row 1: field\(s\) entry_point missing or empty"):
        load_benchmark(BenchmarkConfig(name="he", path=str(one_missing), format="humaneval"))
    lcb, _ = code_files(tmp_path)
    evil = json.loads(lcb.read_text().splitlines()[0])
    evil["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(Path("/")))).decode()
    bad_lcb = tmp_path / "bad_lcb.jsonl"
    bad_lcb.write_text(json.dumps(evil) + "\n")
    with pytest.raises(BenchmarkError, match=r"bad_lcb.jsonl row 0: unusable tests: UnpicklingError: refusing"):
        load_benchmark(BenchmarkConfig(name="lcb", path=str(bad_lcb), format="livecodebench"))
    with pytest.raises(ValueError, match="format humaneval is a code benchmark"):
        BenchmarkConfig(name="he", path=str(no_test), format="humaneval", domain="math")


def test_r1_table_from_eval(tmp_path, tokenizer, benchmarks_dir):
    aime = [json.loads(line) for line in (benchmarks_dir / "aime24.jsonl").open()][:2]
    he = humaneval_rows(benchmarks_dir, 2)
    replies = {f"aime24/{r['id']}": [f"\\boxed{{{r['answer']}}}", "\\boxed{-1}"] for r in aime}
    replies |= {f"humaneval/{r['task_id']}": [humaneval_canonical_reply(r)] for r in he}
    cfg = pipeline([{"name": "aime24", "path": str(benchmarks_dir / "aime24.jsonl"), "limit": 2, "k": 3},
                    {"name": "humaneval", "path": str(benchmarks_dir / "humaneval.jsonl"), "format": "humaneval",
                     "limit": 2}], table="r1")
    _, summary = evaluate(tmp_path, cfg, ReplyTeacher(tokenizer, replies))
    assert summary["aime24"]["k"] == 3 and summary["humaneval"]["k"] == 2  # per-benchmark k
    table = json.loads((tmp_path / "eval" / "r1_table.json").read_text())
    headers = [c["header"] for c in table["columns"]]
    assert headers == ["AIME 2024 pass@1", "AIME 2024 cons@3", "MATH-500 pass@1", "GPQA Diamond pass@1",
                       "humaneval pass@1"]
    assert table["rows"] == [{"model": "m", "values": [33.3, 0.0, None, None, 100.0]}]
    md = (tmp_path / "eval" / "r1_table.md").read_text()
    assert md.splitlines()[0].startswith("| Model | AIME 2024 pass@1") and "| m | 33.3 | 0.0 | — | — | 100.0 |" in md
    from factory.report.html import render_report

    html = render_report(tmp_path)  # the report shows the same table
    assert "r1-table" in html and "AIME 2024 cons@3</th>" in html and "<td>33.3</td><td>0.0</td><td>—</td>" in html
    assert column_of("gpqa_diamond") == "gpqa" and column_of("MATH-500") == "math500"
    assert column_of("my-code", domain="code") == "code" and column_of("aime24", explicit="none") is None


def test_r1_recipe_loads_with_the_paper_settings(benchmarks_dir):
    cfg = load_pipeline(RECIPE, [])
    ecfg = cfg.eval
    assert cfg.stages == ["eval"] and ecfg.table == "r1"
    assert (ecfg.temperature, ecfg.top_p, ecfg.max_tokens) == (0.6, 0.95, 32768)
    by = {b.name: b for b in ecfg.benchmarks}
    assert ecfg.k_for(by["aime24"]) == 64 and by["humaneval"].format == "humaneval"
    for bench in ecfg.benchmarks:  # every benchmark the recipe names locally resolves and loads
        if Path(bench.path).is_absolute():
            assert load_benchmark(bench, 2), bench.name


def test_backend_blocks_resolve_per_model():
    from factory.eval.backends import served_weights, server_config
    from factory.eval.config import EvalConfig

    bench = [{"name": "he", "path": "x.jsonl", "format": "humaneval"}]
    ecfg = EvalConfig.model_validate({"backend": {"backend": "openai", "base_urls": ["http://a/v1", "http://b/v1"]},
                                      "benchmarks": bench, "models": [
        {"name": "served", "path": "r1-distill"},
        {"name": "renamed", "path": "ignored", "backend": {"model": "other", "api": "completions", "tokenizer": "t"}},
        {"name": "local", "path": "embedded", "backend": {"backend": "vllm"}}]})
    served, renamed, local = (server_config(m, ecfg) for m in ecfg.models)
    assert served.model == "r1-distill" and served.urls == ["http://a/v1", "http://b/v1"] and served.api == "chat"
    assert (renamed.model, renamed.api, renamed.urls) == ("other", "completions", ["http://a/v1", "http://b/v1"])
    assert local is None  # the offline engine
    assert served_weights(served)[1] == "openai:r1-distill:chat" != served_weights(renamed)[1]
    bad = [({"backend": {"backend": "sglang"}}, "backend 'sglang' is not one of vllm, openai"),
           ({"backend": {"backend": "openai"}}, "model 'm': backend: give exactly one of base_url"),
           ({"backend": {"backend": "openai", "base_url": "http://a/v1", "concurency": 2}}, "concurency"),
           ({"backend": {"backend": "vllm", "max_model_len": 9}}, "engine settings go in eval.engine")]
    for over, message in bad:
        with pytest.raises(ValueError, match=message):
            EvalConfig.model_validate({"benchmarks": bench, "models": [{"name": "m", "path": "p", **over}]})
    with pytest.raises(ValueError, match="an adapter cannot be merged into a server's model"):
        EvalConfig.model_validate({"benchmarks": bench, "backend": {"backend": "openai", "base_url": "http://a/v1"},
                                   "models": [{"name": "m", "adapter": "a", "base": "b"}]})
