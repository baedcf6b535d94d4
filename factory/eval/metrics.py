"""Scores of the R1 evaluation protocol, as pure functions over per-sample verdict records.

A verdict record is a dict with `model, benchmark, prompt_id, sample_idx, reward_accuracy, extracted_answer,
completion_tokens, finish_reason`. For each (model, benchmark) the k samples of every problem give:

- pass@1: the mean correctness over the k samples of a problem, averaged over problems (paper §3). Its standard
  error is the standard error of the mean across problems of those per-problem means, sample std with ddof=1
  divided by sqrt(n_problems): it measures how much the score would move on another draw of problems of the same
  kind; the sampling noise of the k samples is inside the per-problem means.
- pass@k' for k' ≤ k: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k') / C(n, k'), per problem.
- cons@k: majority vote over the k extracted answers of a problem, after `normalize_answer`. Unanswered samples
  (None or empty) never vote. The vote is correct when the winning answer's first sample (lowest sample_idx) is
  correct. Ties: see `majority_vote` (`ties="first"` by default: the tied answer whose first occurrence comes
  first wins; `ties="wrong"`: a tied vote counts as wrong).
- mean completion length (tokens) and truncation rate (finish_reason == "length") over all samples.
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

from factory.core.shards import write_text_atomic

VERDICT_COLUMNS = ["model", "benchmark", "prompt_id", "sample_idx", "reward_accuracy", "extracted_answer",
                   "completion_tokens", "finish_reason"]
REQUIRED_COLUMNS = VERDICT_COLUMNS[:5]
SUMMARY_FILE = "summary.json"
Ties = Literal["first", "wrong"]


class EvalDataError(ValueError):
    """Verdict records that cannot be scored (missing fields, duplicated or uneven samples)."""


def is_correct(reward_accuracy: float | None) -> bool:
    """A sample is correct when its accuracy reward is ≥ 1 (a 0/1 reward is correct at 1); None/NaN is wrong."""
    return reward_accuracy is not None and not math.isnan(reward_accuracy) and reward_accuracy >= 1.0


# Hand-written rather than math-verify: voting needs a hashable canonical key per answer, and math-verify offers a
# pairwise `verify(a, b)`; its `parse` is lossy as a key ("1+x" parses to 1). This is the light string
# canonicalisation the common cons@k scripts use, plus exact numbers (18.0 == 18, 0.5 == 1/2 == \frac{1}{2}).
_WRAPPERS = [re.compile(p) for p in (r"^\\boxed\{(.*)\}$", r"^\\fbox\{(.*)\}$", r"^\\text\{(.*)\}$",
                                     r"^\\mathrm\{(.*)\}$", r"^\$(.*)\$$", r"^\\\((.*)\\\)$", r"^\\\[(.*)\\\]$")]
_SPACING = re.compile(r"\\[,;:! ]|\\left|\\right|\s+")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")
_FRAC = re.compile(r"^([-+]?)\\[dt]?frac\{([-+]?\d+)\}\{([-+]?\d+)\}$")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)(/[-+]?\d+)?$")


def normalize_answer(answer: str | None) -> str | None:
    """A canonical key for voting: unwrapped (\\boxed, $…$, \\text), without spaces and trailing dot, lower case;
    numbers exact (integers as '18', others as a reduced fraction 'p/q'). Empty → None."""
    if answer is None:
        return None
    text = answer.strip()
    changed = True
    while changed:
        changed = False
        text = text.strip().rstrip(".").strip()
        for wrapper in _WRAPPERS:
            match = wrapper.match(text)
            if match:
                text, changed = match.group(1), True
    text = _SPACING.sub("", text).rstrip(".").lower()
    if not text:
        return None
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    frac = _FRAC.match(text)
    if frac:
        text = f"{frac.group(1)}{frac.group(2)}/{frac.group(3)}"
    if _NUMBER.match(text):
        try:
            value = Fraction(text)
        except (ValueError, ZeroDivisionError):
            return text
        return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    return text


def majority_vote(answers: list[str | None], ties: Ties = "first") -> int | None:
    """Index (into `answers`) of the first sample carrying the winning normalised answer, or None for no winner.

    None and empty answers never vote. With ties="first" the tied answer that occurs first in `answers` wins
    (the list is in sample_idx order, so the result is deterministic); with ties="wrong" a tie has no winner.
    """
    counts: dict[str, int] = {}
    first_index: dict[str, int] = {}
    for i, answer in enumerate(answers):
        key = normalize_answer(answer)
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first_index.setdefault(key, i)
    if not counts:
        return None
    best = max(counts.values())
    tied = [key for key, n in counts.items() if n == best]  # dict order = order of first occurrence
    if len(tied) > 1 and ties == "wrong":
        return None
    return first_index[tied[0]]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021) for one problem with n samples, c correct: 1 - C(n-c, k)/C(n, k),
    computed as a product to stay exact for large n."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_levels(k: int) -> list[int]:
    """The k' reported besides pass@1: powers of two below k, and k itself."""
    levels, level = [], 1
    while level < k:
        levels.append(level)
        level *= 2
    return levels + [k]


def _group(records: Iterable[dict]) -> dict[tuple[str, str], dict[str, list[dict]]]:
    """{(model, benchmark): {prompt_id: samples sorted by sample_idx}}, checking fields and duplicates."""
    groups: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for i, record in enumerate(records):
        missing = [c for c in REQUIRED_COLUMNS if c not in record]
        if missing:
            raise EvalDataError(f"verdict record {i} lacks field(s) {missing}")
        groups[(record["model"], record["benchmark"])][str(record["prompt_id"])].append(record)
    for (model, benchmark), problems in groups.items():
        for prompt_id, samples in problems.items():
            samples.sort(key=lambda r: r["sample_idx"])
            indices = [r["sample_idx"] for r in samples]
            if len(set(indices)) != len(indices):
                raise EvalDataError(f"{model} on {benchmark}: problem {prompt_id} has a repeated sample_idx {indices}")
    return groups


def score_group(problems: dict[str, list[dict]], ties: Ties = "first", label: str = "") -> dict:
    """Scores of one (model, benchmark): every problem must carry the same number k of samples."""
    sizes = {len(samples) for samples in problems.values()}
    if len(sizes) != 1:
        uneven = {pid: len(s) for pid, s in list(problems.items())[:10]}
        raise EvalDataError(f"{label}: problems have different sample counts {sorted(sizes)} (e.g. {uneven}); "
                            f"pass@1 over k and cons@k need the same k for every problem")
    k = sizes.pop()
    per_problem, votes, pass_k = [], [], {level: [] for level in pass_at_k_levels(k)}
    tokens, truncated, n_samples = 0.0, 0, 0
    for samples in problems.values():
        correct = [is_correct(r["reward_accuracy"]) for r in samples]
        per_problem.append(sum(correct) / k)
        for level in pass_k:
            pass_k[level].append(pass_at_k(k, sum(correct), level))
        winner = majority_vote([r.get("extracted_answer") for r in samples], ties=ties)
        votes.append(winner is not None and correct[winner])
        tokens += sum(r.get("completion_tokens") or 0 for r in samples)
        truncated += sum(r.get("finish_reason") == "length" for r in samples)
        n_samples += k
    n = len(per_problem)
    means = np.asarray(per_problem, dtype=float)
    return {
        "k": k,
        "n_problems": n,
        "pass@1": float(means.mean()),
        "pass@1_se": float(means.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "cons@k": float(np.mean(votes)),
        "pass@k": {str(level): float(np.mean(values)) for level, values in pass_k.items()},
        "mean_tokens": tokens / n_samples,
        "truncation_rate": truncated / n_samples,
    }


def summarize(records: Iterable[dict], ties: Ties = "first") -> list[dict]:
    """One row per (model, benchmark), in order of first appearance: {model, benchmark, k, n_problems, pass@1,
    pass@1_se, cons@k, pass@k: {k': value}, mean_tokens, truncation_rate}."""
    rows = []
    for (model, benchmark), problems in _group(records).items():
        rows.append({"model": model, "benchmark": benchmark,
                     **score_group(problems, ties=ties, label=f"{model} on {benchmark}")})
    return rows


def write_summary(rows: list[dict], eval_dir: Path) -> Path:
    """Write `eval_dir/summary.json` atomically (temp file + rename)."""
    target = Path(eval_dir) / SUMMARY_FILE
    write_text_atomic(target, json.dumps(rows, indent=2) + "\n")
    return target


def read_verdicts(paths: Iterable[Path]) -> list[dict]:
    """Verdict records from per-sample Parquet files, reading only the columns scoring needs."""
    import pyarrow.parquet as pq

    records: list[dict] = []
    for path in paths:
        available = set(pq.read_schema(path).names)
        missing = [c for c in REQUIRED_COLUMNS if c not in available]
        if missing:
            raise EvalDataError(f"{path}: no column(s) {missing}; not an eval verdict file?")
        records.extend(pq.read_table(path, columns=[c for c in VERDICT_COLUMNS if c in available]).to_pylist())
    return records


def _cell(row: dict) -> str:
    se = row.get("pass@1_se")
    text = f"{100 * row['pass@1']:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")
    return f"{text}\ncons@{row['k']} {100 * row['cons@k']:.1f}"


def comparison_table(rows: list[dict]):
    """A rich Table, models as rows × benchmarks as columns; each cell pass@1 ± SE and cons@k, in percent."""
    from rich.table import Table

    models = list(dict.fromkeys(r["model"] for r in rows))
    benchmarks = list(dict.fromkeys(r["benchmark"] for r in rows))
    by_key = {(r["model"], r["benchmark"]): r for r in rows}
    table = Table(title="pass@1 ± SE (%) and cons@k (%)", show_lines=True)
    table.add_column("model", style="bold")
    for benchmark in benchmarks:
        table.add_column(benchmark, justify="right")
    for model in models:
        table.add_row(model, *(_cell(by_key[(model, b)]) if (model, b) in by_key else "—" for b in benchmarks))
    return table


def print_comparison(rows: list[dict], console=None) -> None:
    from rich.console import Console

    (console or Console()).print(comparison_table(rows))
