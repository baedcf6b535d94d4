"""Math verification throughput on R1-length traces: our verifier vs math-verify applied to the whole trace.

Traces are built from MATH-500: ~6k tokens of LaTeX-heavy reasoning (paragraphs of other problems' reference
solutions, their boxes removed), then a short answer part ending in \\boxed{…}. k=4 samples per prompt: the
reference as written, the same answer in another written form where a simple rewrite exists, a wrong answer of the
same kind (one digit of the reference changed, or another problem's answer when it has no digit), and an answer given
without a box ("The final answer is …"). `--wrong other` uses another problem's answer instead (often of another
type: a harder case for the fast paths). Both verifiers see the same traces in the
same process, after a warm-up; the reference is parsed once per prompt for both. Throughput is samples per CPU
second of this process (= per core; the machine may be shared), wall-clock figures alongside.

Usage: PYTHONPATH=. python bench/verify_math.py [--prompts 200] [--tokens 6000] [--wrong perturbed|other]
       PYTHONPATH=. python bench/verify_math.py --suite   # agreement with Math-Verify's own test cases
Prints one summary line, then a JSON result.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import re
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared/data/benchmarks"
TOKENIZER = Path.home() / ".cache/factory/smollm2-135m-instruct/tokenizer.json"


def strip_boxes(text: str) -> str:
    return re.sub(r"\\boxed\{", "{", text)


def rewrite(answer: str) -> str:
    """Another valid spelling of the same answer, when a simple one exists."""
    m = re.fullmatch(r"(-?)\\d?frac\{(\d+)\}\{(\d+)\}", answer)
    if m:
        return f"{m.group(1)}{m.group(2)}/{m.group(3)}"
    if re.fullmatch(r"-?\d+", answer):
        return f"{answer}.0"
    return answer.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac").replace(",", ", ")


def perturb(answer: str, rows: list[dict], rng: random.Random) -> str:
    """A wrong answer of the same kind: one digit of the reference changed; another problem's answer if none."""
    digits = [i for i, c in enumerate(answer) if c.isdigit()]
    if digits:
        i = rng.choice(digits)
        return answer[:i] + str((int(answer[i]) + rng.randint(1, 9)) % 10) + answer[i + 1:]
    other = rng.choice(rows)["answer"]
    while other == answer:
        other = rng.choice(rows)["answer"]
    return other


def other_answer(answer: str, rows: list[dict], rng: random.Random) -> str:
    other = rng.choice(rows)["answer"]
    while other == answer:
        other = rng.choice(rows)["answer"]
    return other


def make_traces(n_prompts: int, target_tokens: int, seed: int = 0,
                wrong: str = "perturbed") -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in (BENCH / "math500.jsonl").open()]
    rng = random.Random(seed)
    prompts = rng.sample(rows, min(n_prompts, len(rows)))
    paragraphs = [strip_boxes(p) for r in rows for p in r["solution"].split("\n\n") if len(p) > 80]
    tok = None
    if TOKENIZER.exists():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(TOKENIZER))
    chars_per_token = 4.0
    if tok is not None:  # calibrate on this kind of text
        sample = "\n\n".join(rng.sample(paragraphs, 200))
        chars_per_token = len(sample) / len(tok.encode(sample).ids)
    target_chars = int(target_tokens * chars_per_token)
    traces = []
    for p in prompts:
        bad = (perturb if wrong == "perturbed" else other_answer)(p["answer"], rows, rng)
        answers = [f"$\\boxed{{{p['answer']}}}$", f"$\\boxed{{{rewrite(p['answer'])}}}$", f"$\\boxed{{{bad}}}$",
                   f"The final answer is ${p['answer']}$."]
        for idx, final in enumerate(answers):
            parts, size = ["Okay, let me work through this problem step by step."], 0
            while size < target_chars:
                para = rng.choice(paragraphs)
                parts.append(para)
                size += len(para) + 2
            reasoning = "\n\n".join(parts)
            answer_text = f"**Final Answer**\n\nPutting the steps together, the answer is {final}"
            completion = f"<think>\n{reasoning}\n</think>\n\n{answer_text}"
            traces.append({"prompt_id": p["id"], "sample_idx": idx, "domain": "math", "answer": p["answer"],
                           "template": "chat", "completion": completion, "reasoning": reasoning,
                           "answer_text": answer_text, "think_closed": True, "finish_reason": "stop"})
    measured = None
    if tok is not None:
        probe = traces[: min(20, len(traces))]
        measured = sum(len(tok.encode(t["completion"]).ids) for t in probe) / len(probe)
    info = {"tokens_per_trace": round(measured) if measured else None,
            "tokenizer": "SmolLM2-135M (measured)" if measured else None,
            "chars_per_trace": round(sum(len(t["completion"]) for t in traces) / len(traces))}
    if measured is None:
        info["tokens_per_trace_estimated"] = round(info["chars_per_trace"] / 4)
    return traces, info


def run_ours(traces: list[dict]) -> list[str]:
    from factory.verify.verdicts import score_record

    return [score_record(t)["accuracy_verdict"] for t in traces]


def run_baseline(traces: list[dict]) -> list[str]:
    """math-verify as commonly used: parse the whole completion, verify against the parsed reference."""
    from math_verify import parse, verify

    golds: dict[str, list] = {}
    verdicts = []
    for t in traces:
        gold = golds.get(t["prompt_id"])
        if gold is None:
            gold = golds[t["prompt_id"]] = parse("$" + t["answer"] + "$")
        pred = parse(t["completion"])
        verdicts.append("correct" if verify(gold, pred) else "wrong")
    return verdicts


SUITE = REPO / "tests/verify/data/math_verify_cases.json"


def _math_verify_itself(case: dict) -> int:
    """The case as Math-Verify's own test runs it (its extraction targets and settings)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    settings = case.get("settings", {})
    if case["extraction"] == "default":
        return int(verify(parse(case["gold"]), parse(case["pred"])))
    targets = [LatexExtractionConfig(boxed_match_priority=0) if t == "latex" else ExprExtractionConfig()
               for t in case["extraction"].split("+")]
    return int(verify(parse(case["gold"], targets), parse(case["pred"], targets),
                      float_rounding=settings.get("precision", 6), strict=settings.get("strict", True),
                      allow_set_relation_comp=settings.get("allow_set_relation_comp", False)))


def run_suite() -> dict:
    """Math-Verify's parametrized test cases through our reward (answer = prediction, reference = gold)."""
    from factory.verify.rewards.math import MathConfig, score_math

    cases = json.loads(SUITE.read_text())["cases"]
    misses, mv_agree = [], 0
    for case in cases:
        settings = case.get("settings", {})
        cfg = MathConfig(**{k: v for k, v in (("float_rounding", settings.get("precision")),
                                               ("allow_set_relation_comp", settings.get("allow_set_relation_comp")))
                            if v is not None})
        r = score_math(case["pred"], case["gold"], cfg=cfg)
        if (r.verdict == "correct") != bool(case["expected"]):
            misses.append({"case": case["origin"], "expected": case["expected"], "verdict": r.verdict,
                           "reason": r.reason[:160]})
        mv_agree += _math_verify_itself(case) == case["expected"]
    return {"bench": "verify_math_suite", "cases": len(cases), "ours_agree": len(cases) - len(misses),
            "math_verify_agree": mv_agree, "disagreements": misses}


def timed(fn, traces):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(traces)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wrong", choices=["perturbed", "other"], default="perturbed",
                    help="wrong answers: a digit of the reference changed, or another problem's answer")
    ap.add_argument("--suite", action="store_true",
                    help="instead: agreement with Math-Verify's own parametrized tests (tests/verify/data)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    if args.suite:
        result = run_suite()
        print(f"verify_math --suite: ours agree on {result['ours_agree']}/{result['cases']} of Math-Verify's test "
              f"cases, math-verify itself on {result['math_verify_agree']}/{result['cases']}")
        print(json.dumps(result, indent=2))
        return

    warm, _ = make_traces(10, 500, seed=args.seed + 1)
    run_ours(warm)
    run_baseline(warm)
    from factory.verify.rewards import math as rmath

    rmath._parse_boxed.cache_clear()  # no answer of the timed run is cached from the warm-up

    traces, info = make_traces(args.prompts, args.tokens, seed=args.seed, wrong=args.wrong)
    ours, ours_wall, ours_cpu = timed(run_ours, traces)
    base, base_wall, base_cpu = timed(run_baseline, traces)
    n = len(traces)
    ours_rate, base_rate = n / ours_cpu, n / base_cpu
    expected = ["correct", "correct", "wrong", "correct"]
    accuracy = {
        "ours_matches_construction": sum(v == expected[t["sample_idx"]] for v, t in zip(ours, traces)) / n,
        "baseline_matches_construction": sum((v == "correct") == (expected[t["sample_idx"]] == "correct")
                                             for v, t in zip(base, traces)) / n,
    }
    disagreements = [(t["prompt_id"], t["sample_idx"], t["answer"], o, b) for t, o, b in zip(traces, ours, base)
                     if (o == "correct") != (b == "correct")]
    result = {
        "bench": "verify_math", "samples": n, "prompts": args.prompts, "k": 4, "wrong_answers": args.wrong, **info,
        "ours_samples_per_cpu_s": round(ours_rate, 1), "baseline_samples_per_cpu_s": round(base_rate, 1),
        "ratio": round(ours_rate / base_rate, 2),
        "ours_wall_s": round(ours_wall, 3), "baseline_wall_s": round(base_wall, 3),
        "ours_cpu_s": round(ours_cpu, 3), "baseline_cpu_s": round(base_cpu, 3),
        "goals": {"ratio>=2": ours_rate / base_rate >= 2, "ours>=500/s/core": ours_rate >= 500},
        **accuracy, "disagreements": len(disagreements), "disagreement_examples": disagreements[:8],
        "device": "CPU, 1 process",
    }
    print(f"verify_math: ours {ours_rate:.0f} samples/s/core vs math-verify on the whole trace {base_rate:.1f} "
          f"samples/s/core = {ours_rate / base_rate:.1f}x on {n} traces of "
          f"~{info.get('tokens_per_trace') or info.get('tokens_per_trace_estimated')} "
          f"tokens (ours right on {accuracy['ours_matches_construction']:.1%}, baseline "
          f"{accuracy['baseline_matches_construction']:.1%})")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
