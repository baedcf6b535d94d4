"""Verification: rule-based rewards for every trace of a shard, per-prompt aggregates, rejection sampling.

`verify_shard(records, cfg)` is the pure, picklable per-shard function the shard runner applies (records of one
input shard in, the same records with the verdict columns of `schemas/verdict.yaml` out; all k samples of a
prompt are in the same shard). `score_record(record, cfg)` is the per-record part that evaluation reuses for
pass@1. Rules first: with a `judge` block, the samples the rules cannot decide (per domain, see `JudgeConfig`) go
to the judge model in one batch per shard; its only I/O is the judge and its cache (`judge_dir`).
"""
from __future__ import annotations

import time
from collections import Counter

from factory.core.shards import ShardResult
from factory.verify.config import RewardKind, VerifyConfig  # noqa: F401
from factory.verify.rewards.choice import letter_of, normalize_exact, score_choice, score_exact
from factory.verify.rewards.code import score_code
from factory.verify.rewards.format import score_format
from factory.verify.rewards.math import answers_equivalent, score_math
from factory.verify.rewards.result import RewardResult
from factory.verify.rewards.sandbox import SandboxUnavailable
from factory.verify.rewards.timeouts import can_enforce
from factory.verify.selection import apply_consensus, majority, pass_rate, select_group

VERDICT_COLUMNS = ("reward_accuracy", "accuracy_verdict", "accuracy_reason", "extracted_answer", "reward_format",
                   "format_verdict", "format_reason", "reward_kind", "tests_passed", "tests_total")
JUDGE_COLUMNS = ("judge_model", "judge_verdict", "judge_score", "judge_text")


def reward_kind(record: dict, cfg: VerifyConfig) -> str:
    kind = cfg.rewards.get(record.get("domain") or "", "none")
    if kind != "auto":
        return kind
    ref = record.get("answer")
    return "choice" if ref and letter_of(ref, cfg.choice.letters) else "math"


def _accuracy(record: dict, kind: str, cfg: VerifyConfig) -> RewardResult:
    answer_text = record.get("answer_text") or ""
    template = record.get("template")
    if record.get("finish_reason") == "error":
        return RewardResult(0.0, "no_code" if kind == "code" else "no_answer",
                            f"generation failed: {record.get('error') or 'unknown error'}")
    if not answer_text.strip() and not record.get("think_closed", True):
        return RewardResult(0.0, "no_code" if kind == "code" else "no_answer",
                            f"unfinished trace (finish_reason={record.get('finish_reason')}): no </think>, no answer")
    if kind == "math":
        return score_math(answer_text, record.get("answer"), template, cfg.math)
    if kind == "code":
        return score_code(answer_text, record.get("tests"), cfg.code)
    if kind == "choice":
        return score_choice(answer_text, record.get("answer"), template, cfg.choice)
    if kind == "exact":
        return score_exact(answer_text, record.get("answer"), template, cfg.exact)
    if kind == "judge":
        return RewardResult(0.0, "no_reference", "left to the judge model")
    return RewardResult(0.0, "no_reference", f"no accuracy reward configured for domain {record.get('domain')!r}")


def score_record(record: dict, cfg: VerifyConfig | None = None) -> dict:
    """Accuracy and format rewards of one trace record, as the verdict columns (no per-prompt aggregates)."""
    cfg = cfg or VerifyConfig()
    kind = reward_kind(record, cfg)
    try:
        acc = _accuracy(record, kind, cfg)
    except SandboxUnavailable:
        raise  # the machine cannot run code safely: stop rather than mark every program wrong
    except Exception as exc:  # noqa: BLE001 - a verifier bug must not stop the run; it is recorded
        acc = RewardResult(0.0, "error", f"the verifier failed: {type(exc).__name__}: {exc}")
    fmt = score_format(record.get("completion") or "", record.get("template"),
                       allow_empty_reasoning=(record.get("domain") or "") in cfg.no_cot_domains)
    return {"reward_accuracy": float(acc.reward), "accuracy_verdict": acc.verdict, "accuracy_reason": acc.reason,
            "extracted_answer": acc.extracted if kind != "code" else None,
            "reward_format": float(fmt.reward), "format_verdict": fmt.verdict, "format_reason": fmt.reason,
            "reward_kind": kind, "tests_passed": acc.details.get("tests_passed"),
            "tests_total": acc.details.get("tests_total")}


def _same_answer(kind: str, cfg: VerifyConfig):
    if kind == "math":
        return lambda a, b: answers_equivalent(a, b, cfg.math)
    if kind == "exact":
        return lambda a, b: normalize_exact(a, cfg.exact.case_sensitive) == normalize_exact(b, cfg.exact.case_sensitive)
    return lambda a, b: a == b


def aggregate_prompt(rows: list[dict], cfg: VerifyConfig) -> bool:
    """Majority answer, consensus labels (opt-in), pass rate and selection for one prompt's samples, in place.

    Returns whether consensus labelled the prompt."""
    kind = rows[0]["reward_kind"]
    labelled = False
    top_answer = None
    if kind in ("math", "choice", "exact"):
        top_answer, top, answered = majority(rows, _same_answer(kind, cfg))
        labelled = apply_consensus(rows, top, answered, cfg.consensus)
    rate = pass_rate(rows)
    for r in rows:
        r["majority_answer"] = top_answer
        r["pass_rate"] = rate
    select_group(rows, cfg.select)
    return labelled


def needs_judge(row: dict, cfg: VerifyConfig) -> bool:
    """Rules first: the judge takes a sample only where its domain asks for it and the rules could not decide."""
    if cfg.judge is None or row.get("finish_reason") == "error":
        return False
    if not (row.get("answer_text") or "").strip() and not row.get("think_closed", True):
        return False  # an unfinished trace has no answer to judge: the rules' no_answer stands
    if row["reward_kind"] == "judge":
        return True
    mode = cfg.judge.domains.get(row.get("domain") or "", "never")
    return mode == "always" or (mode == "fallback" and row["accuracy_verdict"] in cfg.judge.undecided)


def apply_judgement(row: dict, judgement, model: str) -> None:
    """The judge's verdict on a verdict row, in place; a failed judgement is its own verdict, never `wrong`."""
    rules = f"rules: {row['accuracy_verdict']}: {row['accuracy_reason']}"
    row.update(judge_model=model, judge_verdict=judgement.verdict, judge_score=judgement.score,
               judge_text=judgement.text, reward_kind="judge")
    if judgement.verdict in ("correct", "wrong"):
        row["reward_accuracy"] = 1.0 if judgement.verdict == "correct" else 0.0
        row["accuracy_verdict"] = judgement.verdict
        row["accuracy_reason"] = f"judge {model}: {judgement.verdict} (score {judgement.score:g}); {rules}"
    else:
        row["reward_accuracy"] = 0.0
        row["accuracy_verdict"] = f"judge_{judgement.verdict}"
        why = "no verdict in its reply" if judgement.verdict == "unparsable" else judgement.text
        row["accuracy_reason"] = f"judge {model} failed ({judgement.verdict}): {why[:300]}; {rules}"


def _judge_rows(rows: list[dict], cfg: VerifyConfig, judge_dir: str | None, stats: Counter) -> None:
    from factory.verify.rewards.judge import session_for

    todo = [r for r in rows if needs_judge(r, cfg)]
    if not todo:
        return
    session = session_for(cfg.judge, judge_dir)
    calls, cached, start = session.calls, session.cached, time.perf_counter()
    for row, judgement in zip(todo, session.judge(todo)):
        apply_judgement(row, judgement, session.model_id)
        stats[f"judge.{judgement.verdict}"] += 1
    stats["judge.calls"] += session.calls - calls
    stats["judge.cached"] += session.cached - cached
    stats["judge_s"] = round(time.perf_counter() - start, 3)


def verify_shard(records: list[dict], cfg: VerifyConfig, judge_dir: str | None = None) -> ShardResult:
    """Score every record of one shard, aggregate per prompt, select; nothing is dropped (see `selected`).
    `judge_dir` is the judge's cache folder (None: no cache)."""
    groups: dict[str, list[dict]] = {}
    seconds = 0.0
    stats: Counter = Counter()
    scored = []
    for rec in records:
        start = time.perf_counter()
        row = {**rec, **score_record(rec, cfg)}
        seconds += time.perf_counter() - start
        scored.append(row)
    _judge_rows(scored, cfg, judge_dir, stats)
    for row in scored:
        groups.setdefault(row["prompt_id"], []).append(row)
    rows: list[dict] = []
    for prompt_rows in groups.values():
        if aggregate_prompt(prompt_rows, cfg):
            stats["prompts_consensus_labelled"] += 1
        rows.extend(prompt_rows)
    for r in rows:
        stats[f"accuracy.{r['accuracy_verdict']}"] += 1
        stats[f"format.{r['format_verdict']}"] += 1
        stats["selected" if r["selected"] else "not_selected"] += 1
    stats["prompts"] = len(groups)
    stats["verify_s"] = round(seconds, 3)  # timing stays out of the rows: reruns must write identical shards
    stats["timeouts_enforced"] = int(can_enforce())
    return ShardResult(rows=rows, stats=dict(stats))  # prompts in first-seen order, samples in input order
