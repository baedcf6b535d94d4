"""Hand-built traces for the curation tests: real trace records (the `trace` schema) written to real Parquet."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from factory.core.schema import load_schema

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO.parent / "shared" / "data" / "benchmarks"

# A healthy English CoT in R1's style; `variant` changes numbers so samples are distinct responses.
_COT = """Okay, so I need to find how many positive integers $n$ below {top} make $n^2 + 3n + 2$ divisible by 6. Hmm, let me think about how to approach this.

First, I notice that $n^2 + 3n + 2 = (n+1)(n+2)$. That is a product of two consecutive integers, so it is always even. So divisibility by 2 is automatic, and I only need divisibility by 3.

For $(n+1)(n+2)$ to be divisible by 3, either $n+1$ or $n+2$ must be a multiple of 3. That means $n$ leaves remainder 1 or 2 when divided by 3.

Wait, let me double-check the case where $n$ is a multiple of 3. Then $n+1$ leaves remainder 1 and $n+2$ leaves remainder 2, so the product leaves remainder 2. Right, those values fail.

So I need to count the values from 1 to {last} that are not multiples of 3. Let me verify with small cases: n = 1 gives 6, which works, and n = 3 gives 20, which does not. Good, that matches the pattern I found.

So the final count is two thirds of the numbers, which is {answer}."""


def cot(variant: int = 0) -> str:
    top = 99 + 3 * variant
    return _COT.format(top=top + 1, last=top, answer=2 * top // 3)


def trace(prompt_id: str = "p0", sample_idx: int = 0, *, problem: str | None = None, reasoning: str | None = None,
          answer_text: str = "The count is $\\boxed{66}$.", domain: str = "math", source: str = "unit",
          finish_reason: str = "stop", think_closed: bool = True, language: str | None = "en",
          completion_tokens: int = 400, **extra) -> dict:
    problem = problem if problem is not None else f"Problem {prompt_id}: count the integers n below 100 that make " \
                                                  f"n^2+3n+2 divisible by 6."
    reasoning = reasoning if reasoning is not None else cot(sample_idx)
    rec = {"prompt_id": prompt_id, "source": source, "domain": domain, "problem": problem, "answer": "66",
           "tests": None, "language": language, "metadata": json.dumps({"case": prompt_id}),
           "sample_idx": sample_idx, "teacher": "unit-teacher", "sampling": json.dumps({"n": 4, "temperature": 0.6}),
           "template": "chat", "prompt_text": problem,
           "completion": f"<think>\n{reasoning}\n</think>\n\n{answer_text}", "reasoning": reasoning,
           "answer_text": answer_text, "think_closed": think_closed, "finish_reason": finish_reason,
           "prompt_tokens": 40, "completion_tokens": completion_tokens, "latency_s": 0.5, "error": None}
    rec.update(extra)
    return rec


REWARD_TYPES = {"reward_accuracy": pa.float64(), "accuracy_verdict": pa.string(), "accuracy_reason": pa.string(),
                "extracted_answer": pa.string(), "reward_format": pa.float64(), "format_verdict": pa.string(),
                "format_reason": pa.string(), "pass_rate": pa.float64(), "majority_answer": pa.string(),
                "selected": pa.bool_(), "select_reason": pa.string()}


def rewards(correct: bool = True, selected: bool | None = None) -> dict:
    """Verify-stage columns for one sample."""
    selected = correct if selected is None else selected
    return {"reward_accuracy": 1.0 if correct else 0.0, "accuracy_verdict": "correct" if correct else "wrong",
            "accuracy_reason": "math-verify", "extracted_answer": "66" if correct else "65", "reward_format": 1.0,
            "format_verdict": "ok", "format_reason": "", "pass_rate": 0.75, "majority_answer": "66",
            "selected": selected, "select_reason": "correct" if selected else "wrong answer"}


def write_stage(stage_dir: Path, shards: list[list[dict]]) -> Path:
    """A finished input stage folder (parts + counts.json, as the runner leaves it) of the given shards."""
    for i, rows in enumerate(shards):
        write_shard(stage_dir / f"part-{i:05d}.parquet", rows)
    n = sum(len(rows) for rows in shards)
    (stage_dir / "counts.json").write_text(json.dumps({"stage": stage_dir.name, "records_in": n, "records_out": n,
                                                       "dropped": {}, "extra": {}}))
    return stage_dir


def write_shard(path: Path, rows: list[dict]) -> Path:
    """A real trace shard (verify columns appended when the rows carry them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = load_schema("trace").table(rows)
    for name, typ in REWARD_TYPES.items():
        if rows and name in rows[0]:
            table = table.append_column(pa.field(name, typ), pa.array([r[name] for r in rows], typ))
    pq.write_table(table, path)
    return path


# --- R1-length synthetic reasoning: seeded, varied enough to look like prose to the repetition and language
# filters (zlib ratio ~3, no repeated 10-grams), with numbers, LaTeX and the usual "Wait," / "Let me check".
_OPENERS = ["Okay,", "So", "Hmm,", "Wait,", "Alternatively,", "Now", "First,", "Then", "But", "Actually,",
            "Therefore,", "Next,", "Also,", "Maybe", "Right,", "Hold on,", "Good,", "Similarly,", "In other words,",
            "On the other hand,", "Let me see,", "Okay, so", "Hmm, wait,", "Let me think,", "To be careful,"]
_NOUNS = ["sum", "product", "value", "remainder", "area", "triangle", "sequence", "term", "function", "equation",
          "denominator", "probability", "polynomial", "circle", "radius", "slope", "integer", "difference", "ratio",
          "number", "digit", "factor", "prime", "multiple", "angle", "side", "point", "line", "vertex", "edge",
          "coefficient", "root", "solution", "case", "step", "condition", "constraint", "pattern", "argument",
          "identity", "formula", "limit", "bound", "interval", "set", "element", "pair", "choice", "method",
          "result", "expression", "parity", "symmetry", "perimeter", "height", "diagonal", "exponent", "graph"]
_ADJS = ["first", "second", "last", "smallest", "largest", "given", "original", "new", "previous", "total",
         "positive", "negative", "odd", "even", "remaining", "missing", "final", "whole", "other", "same",
         "correct", "simpler", "harder", "general", "special", "obvious", "tricky", "exact", "rough", "careful"]
_VERBS = ["equals", "is at most", "must be", "becomes", "divides", "exceeds", "matches", "simplifies to", "gives",
          "reduces to", "is congruent to", "approaches", "counts", "bounds", "determines", "fixes", "changes",
          "depends on", "cancels", "doubles", "contains", "excludes", "implies", "follows from", "satisfies"]
_LINKS = ["because", "since", "so", "which means", "and therefore", "but", "while", "given that", "assuming",
          "even though", "as long as", "unless", "so that", "after", "before", "whenever", "if"]
_ADVS = ["clearly", "probably", "exactly", "roughly", "carefully", "again", "directly", "quickly", "simply",
         "really", "actually", "certainly", "maybe", "definitely", "indeed", "still", "only", "just"]
_CHECKS = ["Let me double-check that.", "Wait, is that right?", "Let me verify this with a small case.",
           "Hmm, that seems off.", "Okay, that works.", "Let me recompute.", "So far so good.",
           "That matches what I expected.", "Let me try another approach.", "I think that is correct."]


def _phrase(rng) -> str:
    return f"the {rng.choice(_ADJS)} {rng.choice(_NOUNS)}"


def _math(rng) -> str:
    a, b, c = rng.randint(2, 999), rng.randint(2, 99), rng.choice("xyznkmabc")
    return rng.choice([f"${a} + {b} = {a + b}$", f"${c}^2 = {a}$", f"${a} \\times {b} = {a * b}$",
                       f"$\\frac{{{a}}}{{{b}}}$", f"${c} = {a} - {b}$", f"${c} \\equiv {a % b} \\pmod{{{b}}}$",
                       f"{a}", f"{a}/{b}", f"${c}_{{{b}}} = {a}$"])


def _sentence(rng) -> str:
    kind = rng.random()
    if kind < 0.1:
        return rng.choice(_CHECKS)
    opener = rng.choice(_OPENERS)
    if kind < 0.45:
        s = f"{opener} {_phrase(rng)} {rng.choice(_VERBS)} {_math(rng)} {rng.choice(_LINKS)} {_phrase(rng)} " \
            f"{rng.choice(_VERBS)} {_phrase(rng)}."
    elif kind < 0.75:
        s = f"{opener} {rng.choice(_ADVS)} {_phrase(rng)} of {_phrase(rng)} {rng.choice(_VERBS)} {_math(rng)}."
    else:
        s = f"{opener} if {_phrase(rng)} {rng.choice(_VERBS)} {_math(rng)}, then {_phrase(rng)} " \
            f"{rng.choice(_ADVS)} {rng.choice(_VERBS)} {_math(rng)} {rng.choice(_LINKS)} {_phrase(rng)} " \
            f"{rng.choice(_VERBS)} {_phrase(rng)}."
    return s


def synthetic_cot(rng, words: int = 3700) -> str:
    """Seeded R1-style reasoning of about `words` words (3.7k words ~ 5k tokens), paragraphs of 2-6 sentences."""
    paragraphs, n = [], 0
    while n < words:
        para = " ".join(_sentence(rng) for _ in range(rng.randint(2, 6)))
        n += len(para.split())
        paragraphs.append(para)
    return "\n\n".join(paragraphs)
