"""Truncated or unfinished traces: cut at the token limit, no closing </think>, or no reply after it."""
from __future__ import annotations

from factory.curate.config import TruncationConfig  # noqa: F401
from factory.curate.filters.base import FilterOutcome, RecordFilter


class TruncationFilter(RecordFilter):
    name = "truncation"
    requires = ("finish_reason", "think_closed", "reasoning", "answer_text")

    def __init__(self, config: TruncationConfig | None = None):
        self.config = config or TruncationConfig()

    def check(self, record: dict) -> FilterOutcome:
        c = self.config
        finish = record["finish_reason"]
        if c.drop_error and finish == "error":
            return False, "finish_reason=error", {}
        if c.drop_length and finish == "length":
            return False, "finish_reason=length", {}
        if c.require_think_closed and not record["think_closed"]:
            return False, "no_think_close", {}
        if not (record["reasoning"] or "").strip() and record.get("domain") not in c.no_cot_domains:
            return False, "empty_reasoning", {}
        if c.require_answer and not (record["answer_text"] or "").strip():
            return False, "empty_answer", {}
        return True, None, {}
