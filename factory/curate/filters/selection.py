"""Keep only the samples the rewards stage selected (or, by policy, the correct ones).

Without reward columns (verification was off) the filter is skipped in `auto` mode and the funnel says so; a
mode that names a column the records lack is an error naming that column.
"""
from __future__ import annotations

from factory.curate.config import SelectionConfig  # noqa: F401
from factory.curate.filters.base import FilterOutcome, RecordFilter


class SelectionFilter(RecordFilter):
    name = "selection"

    def __init__(self, config: SelectionConfig | None = None):
        self.config = config or SelectionConfig()
        mode = self.config.mode
        self.requires = {"auto": ("selected",), "selected": ("selected",),
                         "correct": ("reward_accuracy",)}.get(mode, ())

    def skip_reason(self, fields: set[str]) -> str | None:
        mode = self.config.mode
        if mode == "off":
            return "selection.mode=off"
        if mode == "auto" and "selected" not in fields:
            return "no reward columns (verification off)"
        return None

    def check(self, record: dict) -> FilterOutcome:
        if self.config.mode == "correct":
            acc = record["reward_accuracy"]
            if acc is None or acc < self.config.min_accuracy:
                return False, "incorrect", {}
            return True, None, {}
        if not record["selected"]:
            return False, "not_selected", {}
        return True, None, {}
