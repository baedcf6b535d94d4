"""The per-shard verify function over real trace records: every domain, bad input, the verdict schema (real Parquet),
worker processes (where per-sample timeouts are enforced), determinism, and the config."""
from __future__ import annotations

import functools
import json
import pickle
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import ValidationError

from factory.verify.rewards.code import humaneval_canonical_reply, humaneval_to_prompt
from factory.verify.rewards.sandbox import capabilities
from factory.core.schema import load_schema
from factory.verify.verdicts import VerifyConfig, score_record, verify_shard

BENCH = Path(__file__).resolve().parents[2].parent / "shared/data/benchmarks"


def trace(prompt: dict, idx: int, completion: str, template: str = "chat", finish: str = "stop",
          error: str | None = None) -> dict:
    closed = "</think>" in completion
    reasoning, _, answer = completion.partition("</think>")
    return {"prompt_id": prompt["prompt_id"], "source": prompt.get("source", "test"), "domain": prompt["domain"],
            "problem": prompt.get("problem", "?"), "answer": prompt.get("answer"), "tests": prompt.get("tests"),
            "language": "en", "metadata": prompt.get("metadata"), "sample_idx": idx, "teacher": "tiny",
            "sampling": "{}", "template": template, "prompt_text": "p", "completion": completion,
            "reasoning": reasoning.replace("<think>", "").strip(), "answer_text": answer.strip() if closed else "",
            "think_closed": closed, "finish_reason": finish, "prompt_tokens": 10,
            "completion_tokens": len(completion) // 4, "latency_s": 0.1, "error": error}


def math_prompt(pid: str, answer: str | None) -> dict:
    return {"prompt_id": pid, "domain": "math", "answer": answer}


def shard() -> list[dict]:
    rows = []
    p = math_prompt("m1", r"\frac{3}{56}")
    rows += [trace(p, 0, "<think>\nwork\n</think>\n\nSo $\\boxed{3/56}$."),
             trace(p, 1, "<think>\nwork\n</think>\n\nSo $\\boxed{\\frac{56}{3}}$."),
             trace(p, 2, "<think>\nlong work that never ends", finish="length"),
             trace(p, 3, "<think>\nwork\n</think>\n\n$\\boxed{\\dfrac{3}{56}}$ and more <think>oops</think>")]
    q = math_prompt("m2", None)  # no reference
    rows += [trace(q, i, f"<think>\nhm\n</think>\n\\boxed{{{a}}}") for i, a in enumerate(["7", "7.0", "8"])]
    s = {"prompt_id": "s1", "domain": "science", "answer": "(B)"}
    rows += [trace(s, 0, "<think>\nchem\n</think>\nThe answer is (B)."),
             trace(s, 1, "<think>\nchem\n</think>\n\\boxed{C}")]
    big = math_prompt("b1", "12")  # an enormous reply: only its tail is looked at
    rows += [trace(big, 0, "<think>\n" + "hmm " * 500_000 + "\n</think>\n" + "blah " * 400_000 + "\\boxed{12}")]
    z = math_prompt("z1", "4")
    rows += [trace(z, 0, "<think> 2+2 </think> <answer> 4 </answer>", template="r1_zero"),
             trace(z, 1, "<think> 2+2 </think> 4", template="r1_zero"),
             trace(z, 2, "", finish="error", error="server returned 500")]
    return rows


def code_shard() -> list[dict]:
    he = [json.loads(line) for line in (BENCH / "humaneval.jsonl").open()][:2]
    rows = []
    for row in he:
        prompt = humaneval_to_prompt(row)
        rows.append(trace(prompt, 0, "<think>\nplan\n</think>\n" + humaneval_canonical_reply(row)))
        rows.append(trace(prompt, 1, "<think>\nplan\n</think>\n```python\n" + row["prompt"] + "    return None\n```"))
    no_tests = {"prompt_id": "c3", "domain": "code", "tests": None}
    rows.append(trace(no_tests, 0, "<think>\nx\n</think>\n```python\nprint(1)\n```"))
    return rows


def by_key(rows: list[dict]) -> dict:
    return {(r["prompt_id"], r["sample_idx"]): r for r in rows}


def test_math_science_and_bad_input_verdicts():
    out = by_key(verify_shard(shard(), VerifyConfig()).rows)
    assert out[("m1", 0)]["accuracy_verdict"] == "correct" and out[("m1", 0)]["selected"]
    assert out[("m1", 1)]["accuracy_verdict"] == "wrong" and not out[("m1", 1)]["selected"]
    unfinished = out[("m1", 2)]
    assert unfinished["accuracy_verdict"] == "no_answer" and "unfinished" in unfinished["accuracy_reason"]
    assert unfinished["format_verdict"] == "unclosed_think"
    two_thinks = out[("m1", 3)]
    assert two_thinks["accuracy_verdict"] == "correct" and two_thinks["format_verdict"] == "multiple_think"
    assert not two_thinks["selected"] and two_thinks["select_reason"] == "rejected: format multiple_think"
    assert {out[("m1", i)]["pass_rate"] for i in range(4)} == {0.5}
    assert out[("m1", 0)]["majority_answer"] in ("3/56", r"\dfrac{3}{56}")

    assert out[("m2", 0)]["accuracy_verdict"] == "no_reference" and out[("m2", 0)]["pass_rate"] is None
    assert out[("m2", 0)]["majority_answer"] == "7" and not out[("m2", 0)]["selected"]

    assert (out[("s1", 0)]["reward_kind"], out[("s1", 0)]["accuracy_verdict"]) == ("choice", "correct")
    assert out[("s1", 1)]["accuracy_verdict"] == "wrong"

    assert out[("b1", 0)]["accuracy_verdict"] == "correct" and out[("b1", 0)]["format_verdict"] == "ok"
    assert out[("z1", 0)]["accuracy_verdict"] == "correct" and out[("z1", 0)]["format_verdict"] == "ok"
    assert out[("z1", 1)]["format_verdict"] == "no_answer_tag" and not out[("z1", 1)]["selected"]
    failed = out[("z1", 2)]
    assert failed["accuracy_verdict"] == "no_answer" and "server returned 500" in failed["accuracy_reason"]


def test_consensus_opt_in():
    cfg = VerifyConfig.model_validate({"consensus": {"enabled": True, "min_votes": 2}})
    out = by_key(verify_shard(shard(), cfg).rows)
    assert [out[("m2", i)]["accuracy_verdict"] for i in range(3)] == ["correct", "correct", "wrong"]
    assert out[("m2", 0)]["selected"] and abs(out[("m2", 0)]["pass_rate"] - 2 / 3) < 1e-9
    assert out[("m1", 1)]["accuracy_verdict"] == "wrong"  # prompts with a reference are untouched


@pytest.mark.skipif(not capabilities()["usable"], reason="no sandbox on this machine")
def test_code_records():
    out = by_key(verify_shard(code_shard(), VerifyConfig()).rows)
    for pid in ("HumanEval/0", "HumanEval/1"):
        good, bad = out[(pid, 0)], out[(pid, 1)]
        assert (good["accuracy_verdict"], good["reward_accuracy"], good["selected"]) == ("passed", 1.0, True)
        assert (good["tests_passed"], good["tests_total"]) == (1, 1)
        assert bad["accuracy_verdict"] == "wrong_answer" and not bad["selected"]
        assert good["pass_rate"] == 0.5 and good["extracted_answer"] is None and good["majority_answer"] is None
    assert out[("c3", 0)]["accuracy_verdict"] == "no_tests" and out[("c3", 0)]["pass_rate"] is None


def test_rows_fit_the_verdict_schema_and_round_trip_parquet(tmp_path):
    result = verify_shard(shard(), VerifyConfig())
    table = load_schema("verdict").table(result.rows)
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table, path)
    back = pq.read_table(path).to_pylist()
    assert [(r["prompt_id"], r["sample_idx"]) for r in back] == [(r["prompt_id"], r["sample_idx"]) for r in shard()]
    assert {"reward_accuracy", "accuracy_verdict", "accuracy_reason", "extracted_answer", "reward_format",
            "format_verdict", "format_reason", "pass_rate", "majority_answer", "selected",
            "select_reason"} <= set(back[0])
    assert result.stats["prompts"] == 5 and result.stats["accuracy.correct"] >= 4
    assert result.rejected == [] and result.dropped == {}


def test_deterministic_output():
    a, b = verify_shard(shard(), VerifyConfig()), verify_shard(shard(), VerifyConfig())
    assert a.rows == b.rows


def test_runs_in_worker_processes_with_timeouts_enforced():
    cfg = VerifyConfig.model_validate({"math": {"timeout_s": 0.5}})
    slow = trace(math_prompt("t1", "5"), 0, "<think>\nx\n</think>\n\\boxed{\\int_0^1 e^{-x^2}\\sin(x^{7}) dx}")
    fn = functools.partial(verify_shard, cfg=cfg)
    pickle.dumps(fn)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        result = pool.submit(fn, [slow] + shard()).result(timeout=300)
    assert result.stats["timeouts_enforced"] == 1
    row = result.rows[0]
    assert row["accuracy_verdict"] == "timeout" and "0.5 s" in row["accuracy_reason"]
    assert by_key(result.rows)[("m1", 0)]["accuracy_verdict"] == "correct"


def test_score_record_for_evaluation():
    rec = trace(math_prompt("e1", "12"), 0, "<think>\nx\n</think>\n\\boxed{12}")
    out = score_record(rec)
    assert (out["reward_accuracy"], out["accuracy_verdict"], out["extracted_answer"]) == (1.0, "correct", "12")
    assert "pass_rate" not in out and "selected" not in out


def test_unknown_domain_is_recorded_not_fatal():
    rec = trace({"prompt_id": "g", "domain": "poetry", "answer": "x"}, 0, "<think>\nx\n</think>\nx")
    out = score_record(rec)
    assert out["accuracy_verdict"] == "no_reference" and "poetry" in out["accuracy_reason"]


def test_config_from_yaml_and_errors():
    text = """
    rewards: {math: math, code: code, science: choice, general: exact}
    math: {timeout_s: 2, answer_pattern: 'Answer: (.+)'}
    code: {case_timeout_s: 3, memory_mb: 512}
    select: {policy: at_most_m, m: 2, pass_rate_max: 0.9}
    consensus: {enabled: true}
    """
    cfg = VerifyConfig.model_validate(yaml.safe_load(text))
    assert cfg.select.m == 2 and cfg.code.memory_mb == 512 and cfg.rewards["general"] == "exact"
    with pytest.raises(ValidationError, match="selct"):
        VerifyConfig.model_validate({"selct": {}})
    with pytest.raises(ValidationError, match="case_timeout"):
        VerifyConfig.model_validate({"code": {"case_timeout": 3}})
    with pytest.raises(ValidationError, match="rewards.math"):
        VerifyConfig.model_validate({"rewards": {"math": "neural"}})


# --- the stage: DIR/generate → DIR/verify through the shard runner ----------------------------------------------
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from factory.core.shards import ShardResult, StageConfigChanged, StageDir, iter_stage_rows  # noqa: E402
from factory.verify.stage import run_verify  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def make_generate(run_dir: Path, units: list[list[dict]]) -> None:
    stage = StageDir(run_dir / "generate", "generate", load_schema("trace"))
    stage.prepare("fp", {"test": True}, {"units": len(units)})
    for u, rows in enumerate(units):
        stage.commit_result(u, ShardResult(rows=rows))
    stage.finalize(records_in=sum(len(r) for r in units))


def stage_units(with_code: bool) -> list[list[dict]]:
    rows = shard() + (code_shard() if with_code else [])
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    groups = list(by_prompt.values())
    return [sum(groups[i::3], []) for i in range(3)]  # 3 parts, every prompt's samples in one part


def all_rows(run_dir: Path) -> list[dict]:
    return sorted(iter_stage_rows(run_dir / "verify", "verdict"), key=lambda r: (r["prompt_id"], r["sample_idx"]))


@pytest.mark.parametrize("workers", [1, 2])
def test_stage_writes_verdicts_counts_and_resumes(tmp_path, workers):
    make_generate(tmp_path, stage_units(with_code=False))
    counts = run_verify(VerifyConfig(workers=workers), tmp_path)
    n = len(shard())
    assert (counts["records_in"], counts["records_out"], counts["units"]) == (n, n, 3)
    extra = counts["extra"]
    assert extra["samples"] == n and extra["accuracy"]["correct"] >= 4 and extra["format"]["ok"] >= 6
    assert extra["selected"] + extra["not_selected"] == n and "rejected: accuracy wrong" in extra["select_reason"]
    assert json.loads((tmp_path / "verify" / "counts.json").read_text()) == counts
    before = all_rows(tmp_path)
    # lose a committed part, as if the run died before it: the rerun redoes exactly that one
    (tmp_path / "verify" / "part-00001.parquet").unlink()
    lines = (tmp_path / "verify" / "ledger.jsonl").read_text().splitlines()
    (tmp_path / "verify" / "ledger.jsonl").write_text("".join(x + "\n" for x in lines if '"unit": 1,' not in x))
    assert run_verify(VerifyConfig(workers=workers), tmp_path)["records_out"] == n
    assert all_rows(tmp_path) == before
    with pytest.raises(StageConfigChanged):
        run_verify(VerifyConfig.model_validate({"select": {"policy": "shortest_correct"}}), tmp_path)
    assert run_verify(VerifyConfig(workers=3), tmp_path)["records_out"] == n  # workers are speed only


class _Pipeline:  # what `factory run` passes: a pipeline config with a `verify` block
    verify = VerifyConfig.model_validate({"select": {"policy": "at_most_m", "m": 1}})


def test_stage_takes_a_pipeline_config(tmp_path):
    make_generate(tmp_path, stage_units(with_code=False))
    run_verify(_Pipeline(), tmp_path)
    rows = all_rows(tmp_path)
    assert sum(r["selected"] for r in rows if r["prompt_id"] == "m1") == 1


KILL_SCRIPT = """
import sys
from factory.verify.stage import run_verify
from factory.verify.verdicts import VerifyConfig
run_verify(VerifyConfig(), sys.argv[1])
"""


@pytest.mark.skipif(not capabilities()["usable"], reason="no sandbox on this machine")
def test_killed_run_resumes_to_the_uninterrupted_output(tmp_path):
    """SIGKILL a real `run_verify` process once its first part is committed; the resumed output equals a clean run."""
    units = stage_units(with_code=True)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    make_generate(clean, units)
    make_generate(killed, units)
    run_verify(VerifyConfig(), clean)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(killed)], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if list((killed / "verify").glob("part-*.parquet")):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    parts_at_kill = len(list((killed / "verify").glob("part-*.parquet")))
    run_verify(VerifyConfig(), killed)
    assert proc.returncode == -signal.SIGKILL and 1 <= parts_at_kill < 3, (proc.returncode, parts_at_kill)
    assert all_rows(killed) == all_rows(clean)
    counts = json.loads((killed / "verify" / "counts.json").read_text())
    assert counts["records_out"] == counts["records_in"] == sum(len(u) for u in units)
