"""A small real run folder: trace shards through the shard runner's StageDir, then the real verify and curate
stages over them, eval samples in the eval schema with their summary, and a training log. No engine needed."""
from __future__ import annotations

import json
import math
from pathlib import Path

from _curate_data import cot, trace

from factory.core.schema import load_schema
from factory.core.shards import ShardResult, StageDir
from factory.curate.filter_pass import CurateConfig
from factory.curate.stage import run_curate
from factory.eval.metrics import summarize, write_summary
from factory.verify.stage import run_verify
from factory.verify.verdicts import VerifyConfig

K = 4
TOPICS = ["apples in a basket", "trains between two towns", "coins in a jar", "pages of a novel",
          "tiles on a kitchen floor", "marbles shared by friends", "laps around a running track",
          "stamps in an album"]
MIXED = cot() + "\n\n" + "所以我们需要计算每个数字除以三的余数，然后统计满足条件的数目。这样答案就是六十六。" * 4
LOOP = "\n\n".join(cot().split("\n\n")[1:4] * 40)
RIGHT, WRONG, NONE = "So the count is $\\boxed{66}$.", "It is $\\boxed{65}$.", "I am not sure."


def problem(p: int) -> str:
    return f"Question {p}: think about {TOPICS[p]}; how many of the integers 1 to {99 + p} are not multiples of 3?"


def generate_rows(p: int) -> list[dict]:
    """Four samples of prompt p: a wrong answer, no answer, truncation, mixed language, a loop, a duplicate."""
    rows = []
    for i in range(K):
        answer = WRONG if (p + i) % 4 == 3 else (NONE if (p, i) == (1, 0) else RIGHT)
        rows.append(trace(f"p{p}", i, problem=problem(p), answer_text=answer, reasoning=cot(10 * p + i),
                          completion_tokens=300 + 37 * p + 11 * i))
    if p == 2:
        rows[0].update(finish_reason="length", think_closed=False)
    if p == 3:
        rows[1].update(reasoning=MIXED, completion=f"<think>\n{MIXED}\n</think>\n\n{RIGHT}")
    if p == 4:
        rows[2].update(reasoning=LOOP, completion=f"<think>\n{LOOP}\n</think>\n\n{RIGHT}")
    if p == 5:
        rows[1].update(reasoning=rows[0]["reasoning"], completion=rows[0]["completion"])
    return rows


def eval_rows(model: str, benchmark: str, right_every: int) -> list[dict]:
    rows = []
    for p in range(5):
        for i in range(K):
            right = (p + i) % right_every != 0
            base = trace(f"{benchmark}/{p}", i, problem=f"{benchmark} problem {p}: what is {p} + 60?",
                         answer_text=f"The answer is $\\boxed{{{60 + p if right else 59 - p}}}$.", source=benchmark)
            base["answer"] = str(60 + p)
            rows.append({**base, "model": model, "benchmark": benchmark, "reward_accuracy": float(right),
                         "accuracy_verdict": "correct" if right else "wrong",
                         "accuracy_reason": "math-verify: equal" if right else f"math-verify: {59 - p} != {60 + p}",
                         "extracted_answer": str(60 + p if right else 59 - p), "reward_format": 1.0,
                         "format_verdict": "ok"})
    return rows


def make_real_run(root: Path) -> Path:
    run = root / "real-run"
    gen = StageDir(run / "generate", "generate", load_schema("trace"))
    gen.prepare("fp", {}, {})
    gen.commit_result(0, ShardResult(rows=[r for p in range(4) for r in generate_rows(p)]))
    gen.commit_result(1, ShardResult(rows=[r for p in range(4, 8) for r in generate_rows(p)]))
    gen.finalize(records_in=8)
    run_verify(VerifyConfig(), run, workers=1)
    run_curate(CurateConfig(), run, workers=1)
    ev = StageDir(run / "eval", "eval", load_schema("eval"), key_columns=("model", "prompt_id", "sample_idx"))
    ev.prepare("fp", {}, {})
    records = []
    for unit, (model, every) in enumerate((("base", 2), ("student", 3))):
        rows = eval_rows(model, "arith", every)
        ev.commit_result(unit, ShardResult(rows=rows))
        records += rows
    write_summary(summarize(records), run / "eval")
    ev.finalize(records_in=len(records))
    (run / "sft").mkdir()
    (run / "sft" / "train_log.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 2 * math.exp(-s / 10) + 0.3}) + "\n" for s in range(1, 31)))
    return run
