"""Per-prompt aggregates over the k samples of a prompt, and rejection-sampling policies.

R1: "for each prompt, we sample multiple responses and retain only the correct ones". Nothing is dropped here:
every sample gets `selected` and a `select_reason`; later stages decide what to drop.

Aggregates: `pass_rate` = share of the prompt's samples whose accuracy reward is 1 (null when none could be
judged: no reference and no consensus, or no tests); `majority_answer` = the most common extracted answer, answers
grouped by equivalence (math-verify for math). Consensus labelling (opt-in) judges a prompt without a reference by
its majority answer, when enough samples agree.
"""
from __future__ import annotations

from collections.abc import Callable

from factory.verify.config import ConsensusConfig, SelectConfig  # noqa: F401

JUDGED = {"correct", "wrong", "no_answer", "unparseable", "timeout", "passed", "wrong_answer", "runtime_error",
          "compile_error", "no_code"}  # verdicts that say something about the sample (not about missing data)


def group_answers(answers: list[str | None], same: Callable[[str, str], bool]) -> list[list[int]]:
    """Indices grouped by equivalent answer (None answers left out), largest group first, ties by first index."""
    groups: list[list[int]] = []
    exact: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        if a in exact:
            groups[exact[a]].append(i)
            continue
        for gi, g in enumerate(groups):
            if same(answers[g[0]], a):
                g.append(i)
                exact[a] = gi
                break
        else:
            exact[a] = len(groups)
            groups.append([i])
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def majority(rows: list[dict], same: Callable[[str, str], bool]) -> tuple[str | None, list[int], int]:
    """(majority answer, indices of its group, number of answered samples)."""
    answers = [r.get("extracted_answer") for r in rows]
    groups = group_answers(answers, same)
    if not groups:
        return None, [], 0
    answered = sum(a is not None for a in answers)
    return answers[groups[0][0]], groups[0], answered


def apply_consensus(rows: list[dict], top: list[int], answered: int, cfg: ConsensusConfig) -> bool:
    """Judge a reference-less prompt by its majority answer; returns whether it was labelled."""
    if not cfg.enabled or not top or any(r["accuracy_verdict"] != "no_reference" for r in rows if
                                         r.get("extracted_answer") is not None):
        return False
    if len(top) < cfg.min_votes or len(top) / answered < cfg.min_share:
        return False
    label = rows[top[0]]["extracted_answer"]
    members = set(top)
    for i, r in enumerate(rows):
        if r.get("extracted_answer") is None:
            continue
        agree = i in members
        r["reward_accuracy"] = 1.0 if agree else 0.0
        r["accuracy_verdict"] = "correct" if agree else "wrong"
        r["accuracy_reason"] = (f"consensus (no reference): {len(top)}/{answered} answered samples agree on "
                                f"{label[:60]!r}; this one {'agrees' if agree else 'differs'}")
    return True


def pass_rate(rows: list[dict]) -> float | None:
    judged = [r for r in rows if r["accuracy_verdict"] in JUDGED]
    if not judged:
        return None
    return sum(r["reward_accuracy"] >= 1.0 for r in judged) / len(judged)


def _length(r: dict) -> int:
    tokens = r.get("completion_tokens")
    return int(tokens) if tokens else len(r.get("completion") or "")


def select_group(rows: list[dict], cfg: SelectConfig) -> None:
    """Set `selected` and `select_reason` on every sample of one prompt (rows carry pass_rate and verdicts)."""
    rate = rows[0].get("pass_rate") if rows else None
    candidates = []
    for r in rows:
        r["selected"] = False
        if r["reward_accuracy"] < 1.0:
            r["select_reason"] = f"rejected: accuracy {r['accuracy_verdict']}"
        elif cfg.require_format and r["reward_format"] < 1.0:
            r["select_reason"] = f"rejected: format {r['format_verdict']}"
        else:
            candidates.append(r)
    if not candidates:
        return
    if rate is not None and not (cfg.pass_rate_min <= rate <= cfg.pass_rate_max):
        for r in candidates:
            r["select_reason"] = (f"rejected: prompt pass rate {rate:.2f} outside "
                                  f"[{cfg.pass_rate_min:g}, {cfg.pass_rate_max:g}]")
        return
    if cfg.policy == "all_correct":
        keep = candidates
    elif cfg.policy == "shortest_correct":
        keep = [min(candidates, key=lambda r: (_length(r), r["sample_idx"]))]
    else:
        ordered = sorted(candidates, key=(lambda r: (_length(r), r["sample_idx"])) if cfg.order == "shortest"
                         else (lambda r: r["sample_idx"]))
        keep = ordered[:cfg.m]
    kept = {id(r) for r in keep}
    for r in candidates:
        if id(r) in kept:
            r["selected"] = True
            r["select_reason"] = f"kept: correct ({cfg.policy}" + (f", m={cfg.m}" if cfg.policy == "at_most_m"
                                                                   else "") + ")"
        elif cfg.policy == "shortest_correct":
            r["select_reason"] = "rejected: a shorter correct sample of this prompt was kept"
        else:
            r["select_reason"] = f"rejected: over the cap of {cfg.m} correct sample(s) per prompt"
