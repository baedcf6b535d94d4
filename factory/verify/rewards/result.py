"""The value every reward returns."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RewardResult:
    reward: float  # 0/1, or the fraction of tests passed for code
    verdict: str  # a short machine-readable word, e.g. correct, wrong, no_answer, passed, timeout
    reason: str  # one human-readable sentence
    extracted: str | None = None  # the model's final answer (or program) as found in its text
    details: dict = field(default_factory=dict)  # e.g. tests_passed / tests_total for code
