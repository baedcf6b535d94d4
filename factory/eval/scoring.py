"""Scoring of eval samples: the verify stage's rules (`score_record`), one sample at a time or, with
`verify.workers` > 1, in that many spawned processes (code benchmarks run every test in the sandbox, which is the
slow part of an eval without a GPU bottleneck). Results come back in input order, so the output is the same."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from factory.eval.code import extracted_program

MIN_ROWS_PER_WORKER = 4  # below this a pool costs more than it saves


def score_sample(row: dict, verify_cfg) -> dict:
    """The verify stage's verdict columns of one eval sample; for code, `extracted_answer` is the program run."""
    from factory.verify.verdicts import score_record

    scored = score_record(row, verify_cfg)
    if scored.get("reward_kind") == "code" and scored.get("accuracy_verdict") != "no_code":
        scored["extracted_answer"] = extracted_program(row.get("answer_text"), row.get("tests"))
    return scored


def score_samples(rows: list[dict], verify_cfg) -> list[dict]:
    """`score_sample` of every row, in order; over `verify_cfg.workers` processes when there is enough work."""
    workers = min(getattr(verify_cfg, "workers", 1), len(rows) // MIN_ROWS_PER_WORKER)
    if workers <= 1:
        return [score_sample(r, verify_cfg) for r in rows]
    # spawn, not fork: the parent may hold a running vLLM engine and its threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        chunk = max(1, len(rows) // (workers * 4))
        return list(pool.map(score_sample, rows, [verify_cfg] * len(rows), chunksize=chunk))
