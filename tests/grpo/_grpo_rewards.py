"""User rewards for the GRPO tests (`_grpo_rewards:NAME` in `grpo.rewards`): importable in the reward workers."""
from __future__ import annotations

import time


def chars(record: dict) -> float:
    """Characters of the completion / 100: random samples differ in it, so groups have non-zero advantages."""
    return len(record["completion"]) / 100


def hang(record: dict) -> float:  # noqa: ARG001
    time.sleep(3600)
    return 1.0
