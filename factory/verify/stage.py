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

from factory.core.ray_executor import make_executor
from factory.core.runner import run_map_stage
from factory.core.schema import load_schema
from factory.core.shards import ShardResult, StageDir
from factory.verify.verdicts import VerifyConfig, verify_shard

STAGE = "verify"


def verify_unit(records: list[dict], cfg: VerifyConfig) -> ShardResult:
    """The shard runner's function: the records of one input part in, their verdict rows out."""
    result = verify_shard(records, cfg)
    return ShardResult(rows=result.rows, rejected=result.rejected, dropped=result.dropped, stats=result.stats)


def verify_fingerprint(cfg: VerifyConfig) -> dict:
    """Everything that decides the verdicts (not `workers`, which only decides speed)."""
    return cfg.model_dump(mode="json", exclude={"workers"})


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


def run_verify(config, out_dir: Path | str, *, new_run: bool = False, workers: int | None = None) -> dict:
    """Verify every trace of run folder `out_dir`, resuming a stopped run; returns counts.json's content.

    `config` is a `VerifyConfig` or a pipeline config with a `verify` block (absent: the defaults).
    """
    cfg = config if isinstance(config, VerifyConfig) else getattr(config, "verify", None) or VerifyConfig()
    executor = make_executor(getattr(config, "executor", None), workers or cfg.workers)
    out_dir = Path(out_dir)
    schema = load_schema("verdict")
    counts = run_map_stage(name=STAGE, in_dir=out_dir / "generate", out_dir=out_dir / STAGE, out_schema=schema,
                           fn=functools.partial(verify_unit, cfg=cfg), config=verify_fingerprint(cfg),
                           in_schema="trace", new_run=new_run, executor=executor)
    stage = StageDir(out_dir / STAGE, STAGE, schema)
    return stage.finalize(counts["records_in"], extra=summarize(stage.path))
