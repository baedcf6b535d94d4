"""The judge reward: a real judge on the embedded model (the session's vLLM engine) and through a real `vllm serve`
on 127.0.0.1: plumbing onto the verdict rows, the cache (a rerun makes zero judge calls), failures recorded as such
(never counted as wrong), rules first, and bad templates."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from factory.core.schema import load_schema
from factory.core.shards import ShardResult, StageDir, iter_stage_rows
from factory.verify.config import JudgeConfig, VerifyConfig
from factory.verify.rewards.judge import (
    VERDICTS,
    JudgeError,
    load_template,
    parse_judgement,
)
from factory.verify.stage import run_verify


def trace(pid: str, idx: int, domain: str, problem: str, answer: str | None, reply: str, reasoning: str = "hm",
          finish: str = "stop") -> dict:
    completion = f"<think>\n{reasoning}\n</think>\n\n{reply}"
    return {"prompt_id": pid, "source": "test", "domain": domain, "problem": problem, "answer": answer,
            "tests": None, "language": "en", "metadata": None, "sample_idx": idx, "teacher": "tiny",
            "sampling": "{}", "template": "chat", "prompt_text": "p", "completion": completion,
            "reasoning": reasoning, "answer_text": reply, "think_closed": True, "finish_reason": finish,
            "prompt_tokens": 10, "completion_tokens": 20, "latency_s": 0.1, "error": None}


def traces() -> list[dict]:
    return [trace("m1", 0, "math", "What is 2+2?", "4", "So $\\boxed{4}$."),           # rules decide: correct
            trace("m1", 1, "math", "What is 2+2?", "4", "So $\\boxed{5}$."),           # rules decide: wrong
            trace("g1", 0, "general", "What is the capital of France?", "Paris", "The capital is Paris."),
            trace("g1", 1, "general", "What is the capital of France?", "Paris", "It is Lyon."),
            trace("g2", 0, "general", "Say hello politely.", None, "Hello! How can I help you today?", ""),
            trace("s1", 0, "science", "Which gas do plants take in?", "carbon dioxide", "\\boxed{B}")]


def write_traces(out: Path, rows: list[dict]) -> None:
    stage = StageDir(out / "generate", "generate", load_schema("trace"))
    stage.prepare("test", {}, {})
    stage.commit_result(0, ShardResult(rows=rows[:4]))
    stage.commit_result(1, ShardResult(rows=rows[4:]))
    stage.finalize(len(rows))


def verdicts(out: Path) -> dict[tuple[str, int], dict]:
    return {(r["prompt_id"], r["sample_idx"]): r for r in iter_stage_rows(out / "verify", "verdict")}


def judge_cfg(**judge) -> VerifyConfig:
    return VerifyConfig(judge={"sampling": {"n": 1, "temperature": 0.0, "max_tokens": 48}, **judge})


# -- no engine ----------------------------------------------------------------------------------------------------
def test_parse_judgement():
    cfg = JudgeConfig()
    assert parse_judgement("The reply matches.\nVERDICT: CORRECT", cfg).verdict == "correct"
    j = parse_judgement("verdict: **incorrect**\nScore: 0.2", cfg)
    assert (j.verdict, j.score) == ("wrong", 0.2)
    assert parse_judgement("VERDICT: INCORRECT ... on second thought VERDICT: CORRECT", cfg).verdict == "correct"
    assert (parse_judgement("SCORE: 8", cfg).verdict, parse_judgement("SCORE: 8", cfg).score) == ("correct", 0.8)
    assert parse_judgement("I think it is fine.", cfg).verdict == "unparsable"


def test_template_without_placeholders_is_refused_before_anything_is_written(tmp_path):
    write_traces(tmp_path, traces())
    bad = tmp_path / "judge.j2"
    bad.write_text("Grade this answer to {{ problem }} against {{ reference }}.\n")
    with pytest.raises(JudgeError, match=r"judge\.j2: the judge template lacks the placeholder\(s\) \{\{ response \}\}"):
        run_verify(judge_cfg(template_file=bad), tmp_path)
    assert not (tmp_path / "verify").exists() and not (tmp_path / "judge_cache").exists()
    bad.write_text("{{ problem }} / {{ response }}\n")
    with pytest.raises(JudgeError, match=r"\{\{ reference \}\} or \{\{ rubric \}\}"):
        load_template(JudgeConfig(template_file=bad))
    bad.write_text("{{ problem }} {{ response }} {{ rubric }} {{ score }}\n")
    with pytest.raises(JudgeError, match="unknown placeholder.*score"):
        load_template(JudgeConfig(template_file=bad))
    bad.write_text("{{ problem }\n{{ response }} {{ rubric }}")
    with pytest.raises(JudgeError, match=r"judge\.j2:1: not a valid Jinja template"):
        load_template(JudgeConfig(template_file=bad))
    with pytest.raises(JudgeError, match="no such judge template file"):
        load_template(JudgeConfig(template_file=tmp_path / "missing.j2"))


def test_config_errors():
    with pytest.raises(ValidationError, match="no verify.judge block"):
        VerifyConfig(rewards={"general": "judge"})
    with pytest.raises(ValidationError, match="n must be 1"):
        JudgeConfig(sampling={"n": 2})
    with pytest.raises(ValidationError, match="not a valid regex"):
        JudgeConfig(verdict_pattern="(")


# -- the embedded model on the session's engine ------------------------------------------------------------------
@pytest.mark.engine
def test_judge_on_the_engine_rules_first_and_cached(engine, tmp_path):
    write_traces(tmp_path, traces())
    cfg = judge_cfg(domains={"general": "always", "science": "fallback"})
    counts = run_verify(cfg, tmp_path, judge_teacher=engine)
    rows = verdicts(tmp_path)
    for key in [("m1", 0), ("m1", 1)]:  # rules decided: the judge is not asked
        assert rows[key]["reward_kind"] == "math" and rows[key]["judge_model"] is None
    assert rows[("m1", 0)]["accuracy_verdict"] == "correct" and rows[("m1", 1)]["accuracy_verdict"] == "wrong"
    judged = [rows[k] for k in [("g1", 0), ("g1", 1), ("g2", 0)]]
    science = rows[("s1", 0)]  # fallback: judged only if the rules could not decide
    if science["judge_model"] is not None:
        assert any(f"rules: {v}:" in science["accuracy_reason"] for v in cfg.judge.undecided)
    for r in judged:
        assert r["reward_kind"] == "judge" and r["judge_model"] == engine.model_id
        assert r["judge_verdict"] in VERDICTS and r["judge_text"]
        assert r["accuracy_reason"].startswith(f"judge {engine.model_id}")
        if r["judge_verdict"] in ("correct", "wrong"):
            assert r["accuracy_verdict"] == r["judge_verdict"] and r["judge_score"] is not None
        else:
            assert r["accuracy_verdict"] == f"judge_{r['judge_verdict']}" and not r["selected"]
    n_judged = 3 + (science["judge_model"] is not None)
    assert counts["extra"]["judge"]["calls"] == n_judged and counts["extra"]["judge"].get("cached", 0) == 0
    assert list((tmp_path / "judge_cache").glob("batch-*.jsonl"))
    first = sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in rows.items())

    again = run_verify(cfg, tmp_path, new_run=True, judge_teacher=engine)  # a rerun never pays twice
    assert again["extra"]["judge"]["calls"] == 0 and again["extra"]["judge"]["cached"] == n_judged
    assert sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in verdicts(tmp_path).items()) == first


@pytest.mark.engine
def test_judge_failures_are_recorded_not_counted_wrong(engine, tmp_path):
    rows = traces()
    rows[4]["answer_text"] = "word " * 3000  # a judge prompt over the engine's 1024-token context
    write_traces(tmp_path, rows)
    cfg = VerifyConfig(judge={"sampling": {"n": 1, "temperature": 0.0, "max_tokens": 1}, "max_response_chars": 20000,
                              "domains": {"general": "always"}})
    counts = run_verify(cfg, tmp_path, judge_teacher=engine)
    out = verdicts(tmp_path)
    for key in [("g1", 0), ("g1", 1)]:  # one token can never hold "VERDICT: ..."
        assert out[key]["judge_verdict"] == "unparsable" and out[key]["accuracy_verdict"] == "judge_unparsable"
        assert out[key]["judge_score"] is None and out[key]["pass_rate"] is None  # not a wrong answer
        assert out[key]["select_reason"] == "rejected: accuracy judge_unparsable"
    long = out[("g2", 0)]
    assert long["judge_verdict"] == "error" and "too long" in long["judge_text"]
    assert long["accuracy_verdict"] == "judge_error" and long["pass_rate"] is None
    assert counts["extra"]["judge"] == {"calls": 2, "cached": 0, "unparsable": 2, "error": 1}  # the long one was never sent
    assert [r["accuracy_verdict"] for r in out.values() if r["domain"] == "general"].count("wrong") == 0
    cached = [json.loads(line) for f in (tmp_path / "judge_cache").glob("*.jsonl") for line in f.open()]
    assert {c["verdict"] for c in cached} == {"unparsable"}  # unparsable replies are paid for: cached; errors not
    assert pq.read_schema(next((tmp_path / "verify").glob("part-*.parquet"))).field("judge_score").nullable


# -- a real `vllm serve` on localhost ----------------------------------------------------------------------------
@pytest.mark.server
@pytest.mark.slow
def test_judge_through_the_server(vllm_server, tmp_path):
    write_traces(tmp_path, traces())
    teacher = {"backend": "openai", "model": "smollm2", "base_url": vllm_server, "concurrency": 4,
               "backoff_s": 0.05, "max_retries": 1}
    counts = run_verify(judge_cfg(teacher=teacher, domains={"general": "always"}), tmp_path)
    rows = verdicts(tmp_path)
    for key in [("g1", 0), ("g1", 1), ("g2", 0)]:
        assert rows[key]["judge_model"] == "smollm2" and rows[key]["judge_verdict"] in ("correct", "wrong",
                                                                                         "unparsable")
        assert rows[key]["judge_text"]
    assert rows[("m1", 0)]["judge_model"] is None and counts["extra"]["judge"]["calls"] == 3
    again = run_verify(judge_cfg(teacher=teacher, domains={"general": "always"}), tmp_path, new_run=True)
    assert again["extra"]["judge"]["calls"] == 0 and again["extra"]["judge"]["cached"] == 3

    broken = tmp_path / "broken"  # the server answers 404 for a model it does not serve: a recorded failure
    write_traces(broken, traces())
    counts = run_verify(judge_cfg(teacher={**teacher, "model": "no-such-model"}, domains={"general": "always"}),
                        broken)
    rows = verdicts(broken)
    for key in [("g1", 0), ("g1", 1), ("g2", 0)]:
        assert rows[key]["judge_verdict"] == "error" and "404" in rows[key]["judge_text"]
        assert rows[key]["accuracy_verdict"] == "judge_error" and rows[key]["pass_rate"] is None
    assert counts["extra"]["accuracy"].get("judge_error") == 3
    assert not list((broken / "judge_cache").glob("*.jsonl"))  # failures are retried on a rerun, never cached
