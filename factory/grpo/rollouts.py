"""Rollouts are data: each generation step's P prompts × G samples become one trace shard,
`DIR/grpo/rollouts/part-NNNNN.parquet` (N = step × processes + rank, step = the optimizer steps the policy had
taken when it wrote them; one process: N = step).

A shard holds the trace schema's columns (so verify and curate read it as traces: the paper's rejection sampling
from the RL checkpoint) plus GRPO's own: `grpo_step`, `policy_step`, `policy` (what the weights were), `reward`
(weighted sum), `advantage`, `rewards` and `reward_verdicts` (JSON, per
reward) and `completion_token_ids` (the sampled tokens). Its Parquet metadata names the
trace schema at its version. `sample_idx` is unique per prompt over the whole run (step × batch + j), so a prompt
seen in several steps keeps distinct keys. Parts are written atomically, one per step: the file is the ledger.
On resume from checkpoint N the parts of steps ≥ N (an abandoned branch) are deleted and written again.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pyarrow as pa

from factory.core.schema import Schema, load_schema
from factory.core.shards import PART, fingerprint, write_json_atomic, write_table_atomic
from factory.generate.templates import split_think
from factory.grpo.rewards import Score

ROLLOUT_FIELDS = [
    pa.field("grpo_step", pa.int32(), nullable=False),     # optimizer steps taken when these were sampled
    pa.field("policy_step", pa.int32(), nullable=False),   # the policy = initial weights + this many updates
    pa.field("policy", pa.string(), nullable=False),       # initial policy id, or checkpoints/checkpoint-N
    pa.field("reward", pa.float64(), nullable=False),      # the weighted sum GRPO normalised within the group
    pa.field("advantage", pa.float64(), nullable=True),    # (r - mean) / (std + 1e-4) of its group (TRL's)
    pa.field("rewards", pa.string(), nullable=False),      # JSON {name: value}
    pa.field("reward_verdicts", pa.string(), nullable=False),  # JSON {name: verdict}
    pa.field("completion_token_ids", pa.list_(pa.int32()), nullable=False),  # exactly what was sampled
]


@functools.cache
def rollout_schema() -> Schema:
    trace = load_schema("trace")
    return Schema(name=trace.name, version=trace.version, arrow=pa.schema(list(trace.arrow) + ROLLOUT_FIELDS))


def trace_record(inp: dict, completion: str, completion_tokens: int, prompt_tokens: int, prefill: str,
                 template: str, finish_reason: str) -> dict:
    """One sample as a trace row (the form verify's rewards read); `completion` is without the prefill."""
    full = prefill + completion
    split = split_think(full)
    fields = [f.name for f in load_schema("prompt").arrow]
    return {**{k: inp.get(k) for k in fields}, "template": template, "prompt_text": inp["prompt_text"],
            "completion": full, "reasoning": split.reasoning, "answer_text": split.answer_text,
            "think_closed": split.think_closed, "finish_reason": finish_reason, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "latency_s": 0.0, "error": None}


def rollout_rows(records: list[dict], scores: dict[str, list[Score]], weights: dict[str, float],
                 advantages: list[float] | None, step: int, batch: int, policy: str, teacher: str,
                 sampling: str) -> list[dict]:
    """The shard's rows: the trace records with their step, policy, rewards and advantage."""
    seen: dict[str, int] = {}
    rows = []
    for i, rec in enumerate(records):
        j = seen.get(rec["prompt_id"], 0)
        seen[rec["prompt_id"]] = j + 1
        values = {name: scores[name][i].value for name in scores}
        rows.append({**rec, "sample_idx": step * batch + j, "teacher": teacher, "sampling": sampling,
                     "grpo_step": step, "policy_step": step, "policy": policy,
                     "reward": sum(weights[n] * v for n, v in values.items()),
                     "advantage": None if advantages is None else float(advantages[i]),
                     "rewards": json.dumps(values), "reward_verdicts": json.dumps(
                         {name: scores[name][i].verdict for name in scores})})
    return rows


def write_rollouts(rollout_dir: Path, unit: int, rows: list[dict]) -> Path:
    path = Path(rollout_dir) / PART.format(unit)
    write_table_atomic(path, rollout_schema().table(rows))
    return path


def drop_after(rollout_dir: Path, step: int) -> list[str]:
    """Delete the parts of steps ≥ `step` (written after the checkpoint a resume starts from)."""
    removed = []
    for part in sorted(Path(rollout_dir).glob("part-*.parquet")):
        if int(part.stem.split("-")[1]) >= step:
            part.unlink()
            removed.append(part.name)
    for name in ("counts.json",):
        (Path(rollout_dir) / name).unlink(missing_ok=True)
    return removed


def finalize_rollouts(rollout_dir: Path, config: dict) -> dict:
    """manifest.json and counts.json, so the folder reads as a finished trace stage (verify's runner checks)."""
    import pyarrow.parquet as pq

    rollout_dir = Path(rollout_dir)
    parts = sorted(rollout_dir.glob("part-*.parquet"))
    rows = sum(pq.read_metadata(p).num_rows for p in parts)
    schema = rollout_schema()
    write_json_atomic(rollout_dir / "manifest.json", {"stage": "grpo", "schema": schema.name,
                                                      "schema_version": schema.version,
                                                      "fingerprint": fingerprint(config), "config": config})
    counts = {"stage": "grpo", "records_in": rows, "records_out": rows, "rejected": 0, "dropped": {},
              "units": len(parts), "extra": {}}
    write_json_atomic(rollout_dir / "counts.json", counts)
    return counts


def verify_rollouts(config, run_dir: Path | str, *, new_run: bool = False) -> dict:
    """Run the verify stage's own shard function over the rollouts: DIR/grpo/rollouts → DIR/grpo/verify."""
    from factory.core.runner import run_map_stage
    from factory.core.shards import StageDir
    from factory.verify.stage import summarize, verify_fingerprint, verify_unit
    from factory.verify.verdicts import VerifyConfig

    cfg = config if isinstance(config, VerifyConfig) else getattr(config, "verify", None) or VerifyConfig()
    run_dir = Path(run_dir)
    schema = load_schema("verdict")
    out = run_dir / "grpo" / "verify"
    counts = run_map_stage(name="verify", in_dir=run_dir / "grpo" / "rollouts", out_dir=out, out_schema=schema,
                           fn=functools.partial(verify_unit, cfg=cfg), config=verify_fingerprint(cfg),
                           in_schema="trace", new_run=new_run)
    return StageDir(out, "verify", schema).finalize(counts["records_in"], extra=summarize(out))
