"""`factory verify`: DIR/generate/ (traces) → DIR/verify/ (verdicts: rewards, per-prompt aggregates, selection).

Input part i becomes output part i through the shard runner (atomic commits, resume, worker processes, progress).
Nothing is dropped: every trace comes out with `selected` and `select_reason`; counts.json's `extra` says how many
got which verdict and why samples were kept or rejected.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from factory.core.lock import stage_lock
from factory.core.ray_executor import make_executor
from factory.core.runner import run_map_stage
from factory.core.schema import load_schema
from factory.core.shards import ShardResult, StageDir, require_complete
from factory.generate.config import TEACHER_SPEED_ONLY
from factory.verify.verdicts import VerifyConfig, verify_shard

STAGE = "verify"


JUDGE_SPEED_ONLY = (*TEACHER_SPEED_ONLY, "base_url")  # where the judge runs and how fast: not what it says


def verify_unit(records: list[dict], cfg: VerifyConfig, judge_dir: str | None = None) -> ShardResult:
    """The shard runner's function: the records of one input part in, their verdict rows out."""
    result = verify_shard(records, cfg, judge_dir)
    return ShardResult(rows=result.rows, rejected=result.rejected, dropped=result.dropped, stats=result.stats)


def verify_fingerprint(cfg: VerifyConfig) -> dict:
    """Everything that decides the verdicts (not `workers`, which only decides speed). The keys added with the judge
    are left out at their defaults, so that run folders made before them still resume."""
    fp = cfg.model_dump(mode="json", exclude={"workers", "judge", "no_cot_domains"})
    if cfg.no_cot_domains != ["general"]:
        fp["no_cot_domains"] = cfg.no_cot_domains
    if cfg.judge is not None:
        from factory.verify.rewards.judge import load_template

        judge = cfg.judge.model_dump(mode="json", exclude={"batch_size", "cache", "template_file"})
        for key in JUDGE_SPEED_ONLY:
            judge["teacher"].pop(key, None)
        judge["template"] = load_template(cfg.judge)[0]  # the text decides, not where it lives
        fp["judge"] = judge
    return fp


def summarize(stage_dir: Path) -> dict:
    """Verdict, format and selection counts over the committed output parts (exact after a resume too)."""
    counts: dict[str, Counter] = {k: Counter() for k in ("accuracy", "format", "kind", "select_reason")}
    selected = rows = 0
    pass_rates: dict[str, float] = {}
    columns = ["prompt_id", "accuracy_verdict", "format_verdict", "reward_kind", "selected", "select_reason",
               "pass_rate"]
    for part in sorted(Path(stage_dir).glob("part-*.parquet")):
        table = pq.read_table(part, columns=columns).to_pydict()
        rows += len(table["prompt_id"])
        counts["accuracy"].update(table["accuracy_verdict"])
        counts["format"].update(table["format_verdict"])
        counts["kind"].update(table["reward_kind"])
        counts["select_reason"].update(re.sub(r"\d+(?:\.\d+)?", "N", r) for r in table["select_reason"])
        selected += sum(table["selected"])
        for pid, rate in zip(table["prompt_id"], table["pass_rate"]):
            if rate is not None:
                pass_rates[pid] = rate
    rates = list(pass_rates.values())
    return {"samples": rows, "selected": selected, "not_selected": rows - selected,
            **{k: dict(v.most_common()) for k, v in counts.items()},
            "prompts_judged": len(rates), "mean_pass_rate": round(sum(rates) / len(rates), 4) if rates else None,
            "prompts_unsolved": sum(r == 0 for r in rates), "prompts_all_solved": sum(r == 1 for r in rates)}


def run_verify(config, out_dir: Path | str, *, new_run: bool = False, workers: int | None = None,
               judge_teacher=None) -> dict:
    """Verify every trace of run folder `out_dir`, resuming a stopped run; returns counts.json's content.

    `config` is a `VerifyConfig` or a pipeline config with a `verify` block (absent: the defaults). With a judge,
    `judge_teacher` reuses a started engine; its cache is `out_dir/judge_cache/` (kept across --new-run).
    """
    cfg = config if isinstance(config, VerifyConfig) else getattr(config, "verify", None) or VerifyConfig()
    out_dir = Path(out_dir)
    if cfg.judge is None:
        return _run(config, cfg, out_dir, new_run, workers, None)
    from factory.verify.rewards.judge import close_session, open_session

    judge_dir = str(out_dir / "judge_cache")
    open_session(cfg.judge, judge_dir, judge_teacher)  # a bad template fails here, before anything is written
    try:
        return _run(config, cfg, out_dir, new_run, workers, judge_dir)
    finally:
        close_session(cfg.judge, judge_dir)


def _run(config, cfg: VerifyConfig, out_dir: Path, new_run: bool, workers: int | None, judge_dir: str | None) -> dict:
    executor = make_executor(getattr(config, "executor", None), workers or cfg.workers)
    if judge_dir is not None and cfg.judge.teacher.backend == "vllm":
        from factory.core.executor import LocalExecutor

        executor = LocalExecutor(1)  # one engine, in this process: the shards' judge batches queue on it
    schema = load_schema("verdict")
    require_complete(out_dir / "generate", reader=STAGE)  # before the lock: a missing input creates no folder
    with stage_lock(out_dir / STAGE):  # one writer, up to the final counts
        counts = run_map_stage(name=STAGE, in_dir=out_dir / "generate", out_dir=out_dir / STAGE, out_schema=schema,
                               fn=functools.partial(verify_unit, cfg=cfg, judge_dir=judge_dir),
                               config=verify_fingerprint(cfg), in_schema="trace", new_run=new_run,
                               executor=executor, prefix="verify.")
        stage = StageDir(out_dir / STAGE, STAGE, schema)
        extra = summarize(stage.path)
        if cfg.judge is not None:
            extra["judge"] = _judge_counts(stage)
        return stage.finalize(counts["records_in"], extra=extra)


def _judge_counts(stage: StageDir) -> dict:
    """Judge requests and cache hits summed over the committed units (this run's units, after a --new-run)."""
    totals: Counter = Counter()
    for entry in stage.ledger().values():
        for key, value in (entry.get("stats") or {}).items():
            if key.startswith("judge."):
                totals[key[6:]] += value
    return dict(totals)
