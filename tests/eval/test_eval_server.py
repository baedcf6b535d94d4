"""`factory eval` through the OpenAI-compatible backend: the session's real `vllm serve` (tests/conftest.py), by the
chat API on one endpoint and by the completions API over several endpoints (one of them down), math and code."""
from __future__ import annotations

import json
import socket

import pytest

from factory.config import PipelineConfig
from factory.core.shards import iter_stage_rows
from factory.eval.stage import run_eval

pytestmark = [pytest.mark.server, pytest.mark.slow]


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_eval_through_the_server_chat_and_completions(vllm_server, tmp_path, benchmarks_dir, embedded_dir):
    cfg = PipelineConfig.model_validate({"prompts": [{"kind": "arithmetic", "n": 1}], "eval": {
        "backend": {"backend": "openai", "base_url": vllm_server, "backoff_s": 0.05},
        "models": [{"name": "chat", "path": "smollm2"},
                   {"name": "completions", "path": "smollm2",
                    "backend": {"base_url": None, "base_urls": [dead_url(), vllm_server], "api": "completions",
                                "tokenizer": str(embedded_dir)}}],
        "benchmarks": [{"name": "gsm8k", "path": str(benchmarks_dir / "gsm8k.jsonl"), "limit": 2},
                       {"name": "humaneval", "path": str(benchmarks_dir / "humaneval.jsonl"), "format": "humaneval",
                        "limit": 1}],
        "k": 2, "max_tokens": 32, "table": "r1"}})
    counts = run_eval(cfg, tmp_path)
    rows = list(iter_stage_rows(tmp_path / "eval", "eval"))
    assert counts["records_out"] == len(rows) == 2 * (2 + 1) * 2
    assert {r["teacher"] for r in rows} == {"smollm2"} and all(r["error"] is None for r in rows)
    assert all(r["finish_reason"] in ("stop", "length") and r["completion_tokens"] for r in rows)
    chat = [r for r in rows if r["model"] == "chat"]
    assert all(isinstance(json.loads(r["prompt_text"]), list) for r in chat)  # messages: the server templated
    completions = [r for r in rows if r["model"] == "completions"]
    assert all(r["prompt_text"].startswith("<|im_start|>") for r in completions)  # templated here
    code = {r["accuracy_verdict"] for r in rows if r["benchmark"] == "humaneval"}
    assert code <= {"passed", "wrong_answer", "runtime_error", "timeout", "compile_error", "no_code"}
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert {(r["model"], r["benchmark"]) for r in summary} == {(m, b) for m in ("chat", "completions")
                                                               for b in ("gsm8k", "humaneval")}
    table = json.loads((tmp_path / "eval" / "r1_table.json").read_text())
    assert [r["model"] for r in table["rows"]] == ["chat", "completions"]
    # a rerun resumes: nothing is asked of the server again, even when its address changed
    moved = cfg.model_copy(deep=True)
    moved.eval.backend = {"backend": "openai", "base_url": dead_url(), "connect_retries": 0}
    assert run_eval(moved, tmp_path)["records_out"] == len(rows)
